"""The merged block map of a chain: which level serves each virtual cluster, and where.

ploop-format.md §4.1: the top-most delta whose BAT maps a cluster wins; a raw base maps every
cluster to the same offset in its file (identity); otherwise the cluster reads as zeros.
The map is kept as sorted *extents* (runs of consecutive virtual clusters served by one level
from consecutive file offsets), so a 64 TiB sparse disk costs memory in proportion to what is
allocated, and a sequentially written image collapses to a handful of extents.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ploopfs.volume.image import Mapping


@dataclass(frozen=True)
class Extent:
    vstart: int  # first virtual cluster
    count: int  # clusters
    level: int  # chain level (0 = base)
    offset: int  # file byte offset of the first cluster in that level's file


class BlockMap:
    def __init__(self, mappings: Sequence[Mapping], nclusters: int, cluster_size: int) -> None:
        """`mappings[level]`; clusters at or past `nclusters` are ignored (a lower delta can be
        smaller than the top, never larger in a valid chain, §1.4)."""
        self.cluster_size = cluster_size
        self.nclusters = nclusters
        idx_parts, off_parts, lvl_parts = [], [], []
        covered = np.zeros(0, np.int64)
        for level in range(len(mappings) - 1, -1, -1):
            m = mappings[level]
            v, o = m.vclusters, m.offsets
            keep = v < nclusters
            if covered.size:
                keep &= ~np.isin(v, covered, assume_unique=True)
            if not keep.all():
                v, o = v[keep], o[keep]
            if v.size == 0:
                continue
            idx_parts.append(v)
            off_parts.append(o)
            lvl_parts.append(np.full(v.size, level, np.int16))
            if level:  # nothing lies below the base: its union would be built for nothing
                covered = np.union1d(covered, v) if covered.size else v
        if idx_parts:
            v = np.concatenate(idx_parts)
            o = np.concatenate(off_parts)
            lv = np.concatenate(lvl_parts)
            order = np.argsort(v, kind="stable")
            v, o, lv = v[order], o[order], lv[order]
            # A new extent starts where the cluster, the level or the file offset is not the
            # continuation of the previous one.
            brk = np.ones(v.size, bool)
            brk[1:] = (v[1:] != v[:-1] + 1) | (lv[1:] != lv[:-1]) | (o[1:] != o[:-1] + cluster_size)
            starts = np.flatnonzero(brk)
            counts = np.diff(np.append(starts, v.size))
            self.vstart = v[starts]
            self.count = counts.astype(np.int64)
            self.level = lv[starts]
            self.offset = o[starts]
        else:
            self.vstart = np.zeros(0, np.int64)
            self.count = np.zeros(0, np.int64)
            self.level = np.zeros(0, np.int16)
            self.offset = np.zeros(0, np.int64)
        self.vend = self.vstart + self.count
        # Compact plain-int views for the per-read lookup (8 bytes per extent; bisect over an
        # array.array is several times faster than a numpy scalar call).
        self.a_vstart = array("q", self.vstart.astype(np.int64).tobytes())
        self.a_vend = array("q", self.vend.astype(np.int64).tobytes())
        self.a_level = array("q", self.level.astype(np.int64).tobytes())
        self.a_offset = array("q", self.offset.astype(np.int64).tobytes())

    def __len__(self) -> int:
        return int(self.vstart.size)

    @property
    def mapped_clusters(self) -> int:
        return int(self.count.sum())

    def clusters_per_level(self, levels: int) -> list[int]:
        return [int(self.count[self.level == lv].sum()) for lv in range(levels)]

    def find(self, vcluster: int) -> int:
        """Index of the extent containing `vcluster`, or -(i+1) where i is the index of the
        first extent after it (len(self) if none)."""
        i = bisect_right(self.a_vstart, vcluster) - 1
        if i >= 0 and vcluster < self.a_vend[i]:
            return i
        return -(i + 2)

    def extent(self, i: int) -> Extent:
        return Extent(int(self.vstart[i]), int(self.count[i]), int(self.level[i]),
                      int(self.offset[i]))

    def extents(self) -> Iterator[Extent]:
        for i in range(len(self)):
            yield self.extent(i)
