"""The XFS analyser, registered for xfs (`ploop init -t xfs`): df's figures and the used map of an
XFS filesystem, its metadata decoded by format/xfs.py.

df's figures are the kernel's xfs_fs_statfs on a read-only `norecovery` mount (the state the
disk holds, no log replayed): with lazy superblock counters (every v5, most v4) such a mount
recomputes the counters from the AG headers (xfs_initialize_perag_data), so fdblocks = Σ AGF
(freeblks + flcount + btreeblks), icount = Σ AGI count, ifree = Σ AGI freecount; without them
the superblock's counters are used. Then f_blocks = dblocks less an internal log, f_bfree =
f_bavail = fdblocks less the allocation set-aside (8 blocks per AG, xfs_alloc_set_aside) and the
free-space btrees' non-root blocks (m_allocbt_blks); f_files = icount plus the inodes f_bfree
could hold, capped at maxicount (imax_pct) and at least icount; f_ffree = f_files - (icount -
ifree). A read-only mount makes neither the reserve pool (xfs_reserve_blocks) nor the per-AG
reservations, so none is subtracted.

A filesystem whose log does not end with an unmount record (not cleanly unmounted: a running
container's) is kept whole: the log may allocate blocks its trees still show as free. Its
figures are still the norecovery mount's.

The used map is the complement of each AG's free extents, the leaves of its bnobt (the free
space tree by block number rooted in the AGF): AG headers, the AG free list (AGFL; xfs_db's
`freesp` lists its blocks as free, the kernel keeps them for btree growth), btree blocks,
inodes, the log and file data all count as used. An AG whose AGF or tree is damaged counts as
used whole (a finding says why), so `compact` keeps it.

Work follows what is stored: the filesystem must fit its partition, at most MAX_AGS AGs are
read, and each tree walk is bounded by format/xfs.py.
"""

from __future__ import annotations

import numpy as np

from ploopfs.content.registry import Analyser, Label, register
from ploopfs.content.usage import GRAN, ClusterSet, Finding, FsUsage
from ploopfs.content.view import Reader
from ploopfs.format.xfs import (
    ALLOC_SET_ASIDE_PER_AG,
    MAXINUMBER,
    SB_MAGIC,
    SB_READ,
    Agf,
    Agi,
    Superblock,
    XfsFormatError,
    free_extents,
    log_needs_recovery,
    parse_agf,
    parse_agi,
    parse_superblock,
)

MAX_AGS = 1 << 16  # mkfs makes 4 to a few hundred; more is reported, not analysed

# Finding codes (FsUsage.findings): the superblock cannot be decoded; the filesystem does not fit
# its partition or has more AGs than analysed; an AG's AGF or AGI is damaged; an AG's free-space
# btree is damaged; the AG headers' counters are impossible (the kernel refuses to mount).
# The log needs recovery (or cannot be checked): the trees may be stale, the filesystem is kept.
SUPERBLOCK, GEOMETRY, AG_HEADER, FREESPACE, COUNTERS, RECOVERY = (
    "XFS_SUPERBLOCK", "XFS_GEOMETRY", "XFS_AG_HEADER", "XFS_FREESPACE", "XFS_COUNTERS",
    "XFS_RECOVERY")


class XfsAnalyser(Analyser):
    kinds = ("xfs",)
    order = 20  # where the plain XFSB signature was: after LUKS and ext
    title = "XFS"

    def probe(self, read: Reader, start: int, size: int) -> tuple[str, Label] | None:
        head = bytes(read(start, 120))
        if head[:4] != SB_MAGIC.to_bytes(4, "big"):
            return None
        return "xfs", head[108:120].split(b"\0", 1)[0].decode("utf-8", "replace") or None

    def analyse(self, read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
                gran: int = GRAN) -> FsUsage:
        return analyse_xfs(read, where, start, limit, bitmaps=bitmaps, gran=gran)


def _read_exact(read: Reader, off: int, n: int) -> bytes:
    b = bytes(read(off, n))
    return b + bytes(n - len(b)) if len(b) < n else b


def analyse_xfs(read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
                gran: int = GRAN) -> FsUsage:
    """Read the XFS filesystem at byte `start`; `limit`: the bytes its partition (or the disk)
    holds from there. `bitmaps`: also walk every AG's free-space btree into the used map, in
    clusters of `gran` bytes of the disk."""
    fs = FsUsage(where, start, "xfs", gran=gran)
    try:
        sb = parse_superblock(_read_exact(read, start, min(SB_READ, max(limit, 512))))
    except XfsFormatError as e:
        return fs.not_analysed(SUPERBLOCK, f"superblock at byte {start}: {e}")
    _fill_superblock(fs, sb)
    # The kernel refuses a filesystem larger than its device (xfs_check_sizes); so does this,
    # before any work in proportion to the claim.
    if sb.size_bytes > limit:
        return fs.not_analysed(GEOMETRY, (
            f"{sb.dblocks} blocks of {sb.blocksize} bytes ({sb.size_bytes} bytes) do not fit "
            f"the {max(limit, 0)} bytes of the partition"))
    if sb.agcount > MAX_AGS:
        return fs.not_analysed(GEOMETRY, f"{sb.agcount} allocation groups, more than the "
                               f"{MAX_AGS} analysed")
    agfs, agis = _read_ag_headers(read, fs, sb)
    _count(fs, sb, agfs, agis)
    log = fs.start + sb.log_first_block * sb.blocksize
    why = log_needs_recovery(sb, lambda bb, n: _read_exact(read, log + bb * 512, n * 512))
    if why:
        fs.findings.append(Finding(RECOVERY, where, (
            f"{why}: the log may hold changes the free-space trees do not show yet; "
            "filesystem kept whole")))
        return fs
    if bitmaps:
        _build_used(read, fs, sb, agfs)
        fs.analysed = True
    return fs


def _fill_superblock(fs: FsUsage, sb: Superblock) -> None:
    fs.label = sb.label or None
    fs.uuid = sb.uuid_str
    fs.block_size = fs.unit_size = sb.blocksize
    fs.blocks_count = sb.dblocks
    fs.sb_free_blocks = fs.free_blocks = sb.fdblocks
    fs.inodes_count = sb.icount
    fs.sb_free_inodes = fs.free_inodes = sb.ifree
    fs.journal_blocks = sb.internal_log_blocks
    fs.overhead_blocks = sb.internal_log_blocks  # statfs: f_blocks = dblocks - internal log
    fs.groups = sb.agcount
    fs.features = sb.features()
    fs.data_start = fs.start
    fs.units = sb.dblocks


def _read_ag_headers(read: Reader, fs: FsUsage, sb: Superblock
                     ) -> tuple[list[Agf | None], list[Agi | None]]:
    """Every AG's AGF and AGI (sectors 1 and 2, one read per AG); None where damaged, with a
    finding."""
    agfs: list[Agf | None] = []
    agis: list[Agi | None] = []
    bad = 0
    for agno in range(sb.agcount):
        off = fs.start + sb.agf_byte(agno)
        raw = _read_exact(read, off, 2 * sb.sectsize)
        agf = agi = None
        try:
            agf = parse_agf(raw[:sb.sectsize], sb, agno)
            agi = parse_agi(raw[sb.sectsize:], sb, agno)
        except XfsFormatError as e:
            bad += 1
            at = off if agf is None else off + sb.sectsize
            agf = agi = None
            fs.find(AG_HEADER, f"{e} (byte {at}); AG {agno} counted as used")
        agfs.append(agf)
        agis.append(agi)
    fs.find_more(AG_HEADER, bad, "AGs with a damaged AGF or AGI, counted as used")
    return agfs, agis


def _count(fs: FsUsage, sb: Superblock, agfs: list[Agf | None], agis: list[Agi | None]) -> None:
    """df's figures (xfs_fs_statfs after a norecovery mount); see the module's docstring. A
    damaged AG adds nothing free."""
    if sb.has_lazysbcount:
        fdblocks = sum(a.freeblks + a.flcount + a.btreeblks for a in agfs if a)
        icount = sum(a.count for a in agis if a)
        ifree = sum(a.freecount for a in agis if a)
        if fdblocks > sb.dblocks or ifree > icount:
            fs.find(COUNTERS, f"the AG headers add up to {fdblocks} free blocks of "
                    f"{sb.dblocks}, {ifree} free inodes of {icount}: the kernel refuses to "
                    "mount (AGF corruption)")
            fdblocks, ifree = min(fdblocks, sb.dblocks), min(ifree, icount)
    else:
        fdblocks, icount, ifree = sb.fdblocks, sb.icount, sb.ifree
    allocbt = sum(a.allocbt_blks(sb) for a in agfs if a)
    withheld = ALLOC_SET_ASIDE_PER_AG * sb.agcount + allocbt
    bfree = max(0, fdblocks - withheld)
    files = min(icount + (bfree << sb.inopblog), MAXINUMBER)
    if sb.maxicount:
        files = min(files, sb.maxicount)
    files = max(files, icount)
    fs.counted = True
    fs.free_blocks = fs.available_blocks = bfree
    fs.reserved_blocks = fdblocks - bfree
    fs.inodes_count = files
    fs.free_inodes = max(0, files - (icount - ifree))


def _build_used(read: Reader, fs: FsUsage, sb: Superblock, agfs: list[Agf | None]) -> None:
    """fs.used: the `gran`-byte clusters of the disk holding a used block, that is every block
    outside the free extents of the AGs whose trees could be read."""
    bs, g = sb.blocksize, fs.gran
    free_a: list[np.ndarray] = []
    free_b: list[np.ndarray] = []
    bad = 0
    for agno, agf in enumerate(agfs):
        if agf is None:
            continue

        def block(agbno: int, agno: int = agno) -> bytes:
            return _read_exact(read, fs.start + sb.block_byte(agno, agbno), bs)

        try:
            s, c = free_extents(sb, agf, block)
        except XfsFormatError as e:
            bad += 1
            fs.find(FREESPACE, f"{e}; AG {agno} counted as used")
            continue
        first = fs.start + sb.ag_first_block(agno) * bs
        # clusters lying wholly inside a free extent
        free_a.append(-(-(first + s * bs) // g))
        free_b.append((first + (s + c) * bs) // g)
    fs.find_more(FREESPACE, bad, "AGs with a damaged free-space btree, counted as used")
    n = -(-(fs.start + fs.size_bytes) // g)
    free = ClusterSet.from_runs(np.concatenate(free_a) if free_a else np.zeros(0, np.int64),
                                np.concatenate(free_b) if free_b else np.zeros(0, np.int64), n)
    fs.used = ClusterSet.range(fs.start // g, n, n) - free


register(XfsAnalyser())
