"""The ext2/3/4 filesystems inside a virtual disk, read through a Volume (never mounted): usage
figures equal to what `df` shows on a kernel mount (format.md §7.2) and the map of used blocks that `du`
and `compact` lay over the ploop clusters (format.md §7.9).

A filesystem is found in each GPT/MBR partition, or on the whole disk (ploop init -P, format.md §8.1).
Work and memory follow what is stored, never what a superblock claims: the filesystem must fit
the partition (and the disk) it is in, at most MAX_GROUPS groups are analysed, the descriptor
table is decoded with numpy in one pass (no object per group), block bitmaps are read in
coalesced runs and turned into sorted runs of used clusters chunk by chunk, and every set of
clusters is a ClusterSet (sorted runs), never an array over the virtual disk.

Whatever looks damaged (a descriptor pointing outside the filesystem, a bitmap whose free
count disagrees with its descriptor, an unreadable superblock) becomes a finding, and the
blocks in question count as used, so `compact` keeps them (the safe side).

df's figures are the kernel's ext4_statfs (fs/ext4/super.c): f_blocks = s_blocks_count minus
the overhead (ext4_calculate_overhead: the blocks before s_first_data_block, per group its
superblock copy, descriptor and reserved GDT blocks, inode table and two bitmaps, plus the
internal journal; with bigalloc s_overhead_clusters when set), f_bfree = the sum of the group
descriptors' free counts (what the kernel counts at mount), f_bavail = f_bfree minus
s_r_blocks_count and the delalloc reserve (2 %, at most 4096 clusters, with extents),
f_files = s_inodes_count, f_ffree = the descriptors' free inodes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ploopfs.content.partitions import PartitionTable, inspect_disk
from ploopfs.format.ext4 import (
    BG_BLOCK_UNINIT,
    SB_OFFSET,
    SB_SIZE,
    DescTable,
    Ext4FormatError,
    Superblock,
    base_meta_array,
    descriptor_blocks,
    has_super_array,
    overhead_blocks,
    parse_superblock,
)

Reader = Callable[[int, int], bytes | bytearray]
EXT_KINDS = ("ext2", "ext3", "ext4")
READ_MAX = 8 << 20  # bytes per coalesced metadata read
MAX_GROUPS = 1 << 20  # 128 TiB with 4 KiB blocks; more is reported, not analysed
CHUNK_UNITS = 1 << 22  # bitmap bits unpacked per step
FINDINGS_MAX = 20  # finding lines per code and filesystem; the rest are counted in one line
GRAN = 512  # bytes per element of a used map built without knowing the ploop cluster size


# -- sets of clusters as sorted runs -----------------------------------------------------------
def _normalise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs [a, b) in any order, overlapping or touching -> sorted disjoint separated runs."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    keep = b > a
    if not keep.all():
        a, b = a[keep], b[keep]
    if a.size <= 1:
        return a.copy(), b.copy()
    if not (a[1:] > b[:-1]).all():
        o = np.argsort(a, kind="stable")
        a, b = a[o], np.maximum.accumulate(b[o])
        brk = np.flatnonzero(a[1:] > b[:-1]) + 1
        a = a[np.concatenate(([0], brk))]
        b = b[np.concatenate((brk - 1, [b.size - 1]))]
    return a, b


class ClusterSet:
    """A set of clusters of [0, n) kept as sorted, disjoint runs [a, b) (int64 arrays): memory
    in proportion to the runs, not to n. It answers the few questions compact.py and du ask of
    the boolean arrays it replaces: sum(), &, |, ~ and -."""

    __slots__ = ("a", "b", "n")

    def __init__(self, a: np.ndarray, b: np.ndarray, n: int) -> None:
        self.a, self.b, self.n = a, b, n

    @classmethod
    def from_runs(cls, a: Any, b: Any, n: int) -> ClusterSet:
        a, b = _normalise(np.clip(np.asarray(a, np.int64), 0, n),
                          np.clip(np.asarray(b, np.int64), 0, n))
        return cls(a, b, n)

    @classmethod
    def empty(cls, n: int) -> ClusterSet:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), n)

    @classmethod
    def range(cls, lo: int, hi: int, n: int) -> ClusterSet:
        return cls.from_runs([lo], [hi], n)

    @classmethod
    def from_bools(cls, sel: np.ndarray) -> ClusterSet:
        d = np.diff(np.concatenate(([0], np.asarray(sel, bool).view(np.int8), [0])))
        return cls(np.flatnonzero(d == 1).astype(np.int64),
                   np.flatnonzero(d == -1).astype(np.int64), int(sel.size))

    def to_bools(self) -> np.ndarray:
        out = np.zeros(self.n, bool)
        for s, e in zip(self.a.tolist(), self.b.tolist(), strict=True):
            out[s:e] = True
        return out

    def sum(self) -> int:
        return int((self.b - self.a).sum())

    def __len__(self) -> int:  # the runs, not the clusters
        return int(self.a.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.a.tolist(), self.b.tolist(), strict=True)

    def __or__(self, o: ClusterSet) -> ClusterSet:
        a, b = _normalise(np.concatenate((self.a, o.a)), np.concatenate((self.b, o.b)))
        return ClusterSet(a, b, max(self.n, o.n))

    def __and__(self, o: ClusterSet) -> ClusterSet:
        n = max(self.n, o.n)
        if not self.a.size or not o.a.size:
            return ClusterSet.empty(n)
        pos = np.concatenate((self.a, self.b, o.a, o.b))
        step = np.concatenate((np.ones(self.a.size, np.int64), -np.ones(self.b.size, np.int64),
                               np.ones(o.a.size, np.int64), -np.ones(o.b.size, np.int64)))
        u, inv = np.unique(pos, return_inverse=True)
        delta = np.zeros(u.size, np.int64)
        np.add.at(delta, inv, step)
        both = np.cumsum(delta)[:-1] == 2
        a, b = _normalise(u[:-1][both], u[1:][both])
        return ClusterSet(a, b, n)

    def __invert__(self) -> ClusterSet:
        a, b = _normalise(np.concatenate(([0], self.b)), np.concatenate((self.a, [self.n])))
        return ClusterSet(a, b, self.n)

    def __sub__(self, o: ClusterSet) -> ClusterSet:
        return self & ~ClusterSet(o.a, o.b, max(self.n, o.n))

    def clip(self, lo: int, hi: int) -> ClusterSet:
        return self & ClusterSet.range(lo, hi, self.n)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Booleans: which of `points` are in the set."""
        p = np.asarray(points, np.int64)
        i = np.searchsorted(self.a, p, side="right") - 1
        ok = i >= 0
        out = np.zeros(p.size, bool)
        out[ok] = p[ok] < self.b[i[ok]]
        return out

    def rescale(self, unit: int, to: int, n: int) -> ClusterSet:
        """The same bytes in clusters of `to` bytes: a cluster is in the set if any of its
        bytes is (this set counts clusters of `unit` bytes)."""
        return ClusterSet.from_runs(self.a * unit // to, -(-self.b * unit // to), n)


# -- filesystems -------------------------------------------------------------------------------
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
    overhead_blocks: int | None = None  # what statfs leaves out of f_blocks (journal included)
    journal_blocks: int = 0
    inodes_count: int = 0
    free_inodes: int = 0
    sb_free_inodes: int = 0
    groups: int = 0
    block_uninit_groups: int = 0
    features: list[str] = field(default_factory=list)
    counted: bool = False  # the descriptors were read: the figures above are the kernel's
    analysed: bool = False  # the used map below can be trusted (possibly conservatively)
    note: str | None = None  # why not, when the figures are the superblock's alone
    findings: list[Finding] = field(default_factory=list)
    # Used map: clusters of `gran` bytes of the virtual disk holding a used block.
    used: ClusterSet | None = None
    gran: int = GRAN
    data_start: int = 0  # byte offset (in the disk) of the first bitmap unit
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

    @property
    def f_blocks(self) -> int:
        """statfs f_blocks: the blocks df shows as the size."""
        return self.blocks_count - (self.overhead_blocks or 0)

    def statfs(self) -> dict[str, int]:
        """The fields of statfs(2) the kernel returns for this filesystem mounted, and df's
        columns from them (`df -k`: size, used, avail in KiB; `df -i`: inodes)."""
        k = self.block_size // 1024
        bfree = max(0, self.free_blocks)
        return {"f_bsize": self.block_size, "f_blocks": self.f_blocks, "f_bfree": bfree,
                "f_bavail": self.available_blocks, "f_files": self.inodes_count,
                "f_ffree": self.free_inodes,
                "df_size_kib": self.f_blocks * k, "df_used_kib": (self.f_blocks - bfree) * k,
                "df_avail_kib": self.available_blocks * k, "df_inodes": self.inodes_count,
                "df_iused": self.inodes_count - self.free_inodes, "df_ifree": self.free_inodes}

    def to_json(self, *, df: bool = False) -> dict[str, Any]:
        """`df`: blocks as `df` counts them (total without the metadata overhead, as `info`
        shows); otherwise the filesystem's own count (overhead counted as used, as `du`)."""
        out: dict[str, Any] = {
            "where": self.where, "start": self.start, "kind": self.kind, "label": self.label,
            "uuid": self.uuid, "block_size": self.block_size, "size_bytes": self.size_bytes}
        if not self.counted:
            out.update({
                "note": "not analysed: " + (self.note or "see findings") + "; kept whole by "
                        "compact",
                "superblock": {"blocks": self.blocks_count, "free_blocks": self.sb_free_blocks,
                               "inodes": self.inodes_count, "free_inodes": self.sb_free_inodes}
                if self.block_size else None,
                "groups": self.groups, "features": self.features, "analysed": False,
                "findings": [f.line() for f in self.findings]})
            return out
        total = self.f_blocks if df else self.blocks_count
        out.update({
            "blocks": {"total": total, "used": total - self.free_blocks,
                       "free": self.free_blocks, "reserved": self.reserved_blocks,
                       "available": self.available_blocks,
                       "superblock_free": self.sb_free_blocks,
                       "fs_total": self.blocks_count, "overhead": self.overhead_blocks,
                       "journal": self.journal_blocks},
            "inodes": {"total": self.inodes_count, "used": self.used_inodes,
                       "free": self.free_inodes, "superblock_free": self.sb_free_inodes},
            "statfs": self.statfs(),
            "groups": self.groups, "block_uninit_groups": self.block_uninit_groups,
            "features": self.features, "analysed": self.analysed,
            "findings": [f.line() for f in self.findings],
        })
        return out

    # -- findings, at most FINDINGS_MAX lines per code ---------------------------------------
    def find(self, code: str, message: str) -> None:
        n = sum(f.code == code for f in self.findings)
        if n < FINDINGS_MAX:
            self.findings.append(Finding(code, self.where, message))

    def find_more(self, code: str, total: int, what: str) -> None:
        """One line for the findings of `code` past FINDINGS_MAX (`total` of them in all)."""
        if total > FINDINGS_MAX:
            self.findings.append(Finding(code, self.where, f"{total - FINDINGS_MAX} more {what} "
                                         "(not listed)"))

    def not_analysed(self, code: str, why: str) -> FsUsage:
        self.note = why
        self.findings.append(Finding(code, self.where, f"{why}; filesystem not analysed"))
        return self


@dataclass
class OtherFs:
    """A partition (or whole disk) whose filesystem is not analysed."""

    where: str
    start: int
    size: int
    kind: str | None
    note: str = "not analysed (only ext2/3/4 is); kept whole by compact"

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "start": self.start, "size_bytes": self.size,
                "kind": self.kind, "note": self.note}


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
             ("has_journal", sb.has_journal),
             ("metadata_csum", bool(sb.feature_ro_compat & 0x400)),
             ("needs_recovery", sb.needs_recovery)]
    return [n for n, on in names if on]


def _read_exact(read: Reader, off: int, n: int) -> bytes:
    b = bytes(read(off, n))
    return b + bytes(n - len(b)) if len(b) < n else b


def analyse_fs(read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
               gran: int = GRAN) -> FsUsage:
    """Read the ext2/3/4 filesystem at byte `start`; `limit`: the bytes its partition (or the
    disk) holds from there. `bitmaps`: also build the used map (reads every initialised block
    bitmap), in clusters of `gran` bytes of the disk."""
    fs = FsUsage(where, start, "ext4", gran=gran)
    try:
        sb = parse_superblock(_read_exact(read, start + SB_OFFSET, SB_SIZE))
    except Ext4FormatError as e:
        return fs.not_analysed("EXT4_SUPERBLOCK", f"superblock at byte {start + SB_OFFSET}: {e}")
    _fill_counts(fs, sb)
    # The kernel refuses a filesystem larger than its device ("bad geometry: block count
    # exceeds size of device"); so does this, before any work in proportion to the claim.
    if sb.blocks_count * sb.block_size > limit:
        return fs.not_analysed("EXT4_GEOMETRY", (
            f"{sb.blocks_count} blocks of {sb.block_size} bytes ({sb.blocks_count * sb.block_size}"
            f" bytes) do not fit the {max(limit, 0)} bytes of the partition"))
    if sb.group_count > MAX_GROUPS:
        return fs.not_analysed("EXT4_GEOMETRY", f"{sb.group_count} block groups, more than the "
                               f"{MAX_GROUPS} analysed")
    units_per_group = sb.blocks_per_group >> sb.cluster_bits
    if units_per_group % 8:
        return fs.not_analysed("EXT4_GEOMETRY", f"{units_per_group} bitmap bits per group is not "
                               "a multiple of 8")
    descs = _read_descs(read, fs, sb)
    bad = _check_descs(fs, sb, descs)
    fs.counted = True
    fs.free_blocks = int(descs.free_blocks.sum()) << sb.cluster_bits
    fs.free_inodes = int(descs.free_inodes.sum())
    fs.block_uninit_groups = int(np.count_nonzero(descs.flags & BG_BLOCK_UNINIT))
    fs.journal_blocks = _journal_blocks(read, fs, sb, descs, bad)
    fs.overhead_blocks = _overhead(sb, descs, fs.journal_blocks)
    fs.available_blocks = max(0, fs.free_blocks - fs.reserved_blocks
                              - (sb.resv_clusters << sb.cluster_bits))
    if sb.needs_recovery:
        fs.findings.append(Finding(
            "EXT4_RECOVERY", where, "the journal needs recovery (not cleanly unmounted): bitmaps "
            "may be stale; filesystem kept whole"))
        return fs
    if bitmaps:
        _build_used(read, fs, sb, descs, bad)
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


def _block_runs(idx: np.ndarray, blocks: np.ndarray, maxlen: int) -> list[tuple[int, int]]:
    """[i, j) slices of `idx` whose `blocks` are consecutive (and consecutive in idx), at most
    maxlen long."""
    if not idx.size:
        return []
    brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(blocks) != 1)) + 1
    out = []
    for i, j in zip(np.concatenate(([0], brk)).tolist(),
                    np.concatenate((brk, [idx.size])).tolist(), strict=True):
        out.extend((s, min(s + maxlen, j)) for s in range(i, j, maxlen))
    return out


def _read_descs(read: Reader, fs: FsUsage, sb: Superblock) -> DescTable:
    """Every group descriptor, the table read in runs of consecutive blocks and decoded by
    numpy. Descriptor blocks outside the filesystem are not read: their groups stay all-zero
    descriptors, which _check_descs reports as damaged."""
    bs, dpb, ngroups = sb.block_size, sb.descs_per_block, sb.group_count
    t = DescTable.zeros(ngroups)
    blocks = descriptor_blocks(sb)
    idx = np.flatnonzero(blocks < sb.blocks_count)
    for i, j in _block_runs(idx, blocks[idx], max(1, READ_MAX // bs)):
        n0 = int(idx[i])
        data = _read_exact(read, fs.start + int(blocks[n0]) * bs, (j - i) * bs)
        count = min((j - i) * dpb, ngroups - n0 * dpb)
        t.fill(n0 * dpb, data, sb.desc_size, count)
    return t


def _units_in_groups(sb: Superblock, groups: np.ndarray) -> np.ndarray:
    """Bitmap units that exist in each of `groups` (the last group may be short)."""
    upg = sb.blocks_per_group >> sb.cluster_bits
    out = np.full(groups.size, upg, np.int64)
    last = groups == sb.group_count - 1
    if last.any():
        out[last] = -(-sb.blocks_in_group(sb.group_count - 1) >> sb.cluster_bits)
    return out


def _gdt_end(sb: Superblock) -> int:
    """One past the last block of the primary superblock and descriptor table (the kernel's
    ext4_check_descriptors refuses bitmaps and inode tables there)."""
    gdb = sb.first_meta_bg if sb.meta_bg else sb.gdt_blocks
    return sb.sb_block + 1 + gdb


def _check_descs(fs: FsUsage, sb: Superblock, t: DescTable) -> np.ndarray:
    """Booleans per group: the descriptor is damaged (its group will count as used). Checks,
    all at once: bitmaps and inode table inside the filesystem, not over the superblock and
    descriptor table, inside their own group without flex_bg; counts within the group's size;
    no block bitmap shared by two groups."""
    n = len(t)
    g = np.arange(n, dtype=np.int64)
    lo, hi, gdt_end = sb.first_data_block, sb.blocks_count, _gdt_end(sb)
    first = sb.first_data_block + g * sb.blocks_per_group
    size = np.minimum(first + sb.blocks_per_group, hi) - first
    bad = np.zeros(n, bool)
    for col, cnt in ((t.block_bitmap, 1), (t.inode_bitmap, 1),
                     (t.inode_table, sb.inode_table_blocks)):
        outside = (col < np.uint64(lo)) | (col > np.uint64(max(hi - cnt, 0)))
        bad |= outside
        b = np.where(outside, 0, col).astype(np.int64)
        bad |= ~outside & (b < gdt_end) & (b + cnt > lo)
        if not sb.flex_bg:
            bad |= ~outside & ((b < first) | (b >= first + size))
    bad |= t.free_blocks > _units_in_groups(sb, g)
    bad |= t.free_inodes > sb.inodes_per_group
    order = np.argsort(t.block_bitmap, kind="stable")
    sbb = t.block_bitmap[order]
    dup = np.zeros(n, bool)
    same = np.flatnonzero(sbb[1:] == sbb[:-1])
    dup[order[same]] = True
    dup[order[same + 1]] = True
    bad |= dup
    badg = np.flatnonzero(bad)
    for k in badg[:FINDINGS_MAX].tolist():
        why = _desc_problem(sb, k, t) or (
            f"block bitmap at block {int(t.block_bitmap[k])} is shared with another group")
        fs.find("EXT4_DESC", f"group {k} descriptor at byte {fs.start + _desc_where(sb, k)}: "
                f"{why}; group counted as used")
    fs.find_more("EXT4_DESC", badg.size, "groups with a damaged descriptor, counted as used")
    return bad


def _desc_problem(sb: Superblock, g: int, t: DescTable) -> str | None:
    """What is wrong with group g's descriptor, in words (the first problem found)."""
    d = t.desc(g)
    itb = sb.inode_table_blocks
    lo, hi, gdt_end = sb.first_data_block, sb.blocks_count, _gdt_end(sb)
    gs = sb.group_first_block(g)
    for name, blk, n in (("block bitmap", d.block_bitmap, 1), ("inode bitmap", d.inode_bitmap, 1),
                         ("inode table", d.inode_table, itb)):
        if not lo <= blk or blk + n > hi:
            return f"{name} at block {blk} lies outside the filesystem ({lo}..{hi - 1})"
        if blk < gdt_end and blk + n > lo:
            return (f"{name} at block {blk} overlaps the superblock and descriptor table "
                    f"(blocks {lo}..{gdt_end - 1})")
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


# -- df's overhead -----------------------------------------------------------------------------
def _journal_blocks(read: Reader, fs: FsUsage, sb: Superblock, t: DescTable,
                    bad: np.ndarray) -> int:
    """Blocks of the internal journal (i_size of its inode, as the kernel takes it); 0 without
    one or with an external journal."""
    j = sb.journal_inum
    if not sb.has_journal or not j:
        return 0
    size = 0
    g, i = divmod(j - 1, sb.inodes_per_group)
    if g < len(t) and not bad[g]:
        off = fs.start + int(t.inode_table[g]) * sb.block_size + i * sb.inode_size
        ino = _read_exact(read, off, 128)
        mode = struct.unpack_from("<H", ino, 0)[0]
        if mode & 0xF000 == 0x8000:  # a regular file
            size = struct.unpack_from("<I", ino, 4)[0] | struct.unpack_from("<I", ino, 0x6C)[0] << 32
    if not size and sb.jnl_backup_type == 1:  # EXT3_JNL_BACKUP_BLOCKS: the superblock's copy
        size = sb.jnl_size
    return min(size >> (10 + sb.log_block_size), sb.blocks_count)


def _overhead(sb: Superblock, t: DescTable, journal: int) -> int:
    """Blocks ext4_statfs leaves out of f_blocks (ext4_calculate_overhead, fs/ext4/super.c)."""
    cb = sb.cluster_bits
    if not sb.bigalloc:  # the kernel recomputes it at every mount, whatever the superblock says
        return min(overhead_blocks(sb) + journal, sb.blocks_count)
    if sb.overhead_clusters > 0 and sb.overhead_clusters <= sb.blocks_count:
        # mke2fs's figure: the kernel takes it as it is (ignored only when over s_blocks_count)
        return min(sb.overhead_clusters << cb, sb.blocks_count)
    clusters = (sb.first_data_block >> cb) + _bigalloc_overhead(sb, t) + (-(-journal >> cb))
    return min(clusters << cb, sb.blocks_count)


def _bigalloc_overhead(sb: Superblock, t: DescTable) -> int:
    """count_overhead summed over the groups of a bigalloc filesystem: the clusters holding a
    superblock copy, descriptor blocks, or any group's bitmaps or (whole) inode table."""
    fdb, bpg, cb, n = sb.first_data_block, sb.blocks_per_group, sb.cluster_bits, len(t)
    end = fdb + n * bpg
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for col in (t.block_bitmap, t.inode_bitmap):
        b = col[(col >= np.uint64(fdb)) & (col < np.uint64(end))].astype(np.int64)
        starts.append((b - fdb) >> cb)
        ends.append(((b - fdb) >> cb) + 1)
    itb = sb.itb_per_group
    it = t.inode_table[(t.inode_table >= np.uint64(fdb))
                       & (t.inode_table < np.uint64(end))].astype(np.int64)
    last = fdb + ((it - fdb) // bpg + 1) * bpg - 1
    it = it[it + itb <= last]
    if itb:
        starts.append((it - fdb) >> cb)
        ends.append(((it + itb - 1 - fdb) >> cb) + 1)
    g = np.arange(n, dtype=np.int64)
    has = has_super_array(sb).astype(np.int64)
    in_meta = np.zeros(n, bool)
    gdb = has * (sb.first_meta_bg if sb.meta_bg else sb.gdt_blocks)
    if sb.meta_bg:
        dpb = sb.descs_per_block
        in_meta = g >= sb.first_meta_bg * dpb
        pos = g % dpb
        gdb = np.where(in_meta, (pos == 0) | (pos == 1 % dpb) | (pos == dpb - 1), gdb)
    length = np.minimum(has + gdb, bpg)
    first = fdb + g * bpg
    m = length > 0
    starts.append((first[m] - fdb) >> cb)
    ends.append(((first[m] + length[m] - 1 - fdb) >> cb) + 1)
    a, b = _normalise(np.concatenate(starts), np.concatenate(ends))
    return int((b - a).sum())


# -- the used map ------------------------------------------------------------------------------
def _units_to_gran(fs: FsUsage, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of bitmap units -> runs of the `gran`-byte clusters of the disk they touch."""
    a = np.clip(a, 0, fs.units)
    b = np.clip(b, 0, fs.units)
    keep = b > a
    a, b = a[keep], b[keep]
    u, g, base = fs.unit_size, fs.gran, fs.data_start
    return (base + a * u) // g, -(-(base + b * u) // g)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _packed_to_gran(fs: FsUsage, u0: int, packed: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Runs of `gran`-byte clusters holding a set bit of `packed` (bitmap bits of units u0..,
    little bit order), read a whole byte of bits at a time: None unless a cluster is a whole
    number of bytes of bits and the bits' first byte starts on such a byte's boundary."""
    u, g = fs.unit_size, fs.gran
    x0 = fs.data_start + u0 * u
    if g % (8 * u) or (x0 % g) % (8 * u):
        return None
    row, lead = g // (8 * u), (x0 % g) // (8 * u)
    nrows = -(-(lead + packed.size) // row)
    buf = np.zeros(nrows * row, np.uint8)
    buf[lead:lead + packed.size] = packed
    anyc = buf.reshape(nrows, row).any(axis=1)
    d = np.diff(np.concatenate(([0], anyc.view(np.int8), [0])))
    c0 = x0 // g
    return np.flatnonzero(d == 1).astype(np.int64) + c0, np.flatnonzero(d == -1).astype(np.int64) + c0


def _block_unit_runs(sb: Superblock, first: np.ndarray, count: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Block runs [first, first+count) -> the bitmap unit runs covering them."""
    m = count > 0
    first, count = first[m], count[m]
    fdb, cb = sb.first_data_block, sb.cluster_bits
    return (first - fdb) >> cb, ((first + count - 1 - fdb) >> cb) + 1


def _build_used(read: Reader, fs: FsUsage, sb: Superblock, t: DescTable, bad: np.ndarray) -> None:
    """fs.used: every `gran`-byte cluster holding a used unit. Used: the bits of each
    initialised group's bitmap; the fixed metadata of every group (bitmaps, inode table, and
    superblock copy and descriptor blocks: all a BLOCK_UNINIT group has, as the kernel builds
    its bitmap); every unit of a damaged group."""
    ngroups, upg = len(t), sb.blocks_per_group >> sb.cluster_bits
    g = np.arange(ngroups, dtype=np.int64)
    ok = ~bad
    runs_a: list[np.ndarray] = []
    runs_b: list[np.ndarray] = []

    def add(a: np.ndarray, b: np.ndarray) -> None:
        ga, gb = _units_to_gran(fs, a, b)
        runs_a.append(ga)
        runs_b.append(gb)

    # Fixed metadata of the valid groups (a flex_bg group may hold other groups' bitmaps and
    # inode tables; a BLOCK_UNINIT bitmap only knows its own).
    first = sb.first_data_block + g[ok] * sb.blocks_per_group
    add(*_block_unit_runs(sb, first, base_meta_array(sb)[ok]))
    # Group 0 from its first block to the end of the primary superblock, descriptor table and
    # reserved GDT blocks (with 1 KiB blocks and s_first_data_block 0 these start a block later
    # than base_meta_blocks counts from).
    add(*_block_unit_runs(sb, np.array([sb.first_data_block], np.int64),
                          np.array([_gdt_end(sb) + sb.reserved_gdt_blocks - sb.first_data_block],
                                   np.int64)))
    one = np.ones(int(ok.sum()), np.int64)
    add(*_block_unit_runs(sb, t.block_bitmap[ok].astype(np.int64), one))
    add(*_block_unit_runs(sb, t.inode_bitmap[ok].astype(np.int64), one))
    add(*_block_unit_runs(sb, t.inode_table[ok].astype(np.int64), one * sb.inode_table_blocks))
    # Damaged groups, whole.
    dg = g[bad]
    add(dg * upg, (dg + 1) * upg)
    # Initialised groups: their bitmaps, in chunks of at most CHUNK_UNITS bits.
    want = g[ok & (t.flags & BG_BLOCK_UNINIT == 0)]
    bs, gbytes = sb.block_size, upg // 8
    per = max(1, min(CHUNK_UNITS // upg, READ_MAX // bs))
    mism_total = 0
    i = 0
    while i < want.size:
        g0 = int(want[i])
        j = int(np.searchsorted(want, g0 + per))
        grp = want[i:j]
        i = j
        blocks = t.block_bitmap[grp].astype(np.int64)  # distinct: _check_descs saw to it
        order = np.argsort(blocks)
        buf = bytearray(grp.size * bs)
        sb_blocks = blocks[order]
        for s, e in _block_runs(np.arange(grp.size), sb_blocks, grp.size):
            buf[s * bs:e * bs] = _read_exact(read, fs.start + int(sb_blocks[s]) * bs, (e - s) * bs)
        rows = np.empty((grp.size, gbytes), np.uint8)
        rows[order] = np.frombuffer(buf, np.uint8).reshape(grp.size, bs)[:, :gbytes]
        units = _units_in_groups(sb, grp)
        used = _POPCOUNT[rows].sum(axis=1, dtype=np.int64)
        for k in np.flatnonzero(units < upg).tolist():  # the short last group: its bits only
            used[k] = int(np.unpackbits(rows[k], bitorder="little")[:units[k]].sum())
        free = units - used
        mism = np.flatnonzero(free != t.free_blocks[grp])
        lost = free > t.free_blocks[grp]
        for k in mism[:FINDINGS_MAX].tolist():  # fs.find keeps the first FINDINGS_MAX
            gk = int(grp[k])
            fs.find("EXT4_BITMAP", f"group {gk} block bitmap at byte "
                    f"{fs.start + int(blocks[k]) * bs}: {int(free[k])} free units, its "
                    f"descriptor says {int(t.free_blocks[gk])}"
                    + ("; group counted as used" if lost[k] else ""))
        mism_total += int(mism.size)
        rows[lost] = 0xFF  # the bitmap lost bits: trust nothing in this group
        span = int(grp[-1]) - g0 + 1
        dense = np.zeros((span, gbytes), np.uint8)
        dense[grp - g0] = rows
        nbits = max(0, min(span * upg, fs.units - g0 * upg))
        packed = dense.reshape(-1)[: -(-nbits // 8)]
        if nbits % 8:  # bits past the last unit (the last group's padding)
            packed[-1] &= (1 << (nbits % 8)) - 1
        got = _packed_to_gran(fs, g0 * upg, packed)
        if got is None:  # units not aligned to bytes of the clusters: bit by bit
            flat = np.unpackbits(packed, bitorder="little")[:nbits]
            d = np.diff(np.concatenate(([0], flat.view(np.int8), [0])))
            add(np.flatnonzero(d == 1).astype(np.int64) + g0 * upg,
                np.flatnonzero(d == -1).astype(np.int64) + g0 * upg)
        else:
            runs_a.append(got[0])
            runs_b.append(got[1])
    fs.find_more("EXT4_BITMAP", mism_total, "groups whose bitmap disagrees with its descriptor")
    a, b = _normalise(np.concatenate(runs_a), np.concatenate(runs_b))
    fs.used = ClusterSet(a, b, -(-(fs.start + fs.size_bytes) // fs.gran))


# -- the whole disk ----------------------------------------------------------------------------
def analyse_disk(read: Reader, disk_size: int, *, bitmaps: bool,
                 cluster_size: int | None = None) -> DiskFs:
    """Every filesystem of the disk: ext2/3/4 analysed, anything else listed as not analysed.
    `cluster_size`: the granularity of the used maps (default: that of the Volume `read`
    belongs to, as du and compact pass vol.read; else 512 bytes, exact for any cluster)."""
    gran = cluster_size or getattr(getattr(read, "__self__", None), "cluster_size", None) or GRAN
    table = inspect_disk(read, disk_size)
    out = DiskFs(table, [], [])
    if table.partitions:
        for p in table.partitions:
            if p.type in ("0x05", "0x0f", "0x85"):  # an extended partition is a container
                continue
            where = f"part{p.number}"
            if p.start >= disk_size:  # wholly past the end: nothing there to read
                out.others.append(OtherFs(where, p.start, p.size, p.fs, (
                    f"not analysed: {p.outside}; nothing read there")))
            elif p.fs in EXT_KINDS:
                limit = min(p.size, disk_size - p.start)
                out.filesystems.append(analyse_fs(read, where, p.start, limit, bitmaps=bitmaps,
                                                  gran=gran))
            else:
                out.others.append(OtherFs(where, p.start, p.size, p.fs))
    elif table.whole_disk_fs in EXT_KINDS:
        out.filesystems.append(analyse_fs(read, "disk", 0, disk_size, bitmaps=bitmaps, gran=gran))
    else:
        out.others.append(OtherFs("disk", 0, disk_size, table.whole_disk_fs))
    return out


def cluster_maps(dfs: DiskFs, nclusters: int, cluster: int) -> tuple[ClusterSet, ClusterSet]:
    """(analysed, used) sets of ploop clusters: `analysed` holds the clusters lying wholly
    inside an analysed filesystem (their fate is decided by its bitmaps), `used` those of them
    holding at least one used block. Everything else (partition tables, the GPT backup, gaps,
    other filesystems, clusters straddling a boundary) is not analysed: compact keeps it."""
    analysed = ClusterSet.empty(nclusters)
    used = ClusterSet.empty(nclusters)
    for fs in dfs.filesystems:
        if not fs.analysed or fs.used is None:
            continue
        a = -(-fs.data_start // cluster)
        b = min((fs.start + fs.size_bytes) // cluster, nclusters)
        if a >= b:
            continue
        analysed = analysed | ClusterSet.range(a, b, nclusters)
        used = used | fs.used.rescale(fs.gran, cluster, nclusters)
    return analysed, used & analysed


def usage_summary(read: Reader, disk_size: int) -> list[dict[str, Any]]:
    """df's figures of every filesystem (superblock and descriptors only; for `info`)."""
    dfs = analyse_disk(read, disk_size, bitmaps=False)
    return [fs.to_json(df=True) for fs in dfs.filesystems] + [o.to_json() for o in dfs.others]
