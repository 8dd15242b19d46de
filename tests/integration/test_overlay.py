"""The writable overlay (volume/overlay.py, docs/overlay.md) without FUSE.

* fsx-style: random writes of random sizes and offsets (unaligned, cluster-straddling, whole
  clusters, past the end), reads compared with an in-memory model of the whole disk, flushes
  and close/continue cycles, on every corpus disk and on made disks of other cluster sizes;
  then the result read by `ploopfs export`, qemu (json: chain, parallels driver) and `check`.
* crashes: a writer subprocess SIGKILLed at random moments; the delta is dirty, `check` finds
  nothing worse than the dirty flag and unreferenced clusters, every write before the last
  completed flush is there, and each 4 KiB page holds what the model held after some write at
  or after that flush (a kill tears the write in flight between pages); continuing and
  closing it gives a clean `check`.
* refusals: a folder that is not empty and no overlay, an overlay of another disk or snapshot,
  a damaged earlier delta, the delta replaced by a link to a source.
Every source file is hashed before and checked unchanged after (corpus_case, guard_sources).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, qemu_json_chain, run_cli

from ploopfs.errors import ExitCode, PloopfsError
from ploopfs.format.header import decode_header_fields
from ploopfs.volume.overlay import Overlay
from ploopfs.volume.source import OpenOptions, open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

KiB, MiB = 1 << 10, 1 << 20
PAGE = 4096
Guard = Callable[..., None]


# -- disks --------------------------------------------------------------------------------------
def make_chain(folder: Path, size: int, cluster: int, version: int, levels: int,
               seed: int, raw_base: bool = False) -> Path:
    """A chain of `levels` images with some clusters written in each (raw base optional)."""
    folder.mkdir()
    rng = random.Random(seed)
    files = []
    for lv in range(levels):
        name = "root.hdd" if lv == 0 else f"root.hdd.{lv}"
        path = folder / name
        if lv == 0 and raw_base:
            with open(path, "wb") as f:
                f.truncate(size)
                for _ in range(6):
                    f.seek(rng.randrange(size - 4096))
                    f.write(rng.randbytes(rng.randrange(1, 4096)))
        else:
            with ImageWriter.create(path, size, cluster, version) as w:
                for v in rng.sample(range(size // cluster), max(1, size // cluster // 4)):
                    w.write_cluster(v, rng.randbytes(cluster))
        files.append(name)
    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(files, size, cluster, raw_base=raw_base))
    return folder


DISKS = ["v2-single", "v1-chain2", "plain-base-chain3", "v2-dirty-inuse", "ext4-gpt-chain2",
         "v2-64k-chain3", "v1-256k", "raw-128k-chain2", "v2-4m"]


@pytest.fixture
def disk_of(corpus_case: Callable[[str], Path], tmp_path: Path,
            guard_sources: Guard) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        if "-" in name and name.split("-")[1][-1] in "km":
            d = {"v2-64k-chain3": (8 * MiB, 64 * KiB, 2, 3, False),
                 "v1-256k": (6 * MiB, 256 * KiB, 1, 1, False),
                 "raw-128k-chain2": (4 * MiB, 128 * KiB, 2, 2, True),
                 "v2-4m": (24 * MiB, 4 * MiB, 2, 1, False)}[name]
            p = make_chain(tmp_path / name, d[0], d[1], d[2], d[3], seed=len(name), raw_base=d[4])
            guard_sources(p)
            return p
        return corpus_case(name)

    return make


def base_bytes(src: Path) -> bytes:
    with open_source(src) as disk:
        vol = disk.volume()
        return bytes(vol.read(0, vol.size))


def open_overlay(src: Path, folder: Path, snapshot: str | None = None) -> Overlay:
    disk = open_source(src)
    return Overlay.open(disk, snapshot, str(folder))


def check_json(folder: Path) -> tuple[int, list[str]]:
    r = run_cli("check", "--json", "--allow-outside-paths", folder)
    out = json.loads(r.stdout)
    return r.returncode, [f["code"] for f in out["findings"]]


def delta_of(folder: Path) -> Path:
    (d,) = glob.glob(str(folder / "root.hds.*"))
    return Path(d)


def dirty(folder: Path) -> bool:
    with open(delta_of(folder), "rb") as f:
        return decode_header_fields(f.read(64)).dirty


def chain_files(folder: Path) -> tuple[list[str], bool]:
    with open_source(folder, OpenOptions(allow_outside_paths=True)) as d:
        vol = d.volume()
        return [im.path for im in vol.images], vol.images[0].is_raw


# -- fsx ----------------------------------------------------------------------------------------
def fsx(ov: Overlay, model: bytearray, rng: random.Random, ops: int) -> None:
    c, size = ov.cluster_size, ov.size
    for _ in range(ops):
        r = rng.random()
        if r < 0.55:
            kind = rng.randrange(5)
            if kind == 0:  # small, unaligned
                n, off = rng.randrange(1, 5000), rng.randrange(size)
            elif kind == 1:  # straddling a cluster boundary
                b = rng.randrange(1, max(2, size // c)) * c
                off = max(0, b - rng.randrange(1, 3000))
                n = rng.randrange(2, 8000)
            elif kind == 2:  # whole clusters, aligned
                off, n = rng.randrange(size // c) * c, c * rng.randrange(1, 3)
            elif kind == 3:  # large, unaligned
                off, n = rng.randrange(size), rng.randrange(c, 3 * c)
            else:  # across the end of the disk
                n = rng.randrange(1, 3 * 4096)
                off = size - rng.randrange(0, n)
            data = rng.randbytes(n)
            got = ov.write(off, data)
            assert got == max(0, min(n, size - off)), (off, n, got)
            model[off:off + got] = data[:got]
        elif r < 0.9:
            off, n = rng.randrange(size + 10), rng.randrange(1, 3 * c)
            assert ov.read(off, n) == model[off:off + n], (off, n)
        else:
            ov.flush()


@pytest.mark.parametrize("name", DISKS)
def test_fsx_model_continue_and_readers(name: str, disk_of: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    src = disk_of(name)
    model = bytearray(base_bytes(src))
    out = tmp_path / "overlay"
    rng = random.Random(name)
    for cycle in range(3):  # create, then continue twice
        ov = open_overlay(src, out)
        assert dirty(out), "the delta is marked in use while open"
        assert ov.warnings == []
        assert ov.read(0, ov.size) == model, f"cycle {cycle}: continued overlay differs"
        fsx(ov, model, rng, 150)
        assert ov.read(0, ov.size) == model
        ov.close()
        assert not dirty(out), "a clean close clears the dirty flag"
    # the result is an ordinary ploop disk: ploopfs, check and qemu read it as the model
    code, codes = check_json(out)
    source_dirty = name == "v2-dirty-inuse"
    assert (code, codes) == ((1, ["DIRTY"]) if source_dirty else (0, [])), codes
    exp = tmp_path / "export.raw"
    r = run_cli("export", "--allow-outside-paths", out, exp)
    assert r.returncode == 0, r.stderr
    assert exp.read_bytes() == model
    files, raw = chain_files(out)
    assert all(os.path.isabs(f) for f in files)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", str(exp),
                        qemu_json_chain(files, raw_base=raw)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["qemu-img", "check", "-f", "parallels", str(delta_of(out))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_older_snapshot_and_qemu_io(disk_of: Callable[[str], Path], tmp_path: Path) -> None:
    """An overlay on an older snapshot (not the top): it reads that snapshot below its writes,
    and qemu-io reads the pattern written at an offset through the json: chain."""
    src = disk_of("v1-chain2")
    with open_source(src) as d:
        older = d.descriptor.chain()[0].guid
        vol = d.volume(older)
        model = bytearray(vol.read(0, vol.size))
    out = tmp_path / "ov"
    ov = Overlay.open(open_source(src), older, str(out))
    ov.write(3 * MiB + 5, b"\xa5" * 70000)
    model[3 * MiB + 5:3 * MiB + 5 + 70000] = b"\xa5" * 70000
    assert ov.read(0, ov.size) == model
    ov.close()
    # continuing needs the same snapshot: on the top it is refused
    with pytest.raises(PloopfsError) as e:
        open_overlay(src, out)
    assert e.value.exit_code == ExitCode.OUTPUT and "another disk or snapshot" in e.value.what
    files, raw = chain_files(out)  # (this registers the overlay as a source in this process)
    assert len(files) == 2  # the older snapshot's chain (1 image) plus the delta
    r = subprocess.run(["qemu-io", "-r", "-c", f"read -P 0xa5 {3 * MiB + 5} 70000",
                        qemu_json_chain(files, raw_base=raw)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout


# -- crashes ------------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import random, sys
    from ploopfs.volume.source import open_source
    from ploopfs.volume.overlay import Overlay
    src, out, seed, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ov = Overlay.open(open_source(src), None, out)
    print("ready", flush=True)
    rng = random.Random(seed)
    i = 0
    while True:
        off, n, data = op(rng, ov.size, ov.cluster_size)
        ov.write(off, data)
        i += 1
        print("w", i, flush=True)
        if i % every == 0:
            ov.flush()
            print("f", i, flush=True)
""")
OP = textwrap.dedent("""
    def op(rng, size, c):
        k = rng.randrange(3)
        if k == 0:
            n = rng.randrange(1, 9000)
        elif k == 1:
            n = c
        else:
            n = rng.randrange(c, 3 * c)
        off = rng.randrange(size - n) if k != 1 else rng.randrange(size // c) * c
        return off, n, rng.randbytes(n)
""")
_ns: dict = {}
exec(OP, _ns)  # the writer's own op(), replayed here for the model
op = _ns["op"]


def crash_once(src: Path, out: Path, seed: int, every: int, after: float) -> tuple[int, int]:
    """Run the writer, SIGKILL it `after` seconds after it is ready; (last completed flush,
    last completed write)."""
    p = subprocess.Popen([sys.executable, "-c", OP + WRITER, str(src), str(out), str(seed),
                          str(every)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=REPO)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line == b"ready\n", line + p.stderr.read()  # type: ignore[union-attr]
        time.sleep(after)
        os.kill(p.pid, signal.SIGKILL)
        rest = p.stdout.read().decode().split("\n")
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    flushed = max([int(x[2:]) for x in rest if x.startswith("f ")], default=0)
    written = max([int(x[2:]) for x in rest if x.startswith("w ")], default=0)
    return flushed, written


@pytest.mark.parametrize("name", ["v2-64k-chain3", "v1-chain2"])
def test_sigkill_at_random_moments(name: str, disk_of: Callable[[str], Path],
                                   tmp_path: Path) -> None:
    src = disk_of(name)
    base = base_bytes(src)
    with open_source(src) as d:
        cluster = d.volume().cluster_size
    rng = random.Random(f"crash {name}")
    for round_ in range(4):
        out = tmp_path / f"ov{round_}"
        seed = rng.randrange(1 << 30)
        flushed, written = crash_once(src, out, seed, every=rng.choice([3, 7, 20]),
                                      after=rng.uniform(0.05, 0.6))
        assert dirty(out), "a killed writer leaves the delta marked in use"
        code, codes = check_json(out)
        assert code <= 1 and set(codes) <= {"DIRTY", "LEAKED_CLUSTERS",
                                             "FILE_NOT_CLUSTER_ALIGNED"}, codes
        # the states after write j, for j = flushed .. written + 1 (the one in flight)
        size = len(base)
        m = bytearray(base)
        orng = random.Random(seed)
        states: list[bytes] = []
        for j in range(1, written + 2):
            off, n, data = op(orng, size, cluster)
            m[off:off + n] = data
            if j >= flushed:
                states.append(bytes(m))
        if flushed == 0:
            states.insert(0, bytes(base))
        ov = open_overlay(src, out)
        got = ov.read(0, ov.size)
        # Per page, not per cluster: a kill tears the write in flight between pages (the
        # kernel copies a pwrite page by page and stops at a fatal signal), as a power cut
        # tears a disk write between sectors.
        for q in range(0, size, PAGE):
            piece = got[q:q + PAGE]
            assert any(s[q:q + PAGE] == piece for s in states), (
                f"round {round_}: page at {q} matches no state between the last flush "
                f"(write {flushed}) and write {written + 1}")
        ov.close()
        assert check_json(out) == (0, []), "continued and closed: clean"
        assert not dirty(out)


def test_leaks_in_the_middle_are_punched(disk_of: Callable[[str], Path], tmp_path: Path) -> None:
    """A BAT update cut short leaves a referenced cluster after an unreferenced one: continuing
    punches the unreferenced one out (check then counts no leak) and cuts the tail."""
    src = disk_of("v2-64k-chain3")
    out = tmp_path / "ov"
    ov = open_overlay(src, out)
    c = ov.cluster_size
    for v in (5, 9, 11):
        ov.write(v * c, bytes([v]) * c)
    ov.flush()
    # as if the BAT page of cluster 5 and 9 had not been written: zero their slots on disk
    ov.fd, fd = -1, ov.fd
    os.pwrite(fd, b"\0" * 4, 64 + 4 * 5)
    os.pwrite(fd, b"\0" * 4, 64 + 4 * 9)
    os.close(fd)
    assert check_json(out)[1].count("LEAKED_CLUSTERS") == 1
    ov = open_overlay(src, out)
    assert any("punched out" in w for w in ov.warnings), ov.warnings
    assert ov.read(11 * c, c) == bytes([11]) * c
    ov.close()
    assert check_json(out) == (0, [])


# -- refusals -----------------------------------------------------------------------------------
def test_refusals(disk_of: Callable[[str], Path], tmp_path: Path) -> None:
    src = disk_of("v2-single")
    other = disk_of("v1-chain2")

    def refused(folder: Path, source: Path = src) -> PloopfsError:
        with pytest.raises(PloopfsError) as e:
            open_overlay(source, folder)
        return e.value

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    e = refused(busy)
    assert e.exit_code == ExitCode.OUTPUT and "neither empty nor an earlier overlay" in e.what
    assert (busy / "notes.txt").read_text() == "mine" and len(os.listdir(busy)) == 1
    # a folder holding the source itself
    e = refused(src)
    assert e.exit_code == ExitCode.OUTPUT
    # an overlay of another disk
    ov = tmp_path / "ov"
    open_overlay(other, ov).close()
    e = refused(ov)
    assert e.exit_code == ExitCode.OUTPUT and "another disk or snapshot" in e.what
    # its descriptor pointing elsewhere: a source image replaced by another path
    with open(ov / "DiskDescriptor.xml", "r+") as f:  # in place: it keeps its output mark
        text = f.read().replace(str(other), "/etc")
        f.seek(0)
        f.truncate()
        f.write(text)
    e = refused(ov, other)
    assert e.exit_code == ExitCode.OUTPUT
    # a damaged earlier delta: BAT entry past the end of the file
    ov2 = tmp_path / "ov2"
    o = open_overlay(src, ov2)
    o.write(0, b"x" * 10)
    o.close()
    with open(delta_of(ov2), "r+b") as f:
        f.seek(64)
        f.write((10 ** 6).to_bytes(4, "little"))
    e = refused(ov2)
    assert e.exit_code == ExitCode.CORRUPT, e
    # one writer at a time: a second open while the first holds it
    ov4 = tmp_path / "ov4"
    first = open_overlay(src, ov4)
    e = refused(ov4)
    assert e.exit_code == ExitCode.OUTPUT and "in use by another ploopfs" in e.what
    first.close()
    # the delta replaced by a hard link to a source image
    ov3 = tmp_path / "ov3"
    open_overlay(src, ov3).close()
    d = delta_of(ov3)
    d.unlink()
    os.link(src / "root.hdd", d)
    e = refused(ov3)
    assert e.exit_code == ExitCode.OUTPUT and "source" in e.what, e.what


def test_source_not_whole_clusters(tmp_path: Path, guard_sources: Guard) -> None:
    """A raw source whose size is no whole number of clusters: the overlay, like its delta and
    DIR's descriptor, has whole clusters; past the source's end it reads zeros and takes writes."""
    raw = tmp_path / "odd.raw"
    raw.write_bytes(random.Random(5).randbytes(4 * MiB + 1536))
    guard_sources(raw)
    out = tmp_path / "ov"
    ov = Overlay.open(open_source(raw, OpenOptions(cluster_size=128 * KiB)), None, str(out))
    assert ov.size == 4 * MiB + 128 * KiB
    model = bytearray(raw.read_bytes()).ljust(ov.size, b"\0")
    assert ov.read(0, ov.size) == model
    for off, n in [(4 * MiB + 1000, 3000), (ov.size - 10, 50), (4 * MiB - 5, 128 * KiB)]:
        data = random.Random(off).randbytes(n)
        k = ov.write(off, data)
        model[off:off + k] = data[:k]
    assert ov.read(0, ov.size) == model
    ov.close()
    assert check_json(out) == (0, [])
    exp = tmp_path / "x.raw"
    assert run_cli("export", "--allow-outside-paths", out, exp).returncode == 0
    assert exp.read_bytes() == model


def test_hostile_sources(tmp_path: Path) -> None:
    """Every hostile disk of tests/hostile.py under an overlay: refused with its usual exit
    code (never a bug), or an overlay that takes writes at both ends and closes."""
    import hostile

    seen = 0
    for i, h in enumerate(hostile.INPUTS):
        if h.kind != "disk":
            continue
        f = tmp_path / f"in{i}"
        f.mkdir()
        src = h.build(f)
        try:
            ov = Overlay.open(open_source(src, OpenOptions(cluster_size=32 * KiB)), None,
                              str(tmp_path / f"ov{i}"))
        except PloopfsError as e:
            assert e.exit_code not in (ExitCode.INTERNAL,), (h.name, e)
            continue
        assert ov.write(0, b"x" * 100) == min(100, ov.size), h.name
        assert ov.write(max(0, ov.size - 10), b"y" * 20) == min(10, ov.size), h.name
        assert ov.read(0, 10) == (b"x" * 10)[:ov.size], h.name
        ov.close()
        seen += 1
    assert seen >= 10


# -- failed writes ------------------------------------------------------------------------------
@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes of this process past `limit` bytes fail (EFBIG, short up to the limit), as on a
    full host filesystem: RLIMIT_FSIZE, with SIGXFSZ ignored."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)


def dirty_pages(fd: int) -> int:
    """Pages of the file not written back yet (cachestat(2), Linux 6.5+)."""
    import ctypes

    rng = (ctypes.c_uint64 * 2)(0, 0)  # the whole file
    st = (ctypes.c_uint64 * 5)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(451, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
        pytest.skip(f"no cachestat: {os.strerror(ctypes.get_errno())}")
    return int(st[1])


def test_failed_append_leaves_no_garbage(disk_of: Callable[[str], Path], tmp_path: Path) -> None:
    """A write whose new clusters fail half-way (host filesystem full): the part that went in
    place is synced by the next flush, and the failed batch's bytes left past the delta's last
    cluster never show: the next copy-on-write over a hole below writes only its new bytes
    there, and the rest of that cluster must read as zeros."""
    src = disk_of("v2-64k-chain3")
    model = bytearray(base_bytes(src))
    out = tmp_path / "ov"
    ov = open_overlay(src, out)
    c = ov.cluster_size
    holes = [v for v in range(ov.size // c) if ov.base.map.find(v) < 0]
    a, h = holes[0], holes[-1]
    assert h > a + 3
    ov.write(a * c, b"\x11" * 100)  # one cluster in the delta already
    model[a * c:a * c + 100] = b"\x11" * 100
    ov.flush()
    eof = os.fstat(ov.fd).st_size
    with file_size_limit(eof + c + c // 2), pytest.raises(OSError) as e:
        # in place into cluster a, then three whole new clusters: 1.5 of them reach the file
        ov.write(a * c + 50, b"\xee" * (c - 50 + 3 * c))
    assert e.value.errno == errno.EFBIG
    model[a * c + 50:(a + 1) * c] = b"\xee" * (c - 50)
    assert ov.read(a * c, 4 * c) == model[a * c:(a + 4) * c], "the failed batch is referenced"
    ov.flush()
    assert dirty_pages(ov.fd) == 0, "the in-place part of the failed write was not synced"
    ov.write(h * c + 1000, b"abc")
    model[h * c + 1000:h * c + 1003] = b"abc"
    assert ov.read(h * c, c) == model[h * c:(h + 1) * c], "bytes of the failed write show"
    assert ov.read(0, ov.size) == model
    ov.close()
    assert check_json(out) == (0, [])
    ov = open_overlay(src, out)
    assert ov.read(0, ov.size) == model
    ov.close()


def test_v1_delta_full_at_2_tib(disk_of: Callable[[str], Path], tmp_path: Path) -> None:
    """A v1 BAT entry is a 32-bit sector number: a v1 delta cannot address data past 2 TiB.
    A write that needs a cluster there is refused at once as a full disk (ENOSPC), writes
    nothing and references nothing; in-place writes go on, and the delta checks clean.
    (The delta's end is moved to the limit in memory: 2 TiB are not written for a test.)"""
    src = disk_of("v1-256k")
    out = tmp_path / "ov"
    ov = open_overlay(src, out)
    assert ov.header.version == 1
    c = ov.cluster_size
    ov.write(0, b"a" * 10)
    ov.flush()
    real_next, size = ov._next, os.fstat(ov.fd).st_size
    ov._next = (1 << 32) * 512 // c  # the first cluster a v1 entry cannot address
    for data, at in ((b"b" * c, 2 * c), (b"c" * 10, 3 * c + 5)):  # whole, copy-on-write
        with pytest.raises(OSError) as e:
            ov.write(at, data)
        assert e.value.errno == errno.ENOSPC
    assert ov.write(5, b"d") == 1  # in place
    assert os.fstat(ov.fd).st_size == size and ov._next == (1 << 32) * 512 // c
    ov._next = real_next
    ov.close()
    assert check_json(out) == (0, [])
    ov = open_overlay(src, out)
    assert ov.read(0, 10) == b"aaaaadaaaa" and 2 not in ov._bat and 3 not in ov._bat
    ov.close()


@pytest.mark.parametrize("name", ["v2-single", "v1-chain2"])
def test_continue_refuses_a_damaged_data_offset(name: str, disk_of: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    """m_FirstBlockOffset (where ploop allocates data) damaged in an earlier delta: a strict
    open only warns, but ploopfs never writes it so, and continuing would carry it on into a
    delta that ploop then addresses wrongly. Refused in one line (BAD_IMAGE), DIR unchanged."""
    src = disk_of(name)
    out = tmp_path / "ov"
    ov = open_overlay(src, out)
    ov.write(0, b"z" * 5000)
    ov.close()
    with open(delta_of(out), "r+b") as f:
        f.seek(0x30)
        fbo = int.from_bytes(f.read(4), "little")
        f.seek(0x30)
        f.write((fbo + 8).to_bytes(4, "little"))
    before = delta_of(out).read_bytes()
    with pytest.raises(PloopfsError) as e:
        open_overlay(src, out)
    assert e.value.exit_code == ExitCode.BAD_IMAGE and "m_FirstBlockOffset" in e.value.what
    assert delta_of(out).read_bytes() == before
