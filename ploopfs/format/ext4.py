"""Pure decoding of ext2/3/4 metadata: the superblock, group descriptors (32- and 64-byte), the
group flags (BLOCK_UNINIT, INODE_UNINIT) and where each group's fixed metadata lies (sparse_super,
sparse_super2, meta_bg, flex_bg). No I/O: callers hand in bytes (ploopfs/services/fsusage.py).

Layout follows the kernel's fs/ext4 (ext4.h, balloc.c: ext4_num_base_meta_blocks,
ext4_bg_has_super, descriptor_loc in super.c) and e2fsprogs' lib/ext2fs. Used by `ploopfs du`,
`compact` and `info` to read a ploop disk's inner filesystem (ploop-format.md §7.9, §8.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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

    def descriptor_block(self, n: int) -> int:
        """Block number of descriptor block n of the primary table (descriptor_loc)."""
        sb_block = self.first_data_block  # the primary superblock's block
        if not self.meta_bg or n < self.first_meta_bg:
            return sb_block + n + 1
        bg = self.descs_per_block * n
        has = 1 if self.has_super(bg) else 0
        # A 1 KiB-block fs whose first group starts at block 0 keeps block 0 for the boot block.
        if self.group_first_block(bg) == 0 and self.block_size == 1024:
            has = 1
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
    if sb.inodes_count > sb.group_count * sb.inodes_per_group:
        raise bad(f"s_inodes_count {sb.inodes_count} exceeds {sb.group_count} groups x "
                  f"{sb.inodes_per_group} inodes")
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
