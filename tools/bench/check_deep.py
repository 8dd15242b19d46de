#!/usr/bin/env python3
"""Throughput of `check --deep` vs `cat` of the image files.

Reuses read_chain.py's builder: a 1 GiB virtual disk (1 MiB clusters) as base + 3 deltas full of
random data (the deltas rewrite 25/10/5 % of the clusters in random order). With the page cache
warm, alternating round by round, it times `check(dir, deep=True)` in this process (which reads
every referenced cluster of every image, plus the lower cluster each delta cluster shadows, to
compare them) and `cat` of the four image files to /dev/null. Throughput = bytes of the image
files / seconds. The check must come out clean apart from info findings, and must have read
(allocated) the number of clusters the builder wrote, so a check that skipped work cannot pass.

Target: check --deep >= 0.8 x the throughput of cat.

Usage: .venv/bin/python tools/bench/check_deep.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from _common import (
    Series,
    alternate,
    bench_parser,
    dump_json,
    in_workdir,
    log,
    machine_info,
    ratio_series,
    verdict,
)
from read_chain import build

from ploopfs.cli.check import summary_line
from ploopfs.services.check import check

GB = 1e9
TARGET_RATIO = 0.8


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, 1 << 20, [0.25, 0.10, 0.05], args.seed)
    files = [os.path.join(workdir, f) for f in info["files"]]
    nbytes = sum(os.path.getsize(f) for f in files)
    cat = f"cat {' '.join(shlex.quote(f) for f in files)} > /dev/null"

    def deep() -> float:
        t0 = time.perf_counter()
        rep = check(workdir, deep=True)
        dt = time.perf_counter() - t0
        if rep.exit_code != 0 or [i.allocated for i in rep.images] != info["clusters_written_per_level"]:
            raise SystemExit(f"check_deep: WRONG RESULT: {summary_line(rep)} "
                             f"{[i.allocated for i in rep.images]}")
        return nbytes / dt

    def cat_files() -> float:
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", cat], check=True)
        return nbytes / (time.perf_counter() - t0)

    plan = [("check --deep", deep), ("cat", cat_files)]
    for _n, fn in plan:
        fn()  # warm-up
    samples = alternate(plan, args.rounds,
                        on_sample=lambda n, r, v: log(f"  round {r + 1} {n:13s} {v / GB:6.2f} GB/s"))
    res = {n: Series(n, "B/s", v) for n, v in samples.items()}
    ratio = Series("ratio", "x", ratio_series(samples["check --deep"], samples["cat"]))
    return {"bench": "check_deep", "machine": machine_info(),
            "setup": {**info, "image_bytes": nbytes, "rounds": args.rounds}, "results": res,
            "ratio": ratio, "target": {"ratio_min": TARGET_RATIO, "met": ratio.median >= TARGET_RATIO}}


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "read_chain.py", 1 << 30, 1).parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-deep-", lambda d: run(args, d))
    s = res["setup"]
    print(f"check_deep: {s['params']['size'] / GB * 1.073741824:.0f} GiB disk, 4 images, "
          f"{s['image_bytes'] / GB:.2f} GB of image files, {s['rounds']} rounds, median (min–max)")
    for n, ser in res["results"].items():
        print(f"  {n:14s} {ser.fmt(GB, 2)} GB/s")
    print(f"  ratio check/cat {res['ratio'].fmt(1, 2)} -> target >= {TARGET_RATIO}: "
          f"{verdict(res['target']['met'])}")
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
