#!/usr/bin/env python3
"""Time and peak memory to open a 1 TiB, 4-image ploop chain and build its block map.

Builds (once per work dir) a chain base + 3 deltas of a --size virtual disk (default 1 TiB,
1 MiB clusters, so 1,048,576 BAT entries per image) without writing any data: each image gets
the header ImageWriter writes (`new_header`, CIF_Empty cleared) and a BAT written directly, and
the file is extended with ftruncate so that every entry points inside EOF (the clusters are
holes, which is all that opening needs). The base maps --fractions[0] of the clusters (default
100 %), the deltas 25 %, 10 %, 5 % of random clusters. A delta's clusters sit in the file in
random order (a guest's random writes); the base is laid out either front to back ("seq") or
shuffled ("shuf": every cluster its own extent, the worst case for the map); both are measured.

Each sample runs a fresh `python` that imports ploopfs.volume.source and calls
`open_source(dir).volume()` (which reads and validates every BAT and builds the merged map),
reporting the time of that call and its peak RSS (VmHWM; see CHILD). Baselines in the same rounds:
a fresh `python` that only imports ploopfs.volume.source (time to exit, peak RSS), and `head -c`
of the four header+BAT regions (the I/O floor). The child also checks the map it built against
the per-level cluster counts the builder computed, so a wrong map cannot pass as a fast one.

Targets: open + map < 1 s and peak RSS < 100 MiB.

Usage: .venv/bin/python tools/bench/open_map.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import (
    Series,
    alternate,
    dump_json,
    in_workdir,
    log,
    machine_info,
    ratio_series,
    reuse_build,
    row,
    run_child,
    save_build,
    verdict,
)

from ploopfs.format.bat import bat_entry_off
from ploopfs.format.header import CIF_EMPTY, new_header
from ploopfs.volume.writer import chain_descriptor, write_descriptor

MiB = 1 << 20
TARGET_SECONDS = 1.0
TARGET_RSS = 100 * MiB
LAYOUTS = ("shuf", "seq")
WIDTHS = (42, 22, 22, 22)  # summary table columns (check_chain.py prints the same table)

# Runs in a fresh interpreter; prints one line of JSON. Imports nothing but what the reader
# needs before the measurement. Peak RSS is VmHWM of /proc/self/status (the high-water mark of
# this process image): ru_maxrss is useless here because Linux carries the spawning parent's
# peak RSS over fork/vfork + exec into the child's ru_maxrss.
HWM = ("def hwm():\n"
       "    with open('/proc/self/status') as f:\n"
       "        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith('VmHWM:'))\n")
CHILD = HWM + r"""
import sys, time
t0 = time.perf_counter()
from ploopfs.volume.source import open_source
t1 = time.perf_counter()
disk = open_source(sys.argv[1])
vol = disk.volume()
t2 = time.perf_counter()
peak = hwm()
served = vol.map.clusters_per_level(len(vol.images))
print('{"import_s": %r, "open_s": %r, "hwm": %d, "extents": %d, "served": %s}'
      % (t1 - t0, t2 - t1, peak, len(vol.map), served))
"""
BASELINE_CHILD = HWM + "import ploopfs.volume.source\nprint(hwm())\n"

# --profile: where the time goes (cProfile) and the memory (tracemalloc, per phase).
PROFILE_CHILD = r"""
import cProfile, pstats, sys, tracemalloc
from ploopfs.volume.source import open_source
M = 1 << 20
pr = cProfile.Profile()
pr.enable()
open_source(sys.argv[1]).volume()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
disk = open_source(sys.argv[1])
images = [disk.image(e.guid, level=i) for i, e in enumerate(disk.chain(None))]
tracemalloc.start()
for im in images:
    b = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    m = im.mapping()
    cur, peak = tracemalloc.get_traced_memory()
    print(f"mapping of {im.path}: {len(m)} entries, kept {(cur - b) / M:.1f} MiB, "
          f"transient peak +{(peak - b) / M:.1f} MiB")
b = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
vol = disk.volume()
cur, peak = tracemalloc.get_traced_memory()
print(f"block map: {len(vol.map)} extents, kept {(cur - b) / M:.1f} MiB, transient peak "
      f"+{(peak - b) / M:.1f} MiB; traced total now {cur / M:.1f} MiB")
for k, val in sorted(vars(vol.map).items()):
    nb = getattr(val, "nbytes", None) or (val.itemsize * len(val) if hasattr(val, "itemsize") else 0)
    if nb:
        print(f"  map.{k}: {nb / M:.1f} MiB")
"""


# -- building ------------------------------------------------------------------------------------
def build_chain(folder: str, size: int, cluster: int, fractions: list[float], base_layout: str,
                seed: int) -> dict:
    rng = np.random.default_rng(seed)  # same seed for both layouts: the same virtual mapping
    files, mapped, bat_bytes = [], [], 0
    top_level = np.full(-(-size // cluster), -1, np.int8)  # which level serves each cluster
    for level, frac in enumerate(fractions):
        hdr = new_header(size, cluster, 2)
        hdr = hdr.with_(flags=hdr.flags & ~CIF_EMPTY)
        n = hdr.bat_entries
        k = max(1, round(frac * n))
        vcl = np.arange(n) if k == n else np.sort(rng.choice(n, k, replace=False))
        phys = hdr.bat_clusters + np.arange(k, dtype=np.int64)  # v2: entries are cluster numbers
        if level > 0 or base_layout == "shuf":
            rng.shuffle(phys)
        else:
            rng.permutation(k)  # keep the random stream identical between layouts
        entries = np.zeros(n, "<u4")
        entries[vcl] = phys
        top_level[vcl] = level
        name = f"level{level}.hds"
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, hdr.pack(), 0)
            os.pwrite(fd, entries.tobytes(), bat_entry_off(0))
            os.ftruncate(fd, (hdr.bat_clusters + k) * cluster)  # data clusters: one big hole
            os.fsync(fd)
        finally:
            os.close(fd)
        files.append(name)
        mapped.append(k)
        bat_bytes = bat_entry_off(n)
    write_descriptor(os.path.join(folder, "DiskDescriptor.xml"), chain_descriptor(files, size, cluster))
    served = [int((top_level == lv).sum()) for lv in range(len(fractions))]
    return {"files": files, "mapped_per_image": mapped, "served_per_level": served,
            "bat_region_bytes": bat_bytes}


def build(workdir: str, size: int, cluster: int, fractions: list[float], seed: int) -> dict:
    params = {"size": size, "cluster": cluster, "fractions": fractions, "seed": seed, "v": 1}
    old = reuse_build(workdir, params)
    if old:
        log(f"open_map: reusing the chains in {workdir}")
        return old
    t0 = time.perf_counter()
    chains = {}
    for layout in LAYOUTS:
        folder = os.path.join(workdir, layout)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        chains[layout] = build_chain(folder, size, cluster, fractions, layout, seed)
    info = {"params": params, "chains": chains, "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    log(f"open_map: built {len(LAYOUTS)} chains in {info['build_seconds']} s")
    return info


# -- measuring -----------------------------------------------------------------------------------
class Cases:
    """The measured commands; every call records its numbers in self.rec."""

    def __init__(self, workdir: str, info: dict) -> None:
        self.py = sys.executable
        self.workdir = workdir
        self.info = info
        self.rec: dict[str, list[dict]] = {}
        ch = info["chains"][LAYOUTS[0]]  # both layouts have BAT regions of the same size
        self.bat_files = [os.path.join(workdir, LAYOUTS[0], f) for f in ch["files"]]
        n = ch["bat_region_bytes"]
        self.head_cmd = " ; ".join(f"head -c {n} {shlex.quote(f)} >/dev/null" for f in self.bat_files)

    def _add(self, name: str, **vals: float) -> None:
        self.rec.setdefault(name, []).append(vals)

    def open_chain(self, layout: str) -> float:
        wall, out = run_child([self.py, "-c", CHILD, os.path.join(self.workdir, layout)], "open_map")
        r = json.loads(out)
        want = self.info["chains"][layout]["served_per_level"]
        if r["served"] != want:
            raise SystemExit(f"open_map: WRONG MAP for {layout}: served {r['served']}, expected {want}")
        self._add(f"open+map {layout}", wall=wall, rss=r["hwm"], open_s=r["open_s"],
                  import_s=r["import_s"], extents=r["extents"])
        return r["open_s"]

    def import_only(self) -> float:
        wall, out = run_child([self.py, "-c", BASELINE_CHILD], "open_map")
        self._add("python + import (baseline)", wall=wall, rss=int(out))
        return wall

    def head_bats(self) -> float:
        wall, _ = run_child(["sh", "-c", self.head_cmd], "open_map")
        self._add("head -c of the 4 BAT regions (baseline)", wall=wall)
        return wall


def run(args: argparse.Namespace, workdir: str) -> dict:
    fractions = [float(x) for x in args.fractions.split(",")]
    info = build(workdir, args.size, args.cluster, fractions, args.seed)
    cases = Cases(workdir, info)
    # warm-up: page cache, pyc files
    for layout in LAYOUTS:
        cases.open_chain(layout)
    cases.import_only()
    cases.head_bats()
    cases.rec.clear()
    plan = [(f"open {lay}", lambda lay=lay: cases.open_chain(lay)) for lay in LAYOUTS]
    plan += [("import", cases.import_only), ("head", cases.head_bats)]
    alternate(plan, args.rounds,
              on_sample=lambda name, r, v: log(f"  round {r + 1} {name:8s} {v:7.3f} s"))
    out: dict[str, dict[str, Series]] = {}
    for name, recs in cases.rec.items():
        out[name] = {k: Series(k, "s" if k.endswith(("_s", "wall")) else "B", [rec[k] for rec in recs])
                     for k in recs[0]}
    base = out["python + import (baseline)"]
    derived = {}
    for layout in LAYOUTS:
        o = out[f"open+map {layout}"]
        derived[layout] = {
            "wall_minus_import_wall_s": Series("", "s", [a - b for a, b in zip(
                o["wall"].samples, base["wall"].samples, strict=True)]),
            "rss_minus_import_rss": Series("", "B", [a - b for a, b in zip(
                o["rss"].samples, base["rss"].samples, strict=True)]),
            "wall_ratio_to_import": Series("", "x", ratio_series(o["wall"].samples, base["wall"].samples)),
        }
    worst_s = max(out[f"open+map {lay}"]["open_s"].median for lay in LAYOUTS)
    worst_rss = max(out[f"open+map {lay}"]["rss"].median for lay in LAYOUTS)
    return {
        "bench": "open_map",
        "machine": machine_info(),
        "setup": {**info, "workdir": workdir, "rounds": args.rounds},
        "results": out,
        "derived": derived,
        "target": {"open_s_max": TARGET_SECONDS, "rss_max": TARGET_RSS, "worst_open_s": worst_s,
                   "worst_rss": worst_rss, "met": worst_s < TARGET_SECONDS and worst_rss < TARGET_RSS},
    }


def report(res: dict) -> None:
    s = res["setup"]
    p = s["params"]
    ch = s["chains"][LAYOUTS[0]]
    print(f"open_map: {p['size'] / (1 << 40):g} TiB disk, {p['cluster'] // MiB} MiB clusters, "
          f"{len(ch['files'])} images mapping {ch['mapped_per_image']} clusters, served per level "
          f"{ch['served_per_level']}; {s['rounds']} rounds, median (min–max)")
    print(row(("case", "open() s", "process wall s", "peak RSS MiB"), WIDTHS))
    for name, ser in res["results"].items():
        op = ser["open_s"].fmt(1, 3) if "open_s" in ser else "-"
        rss = ser["rss"].fmt(MiB, 1) if "rss" in ser else "-"
        print(row((name, op, ser["wall"].fmt(1, 3), rss), WIDTHS))
    for layout in LAYOUTS:
        d = res["derived"][layout]
        ext = res["results"][f"open+map {layout}"]["extents"].median
        print(f"  {layout}: {ext:.0f} extents; over python+import: "
              f"+{d['wall_minus_import_wall_s'].fmt(1, 3)} s (x{d['wall_ratio_to_import'].fmt(1, 2)}), "
              f"+{d['rss_minus_import_rss'].fmt(MiB, 1)} MiB RSS")
    t = res["target"]
    print(f"target: open+map < {t['open_s_max']} s and peak RSS < {t['rss_max'] / MiB:.0f} MiB: worst "
          f"median {t['worst_open_s']:.3f} s, {t['worst_rss'] / MiB:.1f} MiB -> "
          f"{verdict(t['met'])}")


def profile(args: argparse.Namespace) -> int:
    fractions = [float(x) for x in args.fractions.split(",")]
    with tempfile.TemporaryDirectory(prefix="ploopfs-bench-open-",
                                     dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        build(workdir, args.size, args.cluster, fractions, args.seed)
        subprocess.run([sys.executable, "-c", PROFILE_CHILD, os.path.join(workdir, args.profile)],
                       check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep (and reuse) the images here instead of a temp dir")
    p.add_argument("--size", type=int, default=1 << 40, help="virtual disk bytes (default 1 TiB)")
    p.add_argument("--cluster", type=int, default=1 << 20, help="cluster bytes (default 1 MiB)")
    p.add_argument("--fractions", default="1,0.25,0.10,0.05",
                   help="share of clusters each image maps, base first (default 1,0.25,0.10,0.05)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile", choices=LAYOUTS, help="instead of timing, profile opening this chain")
    args = p.parse_args(argv)
    if args.profile:
        return profile(args)
    res = in_workdir(args.workdir, "ploopfs-bench-open-", lambda d: run(args, d))
    report(res)
    dump_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
