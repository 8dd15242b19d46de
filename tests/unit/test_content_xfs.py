"""content/xfs.py on a synthetic XFS (built in memory with the builders of test_xfs_format.py):
df's figures from the AG headers as xfs_fs_statfs computes them after a norecovery mount, the
used map as the complement of the bnobt free extents, a damaged AG kept whole, a dirty log
keeping the filesystem whole, and df's KiB rounded up for 512-byte blocks. The same against the
kernel and xfs_db: tests/system/test_xfs.py."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from test_xfs_format import Log, make_agf, make_agi, make_block, make_sb

from ploopfs.content.registry import analyser_for
from ploopfs.content.usage import analyse_disk
from ploopfs.content.xfs import analyse_xfs
from ploopfs.format import xfs

AG_FREE = [[(10, 500), (600, 2000)], [(20, 4000)], [(8, 8)], [(1, 1), (3000, 96)]]


def build(*, v5: bool = True, bs: int = 4096, agblocks: int = 4096, dirty: bool = False,
          free: list[list[tuple[int, int]]] = AG_FREE) -> tuple[bytearray, xfs.Superblock]:
    logblocks = 64 * 4096 // bs
    raw = make_sb(v5=v5, bs=bs, agblocks=agblocks, logblocks=logblocks,
                  logstart=(2 << (agblocks - 1).bit_length()) | 2000)
    sb = xfs.parse_superblock(raw)
    img = bytearray(sb.size_bytes)
    img[:len(raw)] = raw
    root = max(1, 4 * sb.sectsize // bs)  # the first block after the AG's header sectors
    for agno in range(sb.agcount):
        recs = free[agno]
        counts = [c for _, c in recs]
        agf = make_agf(sb, agno, root=root, freeblks=sum(counts), longest=max(counts),
                       btreeblks=agno,  # AG k: k free-space btree blocks beyond the roots
                       **{">I@20": root + 1})  # the cntbt root
        img[sb.agf_byte(agno):sb.agf_byte(agno) + sb.sectsize] = agf
        agi = make_agi(sb, agno, count=64 * (agno + 1), free=10 + agno)
        img[sb.agi_byte(agno):sb.agi_byte(agno) + sb.sectsize] = agi
        blk = make_block(sb, agno, root, 0, recs)
        img[sb.block_byte(agno, root):sb.block_byte(agno, root) + sb.blocksize] = blk
    log = Log(sb.logblocks * bs // 512)
    log.record(0, 1, unmount=not dirty)
    at = sb.log_first_block * bs
    img[at:at + len(log.buf)] = log.buf
    return img, sb


def reader(img: bytearray):
    def read(off: int, n: int) -> bytes:
        return bytes(img[off:off + n])
    return read


def test_figures_are_xfs_fs_statfs() -> None:
    img, sb = build()
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=True, gran=4096)
    assert fs.findings == [] and fs.counted and fs.analysed
    assert (fs.kind, fs.label, fs.uuid) == ("xfs", "mylabel", sb.uuid_str)
    freeblks = sum(c for ag in AG_FREE for _, c in ag)
    fdblocks = freeblks + 4 * 4 + (0 + 1 + 2 + 3)  # + AGFL blocks + btree blocks
    bfree = fdblocks - 8 * 4 - (0 + 1 + 2 + 3)  # less the set-aside and allocbt blocks
    icount, ifree = 64 * (1 + 2 + 3 + 4), 10 + 11 + 12 + 13
    files = min(icount + (bfree << sb.inopblog), sb.maxicount)
    st = fs.statfs()
    assert (st["f_blocks"], st["f_bfree"], st["f_bavail"]) == (sb.dblocks - 64, bfree, bfree)
    assert (st["f_files"], st["f_ffree"]) == (files, files - (icount - ifree))
    assert st["df_size_kib"] == (sb.dblocks - 64) * 4


def test_used_map_is_the_complement_of_the_free_extents() -> None:
    img, sb = build()
    fs = analyse_xfs(reader(img), "part1", 0, len(img), bitmaps=True, gran=4096)
    assert fs.used is not None
    used = fs.used.to_bools()
    want = np.ones(sb.dblocks, bool)
    for agno, recs in enumerate(AG_FREE):
        for s, c in recs:
            want[agno * sb.agblocks + s: agno * sb.agblocks + s + c] = False
    assert (used == want).all()
    # in clusters of 1 MiB of a disk where the filesystem starts at 1 MiB: a cluster is used
    # if one block in it is
    disk = bytearray(1 << 20) + img
    fs = analyse_xfs(reader(disk), "part1", 1 << 20, len(img), bitmaps=True, gran=1 << 20)
    per = want.reshape(-1, 256).any(axis=1)
    assert (fs.used.to_bools()[1:] == per).all() and not fs.used.to_bools()[0]


def test_damaged_ag_is_used_whole() -> None:
    img, sb = build()
    img[sb.agf_byte(1)] ^= 1  # AG 1's AGF magic
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=True, gran=4096)
    assert [f.code for f in fs.findings] == ["XFS_AG_HEADER"]
    assert "AG 1 AGF: bad magic" in fs.findings[0].message
    used = fs.used.to_bools()
    assert used[sb.agblocks:2 * sb.agblocks].all() and not used[610:2600].any()
    # a btree block reached twice: that AG only
    img, sb = build()
    off = sb.block_byte(3, 1)
    img[off:off + sb.blocksize] = make_block(sb, 3, 1, 1, [(1, 1)], [1])
    agf = make_agf(sb, 3, root=1, level=2, freeblks=97, longest=96, btreeblks=3)
    img[sb.agf_byte(3):sb.agf_byte(3) + sb.sectsize] = agf
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=True, gran=4096)
    assert [f.code for f in fs.findings] == ["XFS_FREESPACE"]
    assert "reached twice" in fs.findings[0].message
    assert fs.used.to_bools()[3 * sb.agblocks:].all()


def test_dirty_log_keeps_it_whole() -> None:
    img, _ = build(dirty=True)
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=True, gran=4096)
    assert [f.code for f in fs.findings] == ["XFS_RECOVERY"]
    assert fs.counted and not fs.analysed and fs.used is None


@pytest.mark.parametrize(("limit", "code"), [(64 << 20, None), ((64 << 20) - 1, "XFS_GEOMETRY")])
def test_must_fit_its_partition(limit: int, code: str | None) -> None:
    img, _ = build()
    fs = analyse_xfs(reader(img), "disk", 0, limit, bitmaps=False, gran=4096)
    assert [f.code for f in fs.findings] == ([code] if code else [])


def test_bad_superblock_is_not_analysed() -> None:
    img, _ = build()
    struct.pack_into(">I", img, 88, 0xFFFFFFFF)  # agcount, CRC now stale
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=True, gran=4096)
    assert [f.code for f in fs.findings] == ["XFS_SUPERBLOCK"] and not fs.counted
    assert "not analysed" in fs.to_json()["note"]


def test_registered_and_found_on_the_whole_disk() -> None:
    assert analyser_for("xfs") is not None and analyser_for("xfs").title == "XFS"
    img, _ = build()
    dfs = analyse_disk(reader(img), len(img), bitmaps=True, cluster_size=1 << 20)
    [fs] = dfs.filesystems
    assert (fs.where, fs.kind, fs.analysed, fs.groups) == ("disk", "xfs", True, 4)


def test_df_kib_rounds_up_512_byte_blocks() -> None:
    img, _ = build(v5=False, bs=512, agblocks=32768, free=[[(10, 100)]] * 4)
    fs = analyse_xfs(reader(img), "disk", 0, len(img), bitmaps=False, gran=512)
    assert fs.findings == []
    st = fs.statfs()
    assert st["df_size_kib"] == -(-st["f_blocks"] // 2)
    assert st["df_avail_kib"] == -(-st["f_bavail"] // 2)
