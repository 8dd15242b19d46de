"""The ext2/3/4 filesystems inside a virtual disk, read through a Volume (never mounted): usage
figures like `ploop info`/`df` (§7.2) and the map of used blocks that `du` and `compact` lay over
the ploop clusters (§7.9).

A filesystem is found in each GPT/MBR partition, or on the whole disk (ploop init -P, §8.1).
Block bitmaps are read group by group (coalesced into large reads); BLOCK_UNINIT groups, whose
bitmap was never written, get the bitmap the kernel would build (their fixed metadata only).
Whatever looks damaged (a descriptor pointing outside the filesystem, a bitmap whose free count
disagrees with its descriptor, an unreadable superblock) becomes a finding, and the blocks in
question count as used, so `compact` keeps them (the safe side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ploopfs.format.ext4 import (
    SB_OFFSET,
    SB_SIZE,
    Ext4FormatError,
    GroupDesc,
    Superblock,
    parse_group_descs,
    parse_superblock,
)
from ploopfs.services.partitions import PartitionTable, inspect_disk

Reader = Callable[[int, int], bytes | bytearray]
EXT_KINDS = ("ext2", "ext3", "ext4")
READ_MAX = 8 << 20  # bytes per coalesced metadata read


@dataclass
class Finding:
    code: str  # EXT4_SUPERBLOCK, EXT4_DESC, EXT4_BITMAP, EXT4_RECOVERY, EXT4_GEOMETRY
    where: str  # "part1", "whole disk"
    message: str

    def line(self) -> str:
        return f"{self.where}: {self.code}: {self.message}"


@dataclass
class FsUsage:
    """One filesystem: its place on the disk, df-like figures and (optionally) its used map."""

    where: str  # "part1" … or "disk"
    start: int  # byte offset in the virtual disk
    kind: str
    label: str | None = None
    uuid: str | None = None
    block_size: int = 0
    unit_size: int = 0  # bytes per bitmap bit (block, or bigalloc cluster)
    blocks_count: int = 0
    free_blocks: int = 0  # sum of the group descriptors (what the kernel counts at mount)
    sb_free_blocks: int = 0  # the superblock's copy (updated lazily by the kernel)
    reserved_blocks: int = 0
    available_blocks: int = 0  # like statfs f_bavail
    inodes_count: int = 0
    free_inodes: int = 0
    sb_free_inodes: int = 0
    groups: int = 0
    block_uninit_groups: int = 0
    features: list[str] = field(default_factory=list)
    analysed: bool = False  # the used map below can be trusted (possibly conservatively)
    findings: list[Finding] = field(default_factory=list)
    # Packed (little bit order) used map, one bit per bitmap unit from first_data_block on.
    used_bits: np.ndarray | None = None
    data_start: int = 0  # byte offset (in the disk) of bit 0
    units: int = 0

    @property
    def size_bytes(self) -> int:
        return self.blocks_count * self.block_size

    @property
    def used_blocks(self) -> int:
        return self.blocks_count - self.free_blocks

    @property
    def used_inodes(self) -> int:
        return self.inodes_count - self.free_inodes

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where, "start": self.start, "kind": self.kind, "label": self.label,
            "uuid": self.uuid, "block_size": self.block_size, "size_bytes": self.size_bytes,
            "blocks": {"total": self.blocks_count, "used": self.used_blocks,
                       "free": self.free_blocks, "reserved": self.reserved_blocks,
                       "available": self.available_blocks,
                       "superblock_free": self.sb_free_blocks},
            "inodes": {"total": self.inodes_count, "used": self.used_inodes,
                       "free": self.free_inodes, "superblock_free": self.sb_free_inodes},
            "groups": self.groups, "block_uninit_groups": self.block_uninit_groups,
            "features": self.features, "analysed": self.analysed,
            "findings": [f.line() for f in self.findings],
        }


@dataclass
class OtherFs:
    """A partition (or whole disk) whose filesystem is not analysed."""

    where: str
    start: int
    size: int
    kind: str | None

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "start": self.start, "size_bytes": self.size,
                "kind": self.kind, "note": "not analysed (only ext2/3/4 is); kept whole by compact"}


@dataclass
class DiskFs:
    table: PartitionTable
    filesystems: list[FsUsage]
    others: list[OtherFs]

    @property
    def findings(self) -> list[Finding]:
        return [f for fs in self.filesystems for f in fs.findings]


def _features(sb: Superblock) -> list[str]:
    names = [("64bit", sb.is_64bit), ("flex_bg", sb.flex_bg), ("meta_bg", sb.meta_bg),
             ("sparse_super", sb.sparse_super), ("bigalloc", sb.bigalloc),
             ("has_journal", bool(sb.feature_compat & 0x4)),
             ("metadata_csum", bool(sb.feature_ro_compat & 0x400)),
             ("needs_recovery", sb.needs_recovery)]
    return [n for n, on in names if on]


def _read_exact(read: Reader, off: int, n: int) -> bytes:
    b = bytes(read(off, n))
    return b + bytes(n - len(b)) if len(b) < n else b


def analyse_fs(read: Reader, where: str, start: int, limit: int, *, bitmaps: bool) -> FsUsage:
    """Read the ext2/3/4 filesystem at byte `start` (at most `limit` bytes long). `bitmaps`:
    also build the used map (reads every initialised block bitmap)."""
    fs = FsUsage(where, start, "ext4")
    try:
        sb = parse_superblock(_read_exact(read, start + SB_OFFSET, SB_SIZE))
    except Ext4FormatError as e:
        fs.findings.append(Finding("EXT4_SUPERBLOCK", where, f"superblock at byte "
                                   f"{start + SB_OFFSET}: {e}; filesystem not analysed"))
        return fs
    _fill_counts(fs, sb)
    if sb.blocks_count * sb.block_size > limit:
        fs.findings.append(Finding(
            "EXT4_GEOMETRY", where, f"{sb.blocks_count} blocks of {sb.block_size} bytes run past "
            f"the end of the partition ({limit} bytes); filesystem not analysed"))
        return fs
    units_per_group = sb.blocks_per_group >> sb.cluster_bits
    if units_per_group % 8:
        fs.findings.append(Finding("EXT4_GEOMETRY", where, f"{units_per_group} bitmap bits per "
                                   "group is not a multiple of 8; filesystem not analysed"))
        return fs
    descs = _read_descs(read, fs, sb)
    fs.free_blocks = sum(d.free_blocks for d in descs) << sb.cluster_bits
    fs.free_inodes = sum(d.free_inodes for d in descs)
    fs.block_uninit_groups = sum(d.block_uninit for d in descs)
    fs.available_blocks = max(0, fs.free_blocks - fs.reserved_blocks
                              - (sb.resv_clusters << sb.cluster_bits))
    if sb.needs_recovery:
        fs.findings.append(Finding(
            "EXT4_RECOVERY", where, "the journal needs recovery (not cleanly unmounted): bitmaps "
            "may be stale; filesystem kept whole"))
        return fs
    if bitmaps:
        _build_used_map(read, fs, sb, descs)
    fs.analysed = True
    return fs


def _fill_counts(fs: FsUsage, sb: Superblock) -> None:
    fs.kind = sb.kind()
    fs.label = sb.volume_name or None
    fs.uuid = "-".join(sb.uuid.hex()[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))
    fs.block_size = sb.block_size
    fs.unit_size = sb.cluster_size
    fs.blocks_count = sb.blocks_count
    fs.sb_free_blocks = fs.free_blocks = sb.free_blocks_count
    fs.reserved_blocks = sb.r_blocks_count
    fs.inodes_count = sb.inodes_count
    fs.sb_free_inodes = fs.free_inodes = sb.free_inodes_count
    fs.groups = sb.group_count
    fs.features = _features(sb)
    fs.data_start = fs.start + sb.first_data_block * sb.block_size
    fs.units = -(-(sb.blocks_count - sb.first_data_block) >> sb.cluster_bits)


def _read_descs(read: Reader, fs: FsUsage, sb: Superblock) -> list[GroupDesc]:
    """Every group descriptor, descriptor blocks read in runs of consecutive blocks."""
    bs, dpb = sb.block_size, sb.descs_per_block
    blocks = [sb.descriptor_block(n) for n in range(sb.gdt_blocks)]
    out: list[GroupDesc] = []
    i = 0
    while i < len(blocks):
        j = i + 1
        while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and (j - i) * bs < READ_MAX:
            j += 1
        data = _read_exact(read, fs.start + blocks[i] * bs, (j - i) * bs)
        for k in range(i, j):
            count = min(dpb, sb.group_count - k * dpb)
            out += parse_group_descs(memoryview(data)[(k - i) * bs:(k - i + 1) * bs], sb, k * dpb,
                                     count)
        i = j
    return out


def _check_desc(sb: Superblock, g: int, d: GroupDesc) -> str | None:
    itb = sb.inode_table_blocks
    lo, hi = sb.first_data_block, sb.blocks_count
    for name, blk, n in (("block bitmap", d.block_bitmap, 1), ("inode bitmap", d.inode_bitmap, 1),
                         ("inode table", d.inode_table, itb)):
        if not lo <= blk or blk + n > hi:
            return f"{name} at block {blk} lies outside the filesystem ({lo}..{hi - 1})"
        gs = sb.group_first_block(g)
        if not sb.flex_bg and not gs <= blk < gs + sb.blocks_in_group(g):
            return f"{name} at block {blk} lies outside its group (no flex_bg)"
    units = -(-sb.blocks_in_group(g) >> sb.cluster_bits)
    if d.free_blocks > units:
        return f"free block count {d.free_blocks} exceeds the {units} of the group"
    if d.free_inodes > sb.inodes_per_group:
        return f"free inode count {d.free_inodes} exceeds {sb.inodes_per_group} inodes per group"
    return None


def _desc_where(sb: Superblock, g: int) -> int:
    return sb.descriptor_block(g // sb.descs_per_block) * sb.block_size + \
        (g % sb.descs_per_block) * sb.desc_size


def _build_used_map(read: Reader, fs: FsUsage, sb: Superblock, descs: list[GroupDesc]) -> None:
    upg = sb.blocks_per_group >> sb.cluster_bits  # bitmap units per group
    gbytes = upg // 8
    used = np.zeros(-(-fs.units // 8) + gbytes, np.uint8)  # slack: the last group's padding
    bad: list[int] = []
    wanted: list[tuple[int, int]] = []  # (bitmap block, group) of initialised groups
    for g, d in enumerate(descs):
        why = _check_desc(sb, g, d)
        if why:
            fs.findings.append(Finding("EXT4_DESC", fs.where, f"group {g} descriptor at byte "
                                       f"{fs.start + _desc_where(sb, g)}: {why}; group counted "
                                       "as used"))
            bad.append(g)
        elif d.block_uninit:
            _mark_blocks(used, sb, sb.group_first_block(g), sb.base_meta_blocks(g))
        else:
            wanted.append((d.block_bitmap, g))
    for g in bad:
        used[g * gbytes:(g + 1) * gbytes] = 0xFF
    wanted.sort()
    i = 0
    bs = sb.block_size
    while i < len(wanted):
        j = i + 1
        while j < len(wanted) and wanted[j][0] == wanted[j - 1][0] + 1 and (j - i) * bs < READ_MAX:
            j += 1
        data = _read_exact(read, fs.start + wanted[i][0] * bs, (j - i) * bs)
        for k in range(i, j):
            blk, g = wanted[k]
            bm = np.frombuffer(data, np.uint8, gbytes, (k - i) * bs)
            _apply_bitmap(fs, sb, used, g, descs[g], bm, blk)
        i = j
    # Fixed metadata of every group is in use whatever its bitmap says (a flex_bg group may
    # hold other groups' bitmaps and inode tables; a BLOCK_UNINIT bitmap only knows its own).
    itb = sb.inode_table_blocks
    for g, d in enumerate(descs):
        if g in bad:
            continue
        _mark_blocks(used, sb, sb.group_first_block(g), sb.base_meta_blocks(g))
        _mark_blocks(used, sb, d.block_bitmap, 1)
        _mark_blocks(used, sb, d.inode_bitmap, 1)
        _mark_blocks(used, sb, d.inode_table, itb)
    nbytes = -(-fs.units // 8)
    used = used[:nbytes].copy()
    if fs.units % 8:  # clear padding bits past the last unit
        used[-1] &= (1 << (fs.units % 8)) - 1
    fs.used_bits = used


def _apply_bitmap(fs: FsUsage, sb: Superblock, used: np.ndarray, g: int, d: GroupDesc,
                  bm: np.ndarray, blk: int) -> None:
    upg = sb.blocks_per_group >> sb.cluster_bits
    units = -(-sb.blocks_in_group(g) >> sb.cluster_bits)
    full, rest = divmod(units, 8)
    free = units - int(np.unpackbits(bm[:full]).sum())
    if rest:
        free -= bin(int(bm[full]) & ((1 << rest) - 1)).count("1")
    dst = used[g * upg // 8: g * upg // 8 + upg // 8]
    if free != d.free_blocks:
        fs.findings.append(Finding(
            "EXT4_BITMAP", fs.where, f"group {g} block bitmap at byte {fs.start + blk * sb.block_size}"
            f": {free} free units, its descriptor says {d.free_blocks}"
            + ("; group counted as used" if free > d.free_blocks else "")))
        if free > d.free_blocks:  # the bitmap lost bits: trust nothing in this group
            dst[:] = 0xFF
            return
    dst |= bm


def _mark_blocks(used: np.ndarray, sb: Superblock, block: int, count: int) -> None:
    if count <= 0:
        return
    first = (block - sb.first_data_block) >> sb.cluster_bits
    last = (block + count - 1 - sb.first_data_block) >> sb.cluster_bits
    first = max(first, 0)
    last = min(last, used.size * 8 - 1)
    if first > last:
        return
    bits = np.unpackbits(used[first // 8: last // 8 + 1], bitorder="little")
    bits[first % 8: first % 8 + last - first + 1] = 1
    used[first // 8: last // 8 + 1] = np.packbits(bits, bitorder="little")


# -- the whole disk ----------------------------------------------------------------------------
def analyse_disk(read: Reader, disk_size: int, *, bitmaps: bool) -> DiskFs:
    """Every filesystem of the disk: ext2/3/4 analysed, anything else listed as not analysed."""
    table = inspect_disk(read, disk_size)
    out = DiskFs(table, [], [])
    if table.partitions:
        for p in table.partitions:
            if p.type in ("0x05", "0x0f", "0x85"):  # an extended partition is a container
                continue
            where = f"part{p.number}"
            if p.fs in EXT_KINDS:
                out.filesystems.append(analyse_fs(read, where, p.start, p.size, bitmaps=bitmaps))
            else:
                out.others.append(OtherFs(where, p.start, p.size, p.fs))
    elif table.whole_disk_fs in EXT_KINDS:
        out.filesystems.append(analyse_fs(read, "disk", 0, disk_size, bitmaps=bitmaps))
    else:
        out.others.append(OtherFs("disk", 0, disk_size, table.whole_disk_fs))
    return out


def cluster_maps(dfs: DiskFs, nclusters: int, cluster: int) -> tuple[np.ndarray, np.ndarray]:
    """(analysed, used) booleans per ploop cluster: `analysed` marks clusters lying wholly
    inside an analysed filesystem (their fate is decided by its bitmaps), `used` those of them
    holding at least one used block. Everything else (partition tables, the GPT backup, gaps,
    other filesystems, clusters straddling a boundary) is not analysed: compact keeps it."""
    analysed = np.zeros(nclusters, bool)
    used = np.zeros(nclusters, bool)
    for fs in dfs.filesystems:
        if not fs.analysed or fs.used_bits is None:
            continue
        a = -(-fs.data_start // cluster)
        b = min((fs.start + fs.size_bytes) // cluster, nclusters)
        if a >= b:
            continue
        analysed[a:b] = True
        _used_clusters(fs, used, cluster)
    used &= analysed
    return analysed, used


def _used_clusters(fs: FsUsage, used: np.ndarray, cluster: int) -> None:
    assert fs.used_bits is not None
    u = fs.unit_size
    base = fs.data_start
    per = cluster // u if cluster % u == 0 else 0
    if per and per % 8 == 0 and base % cluster == 0:
        # Aligned: one row of packed bytes per cluster; any bit set = cluster used.
        row = per // 8
        bits = fs.used_bits
        n = -(-bits.size // row)
        padded = np.zeros(n * row, np.uint8)
        padded[:bits.size] = bits
        rows = padded.reshape(n, row).any(axis=1)
        c0 = base // cluster
        n = min(n, used.size - c0)
        used[c0:c0 + n] |= rows[:n]
        return
    step = 1 << 24  # units per slice
    for s in range(0, fs.units, step):
        e = min(s + step, fs.units)
        bits = np.unpackbits(fs.used_bits[s // 8: -(-e // 8)], bitorder="little")[: e - s]
        idx = np.flatnonzero(bits).astype(np.int64) + s
        if not idx.size:
            continue
        lo = (base + idx * u) // cluster
        hi = (base + idx * u + u - 1) // cluster
        for k in range(int((hi - lo).max()) + 1):
            c = np.minimum(lo + k, hi)
            used[c[c < used.size]] = True


def usage_summary(read: Reader, disk_size: int) -> list[dict[str, Any]]:
    """df-like figures of every filesystem (superblock and descriptors only; for `info`)."""
    dfs = analyse_disk(read, disk_size, bitmaps=False)
    return [fs.to_json() for fs in dfs.filesystems] + [o.to_json() for o in dfs.others]
