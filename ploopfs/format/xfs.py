"""Pure decoding of XFS metadata: the superblock (v4 and v5), the AG headers (AGF, AGI) and the
free-space B+tree by block number (bnobt), whose leaf records are the free extents of an AG.
No I/O: callers hand in bytes, or for a tree walk a callable returning a block's bytes
(ploopfs/content/xfs.py reads them through a Volume).

Everything is big-endian; v5 (crc) metadata carries a CRC32C stored little-endian, the owner's
UUID and its own disk address, all checked here. Validation follows the kernel's verifiers
(fs/xfs/libxfs: xfs_validate_sb_common, xfs_agf_verify, xfs_agi_verify, xfs_btree_sblock_verify,
xfs_alloc_check_irec), so that what is accepted here is what the kernel would read, and all
work is bounded by what is stored: the filesystem must fit its device, a tree is at most
`alloc_maxlevels` deep (≤ 9), every block is inside its AG and visited at most once, and the
blocks visited never outnumber what the AGF says the trees hold. Anything else raises
XfsFormatError with a one-line reason.

Addresses: an AG is `agblocks` blocks (the last one may be shorter); AG block `agbno` of AG
`agno` lies at byte (agno × agblocks + agbno) × blocksize of the filesystem. The AG headers are
sectors 0 (superblock copy), 1 (AGF), 2 (AGI) and 3 (AGFL) of each AG.
"""

from __future__ import annotations

import functools
import struct
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

SB_MAGIC = 0x58465342  # "XFSB"
AGF_MAGIC = 0x58414746  # "XAGF"
AGI_MAGIC = 0x58414749  # "XAGI"
ABTB_MAGIC = 0x41425442  # "ABTB": bnobt block, v4
AB3B_MAGIC = 0x41423342  # "AB3B": bnobt block, v5 (crc)
NULLAGBLOCK = 0xFFFFFFFF
SB_READ = 32768  # bytes to hand to parse_superblock: the largest sector (the CRC covers it)
MAX_LEVELS = 9  # XFS_BTREE_MAXLEVELS
MIN_AG_BLOCKS = 64  # XFS_MIN_AG_BLOCKS: the least a last AG may hold
MIN_AG_BYTES = 1 << 24  # XFS_MIN_AG_BYTES, 16 MiB
MAX_AG_BYTES = 1 << 40  # XFS_MAX_AG_BYTES, 1 TiB
MAX_LOG_BLOCKS = 1024 * 1024  # XFS_MAX_LOG_BLOCKS
MAX_LOG_BYTES = 2 * 1024 * 1024 * 1024 - 512 * 1024  # XFS_MAX_LOG_BYTES
MAXINUMBER = (1 << 56) - 1  # XFS_MAXINUMBER
ALLOC_SET_ASIDE_PER_AG = 8  # xfs_alloc_set_aside: XFS_ALLOCBT_AGFL_RESERVE (4) + 4 per AG
INODES_PER_CHUNK = 64

# sb_versionnum (the low nibble is the version)
VERSION_NUMBITS = 0x000F
VERSION_MOREBITSBIT = 0x8000
# sb_features2 (v4)
F2_LAZYSBCOUNT = 0x2
F2_ATTR2 = 0x8
F2_PROJID32 = 0x80
F2_FTYPE = 0x200
# v5 feature words
RO_COMPAT_FINOBT = 0x1
RO_COMPAT_RMAPBT = 0x2
RO_COMPAT_REFLINK = 0x4
RO_COMPAT_INOBTCNT = 0x8
INCOMPAT_FTYPE = 0x1
INCOMPAT_SPINODES = 0x2
INCOMPAT_META_UUID = 0x4
INCOMPAT_BIGTIME = 0x8
INCOMPAT_NEEDSREPAIR = 0x10
INCOMPAT_NREXT64 = 0x20
INCOMPAT_EXCHRANGE = 0x40
INCOMPAT_PARENT = 0x80
INCOMPAT_METADIR = 0x100
INCOMPAT_ZONED = 0x200
# Incompatible features whose AG headers and free-space trees are laid out as decoded here.
INCOMPAT_KNOWN = 0x3FF

_FEATURE_NAMES = (
    ("ro_compat", RO_COMPAT_FINOBT, "finobt"), ("ro_compat", RO_COMPAT_RMAPBT, "rmapbt"),
    ("ro_compat", RO_COMPAT_REFLINK, "reflink"), ("ro_compat", RO_COMPAT_INOBTCNT, "inobtcount"),
    ("incompat", INCOMPAT_FTYPE, "ftype"), ("incompat", INCOMPAT_SPINODES, "sparse"),
    ("incompat", INCOMPAT_META_UUID, "meta_uuid"), ("incompat", INCOMPAT_BIGTIME, "bigtime"),
    ("incompat", INCOMPAT_NEEDSREPAIR, "needsrepair"), ("incompat", INCOMPAT_NREXT64, "nrext64"),
    ("incompat", INCOMPAT_EXCHRANGE, "exchange"), ("incompat", INCOMPAT_PARENT, "parent"),
    ("incompat", INCOMPAT_METADIR, "metadir"), ("incompat", INCOMPAT_ZONED, "zoned"),
)


class XfsFormatError(ValueError):
    """Metadata that cannot be decoded; the message says which structure and why, in one line."""


# -- CRC32C (Castagnoli), as v5 metadata stores it -------------------------------------------------
# CRC32C without its initial and final inversion ("raw") is linear over GF(2), and leading zero
# bytes leave it at 0. So a buffer (front-padded with zeros to whole 256-byte chunks) is summed
# with two table look-ups per byte, all at once in numpy: POS[p][b] is the raw CRC of byte b at
# position p of a chunk; SHIFT[j][i][b] that of byte i of a chunk's raw CRC followed by j more
# chunks. The initial inversion is an XOR of the first 4 bytes; ~20 µs per 4 KiB block.
_CHUNK = 256
_MAX_CHUNKS = 256  # 64 KiB, the largest XFS block


@functools.cache
def _crc_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t[i] = c
    eight = np.uint32(8)

    def shift1(x: np.ndarray) -> np.ndarray:  # append one zero byte
        return (x >> eight) ^ t[x & np.uint32(0xFF)]

    pos = np.empty((_CHUNK, 256), np.uint32)
    pos[_CHUNK - 1] = t
    for p in range(_CHUNK - 2, -1, -1):
        pos[p] = shift1(pos[p + 1])
    shift = np.empty((_MAX_CHUNKS, 4, 256), np.uint32)
    shift[0] = np.arange(256, dtype=np.uint32)[None, :] << (eight * np.arange(4, dtype=np.uint32))[:, None]
    one = shift[0]
    for _ in range(_CHUNK):
        one = shift1(one)
    shift[1] = one
    for j in range(2, _MAX_CHUNKS):  # shift[j] = shift[j - 1] followed by one more chunk
        prev = shift[j - 1]
        shift[j] = (one[0][prev & 0xFF] ^ one[1][(prev >> eight) & 0xFF]
                    ^ one[2][(prev >> np.uint32(16)) & 0xFF] ^ one[3][prev >> np.uint32(24)])
    return t, pos.ravel(), shift


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The standard CRC32C of `data` (crc32c(b"123456789") == 0xE3069283), at most 64 KiB."""
    b = np.frombuffer(bytes(data), np.uint8)
    n = b.size
    if n > _CHUNK * _MAX_CHUNKS:
        raise ValueError(f"crc32c of {n} bytes (at most {_CHUNK * _MAX_CHUNKS})")
    if n < 4:  # too short for the inversion trick; only tests ask
        t = _crc_tables()[0]
        crc = 0xFFFFFFFF
        for x in b.tolist():
            crc = int(t[(crc ^ x) & 0xFF]) ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    _t, pos, shift = _crc_tables()
    k = -(-n // _CHUNK)
    buf = np.zeros(k * _CHUNK, np.uint8)
    pad = k * _CHUNK - n
    buf[pad:] = b
    buf[pad:pad + 4] ^= 0xFF
    chunk_crc = np.bitwise_xor.reduce(
        pos[np.arange(0, _CHUNK * 256, 256) + buf.reshape(k, _CHUNK).astype(np.intp)], axis=1)
    by = chunk_crc.astype("<u4").view(np.uint8).reshape(k, 4)
    parts = shift[np.arange(k - 1, -1, -1)[:, None], np.arange(4)[None, :], by]
    return int(np.bitwise_xor.reduce(parts, axis=None)) ^ 0xFFFFFFFF


def metadata_crc(buf: bytes | bytearray | memoryview, off: int) -> int:
    """The CRC32C of a v5 metadata buffer whose checksum field (4 bytes at `off`) counts as
    zero (xfs_start_cksum_safe / xfs_end_cksum)."""
    b = bytearray(buf)
    b[off:off + 4] = bytes(4)
    return crc32c(b)


def crc_ok(buf: bytes | bytearray | memoryview, off: int) -> bool:
    return metadata_crc(buf, off) == struct.unpack_from("<I", buf, off)[0]


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _is_pow2(n: int) -> bool:
    return n > 0 and not n & (n - 1)


# -- superblock --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Superblock:
    blocksize: int
    dblocks: int
    rblocks: int
    uuid: bytes
    logstart: int  # fsbno of the internal log (agno << agblklog | agbno); 0: external log
    rootino: int
    agblocks: int
    agcount: int
    logblocks: int
    versionnum: int
    sectsize: int
    inodesize: int
    inopblock: int
    fname: bytes
    blocklog: int
    sectlog: int
    inodelog: int
    inopblog: int
    agblklog: int
    inprogress: int
    imax_pct: int
    icount: int
    ifree: int
    fdblocks: int
    frextents: int
    shared_vn: int
    dirblklog: int
    features2: int
    features_compat: int = 0
    features_ro_compat: int = 0
    features_incompat: int = 0
    features_log_incompat: int = 0
    meta_uuid: bytes = bytes(16)

    # -- derived -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.versionnum & VERSION_NUMBITS

    @property
    def has_crc(self) -> bool:
        return self.version == 5

    @property
    def has_lazysbcount(self) -> bool:
        """Summary counters kept lazily (always with v5): the kernel recomputes them from the AG
        headers when the log was not cleanly unmounted or is not replayed (norecovery)."""
        return self.has_crc or bool(self.versionnum & VERSION_MOREBITSBIT
                                    and self.features2 & F2_LAZYSBCOUNT)

    @property
    def has_rmapbt(self) -> bool:
        return self.has_crc and bool(self.features_ro_compat & RO_COMPAT_RMAPBT)

    @property
    def has_reflink(self) -> bool:
        return self.has_crc and bool(self.features_ro_compat & RO_COMPAT_REFLINK)

    @property
    def label(self) -> str:
        return self.fname.split(b"\0", 1)[0].decode("utf-8", "replace")

    @property
    def uuid_str(self) -> str:
        return str(uuidlib.UUID(bytes=self.uuid))

    @property
    def owner_uuid(self) -> bytes:
        """The UUID v5 metadata blocks carry (sb_meta_uuid with the meta_uuid feature)."""
        return self.meta_uuid if self.features_incompat & INCOMPAT_META_UUID else self.uuid

    @property
    def internal_log(self) -> bool:
        return self.logstart != 0

    @property
    def log_agno(self) -> int:
        return self.logstart >> self.agblklog

    @property
    def log_agbno(self) -> int:
        return self.logstart & ((1 << self.agblklog) - 1)

    @property
    def log_first_block(self) -> int:
        """The internal log's first block, counted from the start of the filesystem."""
        return self.log_agno * self.agblocks + self.log_agbno

    @property
    def internal_log_blocks(self) -> int:
        return self.logblocks if self.internal_log else 0

    @property
    def size_bytes(self) -> int:
        return self.dblocks * self.blocksize

    def ag_blocks(self, agno: int) -> int:
        """Blocks of AG `agno` (the last AG holds what is left of dblocks)."""
        if agno == self.agcount - 1:
            return self.dblocks - agno * self.agblocks
        return self.agblocks

    def ag_first_block(self, agno: int) -> int:
        return agno * self.agblocks

    def ag_byte(self, agno: int) -> int:
        """Byte offset of AG `agno` in the filesystem."""
        return agno * self.agblocks * self.blocksize

    def agf_byte(self, agno: int) -> int:
        return self.ag_byte(agno) + self.sectsize

    def agi_byte(self, agno: int) -> int:
        return self.ag_byte(agno) + 2 * self.sectsize

    def block_byte(self, agno: int, agbno: int) -> int:
        return (agno * self.agblocks + agbno) * self.blocksize

    def daddr(self, agno: int, agbno: int) -> int:
        """The 512-byte sector number of an AG block (bb_blkno of a v5 btree block)."""
        return (agno * self.agblocks + agbno) << (self.blocklog - 9)

    @property
    def agfl_size(self) -> int:
        """Entries of the AG free list (xfs_agfl_size): the sector less the v5 header."""
        return (self.sectsize - (36 if self.has_crc else 0)) // 4

    @property
    def btree_hdr(self) -> int:
        """Bytes of a short-form btree block header (xfs_btree_sblock; 56 with crc)."""
        return 56 if self.has_crc else 16

    @property
    def alloc_leaf_maxrecs(self) -> int:
        return (self.blocksize - self.btree_hdr) // 8

    @property
    def alloc_node_maxrecs(self) -> int:
        return (self.blocksize - self.btree_hdr) // 12

    @property
    def alloc_maxlevels(self) -> int:
        """m_alloc_maxlevels: the deepest a free-space btree of one AG can be
        (xfs_btree_compute_maxlevels over half-full blocks and (agblocks + 1) / 2 records)."""
        return _compute_maxlevels(self.alloc_leaf_maxrecs // 2, self.alloc_node_maxrecs // 2,
                                  (self.agblocks + 1) // 2)

    @property
    def ialloc_blks(self) -> int:
        return max(INODES_PER_CHUNK, self.inopblock) >> self.inopblog

    @property
    def maxicount(self) -> int:
        """Most inodes the filesystem may hold (imax_pct of the space, in whole inode chunks);
        0: no limit."""
        if not self.imax_pct or not self.ialloc_blks:
            return 0
        blocks = self.dblocks * self.imax_pct // 100 // self.ialloc_blks * self.ialloc_blks
        return blocks << self.inopblog

    def features(self) -> list[str]:
        out = [f"v{self.version}"]
        if self.has_crc:
            out.append("crc")
            words = {"ro_compat": self.features_ro_compat, "incompat": self.features_incompat}
            out += [n for w, bit, n in _FEATURE_NAMES if words[w] & bit]
        else:
            if self.versionnum & VERSION_MOREBITSBIT:
                f2 = self.features2
                out += [n for bit, n in ((F2_LAZYSBCOUNT, "lazy-count"), (F2_ATTR2, "attr2"),
                                         (F2_PROJID32, "projid32bit"), (F2_FTYPE, "ftype"))
                        if f2 & bit]
        out.append("internal_log" if self.internal_log else "external_log")
        return out


def _compute_maxlevels(leaf_min: int, node_min: int, records: int) -> int:
    """xfs_btree_compute_maxlevels."""
    leaf_min, node_min = max(1, leaf_min), max(2, node_min)
    blocks = -(-records // leaf_min)
    level = 1
    while blocks > 1:
        blocks = -(-blocks // node_min)
        level += 1
    return level


def parse_superblock(buf: bytes | bytearray | memoryview, *, limit: int | None = None) -> Superblock:
    """Decode the primary superblock and validate it as xfs_validate_sb_common does. `buf`:
    the first bytes of the filesystem, at least its sector (SB_READ bytes always are), over
    which a v5 superblock's CRC is checked. `limit`: the bytes of the device (partition)
    holding the filesystem, which it must fit. XfsFormatError names the first field found
    wrong."""
    b = bytes(buf[:SB_READ])
    if len(b) < 264:
        raise XfsFormatError(f"superblock truncated ({len(b)} bytes)")
    magic, blocksize, dblocks, rblocks, _rext = struct.unpack_from(">IIQQQ", b, 0)
    if magic != SB_MAGIC:
        raise XfsFormatError(f"bad superblock magic {magic:#010x} (want 0x58465342 'XFSB')")
    logstart, rootino = struct.unpack_from(">QQ", b, 48)
    agblocks, agcount, _rbmblocks, logblocks = struct.unpack_from(">IIII", b, 84)
    versionnum, sectsize, inodesize, inopblock = struct.unpack_from(">HHHH", b, 100)
    blocklog, sectlog, inodelog, inopblog, agblklog, _rextslog, inprogress, imax_pct = b[120:128]
    icount, ifree, fdblocks, frextents = struct.unpack_from(">QQQQ", b, 128)
    shared_vn = b[179]
    dirblklog = b[192]
    features2 = struct.unpack_from(">I", b, 200)[0]
    compat, ro, incompat, log_incompat = struct.unpack_from(">IIII", b, 208)
    sb = Superblock(
        blocksize=blocksize, dblocks=dblocks, rblocks=rblocks, uuid=b[32:48], logstart=logstart,
        rootino=rootino, agblocks=agblocks, agcount=agcount, logblocks=logblocks,
        versionnum=versionnum, sectsize=sectsize, inodesize=inodesize, inopblock=inopblock,
        fname=b[108:120], blocklog=blocklog, sectlog=sectlog, inodelog=inodelog,
        inopblog=inopblog, agblklog=agblklog, inprogress=inprogress, imax_pct=imax_pct,
        icount=icount, ifree=ifree, fdblocks=fdblocks, frextents=frextents, shared_vn=shared_vn,
        dirblklog=dirblklog, features2=features2)
    if sb.version == 5:
        sb = replace(sb, features_compat=compat, features_ro_compat=ro,
                     features_incompat=incompat, features_log_incompat=log_incompat,
                     meta_uuid=b[248:264])
    _validate(sb, b, limit)
    return sb


def _validate(sb: Superblock, b: bytes, limit: int | None) -> None:
    def bad(what: str) -> XfsFormatError:
        return XfsFormatError(f"superblock: {what}")

    if sb.version not in (4, 5):
        raise bad(f"version {sb.version} in sb_versionnum {sb.versionnum:#06x} (want 4 or 5)")
    if not (9 <= sb.sectlog <= 15 and sb.sectsize == 1 << sb.sectlog):
        raise bad(f"sector size {sb.sectsize} (sb_sectlog {sb.sectlog}; 512..32768, a power of 2)")
    if not (9 <= sb.blocklog <= 16 and sb.blocksize == 1 << sb.blocklog):
        raise bad(f"block size {sb.blocksize} (sb_blocklog {sb.blocklog}; 512..65536, a power "
                  "of 2)")
    if sb.sectsize > sb.blocksize:
        raise bad(f"sector size {sb.sectsize} larger than the block size {sb.blocksize}")
    if sb.has_crc:
        # The checksum covers the superblock's whole sector (xfs_sb_read_verify).
        if len(b) < sb.sectsize:
            raise bad(f"truncated ({len(b)} bytes of a {sb.sectsize}-byte sector)")
        sect = b[:sb.sectsize]
        if not crc_ok(sect, 224):
            raise bad(f"CRC mismatch (stored {struct.unpack_from('<I', sect, 224)[0]:#010x}, "
                      f"computed {metadata_crc(sect, 224):#010x})")
        if sb.blocksize < 1024:
            raise bad(f"block size {sb.blocksize} with crc (v5 needs at least 1024)")
        unknown = sb.features_incompat & ~INCOMPAT_KNOWN
        if unknown:
            raise bad(f"unknown incompatible features {unknown:#x}")
    if not (8 <= sb.inodelog <= 11 and sb.inodesize == 1 << sb.inodelog):
        raise bad(f"inode size {sb.inodesize} (sb_inodelog {sb.inodelog}; 256..2048, a power of 2)")
    if sb.inodesize > sb.blocksize:
        raise bad(f"inode size {sb.inodesize} larger than the block size {sb.blocksize}")
    if sb.inopblock != sb.blocksize // sb.inodesize or sb.inopblog != sb.blocklog - sb.inodelog:
        raise bad(f"sb_inopblock {sb.inopblock} / sb_inopblog {sb.inopblog} do not match "
                  f"{sb.blocksize}-byte blocks of {sb.inodesize}-byte inodes")
    if sb.dirblklog + sb.blocklog > 16:
        raise bad(f"directory block log {sb.dirblklog} (blocks over 64 KiB)")
    agbytes = sb.agblocks * sb.blocksize
    if not MIN_AG_BYTES <= agbytes <= MAX_AG_BYTES:
        raise bad(f"sb_agblocks {sb.agblocks} ({agbytes} bytes per AG; 16 MiB..1 TiB)")
    if sb.agblklog != (sb.agblocks - 1).bit_length():
        raise bad(f"sb_agblklog {sb.agblklog} does not match sb_agblocks {sb.agblocks}")
    if sb.agcount == 0:
        raise bad("sb_agcount 0")
    if sb.dblocks == 0:
        raise bad("sb_dblocks 0")
    need = -(-sb.dblocks // sb.agblocks)
    if sb.agcount != need or sb.dblocks < (sb.agcount - 1) * sb.agblocks + MIN_AG_BLOCKS:
        raise bad(f"sb_agcount {sb.agcount} does not fit sb_dblocks {sb.dblocks} in AGs of "
                  f"{sb.agblocks} blocks ({need} AGs, the last at least {MIN_AG_BLOCKS} blocks)")
    if limit is not None and sb.dblocks * sb.blocksize > limit:
        raise bad(f"{sb.dblocks} blocks of {sb.blocksize} bytes ({sb.dblocks * sb.blocksize} "
                  f"bytes) do not fit the {limit} bytes of the device")
    if sb.imax_pct > 100:
        raise bad(f"sb_imax_pct {sb.imax_pct} over 100")
    if sb.shared_vn:
        raise bad(f"sb_shared_vn {sb.shared_vn} (must be 0)")
    if sb.inprogress:
        raise bad("sb_inprogress is set (mkfs did not finish)")
    if sb.logblocks > MAX_LOG_BLOCKS or sb.logblocks * sb.blocksize > MAX_LOG_BYTES:
        raise bad(f"log of {sb.logblocks} blocks (at most {MAX_LOG_BLOCKS} blocks, 2 GiB)")
    if sb.internal_log:
        if sb.logblocks == 0:
            raise bad("internal log of 0 blocks")
        if sb.log_agno >= sb.agcount or sb.log_agbno + sb.logblocks > sb.ag_blocks(sb.log_agno):
            raise bad(f"internal log at sb_logstart {sb.logstart} ({sb.logblocks} blocks) does "
                      f"not lie inside one AG")
    if sb.fdblocks > sb.dblocks:
        raise bad(f"sb_fdblocks {sb.fdblocks} exceeds sb_dblocks {sb.dblocks}")
    if sb.ifree > sb.icount:
        raise bad(f"sb_ifree {sb.ifree} exceeds sb_icount {sb.icount}")


# -- AG headers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agf:
    agno: int
    length: int
    bno_root: int
    cnt_root: int
    rmap_root: int
    bno_level: int
    cnt_level: int
    rmap_level: int
    flfirst: int
    fllast: int
    flcount: int
    freeblks: int
    longest: int
    btreeblks: int
    rmap_blocks: int
    refcount_blocks: int
    refcount_root: int
    refcount_level: int

    def allocbt_blks(self, sb: Superblock) -> int:
        """Free-space btree blocks other than the roots, as the kernel adds to m_allocbt_blks
        when it reads the AGF: agf_btreeblks less the rmapbt's non-root blocks."""
        n = self.btreeblks
        if sb.has_rmapbt:
            n -= self.rmap_blocks - 1
        return max(0, n)


def parse_agf(buf: bytes | bytearray | memoryview, sb: Superblock, agno: int) -> Agf:
    """Decode and validate (xfs_agf_verify) AG `agno`'s AGF: `buf` holds its sector."""
    b, where, length = _ag_header(buf, sb, agno, "AGF", AGF_MAGIC, 224, 216, 64)
    roots = struct.unpack_from(">III", b, 16)
    levels = struct.unpack_from(">III", b, 28)
    flfirst, fllast, flcount, freeblks, longest, btreeblks = struct.unpack_from(">IIIIII", b, 40)
    rmap_blocks, refcount_blocks, refcount_root, refcount_level = struct.unpack_from(">IIII", b, 80)
    agf = Agf(agno, length, roots[0], roots[1], roots[2], levels[0], levels[1], levels[2],
              flfirst, fllast, flcount, freeblks, longest, btreeblks, rmap_blocks,
              refcount_blocks, refcount_root, refcount_level)
    n = sb.agfl_size
    if flfirst >= n or fllast >= n or flcount > n:
        raise XfsFormatError(f"{where}: free list first {flfirst}, last {fllast}, count "
                             f"{flcount} (the list holds {n})")
    if longest > freeblks or freeblks > length:
        raise XfsFormatError(f"{where}: agf_freeblks {freeblks}, agf_longest {longest} in "
                             f"{length} blocks")
    maxl = min(sb.alloc_maxlevels, MAX_LEVELS)
    for name, lv in (("bno", agf.bno_level), ("cnt", agf.cnt_level)):
        if not 1 <= lv <= maxl:
            raise XfsFormatError(f"{where}: {name} btree level {lv} (1..{maxl})")
    for name, root in (("bno", agf.bno_root), ("cnt", agf.cnt_root)):
        if not _agbno_ok(sb, agno, root):
            raise XfsFormatError(f"{where}: {name} btree root {root} outside the AG's "
                                 f"blocks (after the headers, before {length})")
    if sb.has_lazysbcount and btreeblks > length:
        raise XfsFormatError(f"{where}: agf_btreeblks {btreeblks} over {length} blocks")
    if sb.has_rmapbt and (rmap_blocks > length or not 1 <= agf.rmap_level <= MAX_LEVELS):
        raise XfsFormatError(f"{where}: rmap btree of {rmap_blocks} blocks, level "
                             f"{agf.rmap_level}")
    if sb.has_reflink and (refcount_blocks > length or not 1 <= refcount_level <= MAX_LEVELS):
        raise XfsFormatError(f"{where}: refcount btree of {refcount_blocks} blocks, level "
                             f"{refcount_level}")
    return agf


@dataclass(frozen=True)
class Agi:
    agno: int
    length: int
    count: int  # inodes allocated in the AG
    root: int
    level: int
    freecount: int


def parse_agi(buf: bytes | bytearray | memoryview, sb: Superblock, agno: int) -> Agi:
    """Decode and validate (xfs_agi_verify) AG `agno`'s AGI: `buf` holds its sector."""
    b, where, length = _ag_header(buf, sb, agno, "AGI", AGI_MAGIC, 344, 312, 296)
    count, root, level, freecount = struct.unpack_from(">IIII", b, 16)
    if not 1 <= level <= MAX_LEVELS:
        raise XfsFormatError(f"{where}: inode btree level {level} (1..{MAX_LEVELS})")
    if freecount > count or count > length << sb.inopblog:
        raise XfsFormatError(f"{where}: {count} inodes, {freecount} free, in {length} blocks")
    return Agi(agno, length, count, root, level, freecount)


def _ag_header(buf: bytes | bytearray | memoryview, sb: Superblock, agno: int, name: str,
               magic_want: int, size: int, crc_off: int, uuid_off: int) -> tuple[bytes, str, int]:
    """What xfs_agf_verify and xfs_agi_verify check alike: the sector holds `size` bytes, the
    magic, on v5 the CRC and UUID, version 1, the AG's number and its length. Returns (the
    sector's bytes, where for messages, the AG's length in blocks)."""
    b = bytes(buf[:sb.sectsize])
    where = f"AG {agno} {name}"
    if len(b) < size:
        raise XfsFormatError(f"{where}: truncated ({len(b)} bytes)")
    magic, version, seqno, length = struct.unpack_from(">IIII", b, 0)
    if magic != magic_want:
        raise XfsFormatError(f"{where}: bad magic {magic:#010x} (want {magic_want:#010x} "
                             f"'X{name}')")
    if sb.has_crc:
        _check_v5(b, crc_off, b[uuid_off:uuid_off + 16], sb, where)
    field = name.lower()
    if version != 1:
        raise XfsFormatError(f"{where}: version {version} (want 1)")
    if seqno != agno:
        raise XfsFormatError(f"{where}: {field}_seqno {seqno} (want {agno})")
    want = sb.ag_blocks(agno)
    if length != want:
        raise XfsFormatError(f"{where}: {field}_length {length} (the superblock gives this AG "
                             f"{want} blocks)")
    return b, where, length


def _check_v5(b: bytes, crc_off: int, owner_uuid: bytes, sb: Superblock, where: str) -> None:
    if not crc_ok(b, crc_off):
        raise XfsFormatError(f"{where}: CRC mismatch (stored "
                             f"{struct.unpack_from('<I', b, crc_off)[0]:#010x}, computed "
                             f"{metadata_crc(b, crc_off):#010x})")
    if owner_uuid != sb.owner_uuid:
        raise XfsFormatError(f"{where}: UUID {uuidlib.UUID(bytes=owner_uuid)} is not the "
                             f"filesystem's")


def _headers(sb: Superblock) -> int:
    """The AG blocks holding the four header sectors (superblock copy, AGF, AGI, AGFL)."""
    return -(-4 * sb.sectsize // sb.blocksize)


def _agbno_ok(sb: Superblock, agno: int, agbno: int) -> bool:
    """xfs_verify_agbno: inside the AG and past its header sectors (the AGFL's block is the
    last of them: pag->min_block)."""
    return _headers(sb) <= agbno < sb.ag_blocks(agno)


# -- the free-space btree by block number ------------------------------------------------------
@dataclass(frozen=True)
class BtreeBlock:
    level: int
    numrecs: int
    leftsib: int
    rightsib: int
    # A leaf: records (startblock, blockcount); a node: keys (startblock, blockcount) + child ptrs.
    starts: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    ptrs: np.ndarray | None = field(default=None, repr=False)


def parse_bnobt_block(buf: bytes | bytearray | memoryview, sb: Superblock, agno: int,
                      agbno: int) -> BtreeBlock:
    """Decode and validate (xfs_btree_sblock_verify, xfs_allocbt_verify) the bnobt block at
    AG block `agbno` of AG `agno`: `buf` holds its blocksize bytes."""
    b = bytes(buf[:sb.blocksize])
    where = f"AG {agno} free-space btree block {agbno}"
    if len(b) < sb.blocksize:
        raise XfsFormatError(f"{where}: truncated ({len(b)} bytes)")
    magic, level, numrecs, left, right = struct.unpack_from(">IHHII", b, 0)
    want = AB3B_MAGIC if sb.has_crc else ABTB_MAGIC
    if magic != want:
        raise XfsFormatError(f"{where}: bad magic {magic:#010x} (want {want:#010x} "
                             f"'{want.to_bytes(4, 'big').decode()}')")
    if sb.has_crc:
        blkno, _lsn = struct.unpack_from(">QQ", b, 16)
        owner = struct.unpack_from(">I", b, 48)[0]
        _check_v5(b, 52, b[32:48], sb, where)
        if blkno != sb.daddr(agno, agbno):
            raise XfsFormatError(f"{where}: bb_blkno {blkno} is not its address "
                                 f"{sb.daddr(agno, agbno)} (a block from elsewhere)")
        if owner != agno:
            raise XfsFormatError(f"{where}: bb_owner {owner} (want AG {agno})")
    if level >= MAX_LEVELS:
        raise XfsFormatError(f"{where}: level {level}")
    hdr = sb.btree_hdr
    maxrecs = sb.alloc_leaf_maxrecs if level == 0 else sb.alloc_node_maxrecs
    if numrecs > maxrecs:
        raise XfsFormatError(f"{where}: {numrecs} records (at most {maxrecs})")
    for name, sib in (("left", left), ("right", right)):
        if sib != NULLAGBLOCK and (sib == agbno or not _agbno_ok(sb, agno, sib)):
            raise XfsFormatError(f"{where}: {name} sibling {sib} is not a block of the AG")
    recs = np.frombuffer(b, ">u4", 2 * numrecs, hdr).astype(np.int64).reshape(numrecs, 2)
    ptrs = None
    if level:
        ptrs = np.frombuffer(b, ">u4", numrecs, hdr + 8 * maxrecs).astype(np.int64)
    return BtreeBlock(level, numrecs, left, right, recs[:, 0].copy(), recs[:, 1].copy(), ptrs)


BlockReader = Callable[[int], bytes | bytearray | memoryview]


def free_extents(sb: Superblock, agf: Agf, block: BlockReader) -> tuple[np.ndarray, np.ndarray]:
    """The free extents of AG agf.agno: (startblock, blockcount) int64 arrays in block order,
    from the leaves of its bnobt. `block(agbno)` returns the blocksize bytes of an AG block.

    The walk is checked as xfs_repair would: every block at the level its parent expects,
    visited once (a loop or a block shared by two parents is an error), no more blocks than the
    AGF says the free-space trees hold beyond their roots, siblings linking each level left to
    right, records sorted, apart, inside the AG and inside their parent's key range, and in
    total agf_freeblks blocks with agf_longest the longest. XfsFormatError otherwise. The walk
    is iterative (depth-first, left to right) and its depth is agf.bno_level, which parse_agf
    bounds by alloc_maxlevels."""
    agno, length = agf.agno, agf.length
    where = f"AG {agno} free-space btree"
    # Non-root blocks of the bnobt, cntbt (and rmapbt) are what agf_btreeblks counts; without
    # lazy counters it is not kept, and the AG's own size is the bound.
    budget = (agf.btreeblks + 1) if sb.has_lazysbcount else length
    seen: set[int] = set()
    prev: dict[int, int] = {}  # level -> the block visited last at that level
    want: dict[int, int] = {}  # level -> that block's right sibling
    starts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    prev_end = -1
    stack = [(agf.bno_root, agf.bno_level - 1, 0, length)]
    while stack:
        agbno, level, lo, hi = stack.pop()
        if not _agbno_ok(sb, agno, agbno):
            raise XfsFormatError(f"{where}: block {agbno} outside the AG")
        if agbno in seen:
            raise XfsFormatError(f"{where}: block {agbno} reached twice (a loop or a shared "
                                 "block)")
        if len(seen) >= budget:
            raise XfsFormatError(f"{where}: more than {budget} blocks (agf_btreeblks "
                                 f"{agf.btreeblks} + the root)")
        seen.add(agbno)
        blk = parse_bnobt_block(block(agbno), sb, agno, agbno)
        at = f"{where} block {agbno}"
        if blk.level != level:
            raise XfsFormatError(f"{at}: level {blk.level} (want {level})")
        if level in prev and want[level] != agbno:
            raise XfsFormatError(f"{where} block {prev[level]}: right sibling {want[level]} "
                                 f"(the next block at level {level} is {agbno})")
        if blk.leftsib != prev.get(level, NULLAGBLOCK):
            raise XfsFormatError(f"{at}: left sibling {blk.leftsib} (want "
                                 f"{prev.get(level, NULLAGBLOCK)})")
        prev[level], want[level] = agbno, blk.rightsib
        if blk.numrecs == 0 and not (level == 0 and agf.bno_level == 1):
            raise XfsFormatError(f"{at}: no records")  # only a root leaf may be empty
        s, c = blk.starts, blk.counts
        if s.size and (s[1:] <= s[:-1]).any():
            raise XfsFormatError(f"{at}: keys out of order")
        if s.size and (s[0] < lo or s[-1] >= hi):
            raise XfsFormatError(f"{at}: keys {int(s[0])}..{int(s[-1])} outside its parent's "
                                 f"range {lo}..{hi - 1}")
        if level == 0:
            end = s + c
            badr = (c <= 0) | (end > length) | (s < _headers(sb))
            if badr.any():
                i = int(np.flatnonzero(badr)[0])
                raise XfsFormatError(f"{at}: record {i} [{int(s[i])}, +{int(c[i])}] is not "
                                     f"inside the AG's {length} blocks")
            if s.size and (s[0] <= prev_end or (s[1:] <= end[:-1]).any()):
                raise XfsFormatError(f"{at}: free extents overlap or touch")
            if s.size:
                prev_end = int(end[-1])
            starts.append(s)
            counts.append(c)
        else:
            assert blk.ptrs is not None
            bounds = [*s[1:].tolist(), hi]
            # pushed right to left, so that the leftmost child is visited first
            for k in range(blk.numrecs - 1, -1, -1):
                stack.append((int(blk.ptrs[k]), level - 1, int(s[k]), int(bounds[k])))
    for level, nxt in want.items():
        if nxt != NULLAGBLOCK:
            raise XfsFormatError(f"{where} block {prev[level]}: right sibling {nxt} past the "
                                 f"last block of level {level}")
    s = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    c = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    total = int(c.sum())
    if total != agf.freeblks:
        raise XfsFormatError(f"{where}: its extents hold {total} free blocks, the AGF says "
                             f"{agf.freeblks}")
    longest = int(c.max()) if c.size else 0
    if longest != agf.longest:
        raise XfsFormatError(f"{where}: longest free extent {longest}, the AGF says "
                             f"{agf.longest}")
    return s, c


# -- the log: was it cleanly unmounted? ------------------------------------------------------------
LOG_MAGIC = 0xFEEDBABE  # xlog_rec_header.h_magicno
XLOG_UNMOUNT_TRANS = 0x20  # xlog_op_header.oh_flags of an unmount record
XLOG_VERSION_2 = 0x2
XLOG_HEADER_CYCLE_SIZE = 32 * 1024
BBSIZE = 512
# Log writes in flight when the system stopped (8 in-core logs of at most 256 KiB): the blocks
# around the head that may be torn, and how far back the last record header may lie.
LOG_WINDOW_BBS = 8 * 256 * 1024 // BBSIZE + 64

LogReader = Callable[[int, int], bytes | bytearray | memoryview]


def _cycles(raw: bytes) -> np.ndarray:
    """The cycle number of each 512-byte log block: its first word (log writes stamp it there),
    or for a record header (magic 0xFEEDBABE) h_cycle."""
    w = np.frombuffer(raw, ">u4").reshape(-1, BBSIZE // 4)
    return np.where(w[:, 0] == LOG_MAGIC, w[:, 1], w[:, 0]).astype(np.int64)


def log_needs_recovery(sb: Superblock, read: LogReader) -> str | None:
    """None when the internal log ends with an unmount record (the filesystem was cleanly
    unmounted and its metadata on disk is complete), else why not, in words. `read(bb, count)`
    returns `count` 512-byte blocks of the log from its block `bb` (never past its end).

    As the kernel's xlog_find_tail: the head is where the blocks' cycle numbers drop by one
    (found by bisection, then a window before and after it must be uniform, else writes were
    torn); the last record header before the head must hold exactly one operation, an
    unmount transaction, and end at the head. Anything else, an external log included, counts
    as needing recovery (the safe side)."""
    if not sb.internal_log:
        return "the log is on an external device: it cannot be checked"
    n = sb.logblocks * (sb.blocksize // BBSIZE)

    def cyc(bb: int) -> int:
        return int(_cycles(bytes(read(bb, 1)))[0])

    def window(first: int, count: int) -> bytes:
        """`count` blocks from `first`, wrapping at the end of the log."""
        first %= n
        a = min(count, n - first)
        out = bytes(read(first, a))
        return out + bytes(read(0, count - a)) if count > a else out

    first_cycle, last_cycle = cyc(0), cyc(n - 1)
    if first_cycle == last_cycle:
        head = 0  # the last write ended at the physical end of the log
        new = first_cycle
    else:
        if last_cycle != first_cycle - 1:
            return f"log cycles {first_cycle} at its start and {last_cycle} at its end"
        lo, hi = 0, n - 1  # cycle(lo) == first_cycle, cycle(hi) == last_cycle
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cyc(mid) == first_cycle:
                lo = mid
            else:
                hi = mid
        head, new = hi, first_cycle
    w = min(LOG_WINDOW_BBS, n)
    raw = window(head - w, w)
    before = _cycles(raw)
    # Before the head the blocks are of the current cycle; those wrapped to the end of the log
    # (when the head is near its start) of the previous one.
    want_before = np.where((np.arange(head - w, head) < 0) & (head > 0), new - 1, new)
    if (before != want_before).any():
        return "log blocks before its head are of mixed cycles (writes were torn)"
    after = _cycles(window(head, min(w, n - 1)))
    if head and (after[:max(0, n - head)] >= new).any():
        return "log blocks after its head are of the current cycle (writes were torn)"
    for k in range(w - 1, -1, -1):
        if struct.unpack_from(">I", raw, k * BBSIZE)[0] == LOG_MAGIC:
            rblk = (head - w + k) % n
            hdr = raw[k * BBSIZE:(k + 1) * BBSIZE]
            break
    else:
        return "no log record header before the head"
    version, length = struct.unpack_from(">iI", hdr, 8)
    num_logops = struct.unpack_from(">i", hdr, 40)[0]
    h_size = struct.unpack_from(">i", hdr, 320)[0]
    hblks = 1
    if version & XLOG_VERSION_2 and h_size > XLOG_HEADER_CYCLE_SIZE:
        hblks = -(-h_size // XLOG_HEADER_CYCLE_SIZE)
    end = (rblk + hblks + -(-length // BBSIZE)) % n
    if end != head % n or num_logops != 1:
        return "the last log record is not an unmount record (not cleanly unmounted)"
    op = bytes(read((rblk + hblks) % n, 1))
    if not op[9] & XLOG_UNMOUNT_TRANS:
        return "the last log record is not an unmount record (not cleanly unmounted)"
    return None
