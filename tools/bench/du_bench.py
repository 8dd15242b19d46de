#!/usr/bin/env python3
"""Time of `ploopfs du` on a 100 GiB sparse ext4 disk.

The disk: a GPT with one ext4 partition (mkfs.ext4 defaults: 64bit, flex_bg, lazy init, so
most groups are BLOCK_UNINIT) filled from a tree of random files (--fill-mib), part of them
deleted with debugfs (the blocks stay in the image), converted with `qemu-img convert -O
parallels`. Each sample is a fresh `ploopfs du --json`; the child's figures are checked against
`dumpe2fs -h` (free blocks), so a du that skipped the bitmaps cannot pass as a fast one.
Baselines in the same rounds, alternating: `dumpe2fs` of the same filesystem (its every group
and free ranges, on the raw disk it was made in) and `python -c 'import ploopfs.services.du'`.

Target: du < 10 s. compact_bench.py reuses this build.

Usage: .venv/bin/python tools/bench/du_bench.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

from _common import (
    REPO,
    Series,
    alternate,
    bench_parser,
    dump_json,
    in_workdir,
    log,
    machine_info,
    reuse_build,
    row,
    run_child,
    save_build,
    verdict,
)

MiB = 1 << 20
GiB = 1 << 30
TARGET_SECONDS = 10.0
WIDTHS = (38, 22, 12)
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def build(workdir: str, size: int, fill_mib: int, seed: int) -> dict:
    """disk.raw (kept, for dumpe2fs) and ploop/ (DiskDescriptor.xml + root.hdd)."""
    params = {"size": size, "fill_mib": fill_mib, "seed": seed, "v": 1}
    old = reuse_build(workdir, params)
    if old:
        log(f"du_bench: reusing the disk in {workdir}")
        return old
    log(f"du_bench: building a {size / GiB:g} GiB disk with {fill_mib} MiB of files in {workdir}")
    sys.path.insert(0, REPO)
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    raw = os.path.join(workdir, "disk.raw")
    tree = os.path.join(workdir, "tree")
    for p in (raw, os.path.join(workdir, "ploop")):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    rnd = random.Random(seed)
    left, i = fill_mib * MiB, 0
    while left > 0:  # files of 64 KiB .. 64 MiB; every third one is deleted below
        n = min(left, rnd.choice((64 << 10, 1 * MiB, 8 * MiB, 64 * MiB)))
        with open(os.path.join(tree, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(n))
        left -= n
        i += 1
    sh("truncate", "-s", str(size), raw)
    sh("sgdisk", "-o", "-n", f"1:2048:{size // 512 - 2049}", raw)
    part_size = (size // 512 - 2049 - 2048 + 1) * 512
    sh("mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", "-d", tree, raw, f"{part_size // 1024}k")
    spec = f"{raw}?offset={MiB}"
    for k in range(0, i, 3):
        sh("debugfs", "-w", "-R", f"rm /f{k:05d}", spec)
    shutil.rmtree(tree)
    folder = os.path.join(workdir, "ploop")
    os.makedirs(folder)
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, os.path.join(folder, "root.hdd"))
    write_descriptor(os.path.join(folder, "DiskDescriptor.xml"),
                     chain_descriptor(["root.hdd"], size, MiB))
    free = int(re.search(r"Free blocks:\s+(\d+)", sh("dumpe2fs", "-h", spec))[1])
    info = {"params": params, "raw": raw, "spec": spec, "ploop": folder, "files": i,
            "free_blocks": free, "image_bytes": os.path.getsize(os.path.join(folder, "root.hdd"))}
    save_build(workdir, info)
    return info


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, args.fill_mib, args.seed)
    rec: dict[str, list[float]] = {}
    last: dict = {}

    def du_case() -> float:
        wall, out = run_child([PLOOPFS, "du", info["ploop"], "--json"], "du_bench")
        r = json.loads(out)
        fs = r["filesystems"][0]
        if fs["blocks"]["free"] != info["free_blocks"] or fs["clusters"] is None:
            raise SystemExit(f"du_bench: WRONG RESULT: free {fs['blocks']['free']}, dumpe2fs "
                             f"says {info['free_blocks']}")
        last.update(r)
        rec.setdefault("ploopfs du", []).append(wall)
        return wall

    def dumpe2fs_case() -> float:
        wall, _ = run_child(["dumpe2fs", info["spec"]], "du_bench")
        rec.setdefault("dumpe2fs (baseline)", []).append(wall)
        return wall

    def import_case() -> float:
        wall, _ = run_child([sys.executable, "-c", "import ploopfs.services.du"], "du_bench")
        rec.setdefault("python + import (baseline)", []).append(wall)
        return wall

    plan = [("du", du_case), ("dumpe2fs", dumpe2fs_case), ("import", import_case)]
    for _n, fn in plan:  # warm-up
        fn()
    rec.clear()
    alternate(plan, args.rounds, on_sample=lambda n, r, v: log(f"  round {r + 1} {n:9s} {v:7.3f} s"))
    results = {k: Series(k, "s", v) for k, v in rec.items()}
    ratio = Series("du / dumpe2fs", "x", [a / b for a, b in zip(
        rec["ploopfs du"], rec["dumpe2fs (baseline)"], strict=True)])
    med = results["ploopfs du"].median
    return {"bench": "du_bench", "machine": machine_info(),
            "setup": {**info, "workdir": workdir, "rounds": args.rounds,
                      "total_line": last.get("total"), "clusters": last.get("clusters")},
            "results": results, "ratio": ratio,
            "target": {"du_s_max": TARGET_SECONDS, "du_s": med, "met": med < TARGET_SECONDS}}


def report(res: dict) -> None:
    s = res["setup"]
    print(f"du_bench: {s['params']['size'] / GiB:g} GiB sparse ext4 disk, {s['files']} files "
          f"written ({s['params']['fill_mib']} MiB, a third deleted), image "
          f"{s['image_bytes'] / MiB:.0f} MiB; {s['rounds']} rounds, median (min–max)")
    print(row(("case", "process wall s", ""), WIDTHS))
    for name, ser in res["results"].items():
        print(row((name, ser.fmt(1, 3), ""), WIDTHS))
    print(row(("du / dumpe2fs", res["ratio"].fmt(1, 2), "x"), WIDTHS))
    t = res["target"]
    print(f"target: du < {t['du_s_max']} s: median {t['du_s']:.3f} s -> {verdict(t['met'])}")


def bench_main(doc: str | None, shared_with: str, run_fn: Callable[[argparse.Namespace, str], dict],
               report_fn: Callable[[dict], None], argv: list[str] | None) -> int:
    """The main of du_bench and compact_bench: the same options and the same (shared) work
    directory of disks built by `build`."""
    p = bench_parser(doc, shared_with, 100 * GiB, 6)
    p.add_argument("--fill-mib", type=int, default=3072)
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-du-", lambda d: run_fn(args, d))
    report_fn(res)
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "compact_bench.py", run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
