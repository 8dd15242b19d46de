#!/usr/bin/env python3
"""Time of `ploopfs export -f qcow2` against `qemu-img convert -O qcow2` of a raw export.

Builds (once per work dir) a virtual disk of --size bytes (default 2 GiB, 1 MiB clusters) as a
chain base + 2 deltas written with ploopfs.volume.writer.ImageWriter: the base maps --fill of
the clusters (a tenth of those all zeros, the rest random data), each delta overwrites 10 % of
the clusters in random order (a tenth of them with zeros); the rest of the disk is holes. The
raw export of the top (`ploopfs export`, sparse) is made once, untimed: it is qemu-img's input.

Each round, alternating: `ploopfs export -f qcow2 --json` of the chain (reads only the mapped
extents, fsyncs at the end), and `qemu-img convert -f raw -O qcow2` of the raw export followed
by `sync` of its output (qemu-img does not fsync by default), both into a fresh file, page cache
warm. The warm-up round checks both outputs with `qemu-img check` and `qemu-img compare` against
the raw export, so a wrong export cannot pass as a fast one; every round checks the child's
report (bytes written).

Target: ploopfs >= 0.8x the speed of qemu-img (qemu-img wall / ploopfs wall, per round).

Usage: .venv/bin/python tools/bench/qcow2_bench.py [--workdir DIR] [--size BYTES] [--rounds 5]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from _common import (
    REPO,
    Series,
    alternate,
    bench_parser,
    dump_json,
    in_workdir,
    log,
    machine_info,
    ratio_series,
    reuse_chain,
    row,
    run_child,
    save_build,
    verdict,
)

from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MiB = 1 << 20
GiB = 1 << 30
TARGET = 0.8
WIDTHS = (34, 24, 24)
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")


def build(workdir: str, size: int, cluster: int, fill: float, seed: int) -> dict:
    params = {"size": size, "cluster": cluster, "fill": fill, "seed": seed, "v": 1}
    old = reuse_chain(workdir, params, "qcow2_bench")
    if old:
        return old
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = -(-size // cluster)
    zero = bytes(cluster)
    files = []
    for level, frac in enumerate([fill, 0.1, 0.1]):
        name = f"level{level}.hds"
        files.append(name)
        picked = rng.choice(n, max(1, round(frac * n)), replace=False)
        if level == 0:
            picked.sort()
        with ImageWriter.create(os.path.join(workdir, name), size, cluster) as w:
            for v in picked.tolist():
                w.write_cluster(v, zero if rng.random() < 0.1 else rng.bytes(cluster))
    write_descriptor(os.path.join(workdir, "DiskDescriptor.xml"),
                     chain_descriptor(files, size, cluster))
    run_child([PLOOPFS, "export", "--no-progress", workdir, os.path.join(workdir, "disk.raw")],
              "qcow2_bench")
    info = {"params": params, "files": files,
            "raw_allocated_bytes": os.stat(os.path.join(workdir, "disk.raw")).st_blocks * 512,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    log(f"qcow2_bench: built {len(files)} images + raw export in {info['build_seconds']} s")
    return info


def qemu_ok(*argv: str) -> None:
    r = subprocess.run(["qemu-img", *argv], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"qcow2_bench: WRONG RESULT: qemu-img {' '.join(argv)}: "
                         f"{r.stdout}{r.stderr}")


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, args.cluster, args.fill, args.seed)
    raw = os.path.join(workdir, "disk.raw")
    outs = {"ploopfs": os.path.join(workdir, "ploopfs.qcow2"),
            "qemu-img": os.path.join(workdir, "qemu.qcow2")}
    rec: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}

    def clean(name: str) -> None:
        if os.path.exists(outs[name]):
            os.unlink(outs[name])

    def ploopfs_case() -> float:
        clean("ploopfs")
        wall, text = run_child([PLOOPFS, "export", "-f", "qcow2", "--json", "--no-progress",
                                workdir, outs["ploopfs"]], "qcow2_bench")
        r = json.loads(text)
        if r["format"] != "qcow2" or r["data_bytes_written"] <= 0 or \
                r["data_bytes_written"] > info["raw_allocated_bytes"]:
            raise SystemExit(f"qcow2_bench: WRONG RESULT: {r}")
        sizes["ploopfs"] = os.path.getsize(outs["ploopfs"])
        rec.setdefault("ploopfs wall s", []).append(wall)
        return wall

    def qemu_case() -> float:
        clean("qemu-img")
        out = outs["qemu-img"]
        wall, _ = run_child(["sh", "-c", f"qemu-img convert -f raw -O qcow2 '{raw}' '{out}' && "
                                         f"sync '{out}'"], "qcow2_bench")
        sizes["qemu-img"] = os.path.getsize(out)
        rec.setdefault("qemu-img wall s", []).append(wall)
        return wall

    plan = [("ploopfs", ploopfs_case), ("qemu-img", qemu_case)]
    run_child(["sh", "-c", f"cat '{raw}' {workdir}/level*.hds >/dev/null"], "qcow2_bench")
    for name, fn in plan:  # warm-up, and the outputs checked by qemu-img
        fn()
        qemu_ok("check", "-q", outs[name])
        qemu_ok("compare", "-q", "-f", "qcow2", "-F", "raw", outs[name], raw)
    rec.clear()
    alternate(plan, args.rounds,
              on_sample=lambda n, r, v: log(f"  round {r + 1} {n:8s} {v:7.3f} s"))
    for name in outs:
        clean(name)
    results = {k: Series(k, "s", v) for k, v in rec.items()}
    ratio = Series("ploopfs speed / qemu-img speed", "x",
                   ratio_series(rec["qemu-img wall s"], rec["ploopfs wall s"]))
    return {"bench": "qcow2_bench", "machine": machine_info(),
            "setup": {**info, "workdir": workdir, "rounds": args.rounds,
                      "output_bytes": sizes},
            "results": results, "ratio": ratio,
            "target": {"ratio_min": TARGET, "ratio": ratio.median,
                       "met": ratio.median >= TARGET}}


def report(res: dict) -> None:
    s = res["setup"]
    p = s["params"]
    print(f"qcow2_bench: {p['size'] / GiB:g} GiB disk, 3-image chain, {p['cluster'] / MiB:g} MiB "
          f"clusters, raw export holds {s['raw_allocated_bytes'] / MiB:.0f} MiB; qcow2 files: "
          f"ploopfs {s['output_bytes']['ploopfs'] / MiB:.0f} MiB, qemu-img "
          f"{s['output_bytes']['qemu-img'] / MiB:.0f} MiB; {s['rounds']} rounds, median (min–max)")
    r = res["results"]
    print(row(("case", "wall s", ""), WIDTHS))
    print(row(("ploopfs export -f qcow2", r["ploopfs wall s"].fmt(1, 3), ""), WIDTHS))
    print(row(("qemu-img convert -O qcow2 + sync", r["qemu-img wall s"].fmt(1, 3), ""), WIDTHS))
    print(row(("ploopfs / qemu-img speed", res["ratio"].fmt(1, 2), ""), WIDTHS))
    t = res["target"]
    print(f"target: ploopfs >= {t['ratio_min']}x qemu-img: median {t['ratio']:.2f}x -> "
          f"{verdict(t['met'])}")


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, "no other benchmark", 2 * GiB, 11)
    p.add_argument("--cluster", type=int, default=MiB, help="ploop cluster size (default 1 MiB)")
    p.add_argument("--fill", type=float, default=0.6, help="share of clusters the base maps")
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-qcow2-", lambda d: run(args, d))
    report(res)
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
