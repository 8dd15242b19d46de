"""Real mounts through /dev/fuse (issue #3).

Every mount is made by a `ploopfs mount` subprocess (background with --pid-file, or `-F` under
Popen) and torn down by the `mounter` fixture by PID: after every test nothing of ours is mounted
or running (tests/mounting.py). Contents are checked against independent producers and readers:
the corpus's expected.sha256 and files-<GUID>.json, util-linux partx, the kernel's ext4 over a
loop device, fuse2fs, e2fsck, qemu-img/qemu-io and qemu-storage-daemon's FUSE export, and an
in-test model of chains written by ploopfs's ImageWriter (cross-checked with qemu). Source files
are hashed before and after every test (corpus_case / guard_sources).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    CORPUS_CASES,
    PLOOPFS,
    cli_json,
    expected_hashes,
    qemu_json_chain,
    qemu_to_raw,
    sha256_file,
)
from mounting import (
    EXIT_TIMEOUT,
    READY_TIMEOUT,
    Mount,
    Mounter,
    argv,
    children,
    cmdline,
    compare_tree,
    expected_files,
    is_mounted,
    kernel_mount,
    loop_device,
    mount_entry,
    mounts_under,
    partx_table,
    pid_alive,
    pids_mentioning,
    pread_direct,
    sha256_range,
    wait_pid_gone,
    wait_until,
)

from ploopfs.errors import ExitCode
from ploopfs.format.descriptor import bare_guid
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

KiB, MiB = 1 << 10, 1 << 20
DIRTY_CASE = "v2-dirty-inuse"
IN_USE = "marked in use"  # every command warns about an image left open (m_DiskInUse)
EXT4_CASE = "ext4-gpt-chain2"
CaseFactory = Callable[[str], Path]
Guard = Callable[..., None]


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


pytestmark = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mount(8))")




# -- helpers --------------------------------------------------------------------------------------
def case_meta(d: Path) -> dict[str, Any]:
    return json.loads((d / "case.json").read_text())


def snapshot_hashes(d: Path) -> dict[str, str]:
    """bare GUID -> expected SHA-256 of that snapshot's disk, for every snapshot of the case
    (single-image cases list only `expected.raw`, the top)."""
    exp = expected_hashes(d)
    meta = case_meta(d)
    out = {}
    for lv in meta["chain_base_to_top"]:
        name = f"expected-{lv['guid']}.raw"
        if name not in exp and lv["guid"] == meta["top_guid"]:
            name = "expected.raw"
        out[bare_guid(lv["guid"])] = exp[name]
    return out


def braced(guid: str) -> str:
    return "{" + guid + "}"


def chains(d: Path) -> dict[str, list[str]]:
    """bare GUID -> image files of its chain, base first (the corpus cases are linear chains)."""
    levels = case_meta(d)["chain_base_to_top"]
    return {bare_guid(lv["guid"]): [x["file"] for x in levels[:i + 1]]
            for i, lv in enumerate(levels)}


def set_image_mtimes(d: Path, seed: str) -> None:
    """Distinct, shuffled mtimes on the image files, so that `max over the chain` differs per
    snapshot and from `the top file's mtime` (metadata only: contents stay as guarded)."""
    rng = random.Random(seed)
    for lv in case_meta(d)["chain_base_to_top"]:
        t = 1_500_000_000 + rng.randrange(10**7) + 0.25
        os.utime(d / lv["file"], (t, t))


def check_one_line_error(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {r.stderr}"
    assert len(lines) == 1 and lines[0].startswith("ploopfs: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert r.stdout == ""


def ploopfs_processes(path: Path) -> list[int]:
    """ploopfs processes for `path`: daemons and their forked watchers (fusermount3's
    auto_unmount helpers, which mention it too, aside)."""
    return [p for p in pids_mentioning(str(path))
            if str(path) in argv(p) and "fusermount3" not in cmdline(p)]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_unmounted_and_exited(m: Mount) -> None:
    assert not is_mounted(m.mountpoint), f"{m.mountpoint} still mounted"
    assert wait_pid_gone(m.pid, EXIT_TIMEOUT), f"daemon {m.pid} did not exit"


def check_node(p: Path, mode: int, mtime_ns: int, size: int | None = None) -> None:
    """Permissions, owner (the mounting user), size, and mtime: that of the image files, to the
    microsecond (the tree keeps float seconds, which cannot hold every nanosecond)."""
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == mode, (p, oct(st.st_mode))
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
    assert abs(st.st_mtime_ns - mtime_ns) < 1000, (p, st.st_mtime_ns, mtime_ns)
    if size is not None:
        assert st.st_size == size, p


# -- 1. the corpus: every case, every snapshot ----------------------------------------------------
@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus_tree(corpus_case: CaseFactory, mounter: Mounter, case: str) -> None:
    d = corpus_case(case)
    set_image_mtimes(d, case)
    src = d / "DiskDescriptor.xml"
    want = snapshot_hashes(d)
    meta = case_meta(d)
    top = bare_guid(meta["top_guid"])
    size = meta["virtual_size_bytes"]
    m = mounter.mount(src, warning=IN_USE if case == DIRTY_CASE else None)

    assert sha256_file(m / "disk") == expected_hashes(d)["expected.raw"] == want[top]
    assert sorted(os.listdir(m / "snapshots")) == sorted(want)
    for guid, h in want.items():
        assert sha256_file(m / f"snapshots/{guid}/disk") == h, guid

    # partN: util-linux's view of each snapshot's disk, and their bytes are that range of disk
    for guid in [None, *want]:
        folder = m.mountpoint if guid is None else m / f"snapshots/{guid}"
        table = partx_table(folder / "disk")
        if case == EXT4_CASE:
            assert table, "the ext4 case has a GPT partition"
        names = {"disk", *(f"part{n}" for n in table)}
        if guid is None:
            names |= {"info.json", "snapshots"}
        if case == EXT4_CASE:  # the files of its one ext4 partition (tests/system/test_files_mount.py)
            names.add("files")
        assert set(os.listdir(folder)) == names, guid
        for n, (start, length) in table.items():
            part = folder / f"part{n}"
            assert part.stat().st_size == length
            assert sha256_file(part) == sha256_range(folder / "disk", start, length)

    # info.json is exactly what `ploopfs info --json` prints
    assert json.loads((m / "info.json").read_bytes()) == cli_json("info", "--json", src)

    # metadata: read-only modes, our uid/gid, sizes, mtimes of the image files
    mtimes = {g: max(os.stat(d / f).st_mtime_ns for f in files) for g, files in chains(d).items()}
    newest = max(mtimes.values())
    check_node(m.mountpoint, 0o555, newest)
    assert stat.S_ISDIR(os.stat(m / "snapshots").st_mode)
    check_node(m / "snapshots", 0o555, newest)
    check_node(m / "info.json", 0o444, newest, len((m / "info.json").read_bytes()))
    check_node(m / "disk", 0o444, mtimes[top], size)
    for guid in want:
        check_node(m / f"snapshots/{guid}", 0o555, mtimes[guid])
        for name in os.listdir(m / f"snapshots/{guid}"):
            if name != "files":  # the filesystem's own root: its owner, mode and times
                check_node(m / f"snapshots/{guid}/{name}", 0o444, mtimes[guid])
        assert (m / f"snapshots/{guid}/disk").stat().st_size == size
    vfs = os.statvfs(m.mountpoint)
    assert vfs.f_flag & os.ST_RDONLY

    r = mounter.umount(m)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert_unmounted_and_exited(m)
    assert not (mounter.root / f"{m.mountpoint.name}.pid").exists(), "pid file left behind"


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus_snapshot_option(corpus_case: CaseFactory, mounter: Mounter, case: str) -> None:
    """--snapshot GUID selects `disk` (braces and case do not matter), and info.json follows."""
    d = corpus_case(case)
    src = d / "DiskDescriptor.xml"
    for i, (guid, h) in enumerate(snapshot_hashes(d).items()):
        spelled = [braced(guid.upper()), guid, braced(guid)][i % 3]
        m = mounter.mount(src, "--snapshot", spelled, name=f"s{i}",
                          warning=IN_USE if case == DIRTY_CASE else None)
        assert sha256_file(m / "disk") == h, guid
        assert sha256_file(m / f"snapshots/{guid}/disk") == h
        assert json.loads((m / "info.json").read_bytes()) == cli_json("info", "--json", src,
                                                                      "--snapshot", spelled)
        assert mounter.umount(m).returncode == 0
        assert_unmounted_and_exited(m)


def test_everything_is_read_only(corpus_case: CaseFactory, mounter: Mounter) -> None:
    d = corpus_case(EXT4_CASE)
    m = mounter.mount(d)
    snap = m / f"snapshots/{next(iter(snapshot_hashes(d)))}"
    attempts: dict[str, Callable[[], object]] = {
        "open rw": lambda: os.open(m / "disk", os.O_RDWR),
        "open wronly": lambda: os.open(m / "part1", os.O_WRONLY),
        "open trunc": lambda: os.open(m / "info.json", os.O_RDONLY | os.O_TRUNC),
        "append": lambda: os.open(snap / "disk", os.O_WRONLY | os.O_APPEND),
        "create": lambda: os.open(m / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "create in snapshot": lambda: os.open(snap / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "truncate": lambda: os.truncate(m / "disk", 0),
        "mkdir": lambda: os.mkdir(m / "dir"),
        "mkdir in snapshots": lambda: os.mkdir(m / "snapshots/x"),
        "unlink": lambda: os.unlink(m / "disk"),
        "unlink in snapshot": lambda: os.unlink(snap / "disk"),
        "rmdir": lambda: os.rmdir(snap),
        "rename": lambda: os.rename(m / "disk", m / "disk2"),
        "chmod": lambda: os.chmod(m / "disk", 0o644),
        "chown": lambda: os.chown(m / "disk", 1, 1),
        "utime": lambda: os.utime(m / "disk", (0, 0)),
        "symlink": lambda: os.symlink("disk", m / "link"),
        "link": lambda: os.link(m / "disk", m / "hard"),
        "mkfifo": lambda: os.mkfifo(m / "fifo"),
        "setxattr": lambda: os.setxattr(m / "disk", "user.x", b"1"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS, f"{what}: {exc.value}"
    assert sha256_file(m / "disk") == expected_hashes(d)["expected.raw"]  # untouched and alive
    assert m.error_lines() == []


# -- 2. the ext4 case: kernel, fuse2fs, e2fsck, --files -------------------------------------------
@needs_root
def test_ext4_partitions_kernel_fuse2fs_e2fsck(corpus_case: CaseFactory, mounter: Mounter) -> None:
    d = corpus_case(EXT4_CASE)
    m = mounter.mount(d)
    guids = list(snapshot_hashes(d))
    top = bare_guid(case_meta(d)["top_guid"])
    parts = [(top, m / "part1")] + [(g, m / f"snapshots/{g}/part1") for g in guids]
    for i, (guid, part) in enumerate(parts):
        files = expected_files(d, braced(guid))
        r = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 0, f"e2fsck -fn {part}: {r.stdout}{r.stderr}"
        with loop_device(part) as dev, kernel_mount(dev, mounter.mountpoint(f"k{i}")) as km:
            compare_tree(km, files)
        fmnt = mounter.mountpoint(f"f{i}")
        p, err = mounter.popen(["fuse2fs", str(part), str(fmnt), "-f", "-o", "ro,fakeroot"],
                               f"fuse2fs{i}")
        wait_until(lambda fm=fmnt, p=p: is_mounted(fm) or p.poll() is not None, READY_TIMEOUT,
                   "fuse2fs")
        assert p.poll() is None, err.read_text()
        compare_tree(fmnt, files)
        subprocess.run(["fusermount3", "-u", str(fmnt)], check=True, timeout=30)
        assert p.wait(timeout=EXIT_TIMEOUT) == 0
    assert m.error_lines() == []


@needs_root
def test_files_mount_every_snapshot(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """--files shows the ext4 tree itself, from the daemon alone (no helper process, no second
    mount); so does every snapshot's files/ in a plain mount; `ploopfs umount` takes it down."""
    d = corpus_case(EXT4_CASE)
    plain = mounter.mount(d, name="plain")
    for i, guid in enumerate([None, *snapshot_hashes(d)]):
        args = ["--files"] + (["--snapshot", guid] if guid else [])
        m = mounter.mount(d / "DiskDescriptor.xml", *args, name=f"files{i}")
        top = mount_entry(m.mountpoint)
        assert top is not None and top.fstype == "fuse.ploopfs", top
        points = sorted(e.point for e in mounts_under(mounter.root))
        assert points == sorted([str(plain.mountpoint), str(m.mountpoint)]), points
        assert [cmdline(p) for p in children(m.pid) if "fuse2fs" in cmdline(p)] == []
        want = braced(guid or bare_guid(case_meta(d)["top_guid"]))
        compare_tree(m.mountpoint, expected_files(d, want))
        compare_tree(plain / (f"snapshots/{guid}/files" if guid else "files"),
                     expected_files(d, want))
        with pytest.raises(OSError) as exc:
            (m / "new-file").write_bytes(b"x")
        assert exc.value.errno == errno.EROFS
        r = mounter.umount(m)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert not is_mounted(m.mountpoint)
        assert not pid_alive(m.pid), "ploopfs umount returned before the daemon finished"
        assert m.error_lines() == []


@needs_root
def test_files_mount_sigkill_leaves_nothing(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """SIGKILL of a --files daemon: the mount goes (auto_unmount, or the reaper)."""
    d = corpus_case(EXT4_CASE)
    m = mounter.mount(d, "--files")
    os.listdir(m.mountpoint)
    os.kill(m.pid, signal.SIGKILL)
    wait_until(lambda: mounts_under(mounter.root) == [], EXIT_TIMEOUT,
               "the mount to go away after SIGKILL")


# -- 3. a qemu-made disk vs qemu-storage-daemon's FUSE export -------------------------------------
def _qemu_made_disk(folder: Path) -> Path:
    """~64 MiB: random data regions and holes converted by qemu-img, then qemu-io writes that
    allocate clusters out of order and partially."""
    rng = np.random.default_rng(3)
    size = 64 * MiB
    raw = folder / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(size)
        for _ in range(24):
            off = int(rng.integers(0, size - 2 * MiB))
            f.seek(off)
            f.write(rng.integers(0, 256, int(rng.integers(1, 2 * MiB)), dtype=np.uint8).tobytes())
    img = folder / "qemu.hds"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "parallels", str(raw), str(img)],
                   check=True, capture_output=True, timeout=120)
    raw.unlink()
    cmds = []
    for i in range(40):
        off = int(rng.integers(0, size - 300 * KiB))
        cmds += ["-c", f"write -P {(i * 37 + 1) % 256} {off} {int(rng.integers(1, 300 * KiB))}"]
    cmds += ["-c", f"write -z {40 * MiB + 5} {3 * MiB}"]
    subprocess.run(["qemu-io", "-f", "parallels", *cmds, str(img)], check=True,
                   capture_output=True, timeout=120)
    return img


def test_qemu_disk_vs_qemu_storage_daemon(mounter: Mounter, tmp_path: Path,
                                          guard_sources: Guard) -> None:
    if not shutil.which("qemu-storage-daemon"):
        pytest.skip("qemu-storage-daemon not installed")
    img = _qemu_made_disk(tmp_path)
    guard_sources(img)
    m = mounter.mount(img)
    export = mounter.root / "qsd-export"
    export.touch()
    qsd, err = mounter.popen([
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file,filename={img},read-only=on",
        "--blockdev", "driver=parallels,node-name=fmt,file=file,read-only=on",
        "--export", f"type=fuse,id=exp,node-name=fmt,mountpoint={export},writable=off"], "qsd")
    wait_until(lambda: is_mounted(export) or qsd.poll() is not None, READY_TIMEOUT, "qsd export")
    assert qsd.poll() is None, err.read_text()

    assert os.path.getsize(m / "disk") == os.path.getsize(export) == 64 * MiB
    assert sha256_file(m / "disk") == sha256_file(export)
    rng = random.Random(5)
    with open(m / "disk", "rb") as a, open(export, "rb") as b:
        for _ in range(300):
            off, n = rng.randrange(64 * MiB), rng.randrange(1, 2 * MiB)
            assert os.pread(a.fileno(), n, off) == os.pread(b.fileno(), n, off), (off, n)

    qsd.send_signal(signal.SIGTERM)
    assert qsd.wait(timeout=EXIT_TIMEOUT) == 0, err.read_text()
    assert not is_mounted(export)
    assert m.error_lines() == []


# -- 4. concurrent random readers on a 4-level chain --------------------------------------------
@dataclass
class Chain:
    folder: Path
    files: list[Path]
    guids: list[str]  # bare, base first
    models: list[bytes]  # each snapshot's virtual disk
    top_clusters: list[int]  # virtual clusters written to the top, in allocation order
    cluster: int


def build_chain(folder: Path, levels: int, nclusters: int, cluster: int, seed: int) -> Chain:
    """Random data: the base gets whole clusters and unaligned partial writes; each delta
    copies up whole clusters (as ploop does), allocated in random order."""
    rng = np.random.default_rng(seed)
    size = nclusters * cluster
    model = np.zeros(size, np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    files, models = [], []
    written: list[int] = []
    for level in range(levels):
        path = folder / ("root.hds" if level == 0 else f"root.hds.{level}")
        written = [int(v) for v in rng.permutation(nclusters)[: nclusters * 3 // 10]]
        with ImageWriter.create(path, size, cluster) as w:
            for v in written:
                data = rng.integers(0, 256, cluster, dtype=np.uint8)
                w.write_cluster(v, data.tobytes())
                model[v * cluster:(v + 1) * cluster] = data
            if level == 0:
                for _ in range(10):
                    off = int(rng.integers(0, size - 3 * cluster))
                    data = rng.integers(0, 256, int(rng.integers(1, 2 * cluster)), dtype=np.uint8)
                    w.write(off, data.tobytes())
                    model[off:off + len(data)] = data
        files.append(path)
        models.append(model.tobytes())
    desc = chain_descriptor([f.name for f in files], size, cluster)
    write_descriptor(folder / "DiskDescriptor.xml", desc)
    return Chain(folder, files, [bare_guid(im.guid) for im in desc.images], models, written,
                 cluster)


def test_concurrent_random_readers(mounter: Mounter, tmp_path: Path,
                                   guard_sources: Guard) -> None:
    """8 threads read random ranges (buffered, some dropping the page cache, some O_DIRECT) of
    every snapshot of a 4-level chain for 3 s; every byte must match the model (which qemu
    confirms first)."""
    ch = build_chain(tmp_path / "chain", 4, 384, 64 * KiB, seed=8)
    for i, model in enumerate(ch.models):
        out = tmp_path / "qemu.raw"
        qemu_to_raw(qemu_json_chain(ch.files[:i + 1]), out)
        assert out.read_bytes() == model, f"model disagrees with qemu at level {i}"
        out.unlink()
    guard_sources(ch.folder)
    m = mounter.mount(ch.folder)
    targets = [(m / "disk", ch.models[-1])] + [
        (m / f"snapshots/{g}/disk", model) for g, model in zip(ch.guids, ch.models, strict=True)]
    size = len(ch.models[0])
    errors: list[str] = []
    counts = [0] * 8
    deadline = time.monotonic() + 3.0

    def reader(idx: int) -> None:
        rng = random.Random(idx)
        direct = idx % 3 == 2
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        fds = [os.open(p, flags) for p, _ in targets]
        try:
            while time.monotonic() < deadline and not errors:
                t = rng.randrange(len(targets))
                fd, model = fds[t], targets[t][1]
                if direct:
                    off, n = rng.randrange(size // 4096) * 4096, rng.randrange(1, 65) * 4096
                    got = pread_direct(fd, off, n)
                else:
                    off = rng.randrange(size + 100)
                    n = rng.choice([1, 17, 4096, 65536, 300_000, rng.randrange(1, 2 * MiB)])
                    if rng.random() < 0.05:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, n, off)
                want = model[off:off + n]
                if got != want:
                    errors.append(f"reader {idx}: {targets[t][0]} [{off}, +{n}): "
                                  f"got {len(got)} bytes, {'' if len(got) == len(want) else 'length '}"
                                  "mismatch")
                counts[idx] += 1
        except Exception as e:
            errors.append(f"reader {idx}: {type(e).__name__}: {e}")
        finally:
            for fd in fds:
                os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert errors == [], errors[:5]
    assert all(counts), counts
    assert m.error_lines() == []
    assert is_mounted(m.mountpoint) and pid_alive(m.pid)


# -- 5. a handler exception is EIO plus a log line, never a dead mount ---------------------------
def test_read_error_is_eio_and_one_log_line(mounter: Mounter, tmp_path: Path,
                                            guard_sources: Guard) -> None:
    ch = build_chain(tmp_path / "chain", 2, 64, 64 * KiB, seed=5)
    top = ch.files[-1]
    guard_sources(ch.files[0], ch.folder / "DiskDescriptor.xml")  # the top is a scratch copy
    m = mounter.mount(ch.folder)
    m.errors_expected = True
    c = ch.cluster
    bad, good = ch.top_clusters[-1], ch.top_clusters[0]  # the last one sits at the end of file
    os.truncate(top, os.path.getsize(top) - c)

    fd = os.open(m / "disk", os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError) as exc:
            pread_direct(fd, bad * c, 4096)
        assert exc.value.errno == errno.EIO
        errors = m.error_lines()
        assert len(errors) == 1, m.log_lines()
        assert top.name in errors[0] and "read" in errors[0], errors[0]
        assert pread_direct(fd, good * c, c) == ch.models[-1][good * c:(good + 1) * c]
    finally:
        os.close(fd)
    with open(m / "disk", "rb") as f, pytest.raises(OSError) as exc:
        os.pread(f.fileno(), 100, bad * c + 10)
    assert exc.value.errno == errno.EIO
    # the mount lives on: other files and snapshots read fine
    assert sha256_file(m / f"snapshots/{ch.guids[0]}/disk") == sha256_of(ch.models[0])
    assert json.loads((m / "info.json").read_bytes())["disk"]["chain_depth"] == 2
    assert is_mounted(m.mountpoint) and pid_alive(m.pid)
    r = mounter.umount(m)
    assert r.returncode == 0, r.stderr
    assert_unmounted_and_exited(m)


# -- 6. signals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_unmounts_and_exits_0(corpus_case: CaseFactory, mounter: Mounter,
                                     sig: signal.Signals) -> None:
    d = corpus_case("v1-chain2")
    m = mounter.mount_fg(d)
    assert sha256_file(m / "disk") == expected_hashes(d)["expected.raw"]
    assert m.proc is not None
    m.proc.send_signal(sig)
    assert m.proc.wait(timeout=EXIT_TIMEOUT) == 0, m.stderr()
    assert not is_mounted(m.mountpoint)
    assert any("unmounted" in ln for ln in m.log_lines()), m.log_lines()
    assert m.error_lines() == [] and m.stderr() == ""


def test_sigterm_background_daemon(corpus_case: CaseFactory, mounter: Mounter) -> None:
    d = corpus_case("v2-single")
    m = mounter.mount(d)
    pidf = mounter.root / f"{m.mountpoint.name}.pid"
    os.kill(m.pid, signal.SIGTERM)
    assert wait_pid_gone(m.pid, EXIT_TIMEOUT)
    assert not is_mounted(m.mountpoint)
    assert not pidf.exists()
    assert m.error_lines() == []


def _read_until_error(path: Path, stop: threading.Event) -> None:
    with contextlib.suppress(OSError), open(path, "rb", buffering=0) as f:
        while not stop.is_set():
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(f.fileno(), 1 << 20, 0)


def test_sigkill_auto_unmount(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """Killed idle, and killed with reads in flight (which is when fusermount3's own
    auto_unmount check sees ECONNABORTED and gives up): the mount must always go away, and
    the same mountpoint must mount again."""
    d = corpus_case("v2-single")
    mnt = mounter.mountpoint()
    for i in range(10):
        m = mounter.mount(d, mnt=mnt)
        assert sha256_file(m / "disk") == expected_hashes(d)["expected.raw"]
        helpers = children(m.pid)
        stop = threading.Event()
        reader = threading.Thread(target=_read_until_error, args=(m / "disk", stop), daemon=True)
        if i % 2:
            reader.start()
        os.kill(m.pid, signal.SIGKILL)
        try:
            wait_until(lambda: not is_mounted(mnt), EXIT_TIMEOUT,
                       f"the mount to go after SIGKILL #{i + 1}")
        finally:
            stop.set()
            if reader.is_alive():
                reader.join(timeout=30)
        for h in helpers:
            assert wait_pid_gone(h, EXIT_TIMEOUT), cmdline(h)
        assert os.listdir(mnt) == []  # an ordinary empty folder again


# -- 7. bad requests ------------------------------------------------------------------------------
BAD_REQUESTS = ["missing mountpoint", "mountpoint is a file", "busy mountpoint", "missing source",
                "garbage source", "unknown snapshot", "not a guid", "--files without ext4",
                "unknown FUSE option", "bad number option"]


@pytest.mark.parametrize("what", BAD_REQUESTS)
def test_bad_mount_request(corpus_case: CaseFactory, mounter: Mounter, what: str) -> None:
    d = corpus_case("v1-chain2")
    src: Path = d / "DiskDescriptor.xml"
    mnt = mounter.mountpoint("target")
    extra: list[str] = []
    first: Mount | None = None
    code, needle = int(ExitCode.MOUNT), str(mnt)
    if what == "missing mountpoint":
        mnt = mnt / "nonexistent"
        needle = str(mnt)
    elif what == "mountpoint is a file":
        mnt = mnt / "file"
        mnt.write_bytes(b"x")
        needle = str(mnt)
    elif what == "busy mountpoint":
        first = mounter.mount(src, mnt=mnt)
    elif what == "missing source":
        src, code, needle = d / "nope.xml", int(ExitCode.NOT_FOUND), "nope.xml"
    elif what == "garbage source":
        src = mounter.root / "garbage.img"
        src.write_bytes(bytes(range(256)) * 64)
        code, needle = int(ExitCode.BAD_IMAGE), "garbage.img"
    elif what == "unknown snapshot":
        extra, code, needle = (["--snapshot", "11111111-2222-3333-4444-555555555555"],
                               int(ExitCode.NOT_FOUND), "11111111-2222-3333-4444-555555555555")
    elif what == "not a guid":
        extra, code, needle = ["--snapshot", "latest"], int(ExitCode.NOT_FOUND), "latest"
    elif what == "--files without ext4":
        extra, needle = ["--files"], "ext2/3/4"
    elif what == "unknown FUSE option":
        extra, needle = ["-o", "allow_other,no_such_option"], "no_such_option"
    else:
        extra, code, needle = ["-o", "uid=root"], int(ExitCode.USAGE), "uid=root"
    before = [e.point for e in mounts_under(mounter.root)]
    r = mounter.run("mount", src, mnt, *extra, "--log-file", mounter.root / "bad.log",
                    "--pid-file", mounter.root / "bad.pid")
    check_one_line_error(r, code, needle)
    assert [e.point for e in mounts_under(mounter.root)] == before, "stale mount"
    assert not (mounter.root / "bad.pid").exists()
    # no leftover daemon (one that failed after forking exits right after reporting)
    ours = {first.pid, *children(first.pid)} if first is not None else set()
    wait_until(lambda: set(ploopfs_processes(mnt)) <= ours, EXIT_TIMEOUT, "no leftover daemon")
    if first is not None:  # the existing mount is untouched and still served
        assert sha256_file(first / "disk") == expected_hashes(d)["expected.raw"]
        assert pid_alive(first.pid)


def test_umount_errors(mounter: Mounter) -> None:
    empty = mounter.mountpoint("idle")
    check_one_line_error(mounter.run("umount", empty), int(ExitCode.MOUNT), str(empty),
                         "not mounted")
    check_one_line_error(mounter.run("umount", empty / "missing"), int(ExitCode.MOUNT),
                         "not mounted")


def test_umount_busy_then_lazy(corpus_case: CaseFactory, mounter: Mounter) -> None:
    d = corpus_case("v2-single")
    m = mounter.mount(d)
    want = expected_hashes(d)["expected.raw"]
    with open(m / "disk", "rb") as f:
        busy = mounter.umount(m)
        check_one_line_error(busy, int(ExitCode.MOUNT), str(m.mountpoint), "-z")
        assert is_mounted(m.mountpoint) and pid_alive(m.pid)
        lazy = subprocess.Popen([str(PLOOPFS), "umount", "-z", str(m.mountpoint)],
                                env=mounter.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: not is_mounted(m.mountpoint), EXIT_TIMEOUT, "lazy unmount")
            # detached from the tree, still served to the open file
            assert sha256_of(f.read()) == want
        finally:
            f.close()
            _, err = lazy.communicate(timeout=30)
    assert lazy.returncode == 0, err
    assert wait_pid_gone(m.pid, EXIT_TIMEOUT), "daemon survived the last close after umount -z"


# -- 8. options ------------------------------------------------------------------------------------
def _read_as_nobody(mnt: Path, rel: str) -> subprocess.CompletedProcess[bytes]:
    """`cat` as uid/gid 65534 through a directory fd (the test's tmp folders are 0700)."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "cat", f"/proc/self/fd/{fd}/{rel}"], pass_fds=(fd,),
                              capture_output=True, timeout=30, check=False)
    finally:
        os.close(fd)


@needs_root
def test_uid_gid_and_allow_other(corpus_case: CaseFactory, mounter: Mounter) -> None:
    d = corpus_case("v1-chain2")
    plain = mounter.mount(d, name="plain")
    denied = _read_as_nobody(plain.mountpoint, "info.json")
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr

    m = mounter.mount(d, "-o", "uid=1234,gid=5678", "-o", "allow_other", name="other")
    entry = mount_entry(m.mountpoint)
    assert entry is not None and "allow_other" in entry.options
    for dirpath, dirnames, filenames in os.walk(m.mountpoint):
        for p in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            st = os.stat(p)
            assert (st.st_uid, st.st_gid) == (1234, 5678), p
    ok = _read_as_nobody(m.mountpoint, "info.json")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (m / "info.json").read_bytes()
    assert m.error_lines() == []


def _bdi_readahead(m: Mount) -> int:
    entry = mount_entry(m.mountpoint)
    assert entry is not None
    return int(Path(f"/sys/class/bdi/{entry.dev}/read_ahead_kb").read_text())


@needs_root
def test_readahead_and_direct_io(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """As root the mount's BDI readahead is raised (1024 KiB by default, --readahead KB);
    --direct-io serves the same bytes past the page cache."""
    d = corpus_case("plain-base-chain3")
    want = expected_hashes(d)["expected.raw"]
    default = mounter.mount(d, name="ra_default")
    assert _bdi_readahead(default) == 1024
    custom = mounter.mount(d, "--readahead", "512", name="ra_512")
    assert _bdi_readahead(custom) == 512
    direct = mounter.mount(d, "--direct-io", "-o", "readahead=256", name="dio")
    assert _bdi_readahead(direct) == 256
    for m in (default, custom, direct):
        assert sha256_file(m / "disk") == want
    fd = os.open(direct / "disk", os.O_RDONLY)
    try:  # unaligned, odd-sized reads through direct_io
        size = os.fstat(fd).st_size
        whole = b"".join(os.pread(fd, 1_000_003, off) for off in range(0, size, 1_000_003))
    finally:
        os.close(fd)
    assert sha256_of(whole) == want


def _shared_map_errno(path: Path) -> int | None:
    """None when a shared read-only mapping of `path` works, else its errno (the kernel refuses
    one of a direct_io file with ENODEV: FUSE_DIRECT_IO_ALLOW_MMAP is not negotiated)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ).close()
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def _private_map_head(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ) as mm:
            return mm[:4096]
    finally:
        os.close(fd)


def test_caching_modes(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """By default disk and partN are direct_io (a shared mapping is refused with ENODEV, a
    private one reads the right bytes) and the files inside go through the page cache (a shared
    mapping works); --page-cache (-o page_cache) puts disk and partN through it too, --direct-io
    takes the files out of it; both at once are a usage error and mount nothing. Every mode
    reads the same bytes, and the daemon waits for requests with its poll() shortcut (no log
    line saying it could not)."""
    d = corpus_case("ext4-gpt-chain2")
    want = expected_hashes(d)["expected.raw"]
    modes = {"default": (), "page": ("--page-cache",), "page_o": ("-o", "page_cache"),
             "dio": ("--direct-io",)}
    mounts = {name: mounter.mount(d, *args, name=f"cache_{name}") for name, args in modes.items()}
    for name, m in mounts.items():
        disk_cached = name in ("page", "page_o")
        assert sha256_file(m / "disk") == want, name
        for rel in ("disk", "part1"):
            assert _shared_map_errno(m / rel) == (None if disk_cached else errno.ENODEV), (name, rel)
            with open(m / rel, "rb") as f:
                assert _private_map_head(m / rel) == f.read(4096), (name, rel)
        inside = next(p for p in sorted((m / "files").rglob("*"))
                      if p.is_file() and not p.is_symlink() and p.stat().st_size >= 4096)
        assert _shared_map_errno(inside) == (errno.ENODEV if name == "dio" else None), name
        assert not any("request wait" in ln for ln in m.log_lines()), name
        assert m.error_lines() == []
    bad = mounter.mountpoint("cache_both")
    r = mounter.run("mount", "--direct-io", "--page-cache", d, bad)
    assert r.returncode == 64 and "exclude each other" in r.stderr, r.stderr
    assert not is_mounted(bad)


def test_diff_of_mounted_disks(corpus_case: CaseFactory, mounter: Mounter, tmp_path: Path) -> None:
    """`ploopfs diff` of the `disk` files of a mount (raw sources, read through FUSE: mapped,
    or copied where --direct-io refuses a shared mapping), against the descriptor and against
    each other: the changed clusters are those whose bytes differ, and `rdiff patch` of the
    delta onto the mounted base snapshot gives the top's expected bytes."""
    d = corpus_case("ext4-gpt-chain2")
    want = snapshot_hashes(d)
    meta = case_meta(d)
    top = bare_guid(meta["top_guid"])
    base = next(g for g in want if g != top)
    c = meta["ddxml_blocksize_sectors"] * 512
    for args, name in (((), "plain"), (("--direct-io",), "dio")):
        m = mounter.mount(d, *args, name=name)
        old, new = m / f"snapshots/{base}/disk", m / "disk"
        ob, nb = old.read_bytes(), new.read_bytes()
        assert (sha256_of(ob), sha256_of(nb)) == (want[base], want[top])
        truth = [k for k in range(-(-len(nb) // c)) if ob[k * c:(k + 1) * c] != nb[k * c:(k + 1) * c]]
        assert truth  # the snapshot changed something
        out = tmp_path / f"{name}.json"
        r = mounter.run("diff", old, d, "-o", out, "-f", "json", "--hash", "sha256")
        assert r.returncode == 0, r.stderr
        doc = json.loads(out.read_text())
        got = [k for rg in doc["ranges"] for k in range(rg["cluster"], rg["cluster"] + rg["clusters"])]
        assert got == truth and doc["cluster_size"] == c
        assert (doc["old"]["sha256"], doc["new"]["sha256"]) == (want[base], want[top])
        delta, patched = tmp_path / f"{name}.rdiff", tmp_path / f"{name}.raw"
        r = mounter.run("diff", old, new, "-o", delta, "-f", "rdiff", "--cluster-size", str(c))
        assert r.returncode == 0, r.stderr
        subprocess.run(["rdiff", "patch", str(old), str(delta), str(patched)], check=True,
                       capture_output=True, timeout=120)
        assert sha256_file(patched) == want[top]
        assert m.error_lines() == []


# -- 9. mount.fuse3 and fstab ---------------------------------------------------------------------
def test_mount_helper_form(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """What mount.fuse3 runs: `ploopfs SOURCE MOUNTPOINT -o OPTIONS`, with mount(8)-isms
    (dev, suid, nofail, x-…) in OPTIONS; also mount.fuse3 itself, finding ploopfs on PATH."""
    d = corpus_case("v1-chain2")
    hashes = snapshot_hashes(d)
    base = next(g for g in hashes if g != bare_guid(case_meta(d)["top_guid"]))
    for i, runner in enumerate(([str(PLOOPFS)], ["mount.fuse3"])):
        mnt = mounter.mountpoint(f"helper{i}")
        pidf = mounter.root / f"helper{i}.pid"
        args = [d / "DiskDescriptor.xml", mnt]
        if runner == ["mount.fuse3"]:
            args += ["-t", "fuse.ploopfs"]
        r = mounter.run(*args, "-o", f"ro,dev,suid,nofail,x-systemd.device-timeout=5,"
                                     f"snapshot={base},pid_file={pidf}", cmd=runner)
        if pidf.exists():
            mounter.pids.append(int(pidf.read_text()))
        assert r.returncode == 0, r.stderr
        assert sha256_file(mnt / "disk") == hashes[base]
        assert mounter.run("umount", mnt).returncode == 0
        assert not is_mounted(mnt)


FSTAB_SCRIPT = """\
set -eu
mount --bind "$SHIM" /usr/local/sbin   # ploopfs on the PATH mount(8) gives its helpers
mount -t fuse.ploopfs "$SRC" "$MNT1" -o "ro,snapshot=$GUID"
sha256sum "$MNT1/disk" | cut -d' ' -f1 > "$OUT/1.sha"
grep -c " $MNT1 " /proc/self/mountinfo > "$OUT/1.count"
umount "$MNT1"
mount -T "$FSTAB" "$MNT2"
sha256sum "$MNT2/disk" | cut -d' ' -f1 > "$OUT/2.sha"
stat -c '%u %g %a' "$MNT2/disk" > "$OUT/2.stat"
"$PLOOPFS" umount "$MNT2"
cat /proc/self/mountinfo > "$OUT/end.mountinfo"
"""


@needs_root
def test_fstab_mount_in_private_namespace(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """mount(8) strips PATH before running mount.fuse3, which then looks `ploopfs` up on /bin/sh's
    default PATH; in a private mount namespace /usr/local/sbin is bind-mounted over a folder
    holding ploopfs, so the real `mount -t fuse.ploopfs` and an fstab line (`mount -T FILE`)
    run unmodified, and the host's /etc/fstab and /usr stay untouched."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not installed")
    d = corpus_case("v1-chain2")
    hashes = snapshot_hashes(d)
    top = bare_guid(case_meta(d)["top_guid"])
    base = next(g for g in hashes if g != top)
    shim = mounter.root / "shim"
    shim.mkdir()
    (shim / "ploopfs").symlink_to(PLOOPFS)
    out = mounter.root / "out"
    out.mkdir()
    mnt1, mnt2 = mounter.mountpoint("fstab1"), mounter.mountpoint("fstab2")
    fstab = mounter.root / "fstab"
    fstab.write_text(f"# test fstab\n{d / 'DiskDescriptor.xml'} {mnt2} fuse.ploopfs "
                     f"ro,snapshot={{{top.upper()}}},allow_other,uid=4321,gid=8765,nofail 0 0\n")
    script = mounter.root / "fstab.sh"
    script.write_text(FSTAB_SCRIPT)
    env = dict(mounter.env, SHIM=str(shim), SRC=str(d / "DiskDescriptor.xml"), MNT1=str(mnt1),
               MNT2=str(mnt2), GUID=base, FSTAB=str(fstab), OUT=str(out), PLOOPFS=str(PLOOPFS))
    r = subprocess.run(["unshare", "--mount", "--propagation", "slave", "sh", str(script)],
                       env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert (out / "1.sha").read_text().strip() == hashes[base]
    assert (out / "1.count").read_text().strip() == "1"
    assert (out / "2.sha").read_text().strip() == hashes[top]
    assert (out / "2.stat").read_text().split() == ["4321", "8765", "444"]
    points = [ln.split()[4] for ln in (out / "end.mountinfo").read_text().splitlines()]
    assert not [p for p in points if p.startswith(str(mounter.root))], "stale mount in namespace"
    # the daemons ran in the namespace; they end with their mounts
    wait_until(lambda: mounter.own_pids() == [], EXIT_TIMEOUT,
               "namespace daemons to exit")
