#!/usr/bin/env python3
"""Throughput of `ploopfs du --dedup` over a fleet of disks vs `cat` of their image files.

Builds --disks (default 10) ploop disks of --size (default 1 GiB; the issue's 4 GiB needs
40 GiB of free space) with ploopfs.volume.writer.ImageWriter, 1 MiB clusters, like containers
made from one OS template: the first 50 % of each disk's clusters hold the same "template" data
(half random, half 4-bit-entropy bytes that compress ~2x), the next 30 % data unique to the disk,
the last 20 % stay unallocated. With the page cache warm (at the issue's 10 x 4 GiB the files
exceed this machine's RAM, so both sides then read the disk), alternating round by round, it times
the CLI `ploopfs du --dedup --json DISK...` (a child process, as users run it) and
`cat` of the same image files to /dev/null. Throughput = bytes of the image files / seconds.
Each du run must report exactly the constructed 4 KiB figures (referenced and distinct blocks,
exact mode), so a run that skipped work cannot pass. Peak RSS of the du child is reported.

Target: du --dedup >= 0.8 x the throughput of cat.

Usage: .venv/bin/python tools/bench/dedup_bench.py [--workdir DIR] [--size BYTES] [--disks N]
       [--rounds 5] [--sample N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import numpy as np
from _common import (
    REPO,
    Series,
    alternate,
    dump_json,
    in_workdir,
    log,
    machine_info,
    ratio_series,
    reuse_build,
    save_build,
    verdict,
)

from ploopfs.volume.writer import ImageWriter

GB = 1e9
MiB = 1 << 20
TARGET = 0.8
CLUSTER = MiB
BLOCKS_PER_CLUSTER = CLUSTER // 4096


def _cluster(rng: np.random.Generator, compressible: bool) -> bytes:
    if compressible:
        return (rng.integers(0, 16, CLUSTER, dtype=np.uint8) + 0x40).tobytes()
    return rng.bytes(CLUSTER)


def build(workdir: str, size: int, disks: int, seed: int) -> dict:
    """disk00.hds … in workdir, reused when a previous run left the same parameters."""
    params = {"size": size, "disks": disks, "seed": seed, "cluster": CLUSTER, "v": 1}
    old = reuse_build(workdir, params)
    if old:
        log(f"dedup_bench: reusing the disks in {workdir}")
        return old
    for name in os.listdir(workdir):
        if name.startswith("disk") and name.endswith(".hds"):
            os.unlink(os.path.join(workdir, name))
    t0 = time.perf_counter()
    n = size // CLUSTER
    n_tmpl, n_uniq = n // 2, n * 3 // 10
    files = []
    for k in range(disks):
        name = f"disk{k:02d}.hds"
        tmpl_rng = np.random.default_rng(seed)  # the same template in every disk
        uniq_rng = np.random.default_rng([seed, k + 1])
        with ImageWriter.create(os.path.join(workdir, name), size, CLUSTER) as w:
            for v in range(n_tmpl):
                w.write_cluster(v, _cluster(tmpl_rng, v % 2 == 0))
            for v in range(n_tmpl, n_tmpl + n_uniq):
                w.write_cluster(v, _cluster(uniq_rng, v % 2 == 0))
        files.append(name)
        log(f"  built {name}")
    bpc = BLOCKS_PER_CLUSTER
    info = {"params": params, "files": files,
            "expect_4k": {"referenced_blocks": disks * (n_tmpl + n_uniq) * bpc,
                          "allocated_blocks": (n_tmpl + disks * n_uniq) * bpc},
            "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    return info


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, args.disks, args.seed)
    files = [os.path.join(workdir, f) for f in info["files"]]
    nbytes = sum(os.path.getsize(f) for f in files)
    ploopfs = os.path.join(REPO, ".venv", "bin", "ploopfs")
    du = [ploopfs, "du", "--dedup", "--json", "--sample", str(args.sample), *files]
    cat = f"cat {' '.join(shlex.quote(f) for f in files)} > /dev/null"
    last: dict = {}

    def dedup() -> float:
        t0 = time.perf_counter()
        out = subprocess.run(du, stdout=subprocess.PIPE, check=True).stdout
        dt = time.perf_counter() - t0
        rep = json.loads(out)
        small = rep["block_sizes"][0]
        got = {k: small[k] for k in info["expect_4k"]}
        if small["mode"] != "exact" or got != info["expect_4k"]:
            raise SystemExit(f"dedup_bench: WRONG RESULT {got} != {info['expect_4k']}")
        last.update(rep)
        return nbytes / dt

    def cat_files() -> float:
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", cat], check=True)
        return nbytes / (time.perf_counter() - t0)

    plan = [("du --dedup", dedup), ("cat", cat_files)]
    for _n, fn in plan:
        fn()  # warm-up: page cache, venv
    samples = alternate(plan, args.rounds,
                        on_sample=lambda n, r, v: log(f"  round {r + 1} {n:11s} {v / GB:6.2f} GB/s"))
    res = {n: Series(n, "B/s", v) for n, v in samples.items()}
    ratio = Series("ratio", "x", ratio_series(samples["du --dedup"], samples["cat"]))
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    figures = {
        "dedup_4k": last["block_sizes"][0]["dedup_ratio"],
        "dedup_128k": last["block_sizes"][1]["dedup_ratio"],
        "compress_zstd3": last["compression"]["zstd-3"]["ratio"] if last["compression"] else None,
        "sampled_blocks": last["compression"]["distinct_blocks"] if last["compression"] else 0,
        "table_peak_bytes": [t["table_peak_bytes"] for t in last["block_sizes"]],
    }
    return {"bench": "dedup_bench", "machine": machine_info(),
            "setup": {**info, "image_bytes": nbytes, "rounds": args.rounds,
                      "sample": args.sample},
            "results": res, "ratio": ratio, "figures": figures, "peak_rss_bytes": rss,
            "target": {"ratio_min": TARGET, "met": ratio.median >= TARGET}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep (and reuse) the disks here; default: a temporary "
                                     "folder, removed afterwards")
    p.add_argument("--size", type=int, default=1 << 30, help="bytes per disk (default 1 GiB)")
    p.add_argument("--disks", type=int, default=10)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--sample", type=int, default=1024, help="du --dedup --sample N")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-dedup-", lambda d: run(args, d))
    s, f = res["setup"], res["figures"]
    print(f"dedup_bench: {args.disks} disks x {args.size / MiB:.0f} MiB, "
          f"{s['image_bytes'] / GB:.2f} GB of image files, --sample {args.sample}, "
          f"{s['rounds']} rounds, median (min–max)")
    for n, ser in res["results"].items():
        print(f"  {n:11s} {ser.fmt(GB, 2)} GB/s")
    print(f"  dedup 4K {f['dedup_4k']:.2f}x, 128K {f['dedup_128k']:.2f}x, zstd-3 "
          f"{f['compress_zstd3'] or 0:.2f}x on {f['sampled_blocks']} blocks; tables "
          f"{[round(b / MiB, 1) for b in f['table_peak_bytes']]} MiB; peak RSS "
          f"{res['peak_rss_bytes'] / MiB:.0f} MiB")
    print(f"  ratio du/cat {res['ratio'].fmt(1, 2)} -> target >= {TARGET}: "
          f"{verdict(res['target']['met'])}")
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
