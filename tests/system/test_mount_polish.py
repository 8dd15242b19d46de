"""What `findmnt`, `df`, `stat` and `du` say about a mount (users' issues on `ploopfs mount`).

1. The mount's source is the disk's path (absolute), also through mount.fuse3, for any path.
2. `df`: size = the virtual disk, used = what its images store, the rest free; never the
   18G-of-18G-used that fired disk-full alarms; inodes not applicable.
3. `stat`: st_blocks of `disk`/`partN` = the bytes their images store, st_size the full size.
4. The `--files` mount is read-only in the kernel (findmnt: ro).
5. `--files` on an ext4 whose group descriptors are garbage is refused (exit 12), not mounted
   to fail every listing.

Independent references: `qemu-img map` (which bytes of the disk some image holds, for every
snapshot's chain), util-linux partx (partition ranges), findmnt/df/stat from coreutils and
util-linux, e2fsck -fn (the damage is real), fuse2fs itself (what the refusal prevents).
Mounts are made and always torn down through tests/mounting.py's Mounter, by PID.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from array import array
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import CORPUS_CASES, PLOOPFS, qemu_json_chain
from mounting import (
    EXIT_TIMEOUT,
    READY_TIMEOUT,
    Mount,
    Mounter,
    is_mounted,
    mount_entry,
    mounts_under,
    partx_table,
    wait_until,
)

from ploopfs.errors import ExitCode
from ploopfs.format.descriptor import bare_guid
from ploopfs.fuse.mount import fsname_option
from ploopfs.services.tree import stored_bytes
from ploopfs.volume.blockmap import ZERO_LEVEL
from ploopfs.volume.writer import chain_descriptor, write_descriptor

KiB, MiB = 1 << 10, 1 << 20
CaseFactory = Callable[[str], Path]
EXT4_CASE = "ext4-gpt-chain2"
IN_USE = "marked in use"
UTF8 = {"LC_ALL": "C.UTF-8"}  # findmnt and df print non-ASCII paths as \x.. escapes in C


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


pytestmark = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fuse2fs mounts)")




# -- helpers ----------------------------------------------------------------------------------
def sh(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run([os.fspath(a) for a in args], check=True, capture_output=True,
                          text=True, timeout=300,
                          env=None if env is None else dict(os.environ, **env)).stdout


def case_meta(d: Path) -> dict:
    return json.loads((d / "case.json").read_text())


def sparse_case(corpus_case: CaseFactory, name: str) -> Path:
    """A corpus case copied, a raw base's zeros made holes again (the copy wrote them out):
    what a raw base stores is its data, so the figures below depend on it. Contents unchanged."""
    d = corpus_case(name)
    base = case_meta(d)["chain_base_to_top"][0]
    if not isinstance(base.get("header"), dict):
        sh("fallocate", "--dig-holes", d / base["file"])
    return d


def chains(d: Path) -> dict[str, tuple[list[Path], bool]]:
    """bare GUID -> (image files of its chain, base first; raw base?)."""
    levels = case_meta(d)["chain_base_to_top"]
    raw = not isinstance(levels[0].get("header"), dict)  # "raw (no header)"
    return {bare_guid(lv["guid"]): ([d / x["file"] for x in levels[:i + 1]], raw)
            for i, lv in enumerate(levels)}


def qemu_data_runs(img: str) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the disk that qemu-img map reports as data: held by some
    image of the chain (a raw base: the data of its file, holes aside)."""
    args = ["qemu-img", "map", "--output=json", img]
    if not img.startswith("json:"):
        args[3:3] = ["-f", "parallels"]
    return [(e["start"], e["start"] + e["length"]) for e in json.loads(sh(*args)) if e["data"]]


def clipped(runs: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(max(0, min(e, b) - max(s, a)) for s, e in runs)


def df_row(path: Path, fields: str) -> list[str]:
    """One `df --output=FIELDS -B1 PATH` row, split."""
    lines = sh("df", "-B1", f"--output={fields}", path, env=UTF8).splitlines()
    assert len(lines) == 2, lines
    return lines[1].split()


def findmnt(path: Path, column: str) -> str:
    return sh("findmnt", "-no", column, "--mountpoint", path, env=UTF8).strip()


def mount_with_cwd(mounter: Mounter, cwd: Path, source: str, mnt: Path, *args: str) -> Mount:
    """`ploopfs mount SOURCE MNT` run in `cwd` (a relative SOURCE), tracked like Mounter.mount."""
    log, pidf = mounter.root / f"{mnt.name}.log", mounter.root / f"{mnt.name}.pid"
    r = subprocess.run([str(PLOOPFS), "mount", source, str(mnt), "--pid-file", str(pidf),
                        "--log-file", str(log), *args], cwd=cwd, env=mounter.env,
                       capture_output=True, text=True, timeout=90, check=False)
    if pidf.exists():
        mounter.pids.append(int(pidf.read_text()))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    m = Mount(mnt, int(pidf.read_text()), log)
    mounter.mounts.append(m)
    return m


# -- 1. the source: the disk's absolute path --------------------------------------------------
def test_fsname_escapes_commas_and_backslashes() -> None:
    """libfuse splits -o at commas and unescapes backslashes: both are escaped."""
    assert fsname_option("/a/b") == "fsname=/a/b"
    assert fsname_option("/x,y\\z w") == "fsname=/x\\,y\\\\z w"
    assert fsname_option("rel/dir") == "fsname=" + os.path.join(os.getcwd(), "rel/dir")
    assert fsname_option("/ü").encode("us-ascii") == "fsname=/ü".encode()  # what pyfuse3 calls


@pytest.mark.parametrize("form", ["folder", "descriptor", "image"])
def test_source_is_the_disk_path(corpus_case: CaseFactory, mounter: Mounter, form: str) -> None:
    """A relative SOURCE in a folder whose name has a comma, a backslash, a space and a
    non-ASCII letter: findmnt, df and /proc/self/mountinfo name it absolute and exact; the type
    stays fuse.ploopfs."""
    d = corpus_case("v1-chain2")
    weird = mounter.root / "ct 101,a\\b-ü"
    if form == "image":  # a lone image (next to its descriptor it would draw a warning)
        weird.mkdir()
        shutil.copy(d / case_meta(d)["chain_base_to_top"][0]["file"], weird / "root.hds")
    else:
        shutil.copytree(d, weird)
    rel = {"folder": weird.name, "descriptor": f"{weird.name}/DiskDescriptor.xml",
           "image": f"{weird.name}/root.hds"}[form]
    mnt = mounter.mountpoint()
    m = mount_with_cwd(mounter, mounter.root, rel, mnt)
    want = str(mounter.root / rel)
    e = mount_entry(mnt)
    assert e is not None and (e.source, e.fstype) == (want, "fuse.ploopfs"), e
    assert findmnt(mnt, "SOURCE") == want
    assert findmnt(mnt, "FSTYPE") == "fuse.ploopfs"
    assert df_row(mnt, "source") == want.split()  # df prints it as is; split at the space
    assert os.listdir(m.mountpoint)  # and it serves
    assert mounter.umount(m).returncode == 0


def test_source_through_mount_fuse3(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """The fstab form (mount.fuse3 runs `ploopfs SOURCE MNT -o OPTIONS`) names SOURCE too; an
    explicit -o fsname= wins over it."""
    d = corpus_case("v1-chain2")
    src = d / "DiskDescriptor.xml"
    for i, extra in enumerate(["", ",fsname=ct101-backup"]):
        mnt = mounter.mountpoint(f"helper{i}")
        pidf = mounter.root / f"helper{i}.pid"
        r = mounter.run(src, mnt, "-t", "fuse.ploopfs", "-o",
                        f"ro,nofail,pid_file={pidf}{extra}", cmd=["mount.fuse3"])
        if pidf.exists():
            mounter.pids.append(int(pidf.read_text()))
        assert r.returncode == 0, r.stderr
        assert findmnt(mnt, "SOURCE") == (str(src) if not extra else "ct101-backup")
        assert findmnt(mnt, "FSTYPE") == "fuse.ploopfs"
        assert mounter.run("umount", mnt).returncode == 0
        assert not is_mounted(mnt)


# -- 2. df: meaningful sizes -------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS_CASES)
def test_df_size_used_free(corpus_case: CaseFactory, mounter: Mounter, case: str) -> None:
    """Size = the virtual disk, Used = the bytes qemu-img map reports as data for the mounted
    snapshot, Avail = Free = the rest; the same before and after the whole tree is visited;
    inodes 0 (df: "-"); statvfs says read-only."""
    d = sparse_case(corpus_case, case)
    meta = case_meta(d)
    size = meta["virtual_size_bytes"]
    files, raw = chains(d)[bare_guid(meta["top_guid"])]
    used = clipped(qemu_data_runs(qemu_json_chain(files, raw_base=raw)), 0, size)
    assert 0 < used < size
    m = mounter.mount(d, warning=IN_USE if case == "v2-dirty-inuse" else None)
    fields = "size,used,avail,pcent,itotal,iused,ipcent"
    want = [str(size), str(used), str(size - used), f"{-(-used * 100 // size)}%", "0", "0", "-"]
    assert df_row(m.mountpoint, fields) == want  # first request of the mount
    for _ in os.walk(m.mountpoint):  # every node known: the old figure grew with them
        pass
    assert df_row(m.mountpoint, fields) == want
    vfs = os.statvfs(m.mountpoint)
    assert vfs.f_flag & os.ST_RDONLY
    assert vfs.f_frsize * vfs.f_blocks == size
    assert vfs.f_bfree == vfs.f_bavail == vfs.f_blocks - used // vfs.f_frsize


def test_df_follows_the_snapshot(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """--snapshot: df describes the disk that is mounted."""
    d = sparse_case(corpus_case, "plain-base-chain3")
    size = case_meta(d)["virtual_size_bytes"]
    seen = set()
    for i, (guid, (files, raw)) in enumerate(chains(d).items()):
        used = clipped(qemu_data_runs(qemu_json_chain(files, raw_base=raw)), 0, size)
        m = mounter.mount(d, "--snapshot", guid, name=f"s{i}")
        assert df_row(m.mountpoint, "size,used,avail") == [str(size), str(used),
                                                           str(size - used)]
        seen.add(used)
        assert mounter.umount(m).returncode == 0
    assert len(seen) > 1, "the snapshots store different amounts: the test would see a mix-up"


# -- 3. st_blocks: what is stored -----------------------------------------------------------
def _check_blocks(folder: Path, runs: list[tuple[int, int]], size: int) -> int:
    """stat and du of disk and every partN under `folder` against the data runs; returns the
    number of partitions checked."""
    st = os.stat(folder / "disk")
    assert st.st_size == size
    assert st.st_blocks * 512 == clipped(runs, 0, size), folder
    du = sh("du", "-B1", "--apparent-size", folder / "disk").split()[0]
    assert int(du) == size
    assert int(sh("du", "-B1", folder / "disk").split()[0]) == clipped(runs, 0, size)
    table = partx_table(folder / "disk")
    for n, (start, length) in table.items():
        p = os.stat(folder / f"part{n}")
        assert p.st_size == length
        assert p.st_blocks * 512 == clipped(runs, start, start + length), (folder, n)
        assert int(sh("stat", "-c", "%b", folder / f"part{n}")) == p.st_blocks
    return len(table)


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_st_blocks_of_every_snapshot(corpus_case: CaseFactory, mounter: Mounter,
                                     case: str) -> None:
    d = sparse_case(corpus_case, case)
    meta = case_meta(d)
    size = meta["virtual_size_bytes"]
    m = mounter.mount(d, warning=IN_USE if case == "v2-dirty-inuse" else None)
    parts = 0
    for guid, (files, raw) in chains(d).items():
        runs = qemu_data_runs(qemu_json_chain(files, raw_base=raw))
        parts += _check_blocks(m / f"snapshots/{guid}", runs, size)
        if guid == bare_guid(meta["top_guid"]):
            _check_blocks(m.mountpoint, runs, size)
    if case == EXT4_CASE:
        assert parts == 2, "the GPT partition of both snapshots"
    info = os.stat(m / "info.json")  # a file held in memory: all of it counts
    assert info.st_blocks == -(-info.st_size // 512)


class _FakeMap:
    """The fields of a BlockMap that stored_bytes reads, from (vstart, count, level) triples."""

    def __init__(self, extents: list[tuple[int, int, int]]) -> None:
        self.vstart = array("I", [e[0] for e in extents])
        self.count = array("I", [e[1] for e in extents])
        self.level = array("B", [e[2] for e in extents])
        self.a_vstart, self.a_count, self.a_level = map(memoryview, (self.vstart, self.count,
                                                                     self.level))


class _FakeVol:
    def __init__(self, size: int, c: int, extents: list[tuple[int, int, int]],
                 raw: tuple[int, int] | None = None) -> None:
        self.size, self.cluster_size, self.map = size, c, _FakeMap(extents)
        self.raw_base = raw is not None
        if raw is not None:
            self.images = [SimpleNamespace(fd=raw[0], file_size=raw[1])]


def test_stored_bytes_against_a_byte_model(tmp_path: Path) -> None:
    """stored_bytes over random extents (salvage's zeroed ones among them), ranges starting and
    ending anywhere, a disk size inside the last cluster, and a sparse raw base file, against a
    per-byte model (in sectors)."""
    rng = random.Random(5)
    raw_file = tmp_path / "base.raw"
    for trial in range(300):
        c = rng.choice([4096, 65536])
        nclusters = rng.randrange(1, 40)
        size = nclusters * c - rng.randrange(0, c, 512)
        extents, v = [], rng.randrange(0, 3)
        while v < nclusters:
            n = rng.randrange(1, 5)
            extents.append((v, min(n, nclusters - v), rng.choice([0, 1, 2, ZERO_LEVEL])))
            v += n + rng.randrange(0, 4)
        raw = None
        data = np.zeros(-(-size // 512), bool)  # per sector: served from an image's data
        for v, n, lv in extents:
            if lv != ZERO_LEVEL:
                data[v * c // 512:(v + n) * c // 512] = True
        if trial % 3 == 0:  # a raw base: its data sectors count where no extent lies
            raw_size = rng.randrange(0, size + 1, 512)
            with open(raw_file, "wb") as f:
                f.truncate(raw_size)
                for _ in range(rng.randrange(0, 6)):
                    off = rng.randrange(0, max(raw_size, 1), 4096)
                    f.seek(off)
                    f.write(b"x" * min(rng.choice([4096, 8192, 3 * 65536]), raw_size - off))
            fd = os.open(raw_file, os.O_RDONLY)
            covered = np.zeros_like(data)
            for v, n, _lv in extents:
                covered[v * c // 512:(v + n) * c // 512] = True
            pos = 0
            while pos < raw_size:
                try:
                    a = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                b = os.lseek(fd, a, os.SEEK_HOLE)
                sel = np.zeros_like(data)
                sel[a // 512:b // 512] = True
                data |= sel & ~covered
                pos = b
            raw = (fd, raw_size)
        vol = _FakeVol(size, c, extents, raw)
        try:
            for _ in range(20):
                a = rng.randrange(0, size + c, 512)
                b = rng.randrange(a, size + 2 * c, 512)
                want = int(data[a // 512:b // 512].sum()) * 512
                assert stored_bytes(vol, a, b) == want, (trial, c, size, extents, a, b)
            assert stored_bytes(vol, 0, size) == int(data.sum()) * 512
        finally:
            if raw is not None:
                os.close(raw[0])


def _sparse_partitioned_disk(folder: Path) -> Path:
    """A 40 MiB parallels image (1 MiB clusters) with MBR partitions that start and end inside
    clusters, clusters written out of order and partly (qemu-io), and holes."""
    img = folder / "parts.hds"
    sh("qemu-img", "create", "-q", "-f", "parallels", "-o", "cluster_size=1M", img, "40M")
    mbr = bytearray(512)
    for i, (start, sectors) in enumerate([(63, 20_537), (22_001, 40_000), (70_000, 9_000)]):
        mbr[446 + 16 * i: 446 + 16 * (i + 1)] = (bytes([0, 0, 0, 0, 0x83, 0, 0, 0])
                                                 + start.to_bytes(4, "little")
                                                 + sectors.to_bytes(4, "little"))
    mbr[510:] = b"\x55\xaa"
    raw_mbr = folder / "mbr.bin"
    raw_mbr.write_bytes(bytes(mbr))
    cmds = ["-c", f"write -P 7 {39 * MiB + 5 * KiB} 3K", "-c", f"write -P 9 {10 * MiB} 4K",
            "-c", f"write -P 11 {20 * MiB - 512} 1K", "-c", f"write -P 13 {33 * MiB} {2 * MiB}",
            "-c", f"write -P 15 {MiB + 4 * KiB} 4K"]
    sh("qemu-io", "-f", "parallels", *cmds, img)
    sh("qemu-io", "-f", "parallels", "-c", f"write -s {raw_mbr} 0 512", img)
    return img


def test_st_blocks_partitions_inside_clusters(mounter: Mounter, tmp_path: Path,
                                              guard_sources: Callable[..., None]) -> None:
    """Partitions whose ends fall inside clusters count only their part of a cluster."""
    img = _sparse_partitioned_disk(tmp_path)
    guard_sources(img)
    runs = qemu_data_runs(str(img))
    m = mounter.mount(img)
    assert _check_blocks(m.mountpoint, runs, 40 * MiB) == 3
    used = clipped(runs, 0, 40 * MiB)
    assert df_row(m.mountpoint, "size,used") == [str(40 * MiB), str(used)]


# -- 4. the --files layer is read-only in the kernel ------------------------------------------
@needs_root
def test_files_layer_is_kernel_read_only(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """findmnt shows `ro`, nodev and nosuid (a container's device nodes and set-id files are
    never used on the host); statvfs says so; writes fail with EROFS from the kernel."""
    d = corpus_case(EXT4_CASE)
    m = mounter.mount(d, "--files")
    opts = findmnt(m.mountpoint, "OPTIONS").split(",")
    assert opts[0] == "ro" and "nodev" in opts and "nosuid" in opts, opts
    assert findmnt(m.mountpoint, "FSTYPE") == "fuse.ploopfs"
    assert [e.point for e in mounts_under(mounter.root)] == [str(m.mountpoint)]
    assert findmnt(m.mountpoint, "SOURCE") == str(d)
    assert os.statvfs(m.mountpoint).f_flag & os.ST_RDONLY
    for attempt in (lambda: (m / "new").write_bytes(b"x"), lambda: os.mkdir(m / "dir"),
                    lambda: os.utime(m / "hello.txt", (0, 0))):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == 30  # EROFS
    # df: the disk's figures, not 100 % full
    size, used = map(int, df_row(m.mountpoint, "size,used"))
    assert 0 < used < size
    assert mounter.umount(m).returncode == 0


# -- 5. --files refuses an ext4 whose descriptors are garbage --------------------------------
def _ext4_disk(folder: Path, damage: bool, partitioned: bool) -> Path:
    """A ploop disk (qemu-img convert + DiskDescriptor.xml) holding a 4-group ext4 (1 KiB
    blocks, 32 MiB), in MBR partition 1 or on the whole disk; `damage`: the block after the
    superblock (the group descriptor table) overwritten with random bytes."""
    folder.mkdir()
    src = folder / "tree"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    fs = folder / "fs.raw"
    sh("truncate", "-s", "32M", fs)
    sh("mkfs.ext4", "-q", "-F", "-b", "1024", "-d", src, fs)
    if damage:
        with open(fs, "r+b") as f:
            f.seek(2 * KiB)  # 1 KiB blocks: boot block 0, superblock 1, descriptors from 2
            f.write(os.urandom(KiB))
    raw = fs
    if partitioned:
        raw = folder / "disk.raw"
        sh("truncate", "-s", "34M", raw)
        mbr = bytearray(512)
        mbr[446:462] = (bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little")
                        + (32 * 2048).to_bytes(4, "little"))
        mbr[510:] = b"\x55\xaa"
        with open(raw, "r+b") as f:
            f.write(mbr)
            f.seek(MiB)
            f.write(fs.read_bytes())
    out = folder / "ct"
    out.mkdir()
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, out / "root.hdd")
    write_descriptor(out / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], os.path.getsize(raw), MiB))
    return out


@needs_root
@pytest.mark.parametrize("partitioned", [True, False], ids=["part1", "disk"])
def test_files_refuses_garbage_descriptors(mounter: Mounter, tmp_path: Path,
                                           guard_sources: Callable[..., None],
                                           partitioned: bool) -> None:
    where = "part1" if partitioned else "disk"
    bad = _ext4_disk(tmp_path / "src-bad", True, partitioned)
    good = _ext4_disk(tmp_path / "src-good", False, partitioned)
    guard_sources(bad, good)
    # independent: e2fsck finds the descriptors corrupt, fuse2fs serves nothing
    r = subprocess.run(["e2fsck", "-fn", str(tmp_path / "src-bad" / "fs.raw")], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode >= 4 and "descriptor" in (r.stdout + r.stderr).lower(), r.stdout
    fmnt = mounter.mountpoint("direct")
    p, _ = mounter.popen(["fuse2fs", str(tmp_path / "src-bad" / "fs.raw"), str(fmnt), "-f", "-o",
                            "ro,norecovery,fakeroot"], "fuse2fs")
    wait_until(lambda: is_mounted(fmnt) or p.poll() is not None, READY_TIMEOUT, "fuse2fs")
    if p.poll() is None:  # it mounts (e2fsprogs 1.47), and then fails to list
        with pytest.raises(OSError):
            os.listdir(fmnt)
        assert subprocess.run(["fusermount3", "-u", str(fmnt)], timeout=30).returncode == 0
        p.wait(timeout=EXIT_TIMEOUT)

    mnt = mounter.mountpoint()
    r = mounter.run("mount", "--files", bad, mnt, "--pid-file", mounter.root / "bad.pid")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == int(ExitCode.MOUNT), r.stderr
    assert len(lines) == 1 and lines[0].startswith("ploopfs: "), r.stderr
    for needle in (str(bad), "unreadable metadata", f"in {where}", "escriptor", "ploopfs info"):
        assert needle in lines[0], (needle, lines[0])
    assert r.stdout == ""
    assert mounts_under(mounter.root) == [], "something stayed mounted"
    assert os.listdir(mounter.root / "tmp") == [], "a private disk layer folder was left"
    assert not (mounter.root / "bad.pid").exists()
    assert os.listdir(mnt) == []
    # the raw disk still mounts without --files; the healthy twin mounts with it
    m = mounter.mount(bad, name="raw")
    assert os.path.getsize(m / where) >= 32 * MiB
    g = mounter.mount(good, "--files", name="good")
    assert (g / "hello.txt").read_text() == "hello\n"
    for x in (g, m):
        assert mounter.umount(x).returncode == 0
