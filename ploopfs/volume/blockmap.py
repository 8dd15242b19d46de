"""The merged block map of a chain: which level serves each virtual cluster, and where.

format.md §4.1: the top-most delta whose BAT maps a cluster wins; a raw base maps every
cluster to the same offset in its file (identity); otherwise the cluster reads as zeros.

The map is kept as sorted *extents* (runs of consecutive virtual clusters served by one level
from consecutive file offsets), 17 bytes each, so a 64 TiB sparse disk costs memory in
proportion to what is allocated and a sequentially written image collapses to a few extents.
It is built by native/pf_map.c (pf_map_merge), window by window over the virtual clusters:
inside a window every level, bottom to top, stamps its clusters into a dense owner/offset
scratch (so the top-most wins without any sorting), then runs are cut out. Windows no level
touches are skipped. The extents live in array.array: numpy is not imported on the way to a
read (its import was ~75 ms of every command's start).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ploopfs.native import map_merge
from ploopfs.volume.image import Mapping

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
                 zero: Sequence[array] | None = None) -> None:
        """`mappings[level]`; clusters at or past `nclusters` are ignored (a lower delta can be
        smaller than the top, never larger in a valid chain, format.md §1.4). `zero[level]` (sorted
        vclusters, array("I"), optional) are stamped as ZERO_LEVEL right above that level: they
        read as zeros over anything lower, and higher levels still win."""
        if len(mappings) > 255 or (zero is not None and len(mappings) >= ZERO_LEVEL):
            raise ValueError("more than 255 levels in one chain")  # ploop allows 127 (format.md §2.6)
        self.cluster_size = cluster_size
        self.nclusters = nclusters
        levels: list[tuple[array, array | None, int, int]] = []
        for lv, m in enumerate(mappings):
            levels.append((m.vclusters, m.entries, m.unit, lv))
            if zero is not None:
                levels.append((zero[lv], None, 1, ZERO_LEVEL))
        # vstart "I", count "I", level "B", offset "q": 17 bytes an extent.
        self.vstart, self.count, self.level, self.offset = map_merge(levels, nclusters,
                                                                     cluster_size)
        # Views for the per-read lookup: bisect over a memoryview yields plain ints.
        self.a_vstart = memoryview(self.vstart)
        self.a_count = memoryview(self.count)
        self.a_level = memoryview(self.level)
        self.a_offset = memoryview(self.offset)

    def __len__(self) -> int:
        return len(self.vstart)

    @property
    def mapped_clusters(self) -> int:
        return sum(self.count)

    def clusters_per_level(self, levels: int) -> list[int]:
        out = [0] * levels
        for lv, n in zip(self.level, self.count, strict=True):
            if lv < levels:
                out[lv] += n
        return out

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
