#!/usr/bin/env python3
"""Time of `check` (metadata only) on a 1 TiB virtual disk with 4 images.

Reuses open_map.py's chain builder (base + 3 deltas, 1 MiB clusters, 1,048,576 BAT entries per
image; the base maps 100 % of the clusters, the deltas 25/10/5 %; data clusters are holes, which
is all a metadata check needs; layouts "seq" and "shuf"). Each sample is a fresh `python` that
imports ploopfs.services.check and runs `check(dir)`; it reports the time of that call, and the
child verifies the verdict (clean) and the allocated-cluster count per image against the builder's
numbers, so a check that skipped work cannot pass as a fast one. Baselines in the same rounds,
alternating: `python` + import only, `head -c` of the four header+BAT regions (I/O floor), and
`open_source(dir).volume()` (the strict reader's open + map, bench open_map).

Target: check < 2 s.

Usage: .venv/bin/python tools/bench/check_chain.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from _common import Series, alternate, dump_json, in_workdir, log, machine_info, row, run_child, verdict
from open_map import HWM, LAYOUTS, WIDTHS, build

MiB = 1 << 20
TARGET_SECONDS = 2.0

CHILD = HWM + r"""
import sys, time
t0 = time.perf_counter()
from ploopfs.services.check import check
t1 = time.perf_counter()
rep = check(sys.argv[1])
t2 = time.perf_counter()
import json
print(json.dumps({"import_s": t1 - t0, "check_s": t2 - t1, "hwm": hwm(), "exit": rep.exit_code,
                  "codes": sorted(rep.codes()), "allocated": [i.allocated for i in rep.images]}))
"""
OPEN_CHILD = HWM + r"""
import sys, time, json
from ploopfs.volume.source import open_source
t0 = time.perf_counter()
open_source(sys.argv[1]).volume()
print(json.dumps({"open_s": time.perf_counter() - t0}))
"""
IMPORT_CHILD = "import ploopfs.services.check\n"


def _child(argv: list[str]) -> tuple[float, str]:
    return run_child(argv, "check_chain")


def run(args: argparse.Namespace, workdir: str) -> dict:
    fractions = [float(x) for x in args.fractions.split(",")]
    info = build(workdir, args.size, args.cluster, fractions, args.seed)
    py = sys.executable
    rec: dict[str, dict[str, list[float]]] = {}

    def add(name: str, **vals: float) -> None:
        for k, v in vals.items():
            rec.setdefault(name, {}).setdefault(k, []).append(v)

    def check_case(layout: str) -> float:
        wall, out = _child([py, "-c", CHILD, os.path.join(workdir, layout)])
        r = json.loads(out)
        want = info["chains"][layout]["mapped_per_image"]
        if r["exit"] != 0 or r["allocated"] != want:
            raise SystemExit(f"check_chain: WRONG RESULT for {layout}: exit {r['exit']} codes "
                             f"{r['codes']}, allocated {r['allocated']}, expected {want}")
        add(f"check {layout}", check_s=r["check_s"], wall=wall, rss=r["hwm"])
        return r["check_s"]

    def open_case(layout: str) -> float:
        wall, out = _child([py, "-c", OPEN_CHILD, os.path.join(workdir, layout)])
        add(f"open+map {layout} (baseline)", open_s=json.loads(out)["open_s"], wall=wall)
        return wall

    def import_case() -> float:
        wall, _ = _child([py, "-c", IMPORT_CHILD])
        add("python + import (baseline)", wall=wall)
        return wall

    files = [os.path.join(workdir, LAYOUTS[0], f) for f in info["chains"][LAYOUTS[0]]["files"]]
    n = info["chains"][LAYOUTS[0]]["bat_region_bytes"]
    head = " ; ".join(f"head -c {n} {shlex.quote(f)} >/dev/null" for f in files)

    def head_case() -> float:
        wall, _ = _child(["sh", "-c", head])
        add("head -c of the 4 BAT regions (baseline)", wall=wall)
        return wall

    plan = [(f"check {lay}", lambda lay=lay: check_case(lay)) for lay in LAYOUTS]
    plan += [(f"open {lay}", lambda lay=lay: open_case(lay)) for lay in LAYOUTS]
    plan += [("import", import_case), ("head", head_case)]
    for _name, fn in plan:  # warm-up: page cache, pyc files
        fn()
    rec.clear()
    alternate(plan, args.rounds, on_sample=lambda name, r, v: log(f"  round {r + 1} {name:10s} {v:7.3f} s"))
    results = {name: {k: Series(k, "B" if k == "rss" else "s", v) for k, v in d.items()}
               for name, d in rec.items()}
    worst = max(results[f"check {lay}"]["check_s"].median for lay in LAYOUTS)
    return {"bench": "check_chain", "machine": machine_info(),
            "setup": {**info, "workdir": workdir, "rounds": args.rounds}, "results": results,
            "target": {"check_s_max": TARGET_SECONDS, "worst_check_s": worst,
                       "met": worst < TARGET_SECONDS}}


def report(res: dict) -> None:
    p = res["setup"]["params"]
    ch = res["setup"]["chains"][LAYOUTS[0]]
    print(f"check_chain: {p['size'] / (1 << 40):g} TiB disk, {p['cluster'] // MiB} MiB clusters, "
          f"{len(ch['files'])} images mapping {ch['mapped_per_image']} clusters; "
          f"{res['setup']['rounds']} rounds, median (min–max)")
    print(row(("case", "check()/open() s", "process wall s", "peak RSS MiB"), WIDTHS))
    for name, ser in res["results"].items():
        inner = ser.get("check_s") or ser.get("open_s")
        rss = ser["rss"].fmt(MiB, 1) if "rss" in ser else "-"
        print(row((name, inner.fmt(1, 3) if inner else "-", ser["wall"].fmt(1, 3), rss), WIDTHS))
    t = res["target"]
    print(f"target: check < {t['check_s_max']} s: worst median {t['worst_check_s']:.3f} s -> "
          f"{verdict(t['met'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep (and reuse) the images here (shared with open_map.py)")
    p.add_argument("--size", type=int, default=1 << 40)
    p.add_argument("--cluster", type=int, default=1 << 20)
    p.add_argument("--fractions", default="1,0.25,0.10,0.05")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-check-", lambda d: run(args, d))
    report(res)
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
