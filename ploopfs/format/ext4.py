"""Pure decoding of ext2/3/4 metadata: the superblock, group descriptors (32- and 64-byte), the
group flags (BLOCK_UNINIT, INODE_UNINIT) and where each group's fixed metadata lies (sparse_super,
sparse_super2, meta_bg, flex_bg). No I/O: callers hand in bytes (ploopfs/content/ext.py).

Layout follows the kernel's fs/ext4 (ext4.h, balloc.c: ext4_num_base_meta_blocks,
ext4_bg_has_super, descriptor_loc in super.c) and e2fsprogs' lib/ext2fs. Used by `ploopfs du`,
`compact` and `info` to read a ploop disk's inner filesystem (format.md §7.9, §8.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

SB_OFFSET = 1024  # the primary superblock, from the start of the filesystem
SB_SIZE = 1024
MAGIC = 0xEF53

# feature_compat
COMPAT_HAS_JOURNAL = 0x4
COMPAT_RESIZE_INODE = 0x10
COMPAT_SPARSE_SUPER2 = 0x200
# feature_incompat
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_EXTENTS = 0x40
INCOMPAT_64BIT = 0x80
INCOMPAT_FLEX_BG = 0x200
# feature_ro_compat
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400

# bg_flags
BG_INODE_UNINIT = 0x1
BG_BLOCK_UNINIT = 0x2
BG_INODE_ZEROED = 0x4


class Ext4FormatError(ValueError):
    """Metadata that cannot be decoded; `what` says which field and why."""


@dataclass(frozen=True)
class Superblock:
    inodes_count: int
    blocks_count: int
    r_blocks_count: int
    free_blocks_count: int
    free_inodes_count: int
    first_data_block: int
    log_block_size: int
    log_cluster_size: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    state: int
    rev_level: int
    inode_size: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    uuid: bytes
    volume_name: str
    reserved_gdt_blocks: int
    desc_size_field: int
    first_meta_bg: int
    log_groups_per_flex: int
    backup_bgs: tuple[int, int]
    overhead_clusters: int
    journal_inum: int = 0  # s_journal_inum: the internal journal's inode (0: none or external)
    jnl_backup_type: int = 0  # s_jnl_backup_type: 1 = s_jnl_blocks holds the journal inode's
    jnl_size: int = 0  # i_size copied into s_jnl_blocks[15..16] (with backup type 1)

    # -- derived -----------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return 1024 << self.log_block_size

    @property
    def cluster_bits(self) -> int:
        """log2 of blocks per allocation cluster (bigalloc), 0 otherwise."""
        return self.log_cluster_size - self.log_block_size if self.bigalloc else 0

    @property
    def cluster_size(self) -> int:
        """Bytes per bit of a block bitmap (a block, or a bigalloc cluster)."""
        return self.block_size << self.cluster_bits

    @property
    def is_64bit(self) -> bool:
        return bool(self.feature_incompat & INCOMPAT_64BIT)

    @property
    def desc_size(self) -> int:
        return self.desc_size_field if self.is_64bit else 32

    @property
    def meta_bg(self) -> bool:
        return bool(self.feature_incompat & INCOMPAT_META_BG)

    @property
    def flex_bg(self) -> bool:
        return bool(self.feature_incompat & INCOMPAT_FLEX_BG)

    @property
    def bigalloc(self) -> bool:
        return bool(self.feature_ro_compat & RO_COMPAT_BIGALLOC)

    @property
    def sparse_super(self) -> bool:
        return bool(self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER)

    @property
    def needs_recovery(self) -> bool:
        return bool(self.feature_incompat & INCOMPAT_RECOVER)

    @property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def gdt_blocks(self) -> int:
        """Blocks of the whole group descriptor table (s_gdb_count)."""
        return -(-self.group_count // self.descs_per_block)

    @property
    def inode_table_blocks(self) -> int:
        return -(-self.inodes_per_group * self.inode_size // self.block_size)

    @property
    def inodes_per_block(self) -> int:
        return self.block_size // self.inode_size

    @property
    def itb_per_group(self) -> int:
        """s_itb_per_group as the kernel computes it (ext4_fill_super): a floor division."""
        return self.inodes_per_group // self.inodes_per_block

    @property
    def has_journal(self) -> bool:
        return bool(self.feature_compat & COMPAT_HAS_JOURNAL)

    @property
    def resv_clusters(self) -> int:
        """Clusters the kernel holds back for delayed allocation at mount
        (ext4_calculate_resv_clusters): 2 % of the clusters, at most 4096; 0 without extents."""
        if not self.feature_incompat & INCOMPAT_EXTENTS:
            return 0
        return min((self.blocks_count >> self.cluster_bits) // 50, 4096)

    def kind(self) -> str:
        """ext4, ext3 or ext2, by the features (as blkid guesses)."""
        if self.feature_incompat & 0x2C0 or self.feature_ro_compat & 0x78:
            return "ext4"
        return "ext3" if self.feature_compat & COMPAT_HAS_JOURNAL else "ext2"

    # -- group geometry ----------------------------------------------------------------------
    def group_first_block(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def blocks_in_group(self, g: int) -> int:
        if g == self.group_count - 1:
            return self.blocks_count - self.group_first_block(g)
        return self.blocks_per_group

    def has_super(self, g: int) -> bool:
        """Does group g hold a superblock copy (ext4_bg_has_super)?"""
        if g == 0:
            return True
        if self.feature_compat & COMPAT_SPARSE_SUPER2:
            return g in self.backup_bgs
        if g <= 1 or not self.sparse_super:
            return True
        if not g & 1:
            return False
        return _is_power(g, 3) or _is_power(g, 5) or _is_power(g, 7)

    @property
    def sb_block(self) -> int:
        """The block holding the primary superblock (byte 1024): 1 with 1 KiB blocks, even when
        s_first_data_block is 0 (bigalloc), else 0."""
        return SB_OFFSET // self.block_size

    def descriptor_block(self, n: int) -> int:
        """Block number of descriptor block n of the primary table (descriptor_loc)."""
        if not self.meta_bg or n < self.first_meta_bg:
            return self.sb_block + n + 1
        bg = self.descs_per_block * n
        has = 1 if self.has_super(bg) else 0
        # 1 KiB blocks with s_first_data_block 0: group 0's descriptors follow the superblock
        # in block 1 (the kernel's descriptor_loc compensates the same way).
        if self.block_size == 1024 and n == 0 and self.first_data_block == 0:
            has += 1
        return self.group_first_block(bg) + has

    def base_meta_blocks(self, g: int) -> int:
        """Blocks at the start of group g taken by the superblock copy, descriptor blocks and
        reserved GDT blocks (ext4_num_base_meta_blocks)."""
        num = 1 if self.has_super(g) else 0
        if not self.meta_bg or g < self.first_meta_bg * self.descs_per_block:
            if num:
                gdb = self.first_meta_bg if self.meta_bg else self.gdt_blocks
                num += gdb + self.reserved_gdt_blocks
        else:
            pos = g % self.descs_per_block
            if pos in (0, 1, self.descs_per_block - 1):
                num += 1
        return num


def _is_power(n: int, base: int) -> bool:
    p = base
    while p < n:
        p *= base
    return p == n


def parse_superblock(buf: bytes | bytearray | memoryview) -> Superblock:
    """Decode the 1024-byte superblock; Ext4FormatError if it is not ext2/3/4 or its geometry
    is impossible (so later arithmetic cannot divide by zero or loop forever)."""
    b = bytes(buf[:SB_SIZE])
    if len(b) < SB_SIZE:
        raise Ext4FormatError(f"superblock truncated ({len(b)} bytes)")
    (inodes, blocks_lo, r_lo, free_lo, free_inodes, first_data, log_bs, log_cs, bpg, cpg,
     ipg) = struct.unpack_from("<11I", b, 0)
    magic, state = struct.unpack_from("<HH", b, 0x38)
    if magic != MAGIC:
        raise Ext4FormatError(f"bad magic {magic:#06x} at byte 0x38 (want 0xef53)")
    rev = struct.unpack_from("<I", b, 0x4C)[0]
    inode_size = struct.unpack_from("<H", b, 0x58)[0] if rev >= 1 else 128
    compat, incompat, ro = struct.unpack_from("<III", b, 0x5C)
    is64 = bool(incompat & INCOMPAT_64BIT)
    blocks_hi, r_hi, free_hi = struct.unpack_from("<III", b, 0x150) if is64 else (0, 0, 0)
    sb = Superblock(
        inodes_count=inodes,
        blocks_count=blocks_lo | blocks_hi << 32,
        r_blocks_count=r_lo | r_hi << 32,
        free_blocks_count=free_lo | free_hi << 32,
        free_inodes_count=free_inodes,
        first_data_block=first_data,
        log_block_size=log_bs,
        log_cluster_size=log_cs,
        blocks_per_group=bpg,
        clusters_per_group=cpg,
        inodes_per_group=ipg,
        state=state,
        rev_level=rev,
        inode_size=inode_size,
        feature_compat=compat,
        feature_incompat=incompat,
        feature_ro_compat=ro,
        uuid=b[0x68:0x78],
        volume_name=b[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace"),
        reserved_gdt_blocks=struct.unpack_from("<H", b, 0xCE)[0],
        desc_size_field=struct.unpack_from("<H", b, 0xFE)[0],
        first_meta_bg=struct.unpack_from("<I", b, 0x104)[0],
        log_groups_per_flex=b[0x174],
        backup_bgs=struct.unpack_from("<II", b, 0x24C),
        overhead_clusters=struct.unpack_from("<I", b, 0x248)[0],
        journal_inum=struct.unpack_from("<I", b, 0xE0)[0],
        jnl_backup_type=b[0xFD],
        jnl_size=struct.unpack_from("<I", b, 0x10C + 4 * 16)[0]
        | struct.unpack_from("<I", b, 0x10C + 4 * 15)[0] << 32,
    )
    _validate(sb)
    return sb


def _validate(sb: Superblock) -> None:
    def bad(what: str) -> Ext4FormatError:
        return Ext4FormatError(what)

    if sb.log_block_size > 6:
        raise bad(f"s_log_block_size {sb.log_block_size} (block size over 64 KiB)")
    if sb.bigalloc and not sb.log_block_size <= sb.log_cluster_size <= sb.log_block_size + 16:
        raise bad(f"s_log_cluster_size {sb.log_cluster_size} with block size {sb.block_size}")
    bits = 8 * sb.block_size
    per_group = sb.clusters_per_group if sb.bigalloc else sb.blocks_per_group
    if not 0 < per_group <= bits or sb.blocks_per_group == 0:
        raise bad(f"s_blocks_per_group {sb.blocks_per_group} (1..{bits} per bitmap block)")
    if sb.bigalloc and sb.blocks_per_group != sb.clusters_per_group << sb.cluster_bits:
        raise bad(f"s_clusters_per_group {sb.clusters_per_group} does not match "
                  f"s_blocks_per_group {sb.blocks_per_group}")
    if not 0 < sb.inodes_per_group <= bits:
        raise bad(f"s_inodes_per_group {sb.inodes_per_group} (1..{bits})")
    if sb.first_data_block > 1:
        raise bad(f"s_first_data_block {sb.first_data_block}")
    if sb.blocks_count <= sb.first_data_block:
        raise bad(f"s_blocks_count {sb.blocks_count}")
    if sb.inode_size < 128 or sb.inode_size > sb.block_size or sb.inode_size & (sb.inode_size - 1):
        raise bad(f"s_inode_size {sb.inode_size}")
    if sb.is_64bit and (sb.desc_size_field < 64 or sb.desc_size_field > 1024
                        or sb.desc_size_field & (sb.desc_size_field - 1)):
        raise bad(f"s_desc_size {sb.desc_size_field} with the 64bit feature")
    if sb.inodes_per_group < sb.inodes_per_block:
        raise bad(f"s_inodes_per_group {sb.inodes_per_group} is less than one inode table "
                  f"block ({sb.inodes_per_block} inodes)")
    # The kernel refuses to mount unless the inode count is exactly groups x inodes per group
    # (ext4_fill_super: "inodes count not valid"): it ties the group count to a 32-bit field.
    if sb.group_count > (1 << 32) - sb.descs_per_block:
        raise bad(f"{sb.group_count} block groups (s_blocks_count {sb.blocks_count}, "
                  f"s_blocks_per_group {sb.blocks_per_group})")
    if sb.inodes_count != sb.group_count * sb.inodes_per_group:
        raise bad(f"s_inodes_count {sb.inodes_count} is not {sb.group_count} groups x "
                  f"{sb.inodes_per_group} inodes per group")
    if sb.free_blocks_count > sb.blocks_count:
        raise bad(f"s_free_blocks_count {sb.free_blocks_count} exceeds s_blocks_count")
    if sb.meta_bg and sb.first_meta_bg > sb.gdt_blocks:
        raise bad(f"s_first_meta_bg {sb.first_meta_bg} beyond {sb.gdt_blocks} descriptor blocks")


@dataclass(frozen=True)
class GroupDesc:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    free_blocks: int  # in bitmap units (clusters with bigalloc)
    free_inodes: int
    used_dirs: int
    flags: int
    itable_unused: int
    checksum: int

    @property
    def block_uninit(self) -> bool:
        return bool(self.flags & BG_BLOCK_UNINIT)

    @property
    def inode_uninit(self) -> bool:
        return bool(self.flags & BG_INODE_UNINIT)


def parse_group_desc(b: bytes | bytearray | memoryview, off: int, size: int) -> GroupDesc:
    """One descriptor of `size` bytes (32, or ≥64 with the 64bit feature) at `off`."""
    bb, ib, it, fb, fi, ud, flags, _exc, _bbc, _ibc, iu, csum = struct.unpack_from(
        "<IIIHHHHIHHHH", b, off)
    if size >= 64:
        bb_h, ib_h, it_h, fb_h, fi_h, ud_h, iu_h = struct.unpack_from("<IIIHHHH", b, off + 0x20)
        bb |= bb_h << 32
        ib |= ib_h << 32
        it |= it_h << 32
        fb |= fb_h << 16
        fi |= fi_h << 16
        ud |= ud_h << 16
        iu |= iu_h << 16
    return GroupDesc(bb, ib, it, fb, fi, ud, flags, iu, csum)


def parse_group_descs(b: bytes | bytearray | memoryview, sb: Superblock, first: int,
                      count: int) -> list[GroupDesc]:
    """`count` descriptors for groups first.. from one descriptor block's bytes."""
    ds = sb.desc_size
    return [parse_group_desc(b, i * ds, ds) for i in range(count)]


# -- vectorised: whole descriptor tables and per-group geometry as numpy arrays -----------------
# A table is decoded with one np.frombuffer over its bytes (a structured dtype whose item is one
# descriptor), never one Python object per group: a hostile superblock may claim millions of
# groups, and a real large filesystem has hundreds of thousands.
_LO = (("block_bitmap", "<u4", 0x00), ("inode_bitmap", "<u4", 0x04), ("inode_table", "<u4", 0x08),
       ("free_blocks", "<u2", 0x0C), ("free_inodes", "<u2", 0x0E), ("flags", "<u2", 0x12))
_HI = (("block_bitmap", "<u4", 0x20), ("inode_bitmap", "<u4", 0x24), ("inode_table", "<u4", 0x28),
       ("free_blocks", "<u2", 0x2C), ("free_inodes", "<u2", 0x2E))
_SHIFT = {"block_bitmap": 32, "inode_bitmap": 32, "inode_table": 32, "free_blocks": 16,
          "free_inodes": 16}


def _desc_dtype(size: int, fields: tuple[tuple[str, str, int], ...]) -> np.dtype:
    return np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                     "offsets": [f[2] for f in fields], "itemsize": size})


@dataclass
class DescTable:
    """Every group descriptor as columns: block numbers as uint64, counts as int64."""

    block_bitmap: np.ndarray
    inode_bitmap: np.ndarray
    inode_table: np.ndarray
    free_blocks: np.ndarray  # in bitmap units (clusters with bigalloc)
    free_inodes: np.ndarray
    flags: np.ndarray  # uint16

    @classmethod
    def zeros(cls, n: int) -> DescTable:
        u, i = np.zeros(n, np.uint64), np.zeros(n, np.int64)
        return cls(u, u.copy(), u.copy(), i, i.copy(), np.zeros(n, np.uint16))

    def __len__(self) -> int:
        return len(self.flags)

    def fill(self, first: int, buf: bytes | bytearray | memoryview, desc_size: int,
             count: int) -> None:
        """Decode `count` descriptors of `desc_size` bytes from `buf` into rows first.."""
        lo = np.frombuffer(buf, _desc_dtype(desc_size, _LO), count)
        sl = slice(first, first + count)
        for name, _, _ in _LO:
            getattr(self, name)[sl] = lo[name]
        if desc_size >= 64:
            hi = np.frombuffer(buf, _desc_dtype(desc_size, _HI), count)
            for name, _, _ in _HI:
                col = getattr(self, name)
                col[sl] |= hi[name].astype(col.dtype) << col.dtype.type(_SHIFT[name])

    def desc(self, g: int) -> GroupDesc:
        """Group g as a GroupDesc (for messages)."""
        return GroupDesc(int(self.block_bitmap[g]), int(self.inode_bitmap[g]),
                         int(self.inode_table[g]), int(self.free_blocks[g]),
                         int(self.free_inodes[g]), 0, int(self.flags[g]), 0, 0)


def parse_desc_table(buf: bytes | bytearray | memoryview, sb: Superblock, count: int) -> DescTable:
    """`count` consecutive descriptors from the start of `buf` (one or more whole descriptor
    blocks laid end to end)."""
    t = DescTable.zeros(count)
    t.fill(0, buf, sb.desc_size, count)
    return t


def super_groups(sb: Superblock) -> np.ndarray:
    """The groups holding a superblock copy (ext4_bg_has_super), sorted, as int64."""
    n = sb.group_count
    if sb.feature_compat & COMPAT_SPARSE_SUPER2:
        extra = [g for g in sb.backup_bgs if 0 < g < n]
        return np.unique(np.array([0, *extra], np.int64))
    if not sb.sparse_super:
        return np.arange(n, dtype=np.int64)
    out = {0, 1} if n > 1 else {0}
    for base in (3, 5, 7):
        p = base
        while p < n:
            out.add(p)
            p *= base
    return np.array(sorted(out), np.int64)


def has_super_array(sb: Superblock) -> np.ndarray:
    """Booleans per group: holds a superblock copy."""
    has = np.zeros(sb.group_count, bool)
    has[super_groups(sb)] = True
    return has


def _meta_position(sb: Superblock) -> tuple[np.ndarray, np.ndarray]:
    """(in_meta, meta_gdb): per group, whether it lies in a meta_bg metagroup, and whether it
    holds that metagroup's descriptor block (first, second or last group of it)."""
    n, dpb = sb.group_count, sb.descs_per_block
    g = np.arange(n, dtype=np.int64)
    if not sb.meta_bg:
        return np.zeros(n, bool), np.zeros(n, bool)
    in_meta = g >= sb.first_meta_bg * dpb
    pos = g % dpb
    return in_meta, in_meta & ((pos == 0) | (pos == 1 % dpb) | (pos == dpb - 1))


def base_meta_array(sb: Superblock) -> np.ndarray:
    """base_meta_blocks for every group at once (int64)."""
    has = has_super_array(sb).astype(np.int64)
    in_meta, meta_gdb = _meta_position(sb)
    gdb = sb.first_meta_bg if sb.meta_bg else sb.gdt_blocks
    return has + np.where(in_meta, meta_gdb, has * (gdb + sb.reserved_gdt_blocks))


def overhead_blocks(sb: Superblock) -> int:
    """What the kernel's count_overhead adds up over the groups of a filesystem without
    bigalloc (fs/ext4/super.c): per group its superblock copy, descriptor blocks
    (ext4_bg_num_gdb), reserved GDT blocks (with a superblock copy), inode table and the two
    bitmaps; plus the blocks before s_first_data_block. The journal is not included."""
    has = has_super_array(sb).astype(np.int64)
    in_meta, meta_gdb = _meta_position(sb)
    gdb_nometa = sb.first_meta_bg if sb.meta_bg else sb.gdt_blocks
    num_gdb = np.where(in_meta, meta_gdb, has * gdb_nometa)
    per_group = has + num_gdb + has * sb.reserved_gdt_blocks
    return (sb.first_data_block + int(per_group.sum())
            + sb.group_count * (sb.itb_per_group + 2))


def descriptor_blocks(sb: Superblock) -> np.ndarray:
    """Block numbers of every descriptor block of the primary table (descriptor_loc), int64."""
    n = np.arange(sb.gdt_blocks, dtype=np.int64)
    out = sb.sb_block + n + 1
    if not sb.meta_bg:
        return out
    m = n >= sb.first_meta_bg
    bg = sb.descs_per_block * n[m]
    has = has_super_array(sb)[bg].astype(np.int64)
    if sb.block_size == 1024 and sb.first_data_block == 0:
        has += n[m] == 0
    out[m] = sb.first_data_block + bg * sb.blocks_per_group + has
    return out
