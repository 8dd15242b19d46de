#!/usr/bin/env python3
"""rdiff drop-in benchmark (docs/benchmarks.md): `ploopfs signature` + `ploopfs delta`
vs `rdiff signature` + `rdiff delta` on two 1 GiB raw files, 1 MiB blocks, 5 % of the blocks
changed; and `ploopfs delta` vs `rdiff delta` from the same (rdiff-written) signature.

Builds (once per work dir) OLD and NEW raw files of --size bytes: random data, NEW differing in
a random --rate share of the 1 MiB blocks. Cases, each a fresh process, page cache warm,
alternating rounds (A B C …, then reversed):

* `sig+delta ploopfs`: `ploopfs signature -b 1M OLD SIG` + `ploopfs delta SIG NEW DELTA`
* `sig+delta rdiff`:   `rdiff -b 1M signature OLD SIG` + `rdiff delta SIG NEW DELTA`
  (both with librsync's default hashes, BLAKE2 + RabinKarp; with --md4 also `-H md4 -R rollsum
  -S 8`, fast-rdiff's legacy format)
* `delta ploopfs` / `delta rdiff`: the delta step alone, from rdiff's signature.

Before timing, every delta is applied with stock `rdiff patch` and must give NEW byte-exactly.
Peak RSS per process comes from /usr/bin/time (%M). Target: sig+delta >= 10x faster than rdiff,
delta alone >= 4x.

Usage: .venv/bin/python tools/bench/rdiff_bench.py [--workdir DIR] [--rounds 3] [--md4]
       [--size BYTES] [--rate 0.05] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import REPO, Series, alternate, dump_json, log, machine_info, ratio_series

MiB = 1 << 20
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")
RDIFF = shutil.which("rdiff") or "rdiff"
TIME = "/usr/bin/time"


def build(workdir: str, size: int, block: int, rate: float, seed: int) -> dict:
    params = {"size": size, "block": block, "rate": rate, "seed": seed, "v": 1}
    stamp = os.path.join(workdir, "rdiff-bench-params.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                log(f"rdiff_bench: reusing the files in {workdir}")
                return params
    rng = np.random.default_rng(seed)
    n = size // block
    changed = set(rng.choice(n, max(1, round(rate * n)), replace=False).tolist())
    with open(os.path.join(workdir, "old.raw"), "wb") as fo, \
            open(os.path.join(workdir, "new.raw"), "wb") as fn:
        for k in range(n):
            data = rng.bytes(block)
            fo.write(data)
            fn.write(rng.bytes(block) if k in changed else data)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return params


CPU: dict[str, list[float]] = {}  # case -> CPU seconds (user + sys) per sample


def run(cmd: list[str], rss: dict[str, int], key: str) -> float:
    """Wall seconds of one process; records its peak RSS (KiB) under key and adds its CPU
    seconds to _cpu_acc (the machine is shared: CPU time shows the work done even when the
    process waits for a core)."""
    global _cpu_acc
    t0 = time.perf_counter()
    r = subprocess.run([TIME, "-f", "%U %S %M", *cmd], capture_output=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"rdiff_bench: {' '.join(cmd)} failed: {r.stderr.decode().strip()}")
    user, sys_, kib = r.stderr.decode().strip().splitlines()[-1].split()
    rss[key] = max(rss.get(key, 0), int(kib))
    _cpu_acc += float(user) + float(sys_)
    return dt


_cpu_acc = 0.0


def with_cpu(name: str, fn):
    """Wrap a case so its CPU seconds per sample land in CPU[name]."""
    def wrapped() -> float:
        global _cpu_acc
        _cpu_acc = 0.0
        wall = fn()
        CPU.setdefault(name, []).append(_cpu_acc)
        return wall
    return wrapped


def files_equal(a: str, b: str) -> bool:
    return subprocess.run(["cmp", "-s", a, b], check=False).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="keep the 2 GiB of inputs here (reused)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=1 << 30)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--md4", action="store_true", help="also -H md4 -R rollsum -S 8")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    workdir = a.workdir or tempfile.mkdtemp(prefix="rdiff-bench-")
    os.makedirs(workdir, exist_ok=True)
    block = MiB
    params = build(workdir, a.size, block, a.rate, 1)
    old, new = os.path.join(workdir, "old.raw"), os.path.join(workdir, "new.raw")
    W = lambda name: os.path.join(workdir, name)  # noqa: E731
    rss: dict[str, int] = {}
    flavours = {"default": []}
    if a.md4:
        flavours["md4-8"] = ["-H", "md4", "-R", "rollsum", "-S", "8"]

    cases = []
    for fl, opts in flavours.items():
        b = ["-b", str(block)]

        def ours(fl=fl, opts=opts, b=b) -> float:
            return (run([PLOOPFS, "signature", *b, *opts, "--force", "--no-progress", old, W("p.sig")],
                        rss, f"ploopfs signature {fl}")
                    + run([PLOOPFS, "delta", "--force", "--no-progress", W("p.sig"), new,
                           W("p.delta")], rss, f"ploopfs delta {fl}"))

        def theirs(fl=fl, opts=opts, b=b) -> float:
            return (run([RDIFF, "-f", *b, *opts, "signature", old, W("r.sig")], rss,
                        f"rdiff signature {fl}")
                    + run([RDIFF, "-f", "delta", W("r.sig"), new, W("r.delta")], rss,
                          f"rdiff delta {fl}"))

        def ours_delta(fl=fl) -> float:
            return run([PLOOPFS, "delta", "--force", "--no-progress", W(f"ref-{fl}.sig"), new,
                        W("pd.delta")], rss, f"ploopfs delta {fl} (rdiff sig)")

        def theirs_delta(fl=fl) -> float:
            return run([RDIFF, "-f", "delta", W(f"ref-{fl}.sig"), new, W("rd.delta")], rss,
                       f"rdiff delta {fl}")

        # correctness first: every delta through stock rdiff patch gives NEW
        log(f"rdiff_bench: checking {fl} deltas with rdiff patch")
        subprocess.run([RDIFF, "-f", *b, *opts, "signature", old, W(f"ref-{fl}.sig")], check=True)
        ours()
        ours_delta()
        subprocess.run([PLOOPFS, "signature", *b, *opts, "--force", old, W("check.sig")], check=True)
        if not files_equal(W("check.sig"), W(f"ref-{fl}.sig")):
            sys.exit("rdiff_bench: ploopfs signature differs from rdiff signature")
        for d in ("p.delta", "pd.delta"):
            subprocess.run([RDIFF, "-f", "patch", old, W(d), W("out.raw")], check=True)
            if not files_equal(W("out.raw"), new):
                sys.exit(f"rdiff_bench: rdiff patch of {d} is not NEW")
        for name, fn in ((f"sig+delta ploopfs {fl}", ours), (f"sig+delta rdiff {fl}", theirs),
                         (f"delta ploopfs {fl}", ours_delta), (f"delta rdiff {fl}", theirs_delta)):
            cases.append((name, with_cpu(name, fn)))

    subprocess.run(["cat", old, new], stdout=subprocess.DEVNULL, check=True)  # warm cache
    log(f"rdiff_bench: {a.rounds} rounds, {len(cases)} cases")
    samples = alternate(cases, a.rounds,
                        lambda n, r, v: log(f"  round {r + 1}: {n}: {v:.2f} s"))
    series = {n: Series(n, "s", v) for n, v in samples.items()}
    gib = a.size / (1 << 30)
    print(f"\nload average at the end: {os.getloadavg()}")
    print(f"rdiff drop-in, {gib:g} GiB, 1 MiB blocks, {a.rate:.0%} changed, "
          f"{a.rounds} rounds (median (min–max))")
    result: dict[str, object] = {"machine": machine_info(), "params": params, "cases": {}}
    for fl in flavours:
        for what, target in (("sig+delta", 10.0), ("delta", 4.0)):
            p, r = series[f"{what} ploopfs {fl}"], series[f"{what} rdiff {fl}"]
            ratio = Series("ratio", "x", ratio_series(r.samples, p.samples))
            pc = Series("cpu", "s", CPU[f"{what} ploopfs {fl}"])
            rc = Series("cpu", "s", CPU[f"{what} rdiff {fl}"])
            cratio = Series("ratio", "x", ratio_series(rc.samples, pc.samples))
            print(f"  {what:10s} {fl:8s} wall: ploopfs {p.fmt()} s  rdiff {r.fmt()} s  "
                  f"speed-up {ratio.fmt(digits=1)}x  (target >= {target:g}x)")
            print(f"  {'':10s} {'':8s} CPU:  ploopfs {pc.fmt()} s  rdiff {rc.fmt()} s  "
                  f"ratio {cratio.fmt(digits=1)}x")
            result["cases"][f"{what} {fl}"] = {
                "ploopfs_s": p.samples, "rdiff_s": r.samples, "speedup": ratio.samples,
                "ploopfs_cpu_s": pc.samples, "rdiff_cpu_s": rc.samples, "target": target}
    print("  peak RSS (MiB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(rss.items())))
    result["peak_rss_kib"] = rss
    dump_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
