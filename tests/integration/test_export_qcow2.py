"""`ploopfs export -f qcow2` (docs/formats.md, "qcow2 output"), checked by qemu-img: every file
passes `qemu-img check`, compares identical to ploopfs's raw export of the same snapshot, holes
stay unallocated, and with --keep-snapshots the files form the chain, each level equal to its
snapshot. Over every corpus case and over ImageWriter chains with odd cluster sizes."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from ploopfs.errors import OutputError
from ploopfs.format import qcow2
from ploopfs.services.export import QCOW2_CLUSTER, export_qcow2, qcow2_name
from ploopfs.volume import fileio
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor
from tests.conftest import CORPUS_CASES, run_cli

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
Q = QCOW2_CLUSTER


def qemu(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


def cli_ok(*args: str | os.PathLike[str]) -> str:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def check_clean(path: Path) -> None:
    r = qemu("check", "--output=json", path)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    for key in ("corruptions", "leaks", "check-errors"):
        assert rep.get(key, 0) == 0, (key, rep)


def same(qcow: Path, raw: Path) -> None:
    r = qemu("compare", "-f", "qcow2", "-F", "raw", qcow, raw)
    assert r.returncode == 0, r.stdout + r.stderr


def data_ranges(path: Path, own_only: bool = True) -> list[tuple[int, int]]:
    """(start, end) of what `qemu-img map` says is data stored in `path` itself."""
    r = qemu("map", "--output=json", path)
    assert r.returncode == 0, r.stderr
    return [(e["start"], e["start"] + e["length"]) for e in json.loads(r.stdout)
            if e["data"] and (not own_only or e["depth"] == 0)]


def covered(inner: list[tuple[int, int]], outer: list[tuple[int, int]]) -> bool:
    return all(any(a <= s and e <= b for a, b in outer) for s, e in inner)


def rounded(pieces: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Byte pieces widened to whole qcow2 clusters (and merged)."""
    out: list[list[int]] = []
    for s, n in sorted(pieces):
        if n <= 0:
            continue
        a, b = s // Q * Q, min(-(-(s + n) // Q) * Q, -(-size // Q) * Q)
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def level_pieces(src: Path, guid: str, level: int) -> list[tuple[int, int]]:
    with open_source(src) as disk:
        vol = disk.volume(guid)
        if level == 0 and vol.raw_base:
            return [(0, vol.raw_end())]
        c = vol.cluster_size
        return [(e.vstart * c, e.count * c) for e in vol.map.extents() if e.level == level]


def chain_guids(src: Path) -> list[str]:
    with open_source(src) as disk:
        return [e.guid for e in disk.chain()]


def verify(src: Path, tmp: Path) -> None:
    """Single file and --keep-snapshots exports of `src` (its top), every level checked."""
    guids = chain_guids(src)
    tmp.mkdir()
    raws = {}
    for g in guids:
        raws[g] = tmp / f"{qcow2_name(g)}.raw"
        cli_ok("export", "--no-progress", "-s", g, src, raws[g])

    one = tmp / "one.qcow2"
    cli_ok("export", "-f", "qcow2", "--no-progress", src, one)
    check_clean(one)
    same(one, raws[guids[-1]])
    with open_source(src) as disk:
        vol = disk.volume()
        stored = rounded(vol.stored_ranges(), vol.size)
    assert covered(data_ranges(one), stored)
    head = one.read_bytes()[:Q]
    h = qcow2.decode_header(head)
    assert (h["version"], h["cluster_bits"], h["backing_file_offset"]) == (3, 16, 0)

    out = tmp / "chain"
    printed = cli_ok("export", "-f", "qcow2", "--keep-snapshots", "--no-progress", src, out)
    top = out / qcow2_name(guids[-1])
    assert printed.strip() == str(top)
    assert sorted(os.listdir(out)) == sorted(qcow2_name(g) for g in guids)
    info = qemu("info", "--backing-chain", "--output=json", top)
    assert info.returncode == 0, info.stderr
    chain = json.loads(info.stdout)
    assert [Path(c["filename"]).name for c in chain] == [qcow2_name(g) for g in reversed(guids)]
    for lv, g in enumerate(guids):
        f = out / qcow2_name(g)
        check_clean(f)
        same(f, raws[g])
        node = chain[len(guids) - 1 - lv]
        if lv:
            assert node["backing-filename"] == qcow2_name(guids[lv - 1])
            assert node.get("backing-filename-format") == "qcow2"
        else:
            assert "backing-filename" not in node
        with open_source(src) as disk:
            size = disk.volume(g).size
        assert covered(data_ranges(f), rounded(level_pieces(src, g, lv), size))


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus(case: str, corpus_case, tmp_path: Path) -> None:
    src = corpus_case(case)
    verify(src, tmp_path / "out")


def test_corpus_older_snapshot(corpus_case, tmp_path: Path) -> None:
    """-s picks the snapshot: the chain stops there."""
    src = corpus_case("plain-base-chain3")
    guids = chain_guids(src)
    raw = tmp_path / "mid.raw"
    cli_ok("export", "--no-progress", "-s", guids[1], src, raw)
    one = tmp_path / "mid.qcow2"
    cli_ok("export", "-f", "qcow2", "--no-progress", "-s", guids[1], src, one)
    check_clean(one)
    same(one, raw)
    out = tmp_path / "d"
    cli_ok("export", "-f", "qcow2", "--keep-snapshots", "--no-progress", "-s", guids[1], src, out)
    assert sorted(os.listdir(out)) == sorted(qcow2_name(g) for g in guids[:2])
    same(out / qcow2_name(guids[1]), raw)


def build_chain(folder: Path, c: int, nclusters: int) -> None:
    """base, mid, top with cluster size `c`: random data, mapped zero clusters, and in mid a
    256 KiB run of zeros written over the base's data (must become qcow2 zero clusters)."""
    rng = random.Random(c)
    size = nclusters * c
    folder.mkdir()

    def rnd(n: int) -> bytes:
        return rng.randbytes(n)

    region = (size // 3) // c * c  # base data, then zeroed by mid
    span = -(-(256 << 10) // c) * c + 2 * Q
    with ImageWriter.create(folder / "base.hdd", size, c, 2) as w:
        w.write(0, rnd(3 * c))
        w.write(region, rnd(span))
        w.write(size - c, bytes(c))  # a mapped all-zero cluster
    with ImageWriter.create(folder / "mid.hdd", size, c, 2) as w:
        w.write(region, bytes(span))
        w.write(c, rnd(c))
        w.write(size // 2 // c * c, rnd(2 * c))
    with ImageWriter.create(folder / "top.hdd", size, c, 2) as w:
        w.write(2 * c, rnd(c))
        w.write(size - c, rnd(c // 2) + bytes(c // 2))
        w.write(region + c, bytes(c))
    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["base.hdd", "mid.hdd", "top.hdd"], size, c))


@pytest.mark.parametrize(("c", "nclusters"), [(1536, 700), (4096, 300), (Q, 40), (3 << 19, 9),
                                              (2 << 20, 5)])
def test_odd_cluster_sizes(tmp_path: Path, guard_sources, c: int, nclusters: int) -> None:
    src = tmp_path / "src"
    build_chain(src, c, nclusters)
    guard_sources(src)
    verify(src, tmp_path / "out")


def test_zero_over_parent_is_zero_cluster(tmp_path: Path) -> None:
    """mid's zeros over base data are zero clusters in mid's file (else the base shows)."""
    src = tmp_path / "src"
    build_chain(src, 4096, 300)
    out = tmp_path / "d"
    cli_ok("export", "-f", "qcow2", "--keep-snapshots", "--no-progress", src, out)
    mid = out / qcow2_name(chain_guids(src)[1])
    r = qemu("map", "--output=json", mid)
    zero_own = [e for e in json.loads(r.stdout) if e["zero"] and e["depth"] == 0]
    assert sum(e["length"] for e in zero_own) >= 256 << 10


def test_failure_removes_partial_output(tmp_path: Path, corpus_case) -> None:
    src = corpus_case("ext4-gpt-chain2")

    def boom(done: int) -> None:
        raise OSError(28, "No space left on device")

    out = tmp_path / "x.qcow2"
    with open_source(src) as disk, pytest.raises(OSError):
        export_qcow2(disk, str(out), progress=boom)
    assert not out.exists()
    folder = tmp_path / "xd"
    with open_source(src) as disk, pytest.raises(OSError):
        export_qcow2(disk, str(folder), progress=boom, keep_snapshots=True)
    assert not folder.exists()


def test_refusals(tmp_path: Path, corpus_case) -> None:
    src = corpus_case("v2-single")
    out = tmp_path / "a.qcow2"
    cli_ok("export", "-f", "qcow2", "--no-progress", src, out)
    r = run_cli("export", "-f", "qcow2", "--no-progress", src, out)
    assert r.returncode != 0 and b"already exists" in r.stderr
    cli_ok("export", "-f", "qcow2", "--force", "--no-progress", src, out)  # own output
    check_clean(out)
    for bad in (["-f", "qcow2", src, "-"], ["--keep-snapshots", src, tmp_path / "k"],
                ["-f", "qcow2", "--keep-snapshots", "--force", src, tmp_path / "k"]):
        r = run_cli("export", "--no-progress", *bad)
        assert r.returncode == 64, r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"x")
    r = run_cli("export", "-f", "qcow2", "--keep-snapshots", src, tmp_path / "full")
    assert r.returncode != 0
    assert os.listdir(tmp_path / "full") == ["x"]
    with open_source(src) as disk, pytest.raises(OutputError):
        export_qcow2(disk, str(src / "root.hdd"))  # a source is never an output
    assert not fileio.created(src / "root.hdd")


def test_json_report(tmp_path: Path, corpus_case) -> None:
    src = corpus_case("v1-chain2")
    rep = json.loads(cli_ok("export", "-f", "qcow2", "--json", "--no-progress", src,
                            tmp_path / "a.qcow2"))
    assert rep["format"] == "qcow2" and "files" not in rep
    assert rep["data_bytes_written"] > 0
    rep = json.loads(cli_ok("export", "-f", "qcow2", "--keep-snapshots", "--json",
                            "--no-progress", src, tmp_path / "d"))
    assert rep["output"] == rep["files"][-1] and len(rep["files"]) == 2


def test_write_paths_give_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's three ways to the file (volume/qcow2writer.py) give byte-identical files:
    O_DIRECT (where this filesystem allows it), a filesystem that refuses O_DIRECT writes
    (EINVAL on each: the writer falls back to ordinary writes), and ordinary writes."""
    from ploopfs.volume import qcow2writer

    src = tmp_path / "src"
    build_chain(src, 4096, 300)

    def export(name: str) -> list[bytes]:
        out = tmp_path / name
        with open_source(src) as disk:
            export_qcow2(disk, str(out), keep_snapshots=True)
        files = [out / qcow2_name(g) for g in chain_guids(src)]
        for f in files:
            check_clean(f)
        return [f.read_bytes() for f in files]

    direct = export("direct")
    real_pwrite = os.pwrite

    def refusing(fd: int, data: bytes | memoryview, off: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")
        return real_pwrite(fd, data, off)

    monkeypatch.setattr(qcow2writer.os, "pwrite", refusing)
    refused = export("refused")
    monkeypatch.undo()
    monkeypatch.setattr(qcow2writer, "_set_direct", lambda fd, on: False)
    plain = export("plain")
    assert direct == refused == plain


def test_writer_unaligned_data(tmp_path: Path) -> None:
    """write_data of an unaligned buffer (bytes) under O_DIRECT goes through the staging copy
    and leaves O_DIRECT on; data from buffer() is written as it is."""
    from ploopfs.volume.qcow2writer import Qcow2Writer

    rng = random.Random(7)
    out = tmp_path / "w.qcow2"
    w = Qcow2Writer.create(out, 64 * Q)
    was_direct = w.direct
    a = rng.randbytes(3 * Q)
    buf = w.buffer(2 * Q)
    b = rng.randbytes(2 * Q)
    buf[:] = b
    w.write_data(1, a)
    w.write_zero(5, 2)
    w.write_data(9, buf)
    assert w.direct == was_direct
    w.close()
    check_clean(out)
    raw = tmp_path / "w.raw"
    with raw.open("wb") as f:
        f.truncate(64 * Q)
        f.seek(Q)
        f.write(a)
        f.seek(9 * Q)
        f.write(b)
    same(out, raw)


def test_write_failure_on_the_writer_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            corpus_case) -> None:
    """A data write that fails on the writer's thread (ENOSPC) ends the export with an
    OutputError naming the file, and the partial output is removed."""
    from ploopfs.volume import qcow2writer

    src = corpus_case("ext4-gpt-chain2")
    real_pwrite = os.pwrite

    def full(fd: int, data: bytes | memoryview, off: int) -> int:
        if off > 4 * Q:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, off)

    monkeypatch.setattr(qcow2writer.os, "pwrite", full)
    out = tmp_path / "x.qcow2"
    with open_source(src) as disk, pytest.raises(OutputError, match="No space left"):
        export_qcow2(disk, str(out))
    assert not out.exists()
