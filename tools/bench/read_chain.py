#!/usr/bin/env python3
"""Sequential read throughput of a 4-deep ploop chain vs os.pread of a raw copy.

Builds (once per work dir) a virtual disk of --size bytes (default 1 GiB, 1 MiB clusters) as a
chain base + 3 deltas written with ploopfs.volume.writer.ImageWriter: the base maps every
cluster, each delta overwrites a random --fractions share of the clusters (written in random
order, so its physical layout is shuffled as a guest's random writes leave it) with fresh random
data. The same final bytes are written alongside to a raw file.

Then, page cache warm, it reads the whole disk in 1 MiB reads through the public volume API
(`open_source(dir).volume()`, then `vol.read` or `vol.readinto` into a reused buffer) and
`os.pread` of the raw copy, alternating the cases round by round. The warm-up pass also hashes
everything both ways and fails if the bytes differ, so a wrong read cannot pass as a fast one.

Target: the faster public volume path >= 0.8x the GB/s of os.pread on the raw copy.

Usage: .venv/bin/python tools/bench/read_chain.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable

import numpy as np
from _common import (
    Series,
    alternate,
    dump_json,
    in_workdir,
    log,
    machine_info,
    ratio_series,
    reuse_chain,
    row,
    save_build,
    verdict,
)

from ploopfs.volume.source import open_source
from ploopfs.volume.volume import Volume
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MiB = 1 << 20
GB = 1e9  # throughput is reported in GB/s = 10^9 bytes/s
TARGET = 0.8
READ = 1 << 20  # default read size; --read-size changes it


# -- building the chain -------------------------------------------------------------------------
def build(workdir: str, size: int, cluster: int, fractions: list[float], seed: int) -> dict:
    """Write level0.hds (base) … levelN.hds, DiskDescriptor.xml and disk.raw into workdir;
    reuse them when a previous run left the same parameters there."""
    params = {"size": size, "cluster": cluster, "fractions": fractions, "seed": seed, "v": 1}
    old = reuse_chain(workdir, params, "read_chain")
    if old:
        return old
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = -(-size // cluster)
    raw_fd = os.open(os.path.join(workdir, "disk.raw"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(raw_fd, size)
    files, per_level = [], []
    try:
        for level, frac in enumerate([1.0, *fractions]):
            name = f"level{level}.hds"
            files.append(name)
            # The base is written front to back; a delta in random order (a guest's writes).
            order = np.arange(n) if level == 0 else rng.choice(n, max(1, round(frac * n)), replace=False)
            with ImageWriter.create(os.path.join(workdir, name), size, cluster) as w:
                for v in order.tolist():
                    data = rng.bytes(cluster)
                    w.write_cluster(v, data)
                    os.pwrite(raw_fd, data, v * cluster)
            per_level.append(int(order.size))
        os.fsync(raw_fd)
    finally:
        os.close(raw_fd)
    write_descriptor(os.path.join(workdir, "DiskDescriptor.xml"),
                     chain_descriptor(files, size, cluster))
    info = {"params": params, "files": files, "clusters_written_per_level": per_level,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    log(f"read_chain: built {len(files)} images + raw copy in {info['build_seconds']} s")
    return info


# -- one pass over the disk per case --------------------------------------------------------------
def passes(fn: Callable[[int], object], size: int, npasses: int, rs: int) -> float:
    """Bytes per second of `npasses` sequential passes calling fn(offset) per `rs` bytes."""
    offs = range(0, size, rs)
    t0 = time.perf_counter()
    for _ in range(npasses):
        for off in offs:
            fn(off)
    return npasses * size / (time.perf_counter() - t0)


def make_cases(vol: Volume, raw_fd: int, rs: int) -> dict[str, Callable[[int], object]]:
    buf = bytearray(rs)
    mv = memoryview(buf)
    return {
        "raw os.pread": lambda off: os.pread(raw_fd, rs, off),
        "raw os.preadv (reused buf)": lambda off: os.preadv(raw_fd, [mv], off),
        "vol.read": lambda off: vol.read(off, rs),
        "vol.readinto (reused buf)": lambda off: vol.readinto(mv, off),
        "vol.zero_fill_readinto (reused buf)": lambda off: vol.zero_fill_readinto(mv, off),
    }


def warm_and_verify(vol: Volume, raw_fd: int, size: int, rs: int) -> str:
    """One pass of each reader that also hashes what it read; fails on any difference."""
    h_raw, h_read, h_into = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    buf = bytearray(rs)
    mv = memoryview(buf)
    for off in range(0, size, rs):
        h_raw.update(os.pread(raw_fd, rs, off))
        h_read.update(vol.read(off, rs))
        n = vol.zero_fill_readinto(mv, off)
        h_into.update(mv[:n])
    for off in range(0, size, rs):  # readinto proper (reuses the buffer, no holes here)
        n = vol.readinto(mv, off)
    digests = {"raw": h_raw.hexdigest(), "vol.read": h_read.hexdigest(),
               "vol.zero_fill_readinto": h_into.hexdigest()}
    if len(set(digests.values())) != 1:
        raise SystemExit(f"read_chain: CONTENT MISMATCH, refusing to benchmark: {digests}")
    return h_raw.hexdigest()


def run(args: argparse.Namespace, workdir: str) -> dict:
    fractions = [float(x) for x in args.fractions.split(",")]
    rs = args.read_size
    info = build(workdir, args.size, args.cluster, fractions, args.seed)
    disk = open_source(workdir)
    vol = disk.volume()
    raw_fd = os.open(os.path.join(workdir, "disk.raw"), os.O_RDONLY)
    try:
        assert vol.size == args.size, (vol.size, args.size)
        served_per_level = vol.map.clusters_per_level(len(vol.images))
        t0 = time.perf_counter()
        sha = warm_and_verify(vol, raw_fd, args.size, rs)
        log(f"read_chain: warm-up + sha256 check OK ({time.perf_counter() - t0:.1f} s), "
            f"sha256 {sha[:16]}…")
        cases = make_cases(vol, raw_fd, rs)
        samples = alternate(
            [(name, lambda fn=fn: passes(fn, args.size, args.passes, rs)) for name, fn in cases.items()],
            args.rounds,
            on_sample=lambda name, r, v: log(f"  round {r + 1} {name:38s} {v / GB:6.2f} GB/s"))
    finally:
        os.close(raw_fd)
        disk.close()
    series = {name: Series(name, "B/s", s) for name, s in samples.items()}
    base = samples["raw os.pread"]
    ratios = {name: Series(name, "x", ratio_series(s, base)) for name, s in samples.items()}
    public = ["vol.read", "vol.readinto (reused buf)"]
    best = max(public, key=lambda k: ratios[k].median)
    reads = -(-args.size // rs) * args.passes
    overhead_us = {
        name: Series(name, "us", [(args.size * args.passes / v - args.size * args.passes / b) / reads * 1e6
                                  for v, b in zip(s, base, strict=True)])
        for name, s in samples.items()}
    return {
        "bench": "read_chain",
        "machine": machine_info(),
        "setup": {**info, "workdir": workdir, "read_size": rs, "rounds": args.rounds,
                  "passes_per_sample": args.passes, "sha256": sha,
                  "clusters_served_per_level": served_per_level, "extents": len(vol.map)},
        "throughput": series,
        "ratio_to_raw_pread": ratios,
        "overhead_us_per_read_vs_raw_pread": overhead_us,
        "target": {"metric": f"{best} / raw os.pread", "min_ratio": TARGET,
                   "median": ratios[best].median, "met": ratios[best].median >= TARGET},
    }


def report(res: dict) -> None:
    s = res["setup"]
    print(f"read_chain: {s['params']['size'] / MiB:.0f} MiB disk, {len(s['files'])} images, clusters "
          f"served per level {s['clusters_served_per_level']}, {s['extents']} extents, "
          f"{s['read_size'] // 1024} KiB reads, {s['rounds']} rounds x {s['passes_per_sample']} passes")
    widths = (38, 24, 22, 9)
    print(row(("case", "GB/s median (min–max)", "ratio to os.pread", "+us/read"), widths))
    for name, ser in res["throughput"].items():
        r = res["ratio_to_raw_pread"][name]
        o = res["overhead_us_per_read_vs_raw_pread"][name]
        print(row((name, ser.fmt(GB, 2), r.fmt(1, 2), f"{o.median:.1f}"), widths))
    t = res["target"]
    print(f"target: {t['metric']} >= {t['min_ratio']}: median {t['median']:.2f} -> {verdict(t['met'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep (and reuse) the images here instead of a temp dir")
    p.add_argument("--size", type=int, default=1 << 30, help="virtual disk bytes (default 1 GiB)")
    p.add_argument("--cluster", type=int, default=1 << 20, help="cluster bytes (default 1 MiB)")
    p.add_argument("--fractions", default="0.25,0.15,0.10",
                   help="share of clusters each delta overwrites, base excluded (default 0.25,0.15,0.10)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--passes", type=int, default=2, help="passes over the disk per sample (default 2)")
    p.add_argument("--read-size", type=int, default=READ, help="bytes per read (default 1 MiB)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-read-", lambda d: run(args, d))
    report(res)
    dump_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
