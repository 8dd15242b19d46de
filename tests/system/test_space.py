"""`ploopfs du`, `ploopfs compact` and the filesystem usage of `info` (issue #6 parts 1-3).

Disks are built with real tools: mkfs.ext4 -d (populated without mounting), debugfs -w rm
(deleted files whose blocks stay in the image), sgdisk (GPT) or a hand-written MBR, and
`qemu-img convert -O parallels`. The figures are checked against independent readers:
dumpe2fs (per-group free block ranges, which libext2fs computes for BLOCK_UNINIT groups
itself), `qemu-img map` (which clusters are allocated), statfs of the filesystem mounted
read-only through a kernel loop device; compact output against e2fsck -fn, a kernel loop mount
of its partition (hash of every file), `ploopfs check` and `qemu-img check`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_json, qemu_json_chain, qemu_to_raw, run_cli

MiB = 1 << 20
C = MiB  # ploop cluster size used throughout


def sh(*args: str | os.PathLike[str], **kw: object) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300, **kw).stdout  # type: ignore[call-overload]


# -- building disks ----------------------------------------------------------------------------
def populate(src: Path, seed: int, nfiles: int = 30, big_mb: int = 24) -> None:
    rnd = random.Random(seed)
    (src / "d").mkdir(parents=True)
    for i in range(nfiles):
        (src / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(1, 600_000)))
    (src / "d" / "big").write_bytes(rnd.randbytes(big_mb * MiB))
    (src / "d" / "big2").write_bytes(rnd.randbytes(8 * MiB))
    (src / "d" / "small").write_text("hello\n")


def make_fs(tmp: Path, size_mb: int, opts: list[str], seed: int = 1, rm: tuple[str, ...] = (
        "/d/big",)) -> Path:
    """An ext4 image file populated from a random tree, then files removed with debugfs."""
    src = tmp / f"src{seed}"
    populate(src, seed)
    fs = tmp / f"fs{seed}.raw"
    sh("truncate", "-s", f"{size_mb}M", fs)
    sh("mkfs.ext4", "-q", "-F", *opts, "-d", src, fs)
    deleted = []
    for p in rm:
        deleted += [int(b) for b in sh("debugfs", "-R", f"blocks {p}", fs).split()]
        sh("debugfs", "-w", "-R", f"rm {p}", fs)
    DELETED[fs] = deleted
    return fs


DELETED: dict[Path, list[int]] = {}  # data blocks of the files make_fs removed


def gpt_disk(tmp: Path, fs: Path, name: str = "disk.raw") -> tuple[Path, int]:
    """fs at 1 MiB in a GPT disk with one spare cluster at the end (the ploop init layout, format.md §8.1)."""
    disk = tmp / name
    size = os.path.getsize(fs)
    sh("truncate", "-s", str(size + 2 * MiB), disk)
    sh("sgdisk", "-o", "-n", f"1:2048:+{size // 1024}K", disk)
    sh("dd", f"if={fs}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    return disk, MiB


def mbr_disk(tmp: Path, parts: list[tuple[Path | bytes, int]], total: int) -> Path:
    """An MBR disk: each part (file or bytes, partition size in bytes) placed at the next MiB."""
    disk = tmp / "mbr.raw"
    sh("truncate", "-s", str(total), disk)
    mbr = bytearray(512)
    pos = MiB
    with open(disk, "r+b") as f:
        for i, (data, size) in enumerate(parts):
            struct.pack_into("<B3sB3sII", mbr, 446 + 16 * i, 0, b"\0\0\0",
                             0x83, b"\0\0\0", pos // 512, size // 512)
            if isinstance(data, Path):
                sh("dd", f"if={data}", f"of={disk}", "bs=1M", f"seek={pos // MiB}",
                   "conv=notrunc,sparse", "status=none")
            else:
                f.seek(pos)
                f.write(data)
            pos += -(-size // MiB) * MiB
        mbr[510:512] = b"\x55\xaa"
        f.seek(0)
        f.write(mbr)
    return disk


def to_ploop(raw: Path, folder: Path) -> Path:
    """A one-image ploop disk (qemu-img convert) with its DiskDescriptor.xml."""
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    folder.mkdir(parents=True, exist_ok=True)
    img = folder / "root.hdd"
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, img)
    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], os.path.getsize(raw), C))
    return folder


# -- independent readers -----------------------------------------------------------------------
def dumpe2fs_used(fs: Path, offset: int = 0) -> tuple[dict[str, int], np.ndarray]:
    """`dumpe2fs -h` fields and the used-block booleans from dumpe2fs's per-group free ranges."""
    spec = f"{fs}?offset={offset}" if offset else str(fs)
    out = sh("dumpe2fs", spec)
    head = {k: int(v) for k, v in re.findall(r"^(Block count|Free blocks|Free inodes|Inode count|"
                                             r"Block size|First block|Reserved block count):"
                                             r"\s+(\d+)$", out, re.M)}
    n = head["Block count"]
    free = np.zeros(n, bool)
    for m in re.finditer(r"^\s+Free blocks: (.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in m.group(1).split(","))):
            a, _, b = part.partition("-")
            free[int(a):int(b or a) + 1] = True
    used = ~free
    used[: head["First block"]] = False  # the boot block of a 1 KiB-block fs: in no group
    return head, used


def qemu_mapped(img: str, size: int) -> np.ndarray:
    """Clusters qemu reports as data (allocated in some image of the chain)."""
    args = ["qemu-img", "map", "--output=json", img]
    if not img.startswith("json:"):
        args[3:3] = ["-f", "parallels"]
    mapped = np.zeros(-(-size // C), bool)
    for e in json.loads(sh(*args)):
        if e["data"]:
            mapped[e["start"] // C: -(-(e["start"] + e["length"]) // C)] = True
    return mapped


def expected_clusters(used_blocks: np.ndarray, bs: int, fs_start: int, first_block: int,
                      nclusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(analysed, used) per cluster, by the definition in docs/space.md: clusters wholly inside
    the fs (from its first data block on); used if one used block overlaps them."""
    analysed = np.zeros(nclusters, bool)
    a = -(-(fs_start + first_block * bs) // C)
    b = (fs_start + used_blocks.size * bs) // C
    analysed[a:b] = True
    used = np.zeros(nclusters, bool)
    idx = np.flatnonzero(used_blocks)
    used[(fs_start + idx * bs) // C] = True
    used[(fs_start + idx * bs + bs - 1) // C] = True
    return analysed, used & analysed


@contextmanager
def mounted(raw: Path, offset: int, mnt: Path) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    sh("mount", "-t", "ext4", "-o", f"ro,loop,noload,offset={offset}", raw, mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def file_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fs_hashes(raw: Path, offset: int, mnt: Path) -> dict[str, str]:
    with mounted(raw, offset, mnt) as m:
        return file_hashes(m)


def partition_copy(raw: Path, offset: int, size: int, out: Path) -> Path:
    sh("dd", f"if={raw}", f"of={out}", "bs=1M", f"skip={offset // MiB}",
       f"count={size // MiB}", "conv=sparse", "status=none")
    return out


def check_compact_output(out: Path, tmp: Path) -> Path:
    """ploopfs check and qemu-img check clean; returns the output exported to raw by qemu."""
    assert run_cli("check", out).returncode == 0
    sh("qemu-img", "check", "-f", "parallels", out / "root.hds")
    raw = tmp / f"{out.name}.raw"
    qemu_to_raw(str(out / "root.hds"), raw)
    return raw


def du(src: Path, *extra: str) -> dict:
    return cli_json("du", src, "--json", *extra)


# -- tests -------------------------------------------------------------------------------------
FS_VARIANTS = {  # (size MiB, mkfs options)
    # 64bit, flex_bg, metadata_csum, BLOCK_UNINIT groups (lazy init): the mkfs default
    "default": (640, ["-b", "4096"]),
    "32bit-noflex": (160, ["-b", "4096", "-g", "4096", "-O", "^64bit,^flex_bg,^metadata_csum"]),
    "32bit-flex": (160, ["-b", "4096", "-g", "4096", "-O", "^64bit"]),
    "meta_bg": (160, ["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"]),
    "1k-blocks": (160, ["-b", "1024", "-g", "4096"]),
}


@pytest.mark.parametrize("variant", list(FS_VARIANTS))
def test_du_and_compact_match_e2fsprogs(variant: str, tmp_path: Path, guard_sources) -> None:
    fs = make_fs(tmp_path, *FS_VARIANTS[variant])
    head, used_blocks = dumpe2fs_used(fs)
    bs = head["Block size"]
    before = fs_hashes(fs, 0, tmp_path / "mnt")
    disk, start = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    r = du(src)
    [f] = r["filesystems"]
    assert f["where"] == "part1" and f["kind"] == "ext4" and f["findings"] == []
    assert f["block_size"] == bs
    assert f["blocks"]["total"] == head["Block count"]
    assert f["blocks"]["free"] == head["Free blocks"]
    assert f["blocks"]["reserved"] == head["Reserved block count"]
    assert f["inodes"]["total"] == head["Inode count"]
    assert f["inodes"]["free"] == head["Free inodes"]
    if variant == "default":
        assert f["block_uninit_groups"] > 0 and "flex_bg" in f["features"]
    if variant == "32bit-noflex":
        assert "64bit" not in f["features"] and "flex_bg" not in f["features"]
    if variant == "meta_bg":
        assert "meta_bg" in f["features"] and f["groups"] > 64
    n = -(-os.path.getsize(disk) // C)
    mapped = qemu_mapped(str(src / "root.hdd"), os.path.getsize(disk))
    analysed, used = expected_clusters(used_blocks, bs, start, head["First block"], n)
    fc = f["clusters"]
    assert fc["used"] == int(used.sum())
    assert fc["mapped"] == int((mapped & analysed).sum())
    assert fc["wasted"] == int((mapped & analysed & ~used).sum())
    assert r["clusters"]["mapped"] == int(mapped.sum())
    keep = mapped & (~analysed | used)
    assert r["clusters"]["kept_by_compact"] == int(keep.sum())
    # The deleted 24 MiB file: every cluster wholly made of its blocks is reported wasted.
    gone = np.zeros(n * C // bs, np.int32)
    np.add.at(gone, (start + np.array(DELETED[fs]) * bs) // bs, 1)
    whole = int((gone.reshape(n, C // bs).sum(axis=1) == C // bs).sum())
    assert whole >= (20 if bs == 4096 else 1)
    assert fc["wasted"] >= whole
    assert r["total"]["wasted_bytes"] >= whole * C

    out = tmp_path / "out"
    res = run_cli("compact", src, out, "--json")
    assert res.returncode == 0, res.stderr.decode()
    rep = json.loads(res.stdout)
    assert rep["clusters_kept"] == int(keep.sum())
    assert rep["output_file_bytes"] <= os.path.getsize(src / "root.hdd") - max(1, whole) * C
    assert rep["output_file_bytes"] == (1 + rep["clusters_written"]) * C
    raw = check_compact_output(out, tmp_path)
    part = partition_copy(raw, start, os.path.getsize(fs), tmp_path / "part.raw")
    sh("e2fsck", "-fn", part)
    assert fs_hashes(part, 0, tmp_path / "mnt") == before
    # Outside the filesystem (GPT, its backup in the last cluster) everything is identical.
    with open(disk, "rb") as a, open(raw, "rb") as b:
        assert a.read(start) == b.read(start)
        a.seek(start + os.path.getsize(fs))
        b.seek(start + os.path.getsize(fs))
        assert a.read() == b.read()


def test_usage_equals_statfs_of_readonly_mount(tmp_path: Path, guard_sources) -> None:
    fs = make_fs(tmp_path, 128, ["-b", "4096"], rm=("/d/big", "/f3"))
    disk, _ = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    info = cli_json("info", src, "--json")
    [f] = info["filesystems"]
    mnt = tmp_path / "mnt"
    with mounted(fs, 0, mnt):
        st = os.statvfs(mnt)
    assert f["blocks"]["free"] * f["block_size"] == st.f_bfree * st.f_frsize
    assert f["blocks"]["available"] * f["block_size"] == st.f_bavail * st.f_frsize
    assert f["inodes"]["total"] == st.f_files
    assert f["inodes"]["free"] == st.f_ffree
    text = run_cli("info", src).stdout.decode()
    assert "filesystem usage:" in text
    assert re.search(rf"part1\s+ext4\s+{f['blocks']['total'] * 4}\s+{f['blocks']['used'] * 4}\s",
                     text)


def test_whole_disk_fs_with_snapshot_chain(tmp_path: Path, guard_sources) -> None:
    """ploop init -P layout (fs at offset 0); a snapshot whose delta changes the fs: shadowed
    clusters of the base, compact of either snapshot holds that snapshot's files."""
    from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

    fs = make_fs(tmp_path, 96, ["-b", "4096"])
    files_base = fs_hashes(fs, 0, tmp_path / "mnt")
    src = tmp_path / "src"
    src.mkdir()
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", fs, src / "root.hdd")
    # The top: the fs after more changes, written as a delta of the clusters that differ.
    top_fs = tmp_path / "top.raw"
    sh("cp", "--sparse=always", fs, top_fs)
    sh("debugfs", "-w", "-R", "rm /d/big2", top_fs)
    sh("debugfs", "-w", "-R", f"write {tmp_path / 'src1' / 'f1'} newfile", top_fs)
    files_top = fs_hashes(top_fs, 0, tmp_path / "mnt")
    size = os.path.getsize(fs)
    changed = 0
    with open(fs, "rb") as a, open(top_fs, "rb") as b, \
            ImageWriter.create(src / "root.hdd.top", size, C) as w:
        for v in range(size // C):
            x, y = a.read(C), b.read(C)
            if x != y:
                w.write_cluster(v, y)
                changed += 1
    guids = ["{11111111-2222-3333-4444-555555555555}", "{5fbaabe3-6958-40ff-92a7-860e329aab41}"]
    write_descriptor(src / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd", "root.hdd.top"], size, C, guids))
    guard_sources(src)
    chain = qemu_json_chain([src / "root.hdd", src / "root.hdd.top"])
    r = du(src)
    assert r["partition_scheme"] == "none"
    [f] = r["filesystems"]
    assert f["where"] == "disk" and f["findings"] == []
    base_mapped = qemu_mapped(str(src / "root.hdd"), size)
    top_mapped = qemu_mapped(str(src / "root.hdd.top"), size)
    base, top = r["images"]
    assert top["served_clusters"] == changed == int(top_mapped.sum())
    assert base["shadowed_clusters"] == int((base_mapped & top_mapped).sum())
    assert base["served_clusters"] == int((base_mapped & ~top_mapped).sum())
    _, used_blocks = dumpe2fs_used(top_fs)
    analysed, used = expected_clusters(used_blocks, 4096, 0, 0, size // C)
    mapped = qemu_mapped(chain, size)
    assert f["clusters"]["wasted"] == int((mapped & analysed & ~used).sum())
    for guid, want, name in ((guids[0], files_base, "out-base"), (None, files_top, "out-top")):
        out = tmp_path / name
        res = run_cli("compact", src, out, *(["--snapshot", guid] if guid else []))
        assert res.returncode == 0, res.stderr.decode()
        raw = check_compact_output(out, tmp_path)
        sh("e2fsck", "-fn", raw)
        assert fs_hashes(raw, 0, tmp_path / "mnt") == want
    assert os.path.getsize(tmp_path / "out-top" / "root.hds") < \
        os.path.getsize(src / "root.hdd") - 30 * MiB


def test_mbr_with_other_filesystem_kept_whole(tmp_path: Path, guard_sources) -> None:
    """ext4 in MBR partition 1, minix with data in partition 2: the second is 'not analysed'
    and compact keeps every non-zero byte of it."""
    fs = make_fs(tmp_path, 64, ["-b", "4096"])
    other = tmp_path / "minix.raw"
    sh("truncate", "-s", "16M", other)
    sh("mkfs.minix", other)
    with open(other, "r+b") as f:
        f.seek(5 * MiB + 1234)
        f.write(random.Random(5).randbytes(3 * MiB))
    disk = mbr_disk(tmp_path, [(fs, 64 * MiB), (other, 16 * MiB)], 84 * MiB)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    r = du(src)
    assert r["partition_scheme"] == "mbr"
    assert [f["where"] for f in r["filesystems"]] == ["part1"]
    [o] = r["others"]
    assert o["where"] == "part2" and "not analysed" in o["note"]
    assert "part2" in run_cli("du", src).stdout.decode()
    out = tmp_path / "out"
    assert run_cli("compact", src, out).returncode == 0
    raw = check_compact_output(out, tmp_path)
    with open(disk, "rb") as a, open(raw, "rb") as b:
        a.seek(65 * MiB)
        b.seek(65 * MiB)
        assert a.read() == b.read()  # partition 2 and the rest, byte for byte
    part = partition_copy(raw, MiB, 64 * MiB, tmp_path / "p1.raw")
    sh("e2fsck", "-fn", part)


def test_non_ext_disk_not_analysed(tmp_path: Path, guard_sources) -> None:
    raw = tmp_path / "minix.raw"
    sh("truncate", "-s", "24M", raw)
    sh("mkfs.minix", raw)
    with open(raw, "r+b") as f:
        f.seek(9 * MiB)
        f.write(random.Random(7).randbytes(2 * MiB + 77))
    src = to_ploop(raw, tmp_path / "src")
    guard_sources(src)
    res = run_cli("du", src)
    assert res.returncode == 0, res.stderr.decode()
    assert "not analysed" in res.stdout.decode()
    r = du(src)
    assert r["filesystems"] == [] and r["others"][0]["where"] == "disk"
    assert r["clusters"]["kept_by_compact"] == r["clusters"]["mapped"]
    out = tmp_path / "out"
    assert run_cli("compact", src, out).returncode == 0
    assert sh("cmp", raw, check_compact_output(out, tmp_path)) == ""


def _corrupt(fs: Path, off: int, data: bytes) -> None:
    with open(fs, "r+b") as f:
        f.seek(off)
        f.write(data)


def test_corrupted_metadata_gives_findings(tmp_path: Path, guard_sources) -> None:
    """A group descriptor pointing outside the fs, and a zeroed block bitmap: findings, exit 1,
    no traceback; those groups count as used so compact keeps them whole."""
    fs = make_fs(tmp_path, 400, ["-b", "4096", "-O", "^64bit,^flex_bg,^metadata_csum"])
    out = sh("dumpe2fs", fs)
    bitmaps = [int(x) for x in re.findall(r"Block bitmap at (\d+)", out)]
    # Group 1's descriptor (32 bytes each, table in block 1): bitmap pointer far outside.
    _corrupt(fs, 4096 + 32 + 0, struct.pack("<I", 0x7FFFFFF0))
    _corrupt(fs, bitmaps[0] * 4096, bytes(4096))  # group 0's bitmap: every block "free"
    disk, start = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    res = run_cli("du", src, "--json")
    assert res.returncode == 1, res.stderr.decode()
    assert b"Traceback" not in res.stderr
    r = json.loads(res.stdout)
    codes = " ".join(r["findings"])
    assert "EXT4_DESC: group 1 descriptor at byte" in codes
    assert "EXT4_BITMAP: group 0 block bitmap at byte" in codes
    text = run_cli("du", src)
    assert text.returncode == 1 and b"finding: part1: EXT4_DESC" in text.stdout
    info = run_cli("info", src)
    assert info.returncode == 0
    out_dir = tmp_path / "out"
    res = run_cli("compact", src, out_dir)
    assert res.returncode == 1 and b"EXT4_DESC" in res.stderr and b"Traceback" not in res.stderr
    raw = check_compact_output(out_dir, tmp_path)
    g = 32768 * 4096  # groups 0 and 1, byte for byte
    with open(disk, "rb") as a, open(raw, "rb") as b:
        assert a.read(start + 2 * g) == b.read(start + 2 * g)


def test_bad_superblock_and_refusals(tmp_path: Path, guard_sources) -> None:
    fs = make_fs(tmp_path, 64, ["-b", "4096"])
    _corrupt(fs, 1024 + 0x20, struct.pack("<I", 0))  # s_blocks_per_group = 0
    disk, _ = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    res = run_cli("du", src)
    assert res.returncode == 1 and b"EXT4_SUPERBLOCK" in res.stdout, res.stdout
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    res = run_cli("compact", src, busy)
    assert res.returncode == 11 and b"not an empty folder" in res.stderr
    assert run_cli("compact", tmp_path / "nope", tmp_path / "o").returncode == 3
    assert run_cli("du", src, src).returncode == 64  # usage: several sources only with --dedup


def test_corpus_chain(corpus_case, tmp_path: Path) -> None:
    src = corpus_case("ext4-gpt-chain2")
    snaps = cli_json("snapshots", src, "--json")["snapshots"]
    for s in snaps:
        r = du(src, "--snapshot", s["guid"], "--zeros")
        [f] = r["filesystems"]
        assert f["kind"] == "ext4" and f["findings"] == [] and f["clusters"] is not None
        assert r["clusters"]["zero"] is not None
        out = tmp_path / f"out-{s['depth']}"
        assert run_cli("compact", src, out, "--snapshot", s["guid"]).returncode == 0
        raw = check_compact_output(out, tmp_path)
        want = {e["path"]: e["sha256"] for e in json.loads(
            (src / f"files-{s['guid']}.json").read_text()) if e["type"] == "file"}
        got = fs_hashes(raw, f["start"], tmp_path / "mnt")
        assert got == want
