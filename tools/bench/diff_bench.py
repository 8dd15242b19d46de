#!/usr/bin/env python3
"""`ploopfs diff --format rdiff` of two 1 GiB ploop images vs `rdiff signature` + `rdiff delta`
and vs `cat OLD NEW > /dev/null` (docs/benchmarks.md).

Builds (once per work dir) OLD and NEW: two independent v2 images of --size bytes (default
1 GiB, 1 MiB clusters, every cluster allocated with random data, written by ImageWriter), NEW
differing from OLD in a random --rate share of the clusters (default 5 %), plus raw copies of
both for rdiff (which cannot read ploop images). The images share no file, so ploopfs has no
block-map shortcut here: it reads and compares both disks whole, exactly the work `cat` does.

Cases, each a fresh process, page cache warm (or, with --cache cold, the four image files
evicted with POSIX_FADV_DONTNEED before every command), alternating rounds:
* `cat OLD NEW > /dev/null` (baseline: reading both images);
* `ploopfs diff OLD NEW -o DELTA --format rdiff` (default: blake3 of OLD, NEW and the delta in
  the manifest, so every byte is also hashed);
* the same with `--hash sha256` (the default before blake3) and with `--hash none` (no manifest
  hashes: compare only);
* `rdiff -b 1048576 signature OLD.raw SIG` + `rdiff delta SIG NEW.raw DELTA` (librsync's
  defaults otherwise: BLAKE2 + RabinKarp).

Before timing, both deltas are applied with `rdiff patch` and must give NEW's raw copy
byte-exactly (the benchmark refuses to run otherwise). Peak RSS of each process comes from
/usr/bin/time (%M).

Targets: ploopfs >= 10x faster than rdiff signature + delta; <= 1.5x the time of cat.

CPU seconds (user + sys) of every command are reported too: on a shared machine they show the
work done even when no core is free.

Usage: .venv/bin/python tools/bench/diff_bench.py [--workdir DIR] [--rounds 5] [--cache warm|cold]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from _common import REPO, Series, alternate, dump_json, log, machine_info, ratio_series

from ploopfs.volume.writer import ImageWriter

MiB = 1 << 20
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")
TARGET_VS_RDIFF = 10.0
TARGET_VS_CAT = 1.5
PLOOPFS_CASES = ("ploopfs diff rdiff", "ploopfs diff rdiff --hash none",
                 "ploopfs diff rdiff --hash sha256")


def build(workdir: str, size: int, cluster: int, rate: float, seed: int) -> dict:
    params = {"size": size, "cluster": cluster, "rate": rate, "seed": seed, "v": 1}
    stamp = os.path.join(workdir, "diff-bench-params.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old.get("params") == params:
            log(f"diff_bench: reusing the images in {workdir}")
            return old
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = size // cluster
    changed = sorted(rng.choice(n, max(1, round(rate * n)), replace=False).tolist())
    paths = {k: os.path.join(workdir, k) for k in ("old.hds", "new.hds", "old.raw", "new.raw")}
    for p in paths.values():
        if os.path.exists(p):
            os.unlink(p)
    with ImageWriter.create(paths["old.hds"], size, cluster) as wo, \
            ImageWriter.create(paths["new.hds"], size, cluster) as wn, \
            open(paths["old.raw"], "wb") as ro, open(paths["new.raw"], "wb") as rn:
        cset = set(changed)
        for k in range(n):
            data = rng.bytes(cluster)
            wo.write_cluster(k, data)
            ro.write(data)
            if k in cset:
                data = rng.bytes(cluster)
            wn.write_cluster(k, data)
            rn.write(data)
    info = {"params": params, "changed_clusters": len(changed),
            "build_seconds": round(time.perf_counter() - t0, 1)}
    with open(stamp, "w") as f:
        json.dump(info, f)
    log(f"diff_bench: built 2 images + raw copies in {info['build_seconds']} s")
    return info


CPU: dict[str, list[float]] = {}  # case name -> CPU seconds (user + sys) per sample
COLD_FILES: list[str] = []  # evicted from the page cache before every command (--cache cold)


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the page cache (POSIX_FADV_DONTNEED; nothing else's)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(cmd: str, rss: dict[str, list[float]] | None = None, name: str = "") -> float:
    """Wall seconds of a shell command (run under /usr/bin/time for its peak RSS and CPU)."""
    if COLD_FILES:
        evict(COLD_FILES)
    tf = tempfile.NamedTemporaryFile(delete=False, suffix=".time")  # noqa: SIM115
    tf.close()
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-o", tf.name, "-f", "%M %U %S", "sh", "-c", cmd], check=True)
    dt = time.perf_counter() - t0
    with open(tf.name) as f:
        kb, user, sys_ = f.read().split()[-3:]
    os.unlink(tf.name)
    if rss is not None:
        rss.setdefault(name, []).append(int(kb) / 1024)
        CPU.setdefault(name, []).append(float(user) + float(sys_))
    return dt


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 * MiB):
            h.update(b)
    return h.hexdigest()


def verify(w: str) -> dict:
    """Both tools' deltas must turn OLD into NEW under stock rdiff patch."""
    want = sha256(os.path.join(w, "new.raw"))
    out = {}
    for name in ("ploopfs.rdiff", "rdiff.rdiff"):
        patched = os.path.join(w, "patched.raw")
        if os.path.exists(patched):
            os.unlink(patched)
        subprocess.run(["rdiff", "patch", os.path.join(w, "old.raw"), os.path.join(w, name), patched],
                       check=True)
        if sha256(patched) != want:
            raise SystemExit(f"diff_bench: {name} does not patch OLD into NEW; refusing to benchmark")
        os.unlink(patched)
        out[name] = os.path.getsize(os.path.join(w, name))
    return out


def run(args: argparse.Namespace, w: str) -> dict:
    info = build(w, args.size, args.cluster, args.rate, args.seed)
    q = {k: os.path.join(w, k) for k in ("old.hds", "new.hds", "old.raw", "new.raw", "sig",
                                         "ploopfs.rdiff", "rdiff.rdiff")}

    def rm(*names: str) -> None:
        for n in names:
            for p in (q[n], q[n] + ".json"):
                if os.path.exists(p):
                    os.unlink(p)

    rss: dict[str, list[float]] = {}

    def ploopfs_case(extra: str, name: str) -> Callable[[], float]:
        def f() -> float:
            rm("ploopfs.rdiff")
            return timed(f"{PLOOPFS} diff {q['old.hds']} {q['new.hds']} -o {q['ploopfs.rdiff']} "
                         f"--format rdiff --no-progress {extra}", rss, name)
        return f

    def rdiff_case() -> float:
        rm("sig", "rdiff.rdiff")
        t = timed(f"rdiff -b {args.cluster} signature {q['old.raw']} {q['sig']}", rss, "rdiff signature")
        return t + timed(f"rdiff delta {q['sig']} {q['new.raw']} {q['rdiff.rdiff']}", rss, "rdiff delta")

    cases: list[tuple[str, Callable[[], float]]] = [
        ("cat OLD NEW", lambda: timed(f"cat {q['old.hds']} {q['new.hds']} > /dev/null", rss, "cat")),
        ("ploopfs diff rdiff", ploopfs_case("", "ploopfs diff rdiff")),
        ("ploopfs diff rdiff --hash none", ploopfs_case("--hash none", "ploopfs diff rdiff --hash none")),
        ("ploopfs diff rdiff --hash sha256",
         ploopfs_case("--hash sha256", "ploopfs diff rdiff --hash sha256")),
        ("rdiff signature + delta", rdiff_case),
    ]
    log("diff_bench: warm-up and correctness check")
    for _name, fn in cases:
        fn()
    rm("ploopfs.rdiff")
    ploopfs_case("", "")()  # the default's manifest (the last case run used --hash sha256)
    sizes = verify(w)
    with open(q["ploopfs.rdiff"] + ".json") as f:
        manifest = json.load(f)
    rss.clear()
    CPU.clear()
    if args.cache == "cold":
        COLD_FILES[:] = [q["old.hds"], q["new.hds"], q["old.raw"], q["new.raw"]]
    samples = alternate(cases, args.rounds,
                        lambda n, r, v: log(f"  round {r + 1} {n}: {v:.3f} s"))
    series = {n: Series(n, "s", s) for n, s in samples.items()}
    vs_rdiff = {n: Series(n, "x", ratio_series(samples["rdiff signature + delta"], samples[n]))
                for n in PLOOPFS_CASES}
    vs_cat = {n: Series(n, "x", ratio_series(samples[n], samples["cat OLD NEW"]))
              for n in PLOOPFS_CASES}
    gb = 2 * args.size / 1e9
    return {
        "machine": machine_info(), "params": info["params"], "changed_clusters": info["changed_clusters"],
        "delta_bytes": sizes, "ploopfs_stats": manifest["stats"], "ploopfs_hash": manifest["hash"],
        "seconds": {n: s.samples for n, s in series.items()},
        "read_GBps_of_both_disks": {n: [gb / x for x in s.samples] for n, s in series.items()},
        "speedup_vs_rdiff": {n: s.samples for n, s in vs_rdiff.items()},
        "time_ratio_vs_cat": {n: s.samples for n, s in vs_cat.items()},
        "peak_rss_MiB": rss,
        "cpu_seconds": dict(CPU),
        "cache": args.cache,
        "targets": {
            "vs_rdiff": {"min": TARGET_VS_RDIFF,
                         "median": vs_rdiff["ploopfs diff rdiff"].median,
                         "met": vs_rdiff["ploopfs diff rdiff"].median >= TARGET_VS_RDIFF},
            "vs_cat": {"max": TARGET_VS_CAT,
                       "median default": vs_cat["ploopfs diff rdiff"].median,
                       "median --hash none": vs_cat["ploopfs diff rdiff --hash none"].median,
                       "met (default)": vs_cat["ploopfs diff rdiff"].median <= TARGET_VS_CAT,
                       "met (--hash none)":
                           vs_cat["ploopfs diff rdiff --hash none"].median <= TARGET_VS_CAT},
        },
    }


def report(res: dict) -> None:
    def fmt(xs: list[float], d: int = 2) -> str:
        s = Series("", "", xs)
        return s.fmt(1.0, d)

    print(f"diff_bench: {res['params']['size'] >> 20} MiB disks, {res['params']['cluster'] >> 20} MiB "
          f"clusters, {res['changed_clusters']} changed clusters; page cache {res['cache']}")
    print(f"{'case':34} {'seconds':22} {'GB/s (both disks)':22} {'peak RSS MiB':12}")
    for n, xs in res["seconds"].items():
        r = res["peak_rss_MiB"]
        key = "rdiff delta" if n.startswith("rdiff") else ("cat" if n.startswith("cat") else n)
        peak = f"{max(r[key]):.0f}" if key in r else "-"
        print(f"{n:34} {fmt(xs, 3):22} {fmt(res['read_GBps_of_both_disks'][n]):22} {peak:12}")
    for n, xs in res["cpu_seconds"].items():
        print(f"CPU seconds (user + sys) {n}: {fmt(xs, 3)}")
    for n, xs in res["speedup_vs_rdiff"].items():
        print(f"speed-up of {n} over rdiff: {fmt(xs, 1)}x (target >= {TARGET_VS_RDIFF}x)")
    for n, xs in res["time_ratio_vs_cat"].items():
        print(f"time of {n} / cat: {fmt(xs)} (target <= {TARGET_VS_CAT}x)")
    print("delta sizes:", res["delta_bytes"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="keep the images here and reuse them (default: temporary)")
    ap.add_argument("--size", type=int, default=1 << 30)
    ap.add_argument("--cluster", type=int, default=MiB)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm",
                    help="cold: evict the four image files from the page cache before every command")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()
    if not shutil.which("rdiff"):
        print("diff_bench: rdiff is not installed", file=sys.stderr)
        return 2
    tmp = None
    w = args.workdir
    if not w:
        tmp = w = tempfile.mkdtemp(prefix="diff-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.makedirs(w, exist_ok=True)
    try:
        res = run(args, w)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    dump_json(args.json, res)
    report(res)
    t = res["targets"]
    return 1 if args.strict and not (t["vs_rdiff"]["met"] and t["vs_cat"]["met (default)"]) else 0


if __name__ == "__main__":
    sys.exit(main())
