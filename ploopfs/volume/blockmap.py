"""The merged block map of a chain: which level serves each virtual cluster, and where.

ploop-format.md §4.1: the top-most delta whose BAT maps a cluster wins; a raw base maps every
cluster to the same offset in its file (identity); otherwise the cluster reads as zeros.

The map is kept as sorted *extents* (runs of consecutive virtual clusters served by one level
from consecutive file offsets), 17 bytes each, so a 64 TiB sparse disk costs memory in
proportion to what is allocated and a sequentially written image collapses to a few extents.
It is built window by window over the virtual clusters: inside a window every level, bottom to
top, stamps its clusters into a dense owner/offset scratch (so the top-most wins without any
sorting), then runs are cut out. Windows no level touches are skipped.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ploopfs.volume.image import Mapping

WINDOW = 1 << 16  # virtual clusters per merge window: well under 1 MiB of scratch each
# Level value of extents that read as zeros whatever lower levels map: salvage with the "zeros"
# policy stamps damaged clusters with it (docs/salvage.md). Never produced without `zero=`.
ZERO_LEVEL = 255


@dataclass(frozen=True)
class Extent:
    vstart: int  # first virtual cluster
    count: int  # clusters
    level: int  # chain level (0 = base)
    offset: int  # file byte offset of the first cluster in that level's file


class BlockMap:
    def __init__(self, mappings: Sequence[Mapping], nclusters: int, cluster_size: int,
                 zero: Sequence[np.ndarray] | None = None) -> None:
        """`mappings[level]`; clusters at or past `nclusters` are ignored (a lower delta can be
        smaller than the top, never larger in a valid chain, §1.4). `zero[level]` (sorted
        vclusters, optional) are stamped as ZERO_LEVEL right above that level: they read as
        zeros over anything lower, and higher levels still win."""
        if len(mappings) > 255 or (zero is not None and len(mappings) >= ZERO_LEVEL):
            raise ValueError("more than 255 levels in one chain")  # ploop allows 127 (§2.6)
        self.cluster_size = cluster_size
        self.nclusters = nclusters
        # Each level's slice of clusters in [0, nclusters): mappings are sorted by vcluster.
        levels: list[tuple[int, np.ndarray, Mapping | None]] = []
        for lv, m in enumerate(mappings):
            levels.append((lv, m.vclusters[: int(np.searchsorted(m.vclusters, nclusters))], m))
            if zero is not None:
                z = zero[lv]
                levels.append((ZERO_LEVEL, z[: int(np.searchsorted(z, nclusters))], None))
        levels = [(lv, v, m) for lv, v, m in levels if v.size]
        # Output arrays sized for the worst case (one extent per mapped cluster), filled window
        # by window and shrunk in place at the end: no list of parts, no concatenation copy.
        cap = sum(int(v.size) for _lv, v, _m in levels)
        self.vstart = np.empty(cap, np.uint32)
        self.count = np.empty(cap, np.uint32)
        self.level = np.empty(cap, np.uint8)
        self.offset = np.empty(cap, np.int64)
        n = 0
        if levels:
            owner = np.empty(min(WINDOW, nclusters), np.int16)
            offset = np.empty(min(WINDOW, nclusters), np.int64)
            for w0 in self._windows(levels, nclusters):
                w1 = min(w0 + WINDOW, nclusters)
                n = self._merge_window(levels, w0, w1, owner[: w1 - w0], offset[: w1 - w0], n)
        for a in (self.vstart, self.count, self.level, self.offset):
            a.resize(n, refcheck=False)
        # Views for the per-read lookup: bisect over a memoryview yields plain ints without a
        # second copy of the arrays.
        self.a_vstart = memoryview(self.vstart)
        self.a_count = memoryview(self.count)
        self.a_level = memoryview(self.level)
        self.a_offset = memoryview(self.offset)

    @staticmethod
    def _windows(levels: list[tuple[int, np.ndarray, Mapping | None]], nclusters: int
                 ) -> list[int]:
        starts: set[int] = set()
        for _lv, v, _m in levels:  # v is sorted: its windows change where the quotient does
            if v.size:
                w = (v // np.uint32(WINDOW)).astype(np.int64)
                firsts = w[np.concatenate(([0], np.flatnonzero(np.diff(w)) + 1))]
                starts.update((firsts * WINDOW).tolist())
        return sorted(starts)

    def _merge_window(self, levels: list[tuple[int, np.ndarray, Mapping | None]], w0: int, w1: int,
                      owner: np.ndarray, offset: np.ndarray, n: int) -> int:
        """Merge virtual clusters [w0, w1) into the output arrays from index `n`; returns the
        new number of extents."""
        owner.fill(-1)
        for lv, v, m in levels:  # bottom to top: later stamps win
            a, b = np.searchsorted(v, [w0, w1])
            if a == b:
                continue
            idx = v[a:b].astype(np.int64) - w0
            owner[idx] = lv
            if m is None:  # ZERO_LEVEL: a made-up continuous offset, so runs still merge
                offset[idx] = (idx + w0) * self.cluster_size
            else:
                offset[idx] = m.entries[a:b].astype(np.int64) * m.unit
        idx = np.flatnonzero(owner >= 0)
        if not idx.size:
            return n
        lv = owner[idx]
        off = offset[idx]
        # A new extent starts where the cluster, the level or the file offset does not continue
        # the previous one.
        brk = np.empty(idx.size, bool)
        brk[0] = True
        brk[1:] = (idx[1:] != idx[:-1] + 1) | (lv[1:] != lv[:-1]) | \
            (off[1:] != off[:-1] + self.cluster_size)
        starts = np.flatnonzero(brk)
        k = starts.size
        self.vstart[n:n + k] = idx[starts] + w0
        self.count[n:n + k] = np.diff(np.append(starts, idx.size))
        self.level[n:n + k] = lv[starts]
        self.offset[n:n + k] = off[starts]
        return n + k

    def __len__(self) -> int:
        return int(self.vstart.size)

    @property
    def mapped_clusters(self) -> int:
        return int(self.count.sum(dtype=np.int64))

    def clusters_per_level(self, levels: int) -> list[int]:
        return [int(self.count[self.level == lv].sum(dtype=np.int64)) for lv in range(levels)]

    def breaks(self, c0: int, c1: int) -> np.ndarray:
        """The clusters strictly inside (c0, c1) where an extent starts or ends: where the
        source of the clusters may change (int64, not sorted, may repeat)."""
        a = max(0, int(np.searchsorted(self.vstart, c0, side="right")) - 1)
        b = int(np.searchsorted(self.vstart, c1, side="left"))
        vs = self.vstart[a:b].astype(np.int64)
        pts = np.concatenate((vs, vs + self.count[a:b]))
        return pts[(pts > c0) & (pts < c1)]

    def next_break(self, c: int) -> int:
        """The first cluster after `c` where an extent starts or ends (2**63 - 1 if none)."""
        i = int(np.searchsorted(self.vstart, c, side="right")) - 1
        if i >= 0 and int(self.vstart[i]) + int(self.count[i]) > c:
            return int(self.vstart[i]) + int(self.count[i])
        return int(self.vstart[i + 1]) if i + 1 < len(self) else (1 << 63) - 1

    def find(self, vcluster: int) -> int:
        """Index of the extent containing `vcluster`, or -(i+1) where i is the index of the
        first extent after it (len(self) if none)."""
        i = bisect_right(self.a_vstart, vcluster) - 1
        if i >= 0 and vcluster < self.a_vstart[i] + self.a_count[i]:
            return i
        return -(i + 2)

    def extent(self, i: int) -> Extent:
        return Extent(self.a_vstart[i], self.a_count[i], self.a_level[i], self.a_offset[i])

    def extents(self) -> Iterator[Extent]:
        for i in range(len(self)):
            yield self.extent(i)
