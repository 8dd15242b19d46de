"""Shared helpers of the benchmarks in tools/bench: alternating rounds, statistics, output, work
folders, reusable builds, timed child processes.

The machines are shared and noisy, so a benchmark never reports an absolute number alone: each
case is run next to a baseline in the same process run, alternating (A B A B …), and reported as
median and min–max over the rounds, plus the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAMP = "bench-params.json"  # a build's parameters and results, for reuse_build
T = TypeVar("T")


def fresh_bytecode() -> None:
    """Bring the package's .pyc files up to date before anything is timed. An installed package
    has them (pip compiles at install); an editable checkout gets them on first import, except
    where PYTHONDONTWRITEBYTECODE is set (as on the team's machines): every timed command then
    compiled each module edited since, 10 ms for diff.py alone, which is no part of the tool."""
    import compileall

    compileall.compile_dir(os.path.join(REPO, "ploopfs"), quiet=1)


fresh_bytecode()  # at import: every benchmark imports this module before it times anything


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


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of a summary table: the first cell left-aligned, the others right-aligned."""
    first, *rest = cells
    return " ".join([f"{first:{widths[0]}s}",
                     *(f"{c:>{w}s}" for c, w in zip(rest, widths[1:], strict=True))])


def in_workdir(workdir: str | None, prefix: str, run: Callable[[str], T],
               keep: Callable[[str], str | None] | None = None) -> T:
    """run(folder) in --workdir (created if missing, kept so a later run reuses its images) or
    else in a fresh temporary folder under $TMPDIR (default /var/tmp), removed afterwards unless
    keep(folder) gives a reason to leave it (logged)."""
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        return run(workdir)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        return run(tmp)
    finally:
        why = keep(tmp) if keep else None
        if why:
            log(why)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def reuse_build(workdir: str, params: dict[str, object]) -> dict | None:
    """What a previous build left in workdir/bench-params.json, if it used the same params."""
    stamp = os.path.join(workdir, STAMP)
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old.get("params") == params:
            return old
    return None


def reuse_chain(workdir: str, params: dict[str, object], who: str) -> dict | None:
    """reuse_build for a chain of levelN.hds + DiskDescriptor.xml + disk.raw: the earlier build
    if it used the same params, else None after removing that earlier build's files."""
    old = reuse_build(workdir, params)
    if old:
        log(f"{who}: reusing the chain in {workdir}")
        return old
    for name in os.listdir(workdir):
        if name.startswith("level") or name in ("disk.raw", "DiskDescriptor.xml"):
            os.unlink(os.path.join(workdir, name))
    return None


def save_build(workdir: str, info: dict) -> None:
    """Record a build (its "params" and what it made) for reuse_build."""
    with open(os.path.join(workdir, STAMP), "w") as f:
        json.dump(info, f)


def run_child(argv: list[str], who: str) -> tuple[float, str]:
    """Wall seconds from spawn to exit, and the child's stdout; a failed child ends the bench."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{who}: child failed ({proc.returncode}): {shlex.join(argv)}")
    return wall, proc.stdout.decode()


def bench_parser(doc: str | None, shared_with: str, size: int, seed: int,
                 rounds: int = 5) -> argparse.ArgumentParser:
    """The options every throughput benchmark takes: --workdir (kept and reused, shared with
    another benchmark that builds the same input), --size, --seed, --rounds, --json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help=f"keep (and reuse) the input here (shared with {shared_with})")
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--json", help="also write the results here")
    return p
