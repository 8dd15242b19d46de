"""BAT rules of the format layer, against simple models."""

from __future__ import annotations

import random

import numpy as np

from ploopfs.format.bat import bat_entry_off, duplicate_slots


def test_bat_entry_off() -> None:
    assert bat_entry_off(0) == 64 and bat_entry_off(10) == 104


def test_duplicate_slots_against_a_model() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randrange(0, 40)
        vcl = np.array(sorted(rng.sample(range(1000), n)), np.uint32)
        ent = np.array([rng.randrange(1, 12) for _ in range(n)], np.uint32)
        owner: dict[int, int] = {}
        want = []
        for v, e in sorted(zip(vcl.tolist(), ent.tolist(), strict=True), key=lambda t: (t[1], t[0])):
            if e in owner:
                want.append((v, owner[e], e))
            else:
                owner[e] = v
        assert sorted(duplicate_slots(vcl, ent)) == sorted(want)
