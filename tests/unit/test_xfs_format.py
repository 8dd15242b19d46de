"""format/xfs.py on synthetic metadata: the superblock (v4, v5) and its validation field by field,
the AGF and AGI, and the bnobt walk: free extents of one- and multi-level trees, and every kind
of damage (loops, shared blocks, wrong levels, bad keys, bad siblings, counts that disagree with
the AGF, foreign blocks) ending in one XfsFormatError line, never another exception or a hang.
A real filesystem made by mkfs.xfs is in tests/integration/test_xfs_mkfs.py."""

from __future__ import annotations

import random
import re
import struct
import uuid

import numpy as np
import pytest

from ploopfs.format import xfs
from ploopfs.format.xfs import XfsFormatError

UUID = uuid.UUID("aafe20e6-57fb-4eb3-8979-c8055605f4fc").bytes


def crc_fix(buf: bytearray, off: int) -> bytearray:
    struct.pack_into("<I", buf, off, xfs.metadata_crc(buf, off))
    return buf


def make_sb(*, v5: bool = True, bs: int = 4096, sect: int = 512, agblocks: int = 4096,
            agcount: int = 4, dblocks: int | None = None, logstart: int | None = None,
            logblocks: int = 1368, isize: int | None = None, label: bytes = b"mylabel",
            crc: bool = True, **fields: int) -> bytearray:
    """A superblock sector as mkfs.xfs lays it out; `fields`: offset-named overrides
    ("u8@126": 1, ">I@84": 5, ...)."""
    isize = isize or (512 if v5 else 256)
    dblocks = agcount * agblocks if dblocks is None else dblocks
    agblklog = (agblocks - 1).bit_length()
    if logstart is None:
        logstart = (2 << agblklog) | 6  # in AG 2, as mkfs puts it
    b = bytearray(sect)
    struct.pack_into(">IIQQQ", b, 0, 0x58465342, bs, dblocks, 0, 0)
    b[32:48] = UUID
    struct.pack_into(">QQQQ", b, 48, logstart, 128, 129, 130)
    struct.pack_into(">IIIII", b, 80, 1, agblocks, agcount, 0, logblocks)
    version = 0xB4A5 if v5 else 0xB4A4
    struct.pack_into(">HHHH", b, 100, version, sect, isize, bs // isize)
    b[108:120] = label.ljust(12, b"\0")
    b[120:128] = bytes([bs.bit_length() - 1, sect.bit_length() - 1, isize.bit_length() - 1,
                        (bs // isize).bit_length() - 1, agblklog, 0, 0, 25])
    struct.pack_into(">QQQQ", b, 128, 64, 61, dblocks - 2000, 0)
    struct.pack_into(">I", b, 180, 8)  # inoalignmt
    struct.pack_into(">I", b, 200, 0x18A)  # features2: lazysbcount, attr2, projid32, ...
    struct.pack_into(">I", b, 204, 0x18A)
    if v5:
        struct.pack_into(">IIII", b, 208, 0, 0xD, 0xB, 0)  # finobt, reflink, inobtcount; ftype,
        # sparse, bigtime
    for key, value in fields.items():
        fmt, off = key.split("@")
        if fmt == "u8":
            b[int(off)] = value
        else:
            struct.pack_into(fmt, b, int(off), value)
    if v5 and crc:
        crc_fix(b, 224)
    return b


def make_agf(sb: xfs.Superblock, agno: int, *, root: int = 1, level: int = 1, freeblks: int = 0,
             longest: int = 0, flcount: int = 4, btreeblks: int = 0, crc: bool = True,
             **fields: int) -> bytearray:
    b = bytearray(sb.sectsize)
    struct.pack_into(">IIII", b, 0, 0x58414746, 1, agno, sb.ag_blocks(agno))
    struct.pack_into(">III", b, 16, root, 2, 0)
    struct.pack_into(">III", b, 28, level, 1, 0)
    struct.pack_into(">IIIIII", b, 40, 1, flcount, flcount, freeblks, longest, btreeblks)
    b[64:80] = UUID
    struct.pack_into(">IIII", b, 80, 0, 1, 5, 1)  # refcount btree: 1 block at 5, level 1
    for key, value in fields.items():
        fmt, off = key.split("@")
        struct.pack_into(fmt, b, int(off), value)
    if sb.has_crc and crc:
        crc_fix(b, 216)
    return b


def make_agi(sb: xfs.Superblock, agno: int, *, count: int = 64, free: int = 61,
             crc: bool = True, **fields: int) -> bytearray:
    b = bytearray(sb.sectsize)
    struct.pack_into(">IIIIIIII", b, 0, 0x58414749, 1, agno, sb.ag_blocks(agno), count, 3, 1, free)
    b[296:312] = UUID
    for key, value in fields.items():
        fmt, off = key.split("@")
        struct.pack_into(fmt, b, int(off), value)
    if sb.has_crc and crc:
        crc_fix(b, 312)
    return b


def make_block(sb: xfs.Superblock, agno: int, agbno: int, level: int,
               keys: list[tuple[int, int]], ptrs: list[int] | None = None, *,
               left: int = xfs.NULLAGBLOCK, right: int = xfs.NULLAGBLOCK,
               magic: int | None = None, blkno: int | None = None, owner: int | None = None,
               numrecs: int | None = None, crc: bool = True) -> bytearray:
    b = bytearray(sb.blocksize)
    magic = magic if magic is not None else (xfs.AB3B_MAGIC if sb.has_crc else xfs.ABTB_MAGIC)
    struct.pack_into(">IHHII", b, 0, magic, level, len(keys) if numrecs is None else numrecs,
                     left, right)
    hdr = sb.btree_hdr
    if sb.has_crc:
        struct.pack_into(">QQ", b, 16, sb.daddr(agno, agbno) if blkno is None else blkno, 0)
        b[32:48] = UUID
        struct.pack_into(">I", b, 48, agno if owner is None else owner)
    for i, (s, c) in enumerate(keys):
        struct.pack_into(">II", b, hdr + 8 * i, s, c)
    if level:
        assert ptrs is not None
        base = hdr + 8 * sb.alloc_node_maxrecs
        for i, p in enumerate(ptrs):
            struct.pack_into(">I", b, base + 4 * i, p)
    if sb.has_crc and crc:
        crc_fix(b, 52)
    return b


@pytest.fixture(params=[True, False], ids=["v5", "v4"])
def sb(request: pytest.FixtureRequest) -> xfs.Superblock:
    return xfs.parse_superblock(make_sb(v5=request.param))


# -- CRC32C ----------------------------------------------------------------------------------------
def _crc32c_bitwise(data: bytes) -> int:
    """The textbook bit-at-a-time CRC32C, as the model."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_reference_values() -> None:
    assert xfs.crc32c(b"123456789") == 0xE3069283
    assert xfs.crc32c(b"") == 0
    assert xfs.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert xfs.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of ones


def test_crc32c_equals_the_bitwise_model() -> None:
    rnd = random.Random(3)
    for n in [1, 3, 4, 5, 255, 256, 257, 511, 512, 1000, 4096, 65536]:
        data = rnd.randbytes(n)
        assert xfs.crc32c(data) == _crc32c_bitwise(data), n
    with pytest.raises(ValueError):
        xfs.crc32c(bytes(65537))


def test_metadata_crc_ignores_its_own_field() -> None:
    b = bytearray(range(256)) * 2
    crc_fix(b, 224)
    assert xfs.crc_ok(b, 224)
    b[3] ^= 1
    assert not xfs.crc_ok(b, 224)


# -- superblock ------------------------------------------------------------------------------------
def test_superblock_v5_fields_and_derived_values() -> None:
    sb = xfs.parse_superblock(make_sb(agcount=4, dblocks=4 * 4096 - 100), limit=64 << 20)
    assert (sb.version, sb.has_crc, sb.has_lazysbcount) == (5, True, True)
    assert (sb.blocksize, sb.sectsize, sb.inodesize, sb.agcount) == (4096, 512, 512, 4)
    assert sb.label == "mylabel"
    assert sb.uuid_str == "aafe20e6-57fb-4eb3-8979-c8055605f4fc"
    assert [sb.ag_blocks(a) for a in range(4)] == [4096, 4096, 4096, 3996]
    assert (sb.log_agno, sb.log_agbno, sb.log_first_block) == (2, 6, 8198)
    assert sb.internal_log_blocks == 1368
    assert sb.agf_byte(1) == 4096 * 4096 + 512 and sb.agi_byte(0) == 1024
    assert sb.daddr(1, 1) == 32776  # what xfs_db prints as the block's bno
    assert sb.agfl_size == (512 - 36) // 4
    assert (sb.alloc_leaf_maxrecs, sb.alloc_node_maxrecs) == (505, 336)
    assert sb.alloc_maxlevels == 2
    # 25 % of the blocks, in whole chunks of 64 inodes (8 blocks of 8 inodes)
    assert sb.maxicount == (sb.dblocks * 25 // 100 // 8 * 8) << 3
    assert sb.features() == ["v5", "crc", "finobt", "reflink", "inobtcount", "ftype", "sparse",
                             "bigtime", "internal_log"]


def test_superblock_v4() -> None:
    sb = xfs.parse_superblock(make_sb(v5=False))
    assert (sb.version, sb.has_crc, sb.has_lazysbcount, sb.btree_hdr) == (4, False, True, 16)
    assert sb.agfl_size == 128
    assert "lazy-count" in sb.features() and "crc" not in sb.features()
    no_lazy = xfs.parse_superblock(make_sb(v5=False, **{">I@200": 0x8}))
    assert not no_lazy.has_lazysbcount


def test_external_log_counts_nothing_in_the_data_device() -> None:
    sb = xfs.parse_superblock(make_sb(logstart=0))
    assert not sb.internal_log and sb.internal_log_blocks == 0
    assert "external_log" in sb.features()


BAD_SB = {
    "magic": ({">I@0": 0x58465343}, "bad superblock magic"),
    "version": ({">H@100": 0xB4A3}, "version 3"),
    "sector size": ({">H@102": 1000}, "sector size 1000"),
    "block size": ({">I@4": 3000}, "block size 3000"),
    "block log": ({"u8@120": 11}, "block size 4096 (sb_blocklog 11"),
    "inode size": ({">H@104": 100}, "inode size 100"),
    "inopblock": ({">H@106": 4}, "sb_inopblock 4"),
    "agblocks small": ({">I@84": 100, "u8@124": 7}, "sb_agblocks 100"),
    "agblklog": ({"u8@124": 13}, "sb_agblklog 13"),
    "agcount": ({">I@88": 5}, "sb_agcount 5 does not fit"),
    "agcount zero": ({">I@88": 0}, "sb_agcount 0"),
    "agcount huge": ({">I@88": 0xFFFFFFFF}, "does not fit sb_dblocks"),
    "dblocks zero": ({">Q@8": 0}, "sb_dblocks 0"),
    "imax_pct": ({"u8@127": 101}, "sb_imax_pct 101"),
    "inprogress": ({"u8@126": 1}, "sb_inprogress"),
    "shared_vn": ({"u8@179": 1}, "sb_shared_vn"),
    "log outside": ({">Q@48": (3 << 12) | 4000}, "does not lie inside one AG"),
    "log huge": ({">I@96": 2_000_000}, "log of 2000000 blocks"),
    "fdblocks": ({">Q@144": 1 << 40}, "sb_fdblocks"),
    "ifree": ({">Q@136": 65}, "sb_ifree 65 exceeds"),
    "unknown incompat": ({">I@216": 0x400}, "unknown incompatible features 0x400"),
    "dirblklog": ({"u8@192": 5}, "directory block log"),
}


@pytest.mark.parametrize("name", sorted(BAD_SB))
def test_superblock_rejects(name: str) -> None:
    fields, want = BAD_SB[name]
    with pytest.raises(XfsFormatError, match=re.escape(want)) as e:
        xfs.parse_superblock(make_sb(**fields))
    assert "\n" not in str(e.value)


def test_superblock_crc_and_truncation() -> None:
    b = make_sb()
    b[300] ^= 0xFF  # past every field, inside the checksummed sector
    with pytest.raises(XfsFormatError, match="CRC mismatch"):
        xfs.parse_superblock(b)
    xfs.parse_superblock(make_sb(v5=False) + b"x")  # v4 has no CRC
    with pytest.raises(XfsFormatError, match="truncated"):
        xfs.parse_superblock(make_sb()[:200])
    big = make_sb(sect=4096, agblocks=4096)
    xfs.parse_superblock(big)
    with pytest.raises(XfsFormatError, match=r"truncated .* 4096-byte sector"):
        xfs.parse_superblock(big[:512])


def test_superblock_must_fit_its_device() -> None:
    b = make_sb()
    xfs.parse_superblock(b, limit=64 << 20)
    with pytest.raises(XfsFormatError, match="do not fit the 67108863 bytes"):
        xfs.parse_superblock(b, limit=(64 << 20) - 1)


def test_superblock_random_bytes_never_crash() -> None:
    rnd = random.Random(1)
    good = make_sb()
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 6)):
            b[rnd.randrange(264)] = rnd.randrange(256)
        if rnd.random() < 0.5:
            crc_fix(b, 224)
        try:
            sb = xfs.parse_superblock(b, limit=1 << 40)
        except XfsFormatError as e:
            assert "\n" not in str(e)
            continue
        assert sb.agcount * sb.agblocks >= sb.dblocks > (sb.agcount - 1) * sb.agblocks
        assert sb.alloc_maxlevels <= xfs.MAX_LEVELS


# -- AGF, AGI ------------------------------------------------------------------------------------
def test_agf_and_agi(sb: xfs.Superblock) -> None:
    agf = xfs.parse_agf(make_agf(sb, 3, freeblks=900, longest=800, btreeblks=2), sb, 3)
    assert (agf.agno, agf.length, agf.bno_root, agf.bno_level, agf.freeblks) == (3, 4096, 1, 1, 900)
    assert agf.allocbt_blks(sb) == 2
    agi = xfs.parse_agi(make_agi(sb, 1), sb, 1)
    assert (agi.count, agi.freecount, agi.length) == (64, 61, 4096)


BAD_AGF = {
    "magic": ({">I@0": 0x58414747}, "bad magic"),
    "version": ({">I@4": 2}, "version 2"),
    "seqno": ({">I@8": 1}, "agf_seqno 1"),
    "length": ({">I@12": 4095}, "agf_length 4095"),
    "level 0": ({">I@28": 0}, "bno btree level 0"),
    "too deep": ({">I@28": 3}, "bno btree level 3"),
    "cnt level": ({">I@32": 99}, "cnt btree level 99"),
    "root in headers": ({">I@16": 0}, "bno btree root 0"),
    "root past": ({">I@16": 4096}, "bno btree root 4096"),
    "longest": ({">I@56": 5000}, "agf_freeblks 100, agf_longest 5000"),
    "flcount": ({">I@48": 1000}, "free list"),
    "btreeblks": ({">I@60": 5000}, "agf_btreeblks 5000"),
}


@pytest.mark.parametrize("name", sorted(BAD_AGF))
def test_agf_rejects(sb: xfs.Superblock, name: str) -> None:
    fields, want = BAD_AGF[name]
    with pytest.raises(XfsFormatError, match=re.escape(f"AG 2 AGF: {want}")):
        xfs.parse_agf(make_agf(sb, 2, freeblks=100, longest=50, **fields), sb, 2)


def test_agf_v5_checks_crc_and_uuid() -> None:
    sb = xfs.parse_superblock(make_sb())
    b = make_agf(sb, 0)
    b[100] ^= 1
    with pytest.raises(XfsFormatError, match="AG 0 AGF: CRC mismatch"):
        xfs.parse_agf(b, sb, 0)
    b = make_agf(sb, 0, crc=False)
    b[64] ^= 1
    crc_fix(b, 216)
    with pytest.raises(XfsFormatError, match="is not the filesystem's"):
        xfs.parse_agf(b, sb, 0)


@pytest.mark.parametrize(("fields", "want"), [
    ({">I@0": 1}, "bad magic"), ({">I@8": 0}, "agi_seqno 0"), ({">I@12": 7}, "agi_length 7"),
    ({">I@24": 0}, "inode btree level 0"), ({">I@28": 65}, "65 free"),
])
def test_agi_rejects(sb: xfs.Superblock, fields: dict[str, int], want: str) -> None:
    with pytest.raises(XfsFormatError, match=f"AG 1 AGI: .*{want}"):
        xfs.parse_agi(make_agi(sb, 1, **fields), sb, 1)


# -- the bnobt walk --------------------------------------------------------------------------------
class Blocks(dict):
    """AG block number -> bytes; counts the reads."""

    reads = 0

    def __call__(self, agbno: int) -> bytes:
        self.reads += 1
        return bytes(self.get(agbno, bytes(4096)))


def leaf_tree(sb: xfs.Superblock, agno: int, recs: list[tuple[int, int]]) -> tuple[xfs.Agf, Blocks]:
    blocks = Blocks({1: make_block(sb, agno, 1, 0, recs)})
    c = [n for _, n in recs]
    agf = xfs.parse_agf(make_agf(sb, agno, freeblks=sum(c), longest=max(c, default=0)), sb, agno)
    return agf, blocks


def two_level(sb: xfs.Superblock, agno: int = 0, *, leaves: int = 3, per: int = 50,
              broken: str | None = None) -> tuple[xfs.Agf, Blocks, list[tuple[int, int]]]:
    """A root node at block 1 over `leaves` leaves at 10, 11, ... of `per` records each."""
    recs = [(100 + 3 * i, 1 + i % 2) for i in range(leaves * per)]
    blocks = Blocks()
    ptrs = [10 + k for k in range(leaves)]
    for k, p in enumerate(ptrs):
        chunk = recs[k * per:(k + 1) * per]
        left = ptrs[k - 1] if k else xfs.NULLAGBLOCK
        right = ptrs[k + 1] if k + 1 < leaves else xfs.NULLAGBLOCK
        blocks[p] = make_block(sb, agno, p, 0, chunk, left=left, right=right)
    keys = [recs[k * per] for k in range(leaves)]
    if broken == "loop":
        ptrs[-1] = 1
    elif broken == "shared":
        ptrs[-1] = ptrs[0]
    elif broken == "order":
        keys[1], keys[2] = keys[2], keys[1]
    blocks[1] = make_block(sb, agno, 1, 1, keys, ptrs)
    c = [n for _, n in recs]
    agf = xfs.parse_agf(make_agf(sb, agno, root=1, level=2, freeblks=sum(c), longest=max(c),
                                 btreeblks=leaves), sb, agno)
    return agf, blocks, recs


def test_single_leaf(sb: xfs.Superblock) -> None:
    agf, blocks = leaf_tree(sb, 1, [(10, 4086)])
    s, c = xfs.free_extents(sb, agf, blocks)
    assert s.tolist() == [10] and c.tolist() == [4086]
    assert s.dtype == np.int64


def test_empty_root_leaf_is_a_full_ag(sb: xfs.Superblock) -> None:
    agf, blocks = leaf_tree(sb, 0, [])
    s, c = xfs.free_extents(sb, agf, blocks)
    assert s.size == 0 and c.size == 0


def test_two_levels(sb: xfs.Superblock) -> None:
    agf, blocks, recs = two_level(sb, 2)
    s, c = xfs.free_extents(sb, agf, blocks)
    assert list(zip(s.tolist(), c.tolist(), strict=True)) == recs
    assert blocks.reads == 4


@pytest.mark.parametrize(("broken", "want"), [
    ("loop", "block 1 reached twice"), ("shared", "block 10 reached twice"),
    ("order", "keys out of order"),
])
def test_two_level_damage(sb: xfs.Superblock, broken: str, want: str) -> None:
    agf, blocks, _ = two_level(sb, broken=broken)
    with pytest.raises(XfsFormatError, match=want):
        xfs.free_extents(sb, agf, blocks)


def test_loop_through_a_leaf_is_caught_by_the_level(sb: xfs.Superblock) -> None:
    agf, blocks, _ = two_level(sb)
    blocks[11] = make_block(sb, 0, 11, 1, [(250, 1)], [1], left=10, right=12)
    with pytest.raises(XfsFormatError, match="block 11: level 1 \\(want 0\\)"):
        xfs.free_extents(sb, agf, blocks)


def test_more_blocks_than_the_agf_counts(sb: xfs.Superblock) -> None:
    agf, blocks, _ = two_level(sb)
    agf = xfs.parse_agf(make_agf(sb, 0, root=1, level=2, freeblks=agf.freeblks,
                                 longest=agf.longest, btreeblks=1), sb, 0)
    with pytest.raises(XfsFormatError, match="more than 2 blocks"):
        xfs.free_extents(sb, agf, blocks)


def test_siblings(sb: xfs.Superblock) -> None:
    agf, blocks, recs = two_level(sb)
    blocks[11] = make_block(sb, 0, 11, 0, recs[50:100], left=10, right=99)
    with pytest.raises(XfsFormatError, match="block 11: right sibling 99"):
        xfs.free_extents(sb, agf, blocks)
    agf, blocks, recs = two_level(sb)
    blocks[12] = make_block(sb, 0, 12, 0, recs[100:], left=10)
    with pytest.raises(XfsFormatError, match="block 12: left sibling 10"):
        xfs.free_extents(sb, agf, blocks)
    agf, blocks, recs = two_level(sb)
    blocks[12] = make_block(sb, 0, 12, 0, recs[100:], left=11, right=13)
    with pytest.raises(XfsFormatError, match="right sibling 13 past the last block"):
        xfs.free_extents(sb, agf, blocks)


def test_keys_outside_the_parent_range(sb: xfs.Superblock) -> None:
    agf, blocks, recs = two_level(sb)
    blocks[10] = make_block(sb, 0, 10, 0, [*recs[:49], (260, 1)], right=11)
    with pytest.raises(XfsFormatError, match="outside its parent's range"):
        xfs.free_extents(sb, agf, blocks)


@pytest.mark.parametrize(("recs", "want"), [
    ([(10, 5), (14, 2)], "overlap or touch"), ([(10, 5), (15, 2)], "overlap or touch"),
    ([(10, 0)], "record 0 \\[10, \\+0\\]"), ([(4000, 97)], "not inside the AG's 4096 blocks"),
    ([(0, 3)], "record 0 \\[0, \\+3\\]"), ([(20, 1), (10, 1)], "keys out of order"),
])
def test_bad_records(sb: xfs.Superblock, recs: list[tuple[int, int]], want: str) -> None:
    blocks = Blocks({1: make_block(sb, 0, 1, 0, recs)})
    agf = xfs.parse_agf(make_agf(sb, 0, freeblks=4000, longest=10), sb, 0)
    with pytest.raises(XfsFormatError, match=want):
        xfs.free_extents(sb, agf, blocks)


def test_counts_must_match_the_agf(sb: xfs.Superblock) -> None:
    blocks = Blocks({1: make_block(sb, 0, 1, 0, [(10, 5), (20, 7)])})
    agf = xfs.parse_agf(make_agf(sb, 0, freeblks=13, longest=7), sb, 0)
    with pytest.raises(XfsFormatError, match="hold 12 free blocks, the AGF says 13"):
        xfs.free_extents(sb, agf, blocks)
    agf = xfs.parse_agf(make_agf(sb, 0, freeblks=12, longest=6), sb, 0)
    with pytest.raises(XfsFormatError, match="longest free extent 7, the AGF says 6"):
        xfs.free_extents(sb, agf, blocks)


def test_block_header_checks(sb: xfs.Superblock) -> None:
    agf = xfs.parse_agf(make_agf(sb, 2, freeblks=5, longest=5), sb, 2)
    other = xfs.ABTB_MAGIC if sb.has_crc else xfs.AB3B_MAGIC
    cases = [(make_block(sb, 2, 1, 0, [(10, 5)], magic=other), "bad magic"),
             (make_block(sb, 2, 1, 0, [(10, 5)], numrecs=600), "600 records"),
             (make_block(sb, 2, 1, 0, [(10, 5)], right=1), "right sibling 1 is not a block"),
             (make_block(sb, 2, 1, 0, [(10, 5)])[:100], "truncated")]
    if sb.has_crc:
        cases += [(make_block(sb, 2, 1, 0, [(10, 5)], blkno=8), "bb_blkno 8"),
                  (make_block(sb, 2, 1, 0, [(10, 5)], owner=0), "bb_owner 0"),
                  (make_block(sb, 2, 1, 0, [(10, 5)], crc=False), "CRC mismatch")]
    for raw, want in cases:
        with pytest.raises(XfsFormatError, match=want):
            xfs.free_extents(sb, agf, Blocks({1: raw}))


def test_mutated_trees_fail_in_one_line_and_bounded() -> None:
    """Random damage to every block of a v4 tree (no CRC to hide behind): a result or an
    XfsFormatError, never another exception, and never more reads than blocks."""
    sb = xfs.parse_superblock(make_sb(v5=False))
    rnd = random.Random(5)
    ok = 0
    for _ in range(600):
        agf, blocks, _ = two_level(sb, leaves=4, per=30)
        for _ in range(rnd.randint(1, 4)):
            k = rnd.choice(list(blocks))
            raw = bytearray(blocks[k])
            off = rnd.choice([rnd.randrange(16), rnd.randrange(16, 16 + 8 * 40),
                              rnd.randrange(16 + 8 * sb.alloc_node_maxrecs,
                                            16 + 8 * sb.alloc_node_maxrecs + 16)])
            raw[off] = rnd.randrange(256)
            blocks[k] = raw
        try:
            _, c = xfs.free_extents(sb, agf, blocks)
            ok += 1
            assert int(c.sum()) == agf.freeblks
        except XfsFormatError as e:
            assert "\n" not in str(e)
        assert blocks.reads <= agf.btreeblks + 1
    assert ok  # some mutations are harmless (unused bytes)


# -- the log ---------------------------------------------------------------------------------------
class Log:
    """A synthetic internal log of `n` 512-byte blocks, every block stamped with a cycle."""

    def __init__(self, n: int, cycle: int = 0) -> None:
        self.n = n
        self.buf = bytearray(n * 512)
        self.stamp(0, n, cycle)

    def stamp(self, first: int, count: int, cycle: int) -> None:
        for bb in range(first, first + count):
            struct.pack_into(">I", self.buf, (bb % self.n) * 512, cycle)

    def record(self, at: int, cycle: int, data_bbs: int = 1, *, unmount: bool = True,
               ops: int = 1) -> int:
        """A record header at block `at` and its data blocks (wrapping); returns the block
        after it."""
        self.stamp(at, 1 + data_bbs, cycle)
        h = (at % self.n) * 512
        struct.pack_into(">IIiIqqIii", self.buf, h, xfs.LOG_MAGIC, cycle, 2, data_bbs * 512,
                         cycle << 32 | at, cycle << 32 | at, 0, -1, ops)
        struct.pack_into(">i", self.buf, h + 320, 32768)
        d = ((at + 1) % self.n) * 512
        struct.pack_into(">IBB", self.buf, d + 4, 8, 0xAA, xfs.XLOG_UNMOUNT_TRANS if unmount else 2)
        return at + 1 + data_bbs

    def read(self, bb: int, count: int) -> bytes:
        assert bb >= 0 and bb + count <= self.n
        return bytes(self.buf[bb * 512:(bb + count) * 512])


@pytest.fixture
def log_sb() -> xfs.Superblock:
    return xfs.parse_superblock(make_sb(logblocks=1368))  # 10944 blocks of 512 bytes


def test_log_clean_after_mkfs_and_after_records(log_sb: xfs.Superblock) -> None:
    log = Log(10944)
    log.record(0, 1)
    assert xfs.log_needs_recovery(log_sb, log.read) is None
    log = Log(10944)
    at = log.record(0, 1)
    for _ in range(5):
        at = log.record(at, 1, 64, unmount=False, ops=12)
    log.record(at, 1)
    assert xfs.log_needs_recovery(log_sb, log.read) is None


def test_log_with_transactions_after_the_last_unmount_needs_recovery(log_sb: xfs.Superblock
                                                                        ) -> None:
    log = Log(10944)
    at = log.record(0, 1)
    log.record(at, 1, 64, unmount=False, ops=12)
    assert "not an unmount record" in xfs.log_needs_recovery(log_sb, log.read)
    log = Log(10944)
    log.record(0, 1, unmount=False)
    assert "not an unmount record" in xfs.log_needs_recovery(log_sb, log.read)


def test_log_wrapped(log_sb: xfs.Superblock) -> None:
    n = 10944
    log = Log(n, 1)
    at = log.record(n - 30, 1, 40, unmount=False, ops=7)  # wraps: its end is of the next cycle
    log.stamp(0, at - n, 2)
    log.record(at - n, 2)
    assert xfs.log_needs_recovery(log_sb, log.read) is None
    # the whole log of one cycle: the last record ends at the log's end
    log = Log(n, 2)
    log.record(n - 2, 2)
    assert xfs.log_needs_recovery(log_sb, log.read) is None


def test_log_torn_or_impossible(log_sb: xfs.Superblock) -> None:
    log = Log(10944)
    at = log.record(0, 1)
    at = log.record(at, 1, 64, unmount=False)
    end = log.record(at, 1)
    log.stamp(at - 10, 1, 0)  # a hole of the old cycle before the head
    assert "mixed cycles" in xfs.log_needs_recovery(log_sb, log.read)
    log = Log(10944)
    end = log.record(0, 1)
    log.stamp(end + 100, 1, 1)  # a block of the current cycle past the head
    assert "torn" in xfs.log_needs_recovery(log_sb, log.read)
    log = Log(10944, 1)
    log.stamp(0, 100, 3)
    assert "log cycles 3 at its start and 1" in xfs.log_needs_recovery(log_sb, log.read)
    log = Log(10944, 0)
    log.stamp(0, 5, 1)  # blocks of a cycle but no record header
    assert "no log record header" in xfs.log_needs_recovery(log_sb, log.read)


def test_external_log_cannot_be_checked() -> None:
    sb = xfs.parse_superblock(make_sb(logstart=0))
    assert "external device" in xfs.log_needs_recovery(sb, lambda bb, n: bytes(n * 512))
