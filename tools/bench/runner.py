"""Runs every benchmark of tools/bench in its own process and prints a summary table.

Invoked by tools/bench/run (which picks the project's venv); see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _common import REPO, machine_info

HERE = os.path.join(REPO, "tools", "bench")
MiB = 1 << 20


def run_bench(script: str, out_json: str, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.join(HERE, script), "--json", out_json, *extra]
    print(f"== {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    with open(out_json) as f:
        return json.load(f)


def med(series: dict) -> float:
    s = sorted(series["samples"])
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def rng(series: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (f"{med(series) / scale:.{digits}f} ({min(series['samples']) / scale:.{digits}f}–"
            f"{max(series['samples']) / scale:.{digits}f})")


def rows_read(res: dict) -> list[tuple[str, ...]]:
    thr, rat = res["throughput"], res["ratio_to_raw_pread"]
    t = res["target"]
    base = rng(thr["raw os.pread"], 1e9)
    out = []
    for name in ("vol.readinto (reused buf)", "vol.read"):
        status = ("MET" if t["met"] else "MISSED") if t["metric"] == f"{name} / raw os.pread" else "info"
        out.append(("read_chain", f"{name} GB/s", f"raw os.pread {base}", rng(thr[name], 1e9),
                    rng(rat[name]), f">= {t['min_ratio']}x", status))
    return out


def rows_open(res: dict) -> list[tuple[str, ...]]:
    r = res["results"]
    base = r["python + import (baseline)"]
    head = r["head -c of the 4 BAT regions (baseline)"]
    t = res["target"]
    out = []
    for layout in ("shuf", "seq"):
        o = r[f"open+map {layout}"]
        d = res["derived"][layout]
        ext = med(o["extents"])
        ok_s = med(o["open_s"]) < t["open_s_max"]
        ok_m = med(o["rss"]) < t["rss_max"]
        out.append((f"open_map {layout}", f"open()+map s ({ext:.0f} extents)",
                    f"import {rng(base['wall'], 1, 3)}, head {rng(head['wall'], 1, 3)}",
                    rng(o["open_s"], 1, 3), rng(d["wall_ratio_to_import"]) + " wall",
                    f"< {t['open_s_max']:g} s", "MET" if ok_s else "MISSED"))
        out.append((f"open_map {layout}", "peak RSS MiB (VmHWM)", f"import {rng(base['rss'], MiB, 1)}",
                    rng(o["rss"], MiB, 1), f"+{rng(d['rss_minus_import_rss'], MiB, 1)}",
                    f"< {t['rss_max'] / MiB:.0f} MiB", "MET" if ok_m else "MISSED"))
    return out


def rows_mount(res: dict) -> list[tuple[str, ...]]:
    if "skipped" in res:
        return [("mount_bench", "all", "-", "-", "-", "-", f"skipped: {res['skipped']}")]
    seq, rnd, rat, t = res["seq_bytes_per_s"], res["rand_iops"], res["ratios"], res["targets"]
    qsd_seq = f"qsd {rng(seq['qsd'], 1e6, 0)}" if "qsd" in seq else "-"
    out = []

    def row(metric: str, base: str, val: dict, ratio: str, target: str, tkey: str | None,
            scale: float, digits: int) -> None:
        if ratio not in rat:
            return
        status = ("MET" if t[tkey]["met"] else "MISSED") if tkey else "info"
        out.append(("mount_bench", metric, base, rng(val, scale, digits), rng(rat[ratio]), target, status))

    if "pfs" in seq:
        row("seq dd MB/s", qsd_seq, seq["pfs"], "seq ploopfs / qsd", ">= 2x", "seq ploopfs / qsd >= 2",
            1e6, 0)
    if "pfs_dio" in seq:
        row("seq dd MB/s --direct-io", qsd_seq, seq["pfs_dio"], "seq ploopfs --direct-io / qsd", ">= 2x",
            "seq ploopfs --direct-io / qsd >= 2", 1e6, 0)
    if "ch8" in seq:
        row("seq dd MB/s 8-deep chain", f"1 image {rng(seq['pfs'], 1e6, 0)}", seq["ch8"],
            "seq chain8 / 1 image", ">= 0.9x", "seq chain8 / 1 image >= 0.9", 1e6, 0)
    if "raw" in seq and "pfs" in seq:
        row("seq dd MB/s vs raw copy", f"raw dd {rng(seq['raw'], 1e6, 0)}", seq["pfs"],
            "seq ploopfs / raw dd", "report", None, 1e6, 0)
    if "pfs" in rnd and "qsd" in rnd:
        row("rand 4K O_DIRECT IOPS", f"qsd {rng(rnd['qsd'], 1, 0)}", rnd["pfs"], "rand ploopfs / qsd",
            ">= 0.6x", "rand ploopfs / qsd >= 0.6", 1, 0)
    return out


def table(rows: list[tuple[str, ...]]) -> str:
    head = ("bench", "metric", "baseline (same run)", "median (min–max)", "vs baseline", "target", "status")
    cols = [head, *rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in cols]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the reader benchmarks (docs/benchmarks.md).")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", help="keep the generated images here (reused by later runs)")
    p.add_argument("--only", choices=("read_chain", "open_map", "mount_bench"), action="append")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    only = args.only or ["read_chain", "open_map", "mount_bench"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ploopfs-bench-") as tmp:
        for name in only:
            extra = ["--rounds", str(args.rounds)]
            if args.workdir:
                extra += ["--workdir", os.path.join(args.workdir, name)]
            results[name] = run_bench(f"{name}.py", os.path.join(tmp, f"{name}.json"), extra)
    rows: list[tuple[str, ...]] = []
    if "read_chain" in results:
        rows += rows_read(results["read_chain"])
    if "open_map" in results:
        rows += rows_open(results["open_map"])
    if "mount_bench" in results:
        rows += rows_mount(results["mount_bench"])
    m = machine_info()
    print(f"\n== summary ({m['date']}, {m['cpus']} CPUs, Python {m['python']}, "
          f"load {m['loadavg_at_start'][0]:.2f}; {args.rounds} alternating rounds)")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "results": results}, f, indent=2)
    missed = any(r[-1] == "MISSED" for r in rows)
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
