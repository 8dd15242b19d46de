#!/usr/bin/env python3
"""Throughput of `ploopfs compact` against `cat`.

Reuses du_bench.py's 100 GiB disk (about 3 GiB of files, a third deleted). Each sample is a
fresh `ploopfs compact --json` into an empty folder; its throughput is the bytes of the clusters
it reads (clusters_kept x cluster size) over its wall time, including the final fsync. The
baseline in the same rounds, alternating: `cat` of a file holding that many bytes (the first
clusters_kept clusters of the source image) into a new file, plus fsync, over the same wall
clock (the file is cut once, untimed). Both read warm (the previous rounds cached the
source). The child's report is checked: clusters written + zero clusters dropped = clusters
kept, and the output is smaller than the source.

Target: compact >= 0.8x the throughput of cat.

Usage: .venv/bin/python tools/bench/compact_bench.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from _common import (
    Series,
    alternate,
    log,
    machine_info,
    row,
    run_child,
    verdict,
)
from du_bench import PLOOPFS, GiB, MiB, bench_main, build

TARGET_RATIO = 0.8
WIDTHS = (34, 24, 24)


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, args.fill_mib, args.seed)
    out = os.path.join(workdir, "compact-out")
    cat_out = os.path.join(workdir, "cat-out")
    src_img = os.path.join(info["ploop"], "root.hdd")
    cat_src = os.path.join(workdir, "cat-src")
    work: dict[str, int] = {}
    rec: dict[str, list[float]] = {}

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)
        if os.path.exists(cat_out):
            os.unlink(cat_out)

    def compact_case() -> float:
        clean()
        wall, text = run_child([PLOOPFS, "compact", info["ploop"], out, "--json", "--no-progress"],
                               "compact_bench")
        r = json.loads(text)
        if r["clusters_written"] + r["clusters_zero_dropped"] != r["clusters_kept"] or \
                r["output_file_bytes"] >= info["image_bytes"]:
            raise SystemExit(f"compact_bench: WRONG RESULT: {r}")
        work["bytes"] = r["clusters_kept"] * r["cluster_size"]
        work["out"] = r["output_file_bytes"]
        rec.setdefault("compact wall s", []).append(wall)
        rec.setdefault("compact MiB/s", []).append(work["bytes"] / wall / MiB)
        return wall

    def cat_case() -> float:
        clean()
        if not os.path.exists(cat_src) or os.path.getsize(cat_src) != work["bytes"]:
            # Untimed: a plain file of the same byte count, cut from the source image's data.
            run_child(["sh", "-c", f"tail -c +{MiB + 1} {src_img} | head -c {work['bytes']} "
                                   f"> {cat_src}"], "compact_bench")
            run_child(["sh", "-c", f"cat {cat_src} >/dev/null"], "compact_bench")  # cache it
        wall, _ = run_child(["sh", "-c", f"cat {cat_src} > {cat_out} && sync {cat_out}"],
                            "compact_bench")
        rec.setdefault("cat wall s", []).append(wall)
        rec.setdefault("cat MiB/s", []).append(work["bytes"] / wall / MiB)
        return wall

    plan = [("compact", compact_case), ("cat", cat_case)]
    for _n, fn in plan:  # warm-up: page cache, and work["bytes"] for cat
        fn()
    rec.clear()
    alternate(plan, args.rounds, on_sample=lambda n, r, v: log(f"  round {r + 1} {n:8s} {v:7.3f} s"))
    clean()
    os.unlink(cat_src)
    results = {k: Series(k, "MiB/s" if "MiB" in k else "s", v) for k, v in rec.items()}
    ratio = Series("compact / cat throughput", "x", [a / b for a, b in zip(
        rec["compact MiB/s"], rec["cat MiB/s"], strict=True)])
    return {"bench": "compact_bench", "machine": machine_info(),
            "setup": {**info, "workdir": workdir, "rounds": args.rounds,
                      "copied_bytes": work["bytes"], "output_bytes": work["out"]},
            "results": results, "ratio": ratio,
            "target": {"ratio_min": TARGET_RATIO, "ratio": ratio.median,
                       "met": ratio.median >= TARGET_RATIO}}


def report(res: dict) -> None:
    s = res["setup"]
    print(f"compact_bench: {s['params']['size'] / GiB:g} GiB disk, source image "
          f"{s['image_bytes'] / MiB:.0f} MiB, compact reads {s['copied_bytes'] / MiB:.0f} MiB and "
          f"writes {s['output_bytes'] / MiB:.0f} MiB; {s['rounds']} rounds, median (min–max)")
    r = res["results"]
    print(row(("case", "wall s", "MiB/s"), WIDTHS))
    for name in ("compact", "cat"):
        print(row((name, r[f"{name} wall s"].fmt(1, 3), r[f"{name} MiB/s"].fmt(1, 0)), WIDTHS))
    print(row(("compact / cat throughput", res["ratio"].fmt(1, 2), ""), WIDTHS))
    t = res["target"]
    print(f"target: compact >= {t['ratio_min']}x cat: median {t['ratio']:.2f}x -> "
          f"{verdict(t['met'])}")


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "du_bench.py", run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
