"""Filesystem usage and bounded work (`info`, `du`, `du --dedup`, `compact`):

- `info`'s figures equal `df -k` and `df -i` of the same ext2/3/4 mounted read-only by the
  kernel, over filesystems of several sizes and options (1 KiB and 4 KiB blocks, -N, -m, no
  journal, ext2, ext3, meta_bg, sparse_super2, no sparse_super, 32-bit without flex_bg, bigalloc
  with and without the superblock's overhead figure), with files written through a mount;
- hostile superblocks and descriptor tables, huge sparse disks and images finish within 20 s
  and 1 GiB of address space, exit with a documented code (never 70), one line, no traceback;
- GPT entries outside the disk are flagged and never read;
- du's text says why the fs can use more than is allocated; `du --dedup` says n/a, not 1.00x,
  when nothing was measured, and running out of memory is exit 9, not an I/O error.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import PLOOPFS, cli_json, run_cli

from ploopfs.content.usage import ClusterSet

MiB = 1 << 20
LIMIT_S = 20
LIMIT_AS = 1 << 30


def sh(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300).stdout


@contextmanager
def loop_mount(img: Path, mnt: Path, opts: str, offset: int = 0) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", f"{opts},loop" + (f",offset={offset}" if offset else ""), img, mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=120)


def limited(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[bytes], float]:
    """The CLI under a 1 GiB address-space limit (prlimit --as) and a 20 s timeout."""
    def lim() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))

    t0 = time.monotonic()
    r = subprocess.run([str(PLOOPFS), *map(str, args)], capture_output=True, timeout=LIMIT_S,
                       preexec_fn=lim, check=False)
    return r, time.monotonic() - t0


def bounded(*args: str | os.PathLike[str], codes: tuple[int, ...] = (0, 1)) -> str:
    """stdout of a run that ended in time with one of `codes`, no traceback, and at most one
    line on stderr (compact: its findings and summary)."""
    r, took = limited(*args)
    err = r.stderr.decode()
    assert r.returncode in codes, (r.returncode, err)
    assert "Traceback" not in err, err
    assert args[0] == "compact" or len(err.strip().splitlines()) <= 1, err
    assert took < LIMIT_S
    return r.stdout.decode()


# -- info == df ----------------------------------------------------------------------------------
DF_VARIANTS = {  # name: (MiB, mkfs type, options)
    "1k-64M": (64, "ext4", []),
    "4k-N-m2": (300, "ext4", ["-b", "4096", "-N", "50000", "-m", "2"]),
    "no-journal-m0": (200, "ext4", ["-O", "^has_journal", "-m", "0"]),
    "ext2": (100, "ext2", []),
    "ext3-m10-N": (150, "ext3", ["-m", "10", "-N", "4096"]),
    "meta_bg": (160, "ext4", ["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"]),
    "sparse_super2": (200, "ext4", ["-O", "sparse_super2"]),
    "no-sparse_super": (96, "ext4", ["-b", "1024", "-O", "^sparse_super,^resize_inode"]),
    "32bit-noflex": (160, "ext4", ["-b", "4096", "-g", "4096", "-O", "^64bit,^flex_bg"]),
    "bigalloc": (256, "ext4", ["-b", "4096", "-O", "bigalloc", "-C", "65536"]),
    # s_overhead_clusters zeroed: the kernel (and ploopfs) compute it from the descriptors.
    "bigalloc-1k-computed": (300, "ext4", ["-b", "1024", "-O", "bigalloc", "-C", "16384",
                                           "-N", "20000"]),
}


def make_written_fs(tmp: Path, name: str, size_mb: int, typ: str, opts: list[str]) -> Path:
    """A filesystem with files written through a kernel mount (so the descriptors' counts are
    the kernel's own), unmounted."""
    img = tmp / f"{name}.img"
    sh("truncate", "-s", f"{size_mb}M", img)
    sh(f"mkfs.{typ}", "-q", "-F", *opts, img)
    rnd = random.Random(size_mb)
    with loop_mount(img, tmp / "mnt-rw", "rw") as m:
        (m / "d").mkdir()
        for i in range(6):
            (m / "d" / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(1, 3 * MiB)))
        for i in range(40):
            (m / f"e{i}").write_text(str(i))
        os.unlink(m / "d" / "f2")
    if name.endswith("-computed"):
        sh("debugfs", "-w", "-R", "ssv overhead_clusters 0", img)
        assert "Overhead" not in sh("dumpe2fs", "-h", img)
    return img


def df_of(img: Path, mnt: Path, offset: int = 0) -> tuple[list[int], list[int]]:
    with loop_mount(img, mnt, "ro", offset) as m:
        k = sh("df", "-k", "--output=size,used,avail", m).split("\n")[1].split()
        i = sh("df", "--output=itotal,iused,iavail", m).split("\n")[1].split()
    return [int(x) for x in k], [int(x) for x in i]


@pytest.mark.parametrize("variant", list(DF_VARIANTS))
def test_info_equals_df(variant: str, tmp_path: Path) -> None:
    size, typ, opts = DF_VARIANTS[variant]
    img = make_written_fs(tmp_path, variant, size, typ, opts)
    kib, inodes = df_of(img, tmp_path / "mnt")
    info = cli_json("info", "--json", "--cluster-size", "1M", img)
    [f] = info["filesystems"]
    assert f["kind"] == typ and f["findings"] == []
    k = f["block_size"] // 1024
    b, i, st = f["blocks"], f["inodes"], f["statfs"]
    assert [b["total"] * k, b["used"] * k, b["available"] * k] == kib
    assert [st["df_size_kib"], st["df_used_kib"], st["df_avail_kib"]] == kib
    assert [i["total"], i["used"], i["free"]] == inodes
    assert [st["df_inodes"], st["df_iused"], st["df_ifree"]] == inodes
    assert b["fs_total"] - b["overhead"] == b["total"]
    text = run_cli("info", "--cluster-size", "1M", img).stdout.decode()
    assert re.search(r"disk\s+" + typ + r"\s+" + r"\s+".join(map(str, kib[:2])) + r"\s+\d+\s+"
                     + str(kib[2]) + r"\s+" + r"\s+".join(map(str, inodes)) + r"\b", text), text


def test_info_equals_df_in_gpt_partition_of_ploop_disk(tmp_path: Path) -> None:
    """The same through a GPT partition of a ploop image (qemu-img convert)."""
    fs = make_written_fs(tmp_path, "part", 128, "ext4", ["-b", "4096", "-m", "3"])
    disk = tmp_path / "disk.raw"
    sh("truncate", "-s", str(130 * MiB), disk)
    sh("sgdisk", "-o", "-n", "1:2048:+128M", disk)
    sh("dd", f"if={fs}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    img = tmp_path / "root.hdd"
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", disk, img)
    kib, inodes = df_of(disk, tmp_path / "mnt", MiB)
    [f] = cli_json("info", "--json", img)["filesystems"]
    st = f["statfs"]
    assert f["where"] == "part1"
    assert [st["df_size_kib"], st["df_used_kib"], st["df_avail_kib"]] == kib
    assert [st["df_inodes"], st["df_iused"], st["df_ifree"]] == inodes


def test_du_figures_and_dumpe2fs_on_bigalloc_1k(tmp_path: Path) -> None:
    """du's used clusters on a bigalloc filesystem with 1 KiB blocks (superblock in block 1,
    s_first_data_block 0) equal the used blocks dumpe2fs lists."""
    from test_space import dumpe2fs_used, expected_clusters

    img = make_written_fs(tmp_path, "ba", 300, "ext4", ["-b", "1024", "-O", "bigalloc",
                                                        "-C", "16384"])
    head, used_blocks = dumpe2fs_used(img)
    # dumpe2fs names a free cluster by its first block: "a-b" frees the clusters from a to b,
    # so a cluster is used iff its first block is.
    used_blocks = np.repeat(used_blocks.reshape(-1, 16)[:, 0], 16)
    r = cli_json("du", "--json", "--cluster-size", "1M", img)
    [f] = r["filesystems"]
    assert f["findings"] == [] and f["blocks"]["free"] == head["Free blocks"]
    n = os.path.getsize(img) // MiB
    analysed, used = expected_clusters(used_blocks, 1024, 0, head["First block"], n)
    assert f["clusters"]["used"] == int(used.sum())
    assert f["clusters"]["clusters"] == int(analysed.sum())


# -- du text: used > allocated -------------------------------------------------------------------
def test_du_text_says_why_used_exceeds_allocated(tmp_path: Path) -> None:
    """qemu-img convert skips zero clusters: the inode tables and journal the fs counts as used
    are holes in the image."""
    img = tmp_path / "fs.raw"
    sh("truncate", "-s", "400M", img)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-N", "200000", img)
    src = tmp_path / "root.hdd"
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", img, src)
    r = cli_json("du", "--json", src)
    fc = r["filesystems"][0]["clusters"]
    assert fc["used"] > fc["mapped"] and fc["used_unmapped"] > 0
    text = run_cli("du", src).stdout.decode()
    line = next(x for x in text.splitlines() if "holes in the image" in x)
    assert f"{fc['used_unmapped']} (" in line and "never written" in line
    assert "used can exceed allocated" in line


# -- hostile superblocks ---------------------------------------------------------------------------
def small_fs(tmp: Path) -> bytes:
    img = tmp / "small.img"
    sh("truncate", "-s", "1M", img)
    sh("mkfs.ext4", "-q", "-F", "-b", "1024", img)
    return img.read_bytes()


def claim_groups(fs: bytearray, at: int, groups: int, bpg: int = 8, consistent: bool = True
                 ) -> None:
    """Patch the superblock at byte `at` + 1024: `groups` groups of `bpg` blocks (the 64bit
    feature carries the high word); `consistent`: s_inodes_count = groups x 4 inodes, as the
    kernel requires, else left as it was."""
    sb = at + 1024
    first = struct.unpack_from("<I", fs, sb + 0x14)[0]
    blocks = first + groups * bpg
    struct.pack_into("<I", fs, sb + 0x4, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", fs, sb + 0x150, blocks >> 32)
    struct.pack_into("<II", fs, sb + 0x20, bpg, bpg)
    if consistent:
        struct.pack_into("<I", fs, sb + 0x28, 4)
        struct.pack_into("<I", fs, sb + 0x0, groups * 4)
        struct.pack_into("<I", fs, sb + 0x10, 4)


def mbr(disk: bytearray, lba: int, count: int) -> None:
    struct.pack_into("<B3sB3sII", disk, 446, 0, b"\0\0\0", 0x83, b"\0\0\0", lba, count)
    disk[510:512] = b"\x55\xaa"


@pytest.mark.parametrize("case", ["2^29-groups", "2^29-groups-consistent",
                                  "mbr-partition-claims-2TiB"])
def test_superblock_claiming_2_29_groups(case: str, tmp_path: Path) -> None:
    """2^29 block groups claimed on a 1 MiB disk: the group count must fit the device, so it is
    reported (one finding) without building anything per group."""
    fs = bytearray(small_fs(tmp_path))
    disk = tmp_path / "disk.raw"
    if case.startswith("mbr"):
        d = bytearray(MiB)
        d[1024:] = fs[:MiB - 1024]
        claim_groups(d, 1024, (1 << 28) - 1)
        mbr(d, 2, 0xFFFFFFFF)
        disk.write_bytes(bytes(d))
    else:
        claim_groups(fs, 0, 1 << 29, consistent=case.endswith("consistent"))
        disk.write_bytes(bytes(fs))
    for cmd in ("info", "du"):
        out = bounded(cmd, "--cluster-size", "1M", disk)
        want = "EXT4_SUPERBLOCK" if case == "2^29-groups" else "EXT4_GEOMETRY"
        if cmd == "du":
            assert want in out
        assert "not analysed" in out
    info = json.loads(bounded("info", "--json", "--cluster-size", "1M", disk))
    [f] = info["filesystems"]
    assert "blocks" not in f and f["note"].startswith("not analysed: ")
    out = tmp_path / "out"
    bounded("compact", "--no-progress", "--cluster-size", "1M", disk, out)


def test_groups_over_the_analysed_maximum_and_zero_descriptors(tmp_path: Path) -> None:
    """Sparse disks whose superblock claims groups that fit the device: 2^21 groups are more
    than MAX_GROUPS (not analysed); 2^19 groups of all-zero descriptors (holes) are each
    damaged, counted as used, and the findings are capped."""
    fs = small_fs(tmp_path)
    for groups, size, analysed in ((1 << 21, 17 << 30, False), (1 << 19, 5 << 30, True)):
        disk = tmp_path / f"g{groups}.raw"
        with open(disk, "wb") as f:
            f.truncate(size)
            f.write(fs)
        d = bytearray(fs)
        claim_groups(d, 0, groups)
        with open(disk, "r+b") as f:
            f.write(d)
        r = json.loads(bounded("du", "--json", "--cluster-size", "1M", disk))
        [f] = r["filesystems"]
        assert f["analysed"] is analysed
        if analysed:
            desc = [x for x in f["findings"] if "EXT4_DESC" in x]
            assert len(desc) == 21 and "more groups with a damaged descriptor" in desc[-1]
            assert f["clusters"]["used"] == f["clusters"]["clusters"]  # all kept
        else:
            assert "more than the" in f["note"]
        bounded("info", "--cluster-size", "1M", disk, codes=(0,))


def test_garbage_descriptor_table(tmp_path: Path) -> None:
    """Random bytes over a real group descriptor table: findings (exit 1), never a crash; the
    damaged groups are kept by compact."""
    img = make_written_fs(tmp_path, "garbage", 160, "ext4",
                          ["-b", "1024", "-O", "^metadata_csum"])
    with open(img, "r+b") as f:
        f.seek(2048)  # the table follows the superblock's block (1 KiB blocks)
        f.write(random.Random(3).randbytes(8192))
    out = bounded("du", "--cluster-size", "1M", img, codes=(1,))
    assert "EXT4_DESC" in out
    bounded("info", "--cluster-size", "1M", img, codes=(0,))
    res, _ = limited("compact", "--no-progress", "--cluster-size", "1M", img, tmp_path / "out")
    assert res.returncode == 1 and b"Traceback" not in res.stderr


# -- partitions outside the disk ------------------------------------------------------------------
def gpt_with_entry(tmp: Path, first: int, last: int) -> Path:
    """A GPT disk whose entry 1 is patched to LBA first..last, with both CRCs fixed."""
    disk = tmp / "gpt.raw"
    sh("truncate", "-s", "8M", disk)
    sh("sgdisk", "-o", "-n", "1:2048:+4M", disk)
    with open(disk, "r+b") as f:
        f.seek(512)
        hdr = bytearray(f.read(92))
        lba, n, esize = struct.unpack_from("<QII", hdr, 72)
        f.seek(lba * 512)
        ents = bytearray(f.read(n * esize))
        struct.pack_into("<QQ", ents, 32, first, last)
        struct.pack_into("<I", hdr, 88, zlib.crc32(ents))
        struct.pack_into("<I", hdr, 16, 0)
        struct.pack_into("<I", hdr, 16, zlib.crc32(hdr))
        f.seek(lba * 512)
        f.write(ents)
        f.seek(512)
        f.write(hdr)
    return disk


@pytest.mark.parametrize("first,last,says", [
    (1 << 63, (1 << 63) + 8191, "starts at byte"),
    (2048, 2048 + 32767, "bytes past its end"),
])
def test_gpt_entry_outside_the_disk(first: int, last: int, says: str, tmp_path: Path) -> None:
    disk = gpt_with_entry(tmp_path, first, last)
    info = cli_json("info", "--json", "--cluster-size", "1M", disk)
    pt = info["partitions"]
    assert pt["partitions"][0]["outside"].startswith("outside the disk")
    assert any("outside the disk" in p and says in p for p in pt["problems"])
    assert not any("CRC" in p for p in pt["problems"])
    text = run_cli("info", "--cluster-size", "1M", disk).stdout.decode()
    assert "outside the disk" in text
    r = cli_json("du", "--json", "--cluster-size", "1M", disk)
    if first >= 1 << 63:
        assert "nothing read there" in r["others"][0]["note"]


def test_partition_past_the_end_is_never_read() -> None:
    from ploopfs.content.partitions import inspect_disk

    size = 8 * MiB
    disk = bytearray(size)
    mbr(disk, 4 * 2048, 4 * 2048)  # 4 MiB from 4 MiB: ends at the end
    struct.pack_into("<B3sB3sII", disk, 446 + 16, 0, b"\0\0\0", 0x83, b"\0\0\0", 1 << 31, 2048)

    def read(off: int, n: int) -> bytes:
        assert 0 <= off < size, off
        return bytes(disk[off:off + n])

    t = inspect_disk(read, size)
    assert [p.outside is None for p in t.partitions] == [True, False]
    assert "outside the disk" in t.problems[0]


# -- memory follows what is allocated --------------------------------------------------------------
def test_du_on_huge_sparse_disks(tmp_path: Path) -> None:
    """A v2 image of 512-byte clusters and m_Size 2^32-1 sectors (a 16 GiB sparse file: 2^32
    clusters), and a descriptor claiming 2^38 sectors of 64 KiB clusters over a 64 KiB raw
    base: du, du --zeros and compact finish in 20 s and 1 GiB."""
    from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

    v2 = tmp_path / "v2"
    v2.mkdir()
    with ImageWriter.create(v2 / "root.hds", ((1 << 32) - 1) * 512, 512, 2) as w:
        w.write_cluster(0, b"\1" * 512)
        w.write_cluster(w.nclusters - 1, b"\2" * 512)
    assert os.path.getsize(v2 / "root.hds") > 16 << 30
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "root.hdd").write_bytes(b"\5" * 65536)
    d = chain_descriptor(["root.hdd"], 65536, 65536, raw_base=True)
    d.disk_size = 1 << 38
    write_descriptor(raw / "DiskDescriptor.xml", d)
    for src in (v2 / "root.hds", raw):
        r = json.loads(bounded("du", "--json", src, codes=(0,)))
        assert r["clusters"]["mapped"] <= 2 and r["clusters"]["total"] >= 1 << 31
        bounded("du", "--zeros", src, codes=(0,))
        bounded("compact", "--no-progress", src, tmp_path / f"out-{src.name}", codes=(0,))


def test_cluster_set_matches_boolean_arrays() -> None:
    rnd = np.random.default_rng(7)
    for _ in range(200):
        n = int(rnd.integers(1, 200))
        x, y = rnd.random(n) < rnd.random(), rnd.random(n) < rnd.random()
        a, b = ClusterSet.from_bools(x), ClusterSet.from_bools(y)
        assert (a & b).to_bools().tolist() == (x & y).tolist()
        assert (a | b).to_bools().tolist() == (x | y).tolist()
        assert (~a).to_bools().tolist() == (~x).tolist()
        assert (a - b).to_bools().tolist() == (x & ~y).tolist()
        assert a.sum() == int(x.sum())
        lo, hi = sorted(int(v) for v in rnd.integers(0, n + 1, 2))
        assert a.clip(lo, hi).sum() == int(x[lo:hi].sum())
        pts = rnd.integers(0, n, 10)
        assert a.contains(pts).tolist() == x[pts].tolist()
        runs = list(a)
        assert all(e > s for s, e in runs) and all(runs[i][1] < runs[i + 1][0]
                                                   for i in range(len(runs) - 1))


# -- du --dedup -------------------------------------------------------------------------------------
def test_dedup_says_na_when_nothing_was_sampled(tmp_path: Path) -> None:
    from ploopfs.volume.writer import ImageWriter

    img = tmp_path / "root.hds"
    with ImageWriter.create(img, 64 * MiB, MiB, 2) as w:
        w.write_cluster(3, random.Random(1).randbytes(MiB))
    res = run_cli("du", "--dedup", img)
    assert res.returncode == 0, res.stderr.decode()
    text = res.stdout.decode()
    assert "gzip-6 n/a" in text and "1.00x" not in text.split("compression")[1]
    rep = json.loads(run_cli("du", "--dedup", "--json", img).stdout)
    assert rep["compression"]["gzip-6"]["ratio"] is None
    empty = tmp_path / "empty.hds"
    ImageWriter.create(empty, 64 * MiB, MiB, 2).close()
    text = run_cli("du", "--dedup", empty).stdout.decode()
    assert "dedup ratio n/a" in text and "1.00x" not in text


def test_dedup_out_of_memory_is_exit_9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from ploopfs.cli import main
    from ploopfs.services import dedup
    from ploopfs.volume.writer import ImageWriter

    img = tmp_path / "root.hds"
    with ImageWriter.create(img, 16 * MiB, MiB, 2) as w:
        w.write_cluster(1, random.Random(2).randbytes(MiB))

    def feed(self: object, *a: object) -> None:
        raise MemoryError("du --dedup: the hash table could not grow (out of memory)")

    monkeypatch.setattr(dedup.Scanner, "_feed", feed)
    assert main(["du", "--dedup", str(img)]) == 9
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too large for the --memory budget" in err


def test_dedup_large_sparse_image_in_little_address_space(tmp_path: Path) -> None:
    """A 2 GiB sparse image file cannot be mmap'ed under a 1 GiB address-space limit: the scan
    reads it instead (it exited 10, 'Cannot allocate memory', before)."""
    from ploopfs.volume.writer import ImageWriter

    img = tmp_path / "root.hds"
    with ImageWriter.create(img, 2048 * MiB, MiB, 2) as w:
        for v in range(0, 2048, 256):
            w.write_cluster(v, random.Random(v).randbytes(MiB))
    os.truncate(img, 2 << 30)
    out = bounded("du", "--dedup", img, codes=(0,))
    assert "referenced 2048 (8.0 MiB)" in out
