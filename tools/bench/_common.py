"""Shared helpers of the benchmarks in tools/bench: alternating rounds, statistics, output.

The machines are shared and noisy, so a benchmark never reports an absolute number alone: each
case is run next to a baseline in the same process run, alternating (A B A B …), and reported as
median and min–max over the rounds, plus the ratio to the baseline.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Series:
    """Samples of one measured quantity (seconds, bytes/s, bytes …)."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        return (f"{self.median / scale:.{digits}f} "
                f"({self.lo / scale:.{digits}f}–{self.hi / scale:.{digits}f})")


def alternate(cases: Sequence[tuple[str, Callable[[], float]]], rounds: int,
              on_sample: Callable[[str, int, float], None] | None = None) -> dict[str, list[float]]:
    """Run every case once per round, the order reversed on odd rounds (A B C, C B A, …) so no
    case always runs first or last; returns the samples per case."""
    out: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(rounds):
        order = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name, fn in order:
            v = fn()
            out[name].append(v)
            if on_sample:
                on_sample(name, r, v)
    return out


def ratio_series(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios (samples of the same round were taken seconds apart)."""
    return [a / b for a, b in zip(num, den, strict=True)]


def machine_info() -> dict[str, object]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def dump_json(path: str | None, payload: dict[str, object]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__")
                  else str(o))
        f.write("\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
