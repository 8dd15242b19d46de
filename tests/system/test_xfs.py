"""XFS inside the disk (`ploop init -t xfs`): `info`, `du`, `compact` and `check --deep`.

Filesystems are made by mkfs.xfs and filled through a kernel loop mount (files written, some
deleted, so that free space is fragmented and the free-space B+trees have several levels), then
checked against independent readers:
- `info`'s figures equal statfs (`df -k`, `df -i`) of the filesystem mounted read-only with
  `norecovery` by the kernel, for several layouts, and label and UUID equal blkid's;
- du's used and wasted clusters are exactly those left by xfs_db's `freesp -d` free extents
  less the AGFL blocks (which xfs_db lists as free and ploopfs counts as used, like the kernel),
  and within one cluster per AG of xfs_db's free space taken whole, and of what the kernel
  itself leaves after `fstrim` on a loop-mounted, fully written copy;
- compact's output passes `xfs_repair -n`, holds the same files (hash manifest through a kernel
  read-only loop mount), and the source is never written;
- damaged and hostile metadata (superblock, AGF, a btree loop, a huge AG count) is reported by
  `check --deep`, and info/du/compact end in time with one line, keeping what they cannot read.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_json, run_cli
from test_fs_usage import bounded
from test_space import (
    check_compact_output,
    du,
    file_hashes,
    gpt_disk,
    partition_copy,
    qemu_mapped,
    to_ploop,
)

from ploopfs.format import xfs

MiB = 1 << 20
C = MiB
SMALL_OK = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}  # mkfs.xfs under 300 MiB

pytestmark = pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="needs xfsprogs")


def sh(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **SMALL_OK}).stdout


@contextmanager
def xfs_mount(img: Path, mnt: Path, opts: str) -> Iterator[Path]:
    mnt.mkdir(exist_ok=True)
    sh("mount", "-t", "xfs", "-o", f"{opts},loop", img, mnt)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=120, check=False)
        if r.returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=120,
                           check=False)


def kernel_mounts_v4(tmp: Path) -> bool:
    """Kernels built without CONFIG_XFS_SUPPORT_V4 refuse crc=0 filesystems."""
    img = tmp / "v4probe.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.xfs", "-q", "-f", "-m", "crc=0", img)
    r = subprocess.run(["mount", "-t", "xfs", "-o", "ro,norecovery,loop", str(img),
                        str(tmp)], capture_output=True, check=False, timeout=120)
    if r.returncode == 0:
        subprocess.run(["umount", str(tmp)], check=False, timeout=120)
    img.unlink()
    return r.returncode == 0


def make_xfs(tmp: Path, name: str, mib: int, opts: list[str], *, seed: int = 1,
             small_files: int = 300, big_mb: int = 12) -> Path:
    """An XFS image written through a kernel mount: random files in a few directories (XFS
    puts each directory in another AG), a big file and every other small file deleted."""
    img = tmp / f"{name}.img"
    with open(img, "wb") as f:
        f.truncate(mib * MiB)
    sh("mkfs.xfs", "-q", "-f", "-L", name[:12], *opts, img)
    rnd = random.Random(seed)
    with xfs_mount(img, tmp / "mnt-rw", "rw") as m:
        for d in range(4):
            (m / f"d{d}").mkdir()
            for i in range(small_files // 4):
                (m / f"d{d}" / f"s{i}").write_bytes(rnd.randbytes(rnd.choice([700, 1500, 5000])))
            (m / f"d{d}" / "mid").write_bytes(rnd.randbytes(rnd.randrange(1, 3 * MiB)))
        (m / "big").write_bytes(rnd.randbytes(big_mb * MiB))
        (m / "link").symlink_to("d0/mid")
        os.sync()
        for d in range(4):
            for i in range(0, small_files // 4, 2):
                os.unlink(m / f"d{d}" / f"s{i}")
        os.unlink(m / "big")
    return img


def manifest(img: Path, mnt: Path, offset: int = 0) -> dict[str, str]:
    opts = "ro,norecovery" + (f",offset={offset}" if offset else "")
    with xfs_mount(img, mnt, opts) as m:
        return file_hashes(m)


def xfs_db(img: Path, *cmds: str) -> str:
    args: list[str] = []
    for c in cmds:
        args += ["-c", c]
    return sh("xfs_db", "-r", *args, img)


def db_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, sep, v in (line.partition(" = ") for line in
                                                   text.splitlines()) if sep}


def xfs_db_free(img: Path) -> tuple[xfs.Superblock, np.ndarray, np.ndarray, list[int]]:
    """(superblock, free blocks as xfs_db's freesp -d lists them, the same less the AGFL
    blocks, bnobt levels per AG), blocks numbered from the start of the filesystem."""
    sb = xfs.parse_superblock(head(img))
    free_all = np.zeros(sb.dblocks, bool)
    free_bno = np.zeros(sb.dblocks, bool)
    levels = []
    for agno in range(sb.agcount):
        base = agno * sb.agblocks
        ext = [(int(m[1]), int(m[2])) for m in re.finditer(
            r"^\s*\d+\s+(\d+)\s+(\d+)\s*$", xfs_db(img, f"freesp -d -a {agno}"), re.M)]
        text = xfs_db(img, f"agf {agno}", "p flfirst fllast flcount bnolevel", f"agfl {agno}",
                      "p bno")
        f = db_fields(text)
        levels.append(int(f["bnolevel"]))
        slots = dict(re.findall(r"(\d+):(\w+)", text.split("bno", 1)[1]))
        first, count = int(f["flfirst"]), int(f["flcount"])
        agfl = {int(slots[str((first + k) % len(slots))]) for k in range(count)}
        for a, n in ext:
            free_all[base + a: base + a + n] = True
            if not (n == 1 and a in agfl):
                free_bno[base + a: base + a + n] = True
    return sb, free_all, free_bno, levels


def cluster_sets(free: np.ndarray, bs: int, start: int, nclusters: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(analysed, used) per cluster: clusters wholly inside the fs; used if a used block lies
    in them (docs/space.md)."""
    analysed = np.zeros(nclusters, bool)
    a, b = -(-start // C), (start + free.size * bs) // C
    analysed[a:b] = True
    used = np.zeros(nclusters, bool)
    idx = np.flatnonzero(~free)
    used[(start + idx * bs) // C] = True
    used[(start + idx * bs + bs - 1) // C] = True
    return analysed, used & analysed


# -- info == df ----------------------------------------------------------------------------------
LAYOUTS = {  # name: (MiB, mkfs options)
    "v5-default": (64, []),
    "v5-8ag": (256, ["-d", "agcount=8"]),
    "v5-1k-blocks": (96, ["-b", "size=1024", "-d", "agcount=3"]),
    "v5-rmapbt": (128, ["-m", "rmapbt=1"]),
    "v5-4k-sectors": (80, ["-s", "size=4096", "-d", "agcount=2"]),
    "v5-imaxpct1-noreflink": (72, ["-i", "maxpct=1", "-m", "reflink=0,finobt=0"]),
    "v5-short-last-ag": (97, ["-d", "agsize=32m"]),
    # two-level free-space trees: their non-root blocks (agf_btreeblks) are withheld from f_bfree
    "v5-1k-fragmented": (96, ["-b", "size=1024", "-d", "agcount=2"]),
    "v4": (64, ["-m", "crc=0"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_info_equals_df(layout: str, tmp_path: Path) -> None:
    mib, opts = LAYOUTS[layout]
    if layout.startswith("v4") and not kernel_mounts_v4(tmp_path):
        pytest.skip("this kernel does not mount v4 (crc=0) XFS")
    img = make_xfs(tmp_path, layout, mib, opts,
                   small_files=1600 if "fragmented" in layout else 120)
    if "fragmented" in layout:
        agf = db_fields(xfs_db(img, "agf 0", "p btreeblks"))
        assert int(agf["btreeblks"]) > 0
    mnt = tmp_path / "mnt"
    with xfs_mount(img, mnt, "ro,norecovery") as m:
        st = os.statvfs(m)
        kib = [int(x) for x in sh("df", "-k", "--output=size,used,avail", m).split()[3:6]]
        ino = [int(x) for x in sh("df", "--output=itotal,iused,iavail", m).split()[3:6]]
    info = cli_json("info", "--json", "--cluster-size", "1M", img)
    [f] = info["filesystems"]
    assert f["kind"] == "xfs" and f["findings"] == [], f
    s = f["statfs"]
    assert [s["f_bsize"], s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"],
            s["f_ffree"]] == [st.f_bsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files,
                              st.f_ffree]
    assert [s["df_size_kib"], s["df_used_kib"], s["df_avail_kib"]] == kib
    assert [s["df_inodes"], s["df_iused"], s["df_ifree"]] == ino
    assert f["label"] == sh("blkid", "-o", "value", "-s", "LABEL", img).strip() == layout[:12]
    assert f["uuid"] == sh("blkid", "-o", "value", "-s", "UUID", img).strip()
    assert f["blocks"]["fs_total"] - f["blocks"]["overhead"] == f["blocks"]["total"]
    text = run_cli("info", "--cluster-size", "1M", img).stdout.decode()
    assert re.search(r"disk\s+xfs\s+" + r"\s+".join(map(str, kib[:2])), text), text


# -- du and compact against xfs_db ---------------------------------------------------------------
DU_LAYOUTS = {  # name: (MiB, mkfs options, small files)
    # 1 KiB blocks: a bnobt leaf holds 121 records, so the fragmented AGs need two levels
    "1k-blocks-2-levels": (96, ["-b", "size=1024", "-d", "agcount=2"], 1600),
    "4k-default": (160, [], 300),
}


@pytest.mark.parametrize("layout", list(DU_LAYOUTS))
def test_du_and_compact_match_xfs_db(layout: str, tmp_path: Path, guard_sources) -> None:
    mib, opts, nsmall = DU_LAYOUTS[layout]
    fs = make_xfs(tmp_path, layout, mib, opts, small_files=nsmall)
    sb, free_all, free_bno, levels = xfs_db_free(fs)
    if layout.startswith("1k"):
        assert max(levels) >= 2, levels  # the multi-level walk is exercised
    before = manifest(fs, tmp_path / "mnt")
    disk, start = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    r = du(src)
    [f] = r["filesystems"]
    assert f["where"] == "part1" and f["kind"] == "xfs" and f["findings"] == []
    assert f["groups"] == sb.agcount and f["blocks"]["fs_total"] == sb.dblocks
    n = -(-os.path.getsize(disk) // C)
    mapped = qemu_mapped(str(src / "root.hdd"), os.path.getsize(disk))
    analysed, used = cluster_sets(free_bno, sb.blocksize, start, n)
    fc = f["clusters"]
    assert fc["clusters"] == int(analysed.sum())
    assert fc["used"] == int(used.sum())
    assert fc["mapped"] == int((mapped & analysed).sum())
    assert fc["wasted"] == int((mapped & analysed & ~used).sum())
    # Against xfs_db's free space taken whole (AGFL blocks included): one cluster per AG.
    _, used_all = cluster_sets(free_all, sb.blocksize, start, n)
    assert 0 <= fc["used"] - int(used_all.sum()) <= sb.agcount
    # The deleted big file left whole clusters the disk stores and XFS does not use.
    assert fc["wasted"] >= 8
    keep = mapped & (~analysed | used)
    assert r["clusters"]["kept_by_compact"] == int(keep.sum())

    out = tmp_path / "out"
    res = run_cli("compact", src, out, "--json")
    assert res.returncode == 0, res.stderr.decode()
    rep = json.loads(res.stdout)
    assert rep["clusters_kept"] == int(keep.sum())
    assert rep["output_file_bytes"] <= os.path.getsize(src / "root.hdd") - 8 * C
    raw = check_compact_output(out, tmp_path)
    part = partition_copy(raw, start, os.path.getsize(fs), tmp_path / "part.raw")
    sh("xfs_repair", "-n", part)
    assert manifest(part, tmp_path / "mnt") == before
    with open(disk, "rb") as a, open(raw, "rb") as b:  # the GPT and its backup, unchanged
        assert a.read(start) == b.read(start)
        a.seek(start + os.path.getsize(fs))
        b.seek(start + os.path.getsize(fs))
        assert a.read() == b.read()


def data_clusters(img: Path, start: int, nclusters: int) -> np.ndarray:
    """Disk clusters (img placed at byte `start`) in which img's file holds any data."""
    out = np.zeros(nclusters, bool)
    with open(img, "rb") as f:
        fd, end, pos = f.fileno(), os.path.getsize(img), 0
        while pos < end:
            try:
                a = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            b = os.lseek(fd, a, os.SEEK_HOLE)
            out[(start + a) // C: -(-(start + b) // C)] = True
            pos = b
    return out


def test_du_matches_fstrim(tmp_path: Path, guard_sources) -> None:
    """The kernel's own account of free space: a fully written copy of the filesystem, mounted
    through a loop device and `fstrim`med, keeps data exactly where XFS uses blocks (the loop
    device punches every discarded range out of its file). du's used clusters are those, within
    one cluster per allocation group, and so are the clusters compact keeps."""
    if shutil.which("fstrim") is None:
        pytest.skip("needs fstrim (util-linux)")
    fs = make_xfs(tmp_path, "trim", 160, [], small_files=300)
    sb = xfs.parse_superblock(head(fs))
    disk, start = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    n = -(-os.path.getsize(disk) // C)
    full = tmp_path / "full.img"
    sh("cp", "--sparse=never", fs, full)
    assert data_clusters(full, start, n).sum() == -(-os.path.getsize(fs) // C)  # no holes yet
    with xfs_mount(full, tmp_path / "mnt-trim", "rw") as m:
        out = sh("fstrim", "-v", m)
    assert re.search(r"\(\d+ bytes\) trimmed", out), out
    analysed = np.zeros(n, bool)
    analysed[-(-start // C):(start + os.path.getsize(fs)) // C] = True
    kept = data_clusters(full, start, n) & analysed
    assert kept.sum() < analysed.sum() - 8  # the trim freed whole clusters (the deleted big file)

    r = du(src)
    [f] = r["filesystems"]
    fc = f["clusters"]
    assert fc["clusters"] == int(analysed.sum())
    assert abs(fc["used"] - int(kept.sum())) <= sb.agcount, (fc["used"], int(kept.sum()))
    mapped = qemu_mapped(str(src / "root.hdd"), os.path.getsize(disk))
    assert abs(fc["wasted"] - int((mapped & analysed & ~kept).sum())) <= sb.agcount
    res = run_cli("compact", src, tmp_path / "out", "--json")
    assert res.returncode == 0, res.stderr.decode()
    keep_trim = int((mapped & (~analysed | kept)).sum())
    assert abs(json.loads(res.stdout)["clusters_kept"] - keep_trim) <= sb.agcount


# -- damaged and hostile metadata -----------------------------------------------------------------
def head(img: Path, n: int = xfs.SB_READ, off: int = 0) -> bytes:
    with open(img, "rb") as f:
        f.seek(off)
        return f.read(n)


def patch(img: Path, off: int, data: bytes) -> None:
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(data)


def refresh_crc(img: Path, off: int, size: int, crc_off: int) -> None:
    with open(img, "r+b") as f:
        f.seek(off)
        b = bytearray(f.read(size))
        struct.pack_into("<I", b, crc_off, xfs.metadata_crc(b, crc_off))
        f.seek(off)
        f.write(b)


def damage(img: Path, kind: str) -> str:
    """Damage `kind` in the filesystem image; the finding code it must give."""
    sb = xfs.parse_superblock(head(img))
    if kind == "superblock-magic":
        patch(img, 0, b"XFSX")  # probe no longer says xfs: the disk is "unknown", kept whole
        return ""
    if kind == "superblock-crc":
        patch(img, 100, b"\x12")  # versionnum's high byte, CRC left stale
        return "XFS_SUPERBLOCK"
    if kind == "agcount-huge":
        patch(img, 88, struct.pack(">I", 0xFFFFFFFF))
        refresh_crc(img, 0, sb.sectsize, 224)
        return "XFS_SUPERBLOCK"
    if kind == "agf-magic":
        patch(img, sb.agf_byte(1), b"XAGX")
        return "XFS_AG_HEADER"
    if kind == "agf-crc":
        patch(img, sb.agf_byte(1) + 52, struct.pack(">I", 7))  # freeblks
        return "XFS_AG_HEADER"
    if kind == "btree-loop":
        # AG 1's bnobt root (a leaf) becomes a node whose one child is itself.
        agf_off = sb.agf_byte(1)
        agf = xfs.parse_agf(head(img, sb.sectsize, agf_off), sb, 1)
        root = sb.block_byte(1, agf.bno_root)
        patch(img, root + 4, struct.pack(">HH", 1, 1))
        patch(img, root + sb.btree_hdr, struct.pack(">II", 0, 1))
        patch(img, root + sb.btree_hdr + 8 * sb.alloc_node_maxrecs, struct.pack(">I", agf.bno_root))
        refresh_crc(img, root, sb.blocksize, 52)
        patch(img, agf_off + 28, struct.pack(">I", 2))  # bnolevel
        refresh_crc(img, agf_off, sb.sectsize, 216)
        return "XFS_FREESPACE"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["superblock-magic", "superblock-crc", "agcount-huge",
                                  "agf-magic", "agf-crc", "btree-loop"])
def test_damage_is_reported_and_kept(kind: str, tmp_path: Path, guard_sources) -> None:
    fs = make_xfs(tmp_path, "dmg", 64, [], small_files=40, big_mb=4)
    sb = xfs.parse_superblock(head(fs))
    code = damage(fs, kind)
    disk, start = gpt_disk(tmp_path, fs)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    info = json.loads(bounded("info", "--json", src))
    du_out = json.loads(bounded("du", "--json", src))
    deep = run_cli("check", "--json", "--deep", src)
    assert b"Traceback" not in deep.stderr
    findings = [f for f in json.loads(deep.stdout)["findings"] if f["code"] == "DEEP_FILESYSTEM"]
    if not code:  # no longer recognised as XFS: listed as unknown, never analysed
        assert info["filesystems"][0]["kind"] is None and findings == []
        assert du_out["filesystems"] == []
    else:
        [f] = info["filesystems"]
        [g] = du_out["filesystems"]
        assert f["kind"] == g["kind"] == "xfs"
        assert any(code in x for x in g["findings"]), g
        # info reads no free-space tree: it sees header damage only
        assert any(code in x for x in f["findings"]) == (code != "XFS_FREESPACE"), f
        assert findings and all(code in x["message"] for x in findings), findings
        assert deep.returncode == 1
    out = tmp_path / "out"
    bounded("compact", "--no-progress", src, out, codes=(0, 1))
    raw = check_compact_output(out, tmp_path)
    # Kept: everything of a filesystem not analysed; of a damaged AG, all of it.
    a, b = start, start + sb.size_bytes
    if kind.startswith(("agf", "btree")):
        a, b = start + sb.ag_byte(1), start + sb.ag_byte(2)
    with open(disk, "rb") as x, open(raw, "rb") as y:
        x.seek(a)
        y.seek(a)
        assert x.read(b - a) == y.read(b - a)


def test_ag_count_bounded_on_a_sparse_terabyte(tmp_path: Path) -> None:
    """A superblock claiming 65536 AGs of 16 MiB on a sparse 1 TiB disk (every AG header a
    hole) and one claiming 2^20 AGs on 16 TiB: one line, in time, nothing analysed."""
    from ploopfs.volume.writer import ImageWriter

    base = make_xfs(tmp_path, "tiny", 64, [], small_files=4, big_mb=1)
    sector = bytearray(head(base, 4096))
    for agcount, name in ((1 << 16, "1t"), (1 << 20, "16t")):
        agblocks = 4096
        struct.pack_into(">Q", sector, 8, agcount * agblocks)
        struct.pack_into(">II", sector, 84, agblocks, agcount)
        sector[124] = 12  # agblklog
        struct.pack_into("<I", sector, 224, xfs.metadata_crc(sector[:512], 224))
        img = tmp_path / f"{name}.hdd"
        with ImageWriter.create(img, agcount * agblocks * 4096, C) as w:
            w.write_cluster(0, bytes(sector) + bytes(C - len(sector)))
        for cmd in ("info", "du"):
            out = bounded(cmd, "--json", img)
            [f] = json.loads(out)["filesystems"]
            assert f["kind"] == "xfs"
            assert any("XFS_GEOMETRY" in x or "XFS_AG_HEADER" in x for x in f["findings"]), f
        bounded("compact", "--no-progress", img, tmp_path / f"out-{name}", codes=(0, 1))


# -- the log -------------------------------------------------------------------------------------
def log_state(img: Path) -> str:
    out = subprocess.run(["xfs_logprint", "-t", str(img)], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    m = re.search(r"state: <(\w+)>", out)
    assert m, out
    return m[1]


def test_dirty_log_keeps_the_filesystem_whole(tmp_path: Path, guard_sources) -> None:
    """Shut down with transactions in the log (xfs_io shutdown -f), as a running container's
    disk is: the trees may not show what the log allocated, so du and compact keep it whole
    (XFS_RECOVERY), check --deep says so, and info's figures are still the norecovery mount's."""
    img = tmp_path / "dirty.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.xfs", "-q", "-f", img)
    with xfs_mount(img, tmp_path / "mnt-rw", "rw") as m:
        for i in range(50):
            (m / f"f{i}").write_bytes(random.Random(i).randbytes(40_000))
        os.sync()
        for i in range(50, 80):
            (m / f"f{i}").write_bytes(b"x" * 5000)
        os.unlink(m / "f3")
        sh("xfs_io", "-x", "-c", "shutdown -f", m)
    assert log_state(img) == "DIRTY"
    with xfs_mount(img, tmp_path / "mnt", "ro,norecovery") as m:
        st = os.statvfs(m)
    disk, _ = gpt_disk(tmp_path, img)
    src = to_ploop(disk, tmp_path / "src")
    guard_sources(src)
    [f] = json.loads(bounded("info", "--json", src))["filesystems"]
    assert (f["statfs"]["f_bfree"], f["statfs"]["f_files"], f["statfs"]["f_ffree"]) == (
        st.f_bfree, st.f_files, st.f_ffree)
    assert any("XFS_RECOVERY" in x for x in f["findings"])
    [g] = json.loads(bounded("du", "--json", src))["filesystems"]
    assert not g["analysed"] and g["clusters"] is None
    deep = json.loads(run_cli("check", "--json", "--deep", src).stdout)
    assert any(x["code"] == "DEEP_FILESYSTEM" and "XFS_RECOVERY" in x["message"]
               for x in deep["findings"])
    out = tmp_path / "out"
    bounded("compact", "--no-progress", src, out, codes=(0, 1))
    raw = check_compact_output(out, tmp_path)
    assert sh("cmp", disk, raw) == ""  # every byte kept


def test_wrapped_clean_log_is_analysed(tmp_path: Path) -> None:
    """A log that went round more than once (cycle 2 at its start) and ended with an unmount
    record: clean, analysed."""
    img = tmp_path / "wrap.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    sh("mkfs.xfs", "-q", "-f", img)
    with xfs_mount(img, tmp_path / "mnt-rw", "rw") as m:
        for _ in range(25):
            for i in range(1000):
                (m / f"x{i}").write_text("a")
            for i in range(1000):
                os.unlink(m / f"x{i}")
            os.sync()
    assert log_state(img) == "CLEAN"
    sb = xfs.parse_superblock(head(img))
    first = head(img, 8, sb.log_first_block * sb.blocksize)
    w0, w1 = struct.unpack(">II", first)
    assert (w1 if w0 == xfs.LOG_MAGIC else w0) >= 2  # the log wrapped
    [f] = cli_json("du", "--json", "--cluster-size", "1M", img)["filesystems"]
    assert f["analysed"] and f["findings"] == []
