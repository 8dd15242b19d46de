"""The ext2/3/4 analyser, registered for ext2, ext3 and ext4: df's figures and the used map of
an ext filesystem, its metadata decoded by format/ext4.py. Their files are read by
content/files.py.

Work and memory follow what is stored, never what a superblock claims: the filesystem must fit
the partition (and the disk) it is in, at most MAX_GROUPS groups are analysed, the descriptor
table is decoded with numpy in one pass (no object per group), and block bitmaps are read in
coalesced runs and turned into sorted runs of used clusters chunk by chunk.

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

import numpy as np

from ploopfs.content.registry import Analyser, Label, register
from ploopfs.content.usage import (
    FINDINGS_MAX,
    GRAN,
    ClusterSet,
    Finding,
    FsUsage,
    normalise_runs,
)
from ploopfs.content.view import Reader
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

READ_MAX = 8 << 20  # bytes per coalesced metadata read
MAX_GROUPS = 1 << 20  # 128 TiB with 4 KiB blocks; more is reported, not analysed
CHUNK_UNITS = 1 << 22  # bitmap bits unpacked per step


class ExtAnalyser(Analyser):
    kinds = ("ext2", "ext3", "ext4")
    order = 10  # right after LUKS, before every other signature
    title = "ext2/3/4"

    def probe(self, read: Reader, start: int, size: int) -> tuple[str, Label] | None:
        """ext4, ext3 or ext2 from the superblock's magic and feature flags (as blkid tells)."""
        sb = bytes(read(start + 0x400, 0x88))
        if len(sb) < 0x78 or sb[0x38:0x3A] != b"\x53\xef":
            return None
        compat, incompat = struct.unpack_from("<II", sb, 0x5C)
        ro_compat = struct.unpack_from("<I", sb, 0x64)[0]
        label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace") or None
        if incompat & 0x2C0 or ro_compat & 0x78:  # extents/64bit/flex_bg, huge_file/gdt_csum/...
            return "ext4", label
        if compat & 0x4:  # has_journal
            return "ext3", label
        return "ext2", label

    def analyse(self, read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
                gran: int = GRAN) -> FsUsage:
        return analyse_ext(read, where, start, limit, bitmaps=bitmaps, gran=gran)


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


def analyse_ext(read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
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
    a, b = normalise_runs(np.concatenate(starts), np.concatenate(ends))
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
    a, b = normalise_runs(np.concatenate(runs_a), np.concatenate(runs_b))
    fs.used = ClusterSet(a, b, -(-(fs.start + fs.size_bytes) // fs.gran))


register(ExtAnalyser())
