#!/usr/bin/env python3
"""Throughput of `ploopfs recover` (snapshot tree kept) vs `cat` of the image files.

Reuses read_chain.py's builder: a 1 GiB virtual disk (1 MiB clusters) as base + 3 deltas full of
random data (the deltas rewrite 25/10/5 % of the clusters in random order). With the page cache
warm, alternating round by round, it times `Recovery(open_source(dir, salvage=older), out).run()`
in this process (which reads every cluster of every level and writes four new v2 images plus
DiskDescriptor.xml and recovery.json, fsync included) and `cat` of the four image files to
/dev/null. Throughput = bytes of the source image files / seconds. Every round must write the
number of clusters the builder wrote per level and report no damage; the warm-up also checks
that the recovered top reads byte-identical to the raw copy (disk.raw), so a recover that skipped
work or copied wrong data cannot pass. The output is deleted after each timed round (untimed).

A third case, `cp` of the image files plus fsync of the copies, is the floor of any tool that
writes those bytes durably (recover fsyncs every image it writes): `cat` only reads from the page
cache, so on a machine whose disk writes slower than its page cache reads, the cat target is
bounded by the disk, and the ratio to cp+fsync says how much recover adds on top of it.

Target: recover >= 0.8 x the throughput of cat.

Usage: .venv/bin/python tools/bench/recover_bench.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
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

from ploopfs.services.recover import Recovery
from ploopfs.volume.source import OpenOptions, open_source

GB = 1e9
TARGET_RATIO = 0.8
CHUNK = 8 << 20


def _sha(read, size: int) -> str:
    h = hashlib.sha256()
    for off in range(0, size, CHUNK):
        h.update(read(off, min(CHUNK, size - off)))
    return h.hexdigest()


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.size, 1 << 20, [0.25, 0.10, 0.05], args.seed)
    files = [os.path.join(workdir, f) for f in info["files"]]
    nbytes = sum(os.path.getsize(f) for f in files)
    cat = f"cat {' '.join(shlex.quote(f) for f in files)} > /dev/null"
    out = os.path.join(workdir, "recovered")
    shutil.rmtree(out, ignore_errors=True)

    def recover_once() -> float:
        t0 = time.perf_counter()
        with open_source(workdir, OpenOptions(salvage="older")) as disk:
            rep = Recovery(disk, out).run()
        dt = time.perf_counter() - t0
        written = [lv["clusters_written"] for lv in rep["levels"]]
        if rep["damaged_ranges"] or written != info["clusters_written_per_level"]:
            raise SystemExit(f"recover_bench: WRONG RESULT: {written} "
                             f"{rep['damaged_ranges']} damaged ranges")
        return nbytes / dt

    def recover_timed() -> float:
        try:
            return recover_once()
        finally:
            shutil.rmtree(out, ignore_errors=True)

    copy_dir = os.path.join(workdir, "copied")

    def cp_sync() -> float:
        """The floor of any tool that writes the same bytes durably: cp (copy_file_range) of
        the image files, then fsync of the copies."""
        os.makedirs(copy_dir, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run(["cp", *files, copy_dir], check=True)
        subprocess.run(["sync", "-f", copy_dir], check=True)
        for f in os.listdir(copy_dir):
            fd = os.open(os.path.join(copy_dir, f), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        dt = time.perf_counter() - t0
        shutil.rmtree(copy_dir)
        return nbytes / dt

    def cat_files() -> float:
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", cat], check=True)
        return nbytes / (time.perf_counter() - t0)

    # warm-up: both once, and the recovered top must read exactly like the raw copy
    recover_once()
    with open_source(out) as rec, open(os.path.join(workdir, "disk.raw"), "rb") as raw:
        vol = rec.volume()
        if _sha(vol.read, vol.size) != _sha(lambda o, n: os.pread(raw.fileno(), n, o), vol.size):
            raise SystemExit("recover_bench: WRONG RESULT: recovered top differs from disk.raw")
    shutil.rmtree(out)
    cat_files()
    plan = [("recover", recover_timed), ("cat", cat_files), ("cp+fsync", cp_sync)]
    samples = alternate(plan, args.rounds,
                        on_sample=lambda n, r, v: log(f"  round {r + 1} {n:8s} {v / GB:6.2f} GB/s"))
    res = {n: Series(n, "B/s", v) for n, v in samples.items()}
    ratio = Series("ratio", "x", ratio_series(samples["recover"], samples["cat"]))
    ratio_cp = Series("ratio_cp", "x", ratio_series(samples["recover"], samples["cp+fsync"]))
    return {"ratio_cp": ratio_cp, "bench": "recover", "machine": machine_info(),
            "setup": {**info, "image_bytes": nbytes, "rounds": args.rounds}, "results": res,
            "ratio": ratio, "target": {"ratio_min": TARGET_RATIO, "met": ratio.median >= TARGET_RATIO}}


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__, "read_chain.py", 1 << 30, 1).parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-recover-", lambda d: run(args, d))
    s = res["setup"]
    print(f"recover_bench: {s['params']['size'] / GB * 1.073741824:.0f} GiB disk, 4 images, "
          f"{s['image_bytes'] / GB:.2f} GB of image files, {s['rounds']} rounds, median (min–max)")
    for n, ser in res["results"].items():
        print(f"  {n:9s} {ser.fmt(GB, 2)} GB/s")
    print(f"  ratio recover/cat {res['ratio'].fmt(1, 2)} -> target >= {TARGET_RATIO}: "
          f"{verdict(res['target']['met'])}")
    print(f"  ratio recover/(cp+fsync) {res['ratio_cp'].fmt(1, 2)} (writing the same bytes "
          "durably; recover fsyncs each image)")
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
