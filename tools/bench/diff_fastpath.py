#!/usr/bin/env python3
"""Snapshot fast path of `ploopfs diff` on a 64 GiB virtual disk with 1 % changed, against the
full compare of the same pair, and peak RSS of every output format ("peak RSS <= 64 MiB for any image size").

Setup (built once per --workdir, default /var/tmp/pb/diff_fastpath, reused while the
parameters are unchanged; ~4.6 GiB written, a minute or less):

* `disk/DiskDescriptor.xml`: a two-image chain, 64 GiB virtual size (--size-gib), 1 MiB
  clusters, v2 images; BASE = `root.hds` (a fresh GUID), TOP = `root.hds.{GUID}` (the magic
  top GUID), written by ploopfs.volume.writer.chain_descriptor / write_descriptor.
* BASE maps *every* one of the 65536 clusters (a fully allocated disk as far as any reader can
  tell): its header (ploopfs.format.header.new_header) and BAT are written directly, cluster k
  at file cluster bat_clusters + k (contiguous, as ploop lays out a disk written in order). One
  cluster in --data-every (default 16: 4096 clusters = 4 GiB) holds real pseudo-random data;
  the others lie in a sparse hole of the file (ftruncate), i.e. they read back as zeros from
  the page cache without disk I/O. `qemu-img check -f parallels` must find BASE clean.
* TOP: a delta written by ploopfs.volume.writer.ImageWriter holding 1 % of the clusters
  (--rate; 655 of 65536, random positions, seed --seed) with pseudo-random data that differs
  from BASE in every one of them (a distinct stamp in each cluster's first 8 bytes). With
  `--change-at end` each of them is instead BASE's cluster with only its last 8 bytes changed:
  the worst case for the json fast path, whose compare stops at a cluster's first difference
  and so reads only the first pages of a cluster changed from its start (diff.md, PROBE).

What is measured (each a fresh process, alternating rounds A B C D, D C B A, …):

* fast: `ploopfs diff DISK DISK --old-snapshot BASE --new-snapshot TOP -o OUT.json --format json
  --hash none`: the block maps prove 64881 clusters unchanged (same file, same offset); only the
  655 candidates are read on both sides (655 MiB each; on BASE's side mostly hole clusters) and
  compared.
* full: the same with `--full-compare`: every cluster of both sides is read (64 GiB per side:
  4 GiB of real data + 60 GiB of sparse-hole clusters filled with zeros by the kernel, which is
  *cheaper* than reading allocated data from a disk, so the full-compare times here are a lower
  bound for a real 64 GiB disk and the measured ratio understates the real one) and compared.
* in two page-cache states, set before every run (untimed): `warm` = read into the page cache
  just before: all TOP, BASE's header + BAT, BASE's 655 clusters at the changed positions (all
  the fast path reads) and BASE's 4 GiB of data clusters; `cold` =
  both image files evicted with POSIX_FADV_DONTNEED (these two files only, nothing else of the
  shared machine's cache). The 60 GiB of hole clusters cannot stay cached (more than the RAM):
  every full compare fills them anew. The disk's sequential cold read() rate is measured once
  on TOP and used for a clearly labelled extrapolation: reading a fully allocated 64 GiB BASE
  from disk at that rate (what a full compare of a real disk would need at least).

Before every run (both states) the interpreter and ploopfs are imported once in a separate,
untimed process: a full compare's 64 GiB sweep evicts the venv's own files too, and re-reading
numpy & co. from disk would otherwise be timed as part of the next run.

Wall time is from spawning the process to its exit (interpreter start and imports included);
the scan time from the report (`stats.seconds`) is given too. Peak RSS is VmHWM of the child
itself: the child is a tiny wrapper that runs `ploopfs.cli.main(argv)` in-process and writes
its own /proc/self/status VmHWM at exit (ru_maxrss of a child forked straight from this
Python parent would carry the parent's peak across fork+exec). The floor of that figure
(interpreter + ploopfs.services.diff imported, nothing run) is reported as `import floor`.

Checks (the benchmark fails otherwise): the ranges of every fast and full JSON are identical
and cover exactly the 655 changed clusters; the fast run's candidates are exactly those 655.
Then, once each, fast and full, warm, `--format rdiff` and `--format ploop` on the same pair are
run for their peak RSS (their reports must count 655 changed clusters; outputs are deleted).

Targets: fast >= 50x faster than full (median of the per-round wall-time ratios, per cache
state); peak RSS <= 64 MiB in every run.

Usage: .venv/bin/python tools/bench/diff_fastpath.py [--workdir DIR] [--rounds 3]
       [--cache warm|cold|both] [--no-formats] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from _common import REPO, Series, alternate, dump_json, log, machine_info, ratio_series

from ploopfs.format.bat import bat_entry_off
from ploopfs.format.header import CIF_EMPTY, TOP_GUID, new_header
from ploopfs.volume.writer import ImageWriter, chain_descriptor, new_guid, write_descriptor

MiB = 1 << 20
GiB = 1 << 30
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
TARGET_RATIO = 50.0
TARGET_RSS_MIB = 64.0
POOL = 64 * MiB  # pseudo-random bytes the cluster contents are cut from
VERSION = 3  # of the built layout: bump when build() changes

# The child: ploopfs's CLI in-process, then its own peak RSS (kB) into argv[1].
WRAPPER = r"""
import sys
out, argv = sys.argv[1], sys.argv[2:]
rc = 1
try:
    if argv == ["--import-only"]:
        import ploopfs.cli, ploopfs.services.diff  # noqa: F401
        rc = 0
    else:
        from ploopfs.cli import main
        rc = main(argv)
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(hwm)
sys.exit(rc)
"""


# -- building the pair --------------------------------------------------------------------------
@dataclass
class Setup:
    descriptor: str
    base_guid: str
    changed: list[int]
    params: dict[str, int | float]
    build_seconds: float


def _cluster_data(pool: memoryview, k: int, stamp: int, c: int) -> bytearray:
    """A cluster's pseudo-random bytes: a slice of the pool chosen by k, its first 8 bytes the
    stamp (so no two clusters, and no BASE and TOP cluster, are equal)."""
    off = (k * 1_000_003 * 4096) % (len(pool) - c) // 4096 * 4096
    data = bytearray(pool[off:off + c])
    data[:8] = stamp.to_bytes(8, "little")
    return data


def _write_base(path: str, size: int, c: int, every: int, pool: memoryview) -> None:
    """BASE: every cluster mapped (cluster k at file cluster bat_clusters + k), one in `every`
    holding data, the rest a sparse hole of the file."""
    hdr = new_header(size, c, 2)
    n, first = hdr.bat_entries, hdr.bat_clusters
    hdr = hdr.with_(flags=hdr.flags & ~CIF_EMPTY)
    bat = np.arange(first, first + n, dtype="<u4")  # v2: entries in clusters (format.md §2.2)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, hdr.pack(), 0)
        os.pwrite(fd, bat.tobytes(), bat_entry_off(0))
        for k in range(0, n, every):
            os.pwrite(fd, _cluster_data(pool, k, k, c), (first + k) * c)
        os.ftruncate(fd, (first + n) * c)  # the file ends at the last mapped cluster (format.md §2.5)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_top(path: str, size: int, c: int, changed: list[int], pool: memoryview, every: int,
               change_at: str) -> None:
    """TOP's clusters differ from BASE's from their first bytes on ("start": new data), or only
    in their last 8 bytes ("end": BASE's cluster with a stamp at its end, the worst case for a
    compare that stops at the first difference)."""
    with ImageWriter.create(path, size, c, 2) as w:
        for k in changed:
            if change_at == "start":
                data = _cluster_data(pool, k + 7, (1 << 63) | k, c)
            else:
                data = _cluster_data(pool, k, k, c) if k % every == 0 else bytearray(c)
                data[-8:] = ((1 << 63) | k).to_bytes(8, "little")
            w.write_cluster(k, data)


def build(workdir: str, size: int, c: int, every: int, rate: float, seed: int,
          change_at: str = "start") -> Setup:
    params: dict[str, int | float | str] = {"size": size, "cluster": c, "data_every": every,
                                            "rate": rate, "seed": seed, "v": VERSION}
    if change_at != "start":  # (so that a work dir built before the option is still reused)
        params["change_at"] = change_at
    stamp = os.path.join(workdir, "params.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old["params"] == params:
            log(f"diff_fastpath: reusing the disk in {workdir}")
            return Setup(**old)
    t0 = time.perf_counter()
    diskdir = os.path.join(workdir, "disk")
    shutil.rmtree(diskdir, ignore_errors=True)
    os.makedirs(diskdir)
    rng = np.random.default_rng(seed)
    pool = memoryview(rng.bytes(POOL))
    n = size // c
    changed = sorted(rng.choice(n, int(rate * n), replace=False).tolist())
    base_guid, top_name = new_guid(), f"root.hds.{new_guid()}"
    base = os.path.join(diskdir, "root.hds")
    log(f"diff_fastpath: writing BASE ({n // every} data clusters of {n}) …")
    _write_base(base, size, c, every, pool)
    log(f"diff_fastpath: writing TOP ({len(changed)} clusters) …")
    _write_top(os.path.join(diskdir, top_name), size, c, changed, pool, every, change_at)
    d = chain_descriptor(["root.hds", top_name], size, c, [base_guid, TOP_GUID])
    descriptor = os.path.join(diskdir, "DiskDescriptor.xml")
    write_descriptor(descriptor, d)
    for img in ("root.hds", top_name):  # an independent reader must find both images clean
        subprocess.run(["qemu-img", "check", "-q", "-f", "parallels", os.path.join(diskdir, img)],
                       check=True)
    s = Setup(descriptor, base_guid, changed, params, round(time.perf_counter() - t0, 1))
    with open(stamp, "w") as f:
        json.dump(s.__dict__, f)
    return s


# -- running ploopfs ----------------------------------------------------------------------------
@dataclass
class Run:
    wall: float
    rss_kib: int
    report: dict


def run_child(argv: list[str], hwm_path: str, json_out: bool = True) -> Run:
    """One fresh process: wall seconds, its own VmHWM and (with --json) its report."""
    if os.path.exists(hwm_path):
        os.unlink(hwm_path)
    t0 = time.perf_counter()
    p = subprocess.run([PYTHON, "-c", WRAPPER, hwm_path, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"diff_fastpath: {argv} failed ({p.returncode}): {p.stderr.strip()}")
    with open(hwm_path) as f:
        rss = int(f.read())
    report = json.loads(p.stdout) if json_out and p.stdout.strip() else {}
    return Run(wall, rss, report)


def diff_argv(s: Setup, out: str, fmt: str, full: bool) -> list[str]:
    a = ["diff", s.descriptor, s.descriptor, "--old-snapshot", s.base_guid, "--new-snapshot",
         TOP_GUID, "-o", out, "--format", fmt, "--hash", "none", "--json", "--no-progress"]
    return a + (["--full-compare"] if full else [])


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def ranges_of(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)["ranges"]


def clusters_of(ranges: list[dict]) -> list[int]:
    return [k for r in ranges for k in range(r["cluster"], r["cluster"] + r["clusters"])]


# -- the benchmark ------------------------------------------------------------------------------
def image_files(s: Setup) -> list[str]:
    d = os.path.dirname(s.descriptor)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("root.hds"))


def drop_cache(s: Setup) -> None:
    """Cold: evict the pair's own files from the page cache (POSIX_FADV_DONTNEED on these two
    files only; the rest of the shared machine's cache is left alone). They are clean (fsynced)."""
    for p in image_files(s):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(s: Setup) -> None:
    """Warm: read into the page cache every cluster the fast path reads (TOP whole; BASE's
    header, BAT and clusters at the changed positions) and BASE's data clusters."""
    c, every = int(s.params["cluster"]), int(s.params["data_every"])
    buf = bytearray(c)
    base, top = image_files(s)
    hdr = new_header(int(s.params["size"]), c, 2)
    with open(base, "rb", buffering=0) as f:
        f.readinto(buf)  # header and BAT
        for k in sorted({*range(0, hdr.bat_entries, every), *s.changed}):
            f.seek((hdr.bat_clusters + k) * c)
            f.readinto(buf)
    with open(top, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def warm_interpreter(tmp: str) -> None:
    """Untimed: start Python and import ploopfs once, so the interpreter's and the venv's own
    files are cached again after a full compare swept 64 GiB through the page cache (else the
    next run would time re-reading numpy & co. from disk, not the diff)."""
    run_child(["--import-only"], os.path.join(tmp, "hwm"), json_out=False)


def cold_read_rate(s: Setup) -> float:
    """Sequential read() of TOP from disk, bytes/s (the disk's rate, for the extrapolation)."""
    drop_cache(s)
    top = image_files(s)[1]
    buf = bytearray(8 * MiB)
    t0 = time.perf_counter()
    n = 0
    with open(top, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n / (time.perf_counter() - t0)


def bench_json(s: Setup, tmp: str, rounds: int, states: list[str]) -> dict:
    names = [f"{mode}-{st}" for st in states for mode in ("fast", "full")]
    runs: dict[str, list[Run]] = {n: [] for n in names}
    seen: dict[str, list[dict]] = {}

    def case(name: str):
        mode, state = name.split("-")

        def fn() -> float:
            out = os.path.join(tmp, f"{name}.json")
            _remove(out)
            warm_interpreter(tmp)
            (drop_cache if state == "cold" else warm_cache)(s)
            r = run_child(diff_argv(s, out, "json", mode == "full"), os.path.join(tmp, "hwm"))
            rng = ranges_of(out)
            if any(v != rng for v in seen.values()):
                raise SystemExit(f"diff_fastpath: {name} ranges differ from an earlier run")
            seen[name] = rng
            os.unlink(out)
            runs[name].append(r)
            return r.wall
        return fn

    samples = alternate([(n, case(n)) for n in names], rounds,
                        lambda n, r, v: log(f"  round {r}: {n:10s} {v:8.3f} s"))
    ranges = next(iter(seen.values()))
    if clusters_of(ranges) != s.changed:
        raise SystemExit("diff_fastpath: the ranges are not the changed clusters")
    nclusters = int(s.params["size"]) // int(s.params["cluster"])
    for n in names:
        st = runs[n][0].report["stats"]
        want = ("map", len(s.changed)) if n.startswith("fast") else ("full", nclusters)
        if (st["mode"], st["candidate_clusters"]) != want:
            raise SystemExit(f"diff_fastpath: unexpected stats of {n}: {st}")
    res: dict = {"ranges": len(ranges), "changed_clusters": len(s.changed)}
    for name in names:
        st = runs[name][-1].report["stats"]
        res[name] = {
            "wall_s": Series(f"{name} wall", "s", samples[name]),
            "scan_s": Series(f"{name} scan", "s", [r.report["stats"]["seconds"] for r in runs[name]]),
            "rss_mib": Series(f"{name} VmHWM", "MiB", [r.rss_kib / 1024 for r in runs[name]]),
            "bytes_read_old": st["bytes_read_old"], "bytes_read_new": st["bytes_read_new"],
            "candidate_clusters": st["candidate_clusters"]}
    for st in states:
        fast, full = res[f"fast-{st}"], res[f"full-{st}"]
        res[f"ratio_wall-{st}"] = Series(f"full/fast wall {st}", "x",
                                         ratio_series(full["wall_s"].samples, fast["wall_s"].samples))
        res[f"ratio_scan-{st}"] = Series(f"full/fast scan {st}", "x",
                                         ratio_series(full["scan_s"].samples, fast["scan_s"].samples))
    return res


def bench_formats(s: Setup, tmp: str) -> dict:
    """Peak RSS (and wall time) of --format rdiff and ploop, fast and full, once each."""
    out: dict = {}
    for fmt in ("rdiff", "ploop"):
        for full in (False, True):
            name = f"{fmt}-{'full' if full else 'fast'}"
            dst = os.path.join(tmp, name)
            _remove(dst)
            _remove(dst + ".json")
            warm_interpreter(tmp)
            warm_cache(s)
            r = run_child(diff_argv(s, dst, fmt, full), os.path.join(tmp, "hwm"))
            changed = r.report["stats"]["changed_clusters"]
            if changed != len(s.changed) or (fmt == "ploop" and
                                             r.report["clusters_written"] != len(s.changed)):
                raise SystemExit(f"diff_fastpath: {name} reports {changed} changed clusters")
            _remove(dst)
            _remove(dst + ".json")
            out[name] = {"wall_s": round(r.wall, 3), "rss_mib": round(r.rss_kib / 1024, 1)}
            log(f"  {name:11s} {r.wall:8.3f} s  VmHWM {r.rss_kib / 1024:6.1f} MiB")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/var/tmp/pb/diff_fastpath")
    ap.add_argument("--size-gib", type=int, default=64)
    ap.add_argument("--cluster", type=int, default=MiB)
    ap.add_argument("--data-every", type=int, default=16,
                    help="one BASE cluster in N holds data, the rest are sparse holes")
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--change-at", choices=("start", "end"), default="start",
                    help="where TOP's clusters differ from BASE's: from their first bytes (new "
                         "data) or only in their last 8 bytes (a compare must read them whole)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", choices=("warm", "cold", "both"), default="both",
                    help="page-cache state of the pair's files before each run (default both)")
    ap.add_argument("--no-formats", action="store_true", help="skip the rdiff/ploop RSS runs")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    s = build(a.workdir, a.size_gib * GiB, a.cluster, a.data_every, a.rate, a.seed, a.change_at)
    tmp = os.path.join(a.workdir, "out")
    os.makedirs(tmp, exist_ok=True)
    floor = run_child(["--import-only"], os.path.join(tmp, "hwm"), json_out=False).rss_kib / 1024
    states = ["warm", "cold"] if a.cache == "both" else [a.cache]
    rate = cold_read_rate(s)
    log(f"diff_fastpath: {a.size_gib} GiB, {len(s.changed)} changed clusters, {a.rounds} rounds, "
        f"cache {'+'.join(states)}; sequential cold read() {rate / 1e6:.0f} MB/s")
    res = bench_json(s, tmp, a.rounds, states)
    fmts = {} if a.no_formats else bench_formats(s, tmp)
    rss_all = [x for st in states for m in ("fast", "full") for x in res[f"{m}-{st}"]["rss_mib"].samples]
    rss_all += [v["rss_mib"] for v in fmts.values()]
    print(f"setup: {a.size_gib} GiB virtual, {a.cluster // MiB} MiB clusters, BASE all mapped "
          f"({s.params['size'] // a.cluster // a.data_every} data clusters, rest sparse holes), "
          f"TOP {len(s.changed)} changed clusters, differing from BASE "
          f"{'from their first bytes' if a.change_at == 'start' else 'in their last 8 bytes only'}"
          f"; built in {s.build_seconds} s")
    print(f"disk: sequential cold read() {rate / 1e6:.0f} MB/s; reading a fully allocated "
          f"{a.size_gib} GiB BASE cold would take >= {a.size_gib * GiB / rate:.0f} s "
          "(extrapolated, not measured)")
    for st in states:
        for m in ("fast", "full"):
            r = res[f"{m}-{st}"]
            print(f"{m}-{st:4s} wall {r['wall_s'].fmt()} s  scan {r['scan_s'].fmt()} s  "
                  f"VmHWM {r['rss_mib'].fmt(digits=1)} MiB  read old "
                  f"{r['bytes_read_old'] / MiB:.0f} MiB new {r['bytes_read_new'] / MiB:.0f} MiB")
        print(f"{st}: full/fast wall {res[f'ratio_wall-{st}'].fmt(digits=1)} x "
              f"(target >= {TARGET_RATIO:.0f} x), scan {res[f'ratio_scan-{st}'].fmt(digits=1)} x")
    for name, v in fmts.items():
        print(f"{name:11s} wall {v['wall_s']:.3f} s  VmHWM {v['rss_mib']:.1f} MiB (warm)")
    print(f"peak RSS max {max(rss_all):.1f} MiB (target <= {TARGET_RSS_MIB:.0f} MiB; import "
          f"floor {floor:.1f} MiB)")
    dump_json(a.json, {"machine": machine_info(), "setup": s.__dict__ | {"changed": len(s.changed)},
                       "cold_read_bytes_per_s": rate, "json": res, "formats": fmts,
                       "import_floor_mib": floor,
                       "targets": {"ratio": TARGET_RATIO, "rss_mib": TARGET_RSS_MIB}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
