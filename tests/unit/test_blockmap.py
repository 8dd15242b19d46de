"""The merged block map of a chain against a dense per-cluster model (format.md §4.1)."""

from __future__ import annotations

import random
from array import array

from ploopfs.volume.blockmap import BlockMap
from ploopfs.volume.image import Mapping


def _mapping(pairs: dict[int, int], unit: int) -> Mapping:
    v = sorted(pairs)
    return Mapping(array("I", v), array("I", [pairs[k] for k in v]), unit)


def test_top_most_level_wins_and_extents_cover_exactly_the_mapped_clusters() -> None:
    rng = random.Random(3)
    c = 4096
    for _ in range(200):
        n = rng.randrange(1, 300)
        levels = []
        for _lv in range(rng.randrange(1, 5)):
            vcl = rng.sample(range(n + 20), rng.randrange(0, n))  # some past the disk
            first = rng.randrange(1, 9)
            levels.append({v: first + i for i, v in enumerate(vcl)})
        m = BlockMap([_mapping(p, c) for p in levels], n, c)
        model: dict[int, tuple[int, int]] = {}
        for lv, p in enumerate(levels):
            for v, e in p.items():
                if v < n:
                    model[v] = (lv, e * c)
        got: dict[int, tuple[int, int]] = {}
        for ext in m.extents():
            for k in range(ext.count):
                got[ext.vstart + k] = (ext.level, ext.offset + k * c)
        assert got == model
        for v in range(n):
            i = m.find(v)
            assert (i >= 0) == (v in model)
        counts = m.clusters_per_level(len(levels))
        assert counts == [sum(1 for lv, _ in model.values() if lv == k) for k in range(len(levels))]
