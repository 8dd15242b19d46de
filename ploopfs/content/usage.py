"""What the filesystems inside a virtual disk use, read through a Volume (never mounted): usage
figures equal to what `df` shows on a kernel mount (format.md §7.2) and the map of used blocks that `du`
and `compact` lay over the ploop clusters (format.md §7.9).

A filesystem is found in each GPT/MBR partition, or on the whole disk (ploop init -P, format.md §8.1),
and analysed by the analyser registered for its kind (content/registry.py; ext2/3/4 in
content/ext.py); any other filesystem is listed as not analysed, and compact keeps it whole.
Every set of clusters is a ClusterSet (sorted runs), never an array over the virtual disk.

Whatever looks damaged becomes a finding, and the blocks in question count as used, so
`compact` keeps them (the safe side).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ploopfs.content.partitions import PartitionTable, inspect_disk
from ploopfs.content.registry import analyser_for, analysers
from ploopfs.content.view import Reader

FINDINGS_MAX = 20  # finding lines per code and filesystem; the rest are counted in one line
GRAN = 512  # bytes per element of a used map built without knowing the ploop cluster size


# -- sets of clusters as sorted runs -----------------------------------------------------------
def normalise_runs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        a, b = normalise_runs(np.clip(np.asarray(a, np.int64), 0, n),
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
        a, b = normalise_runs(np.concatenate((self.a, o.a)), np.concatenate((self.b, o.b)))
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
        a, b = normalise_runs(u[:-1][both], u[1:][both])
        return ClusterSet(a, b, n)

    def __invert__(self) -> ClusterSet:
        a, b = normalise_runs(np.concatenate(([0], self.b)), np.concatenate((self.a, [self.n])))
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
    code: str  # stable, per analyser (ext: EXT4_SUPERBLOCK, EXT4_DESC, EXT4_BITMAP, ...)
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
        def kib(blocks: int) -> int:  # df -k rounds up (XFS v4 may have 512-byte blocks)
            return -(-blocks * self.block_size // 1024)

        bfree = max(0, self.free_blocks)
        return {"f_bsize": self.block_size, "f_blocks": self.f_blocks, "f_bfree": bfree,
                "f_bavail": self.available_blocks, "f_files": self.inodes_count,
                "f_ffree": self.free_inodes,
                "df_size_kib": kib(self.f_blocks), "df_used_kib": kib(self.f_blocks - bfree),
                "df_avail_kib": kib(self.available_blocks), "df_inodes": self.inodes_count,
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


def _not_analysed_note() -> str:
    """"not analysed (only ext2/3/4 is); …": the kinds the registered analysers handle."""
    titles = [a.title for a in analysers()]
    only = " and ".join(titles) + (" is" if len(titles) == 1 else " are")
    return f"not analysed (only {only}); kept whole by compact"


@dataclass
class OtherFs:
    """A partition (or whole disk) whose filesystem is not analysed."""

    where: str
    start: int
    size: int
    kind: str | None
    note: str = field(default_factory=_not_analysed_note)

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


# -- the whole disk ----------------------------------------------------------------------------
def analyse_disk(read: Reader, disk_size: int, *, bitmaps: bool,
                 cluster_size: int | None = None) -> DiskFs:
    """Every filesystem of the disk, analysed by the analyser registered for its kind
    (content/registry.py), or listed as not analysed. `cluster_size`: the granularity of the
    used maps (default: that of the Volume `read` belongs to, as du and compact pass vol.read;
    else 512 bytes, exact for any cluster)."""
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
            elif (an := analyser_for(p.fs)) is not None:
                limit = min(p.size, disk_size - p.start)
                out.filesystems.append(an.analyse(read, where, p.start, limit, bitmaps=bitmaps,
                                                  gran=gran))
            else:
                out.others.append(OtherFs(where, p.start, p.size, p.fs))
    elif (an := analyser_for(table.whole_disk_fs)) is not None:
        out.filesystems.append(an.analyse(read, "disk", 0, disk_size, bitmaps=bitmaps, gran=gran))
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
