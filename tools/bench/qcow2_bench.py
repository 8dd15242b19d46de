#!/usr/bin/env python3
"""Time of `ploopfs export -f qcow2` against `qemu-img convert -O qcow2` of raw exports.

The disk (built once per work dir): --size bytes (default 2 GiB), 1 MiB clusters, a GPT with one
ext4 partition made by `mkfs.ext4 -d` from a tree of files (--fill of the disk: big and small
random files, text-like files, files with zero blocks that ext4 keeps as holes), then changed
twice with `debugfs -w` (files removed, new files written; in the second change the blocks of a
removed file are zeroed as `zerofree` would). The three versions become a chain of v2 images
(ImageWriter): the base holds the non-zero clusters of version 0, each delta the clusters that
differ from the version below, zeroed ones included; unwritten space is holes. The raw export of
every snapshot (`ploopfs export -s GUID`, sparse) is made once, untimed: qemu-img's input.

Each round, alternating (A B C D, then D C B A, …), every output a fresh file, page cache warm:

  ploopfs              `ploopfs export -f qcow2 SRC OUT.qcow2` (fsync at the end)
  qemu-img             `qemu-img convert -t writeback -f raw -O qcow2 TOP.raw OUT.qcow2`
                       (-t writeback: qemu-img flushes the file at the end; its default cache
                       mode for the target, unsafe, never does, so it would not be as durable)
  qemu-img + sync      `qemu-img convert -f raw -O qcow2 TOP.raw OUT.qcow2 && sync OUT.qcow2`:
                       the same durability the other way (one fsync by coreutils' sync)
  ploopfs keep         `ploopfs export -f qcow2 --keep-snapshots SRC OUTDIR` (3 files, fsynced)
  qemu-img -B chain    qemu-img's way to a chain from the raw exports: `qemu-img convert -t
                       writeback -O qcow2 [-B PARENT.qcow2 -F qcow2] SNAPk.raw LEVELk.qcow2`, base
                       first. -B only names the backing file: qemu-img does not compare with
                       it, so every file holds the whole snapshot (about 3x the bytes)

and, reported only, `qemu-img convert` with its default cache mode and nothing else (no flush:
its data may still be in the page cache when it exits). The warm-up round
checks every output with `qemu-img check` and `qemu-img compare` against the raw exports, so a
wrong export cannot pass as a fast one; every round checks the child's report.

Targets: ploopfs >= 0.8x the speed of qemu-img (qemu-img wall / ploopfs wall, per round)
against both durable qemu-img cases, for the single file, and for --keep-snapshots against the
same single-file qemu-img converts (they write less than the chain; the -B chain writes far
more, so its ratio is reported only).

Usage: .venv/bin/python tools/bench/qcow2_bench.py [--workdir DIR] [--size BYTES] [--rounds 5]
       [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

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
    reuse_build,
    row,
    run_child,
    save_build,
    verdict,
)

from ploopfs.native import is_zero
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MiB = 1 << 20
GiB = 1 << 30
KiB = 1 << 10
TARGET = 0.8
WIDTHS = (40, 24, 10)
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")
LEVELS = 3


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def _text(rnd: random.Random, n: int) -> bytes:
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
             for _ in range(2000)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choices(words, k=12)) + b"\n"
    return bytes(out[:n])


def _write_files(tree: str, total: int, rnd: random.Random, prefix: str) -> list[str]:
    """Files adding up to about `total` bytes under `tree`: a few big random ones, many small
    ones in folders, text-like ones, and some with zero blocks (every fourth MiB)."""
    names = []
    left, i = total, 0
    while left > 0:
        kind = rnd.random()
        if kind < 0.35:
            n = rnd.choice((16, 32, 64)) * MiB
        elif kind < 0.7:
            n = rnd.randint(4, 256) * KiB
        else:
            n = rnd.randint(1, 8) * MiB
        n = min(n, left)
        sub = f"{prefix}d{i % 16:02d}"
        os.makedirs(os.path.join(tree, sub), exist_ok=True)
        name = f"{sub}/{prefix}f{i:05d}"
        with open(os.path.join(tree, name), "wb") as f:
            if kind > 0.9:
                f.write(_text(rnd, n))
            elif 0.8 < kind <= 0.9 and n >= 4 * MiB:
                for k in range(0, n, MiB):
                    m = min(MiB, n - k)
                    f.write(bytes(m) if k // MiB % 4 == 3 else rnd.randbytes(m))
            else:
                f.write(rnd.randbytes(n))
        names.append(name)
        left -= n
        i += 1
    return names


def _debugfs(spec: str, cmds: list[str], workdir: str) -> None:
    script = os.path.join(workdir, "debugfs.cmds")
    with open(script, "w") as f:
        f.write("".join(c + "\n" for c in cmds))
    sh("debugfs", "-w", "-f", script, spec)
    os.unlink(script)


def _file_blocks(spec: str, name: str) -> list[int]:
    return [int(b) for b in sh("debugfs", "-R", f"blocks /{name}", spec).split()]


def _change(raw: str, spec: str, workdir: str, names: list[str], add: int, rnd: random.Random,
            prefix: str, zero_removed: bool, part_start: int) -> list[str]:
    """One version to the next: remove a tenth of the files, write `add` bytes of new ones; with
    `zero_removed` the blocks of the largest removed file are zeroed afterwards."""
    gone = rnd.sample(names, max(1, len(names) // 10))
    zero_blocks: list[int] = []
    if zero_removed:
        big = max(gone, key=lambda nm: len(_file_blocks(spec, nm)))
        zero_blocks = _file_blocks(spec, big)
    tree = os.path.join(workdir, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    new = _write_files(tree, add, rnd, prefix)
    cmds = [f"rm /{nm}" for nm in gone]
    for d in sorted({nm.split("/")[0] for nm in new}):
        cmds.append(f"mkdir /{d}")
    cmds += [f"write {os.path.join(tree, nm)} /{nm}" for nm in new]
    _debugfs(spec, cmds, workdir)
    shutil.rmtree(tree)
    if zero_blocks:
        fd = os.open(raw, os.O_WRONLY)
        try:
            for b in zero_blocks:
                os.pwrite(fd, bytes(4096), part_start + b * 4096)
        finally:
            os.close(fd)
    sh("e2fsck", "-fn", spec)
    return [nm for nm in names if nm not in gone] + new


def _image(path: str, version: str, previous: str | None, size: int, cluster: int) -> int:
    """A v2 image of the clusters of `version` that are non-zero (base) or that differ from
    `previous` (delta, zeroed clusters included)."""
    written = 0
    with ImageWriter.create(path, size, cluster, 2) as w, open(version, "rb") as cur:
        prev = open(previous, "rb") if previous else None  # noqa: SIM115
        try:
            for vc in range(-(-size // cluster)):
                data = cur.read(cluster)
                old = prev.read(cluster) if prev else None
                if (data != old) if old is not None else not is_zero(data):
                    w.write_cluster(vc, data)
                    written += 1
        finally:
            if prev:
                prev.close()
    return written


def build(workdir: str, size: int, cluster: int, fill: float, seed: int) -> dict:
    params = {"size": size, "cluster": cluster, "fill": fill, "seed": seed, "v": 2}
    old = reuse_build(workdir, params)
    if old:
        log(f"qcow2_bench: reusing the disk in {workdir}")
        return old
    for name in os.listdir(workdir):
        p = os.path.join(workdir, name)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    t0 = time.perf_counter()
    log(f"qcow2_bench: building a {size / GiB:g} GiB ext4 disk, 3 versions, in {workdir}")
    rnd = random.Random(seed)
    tree = os.path.join(workdir, "tree")
    os.makedirs(tree)
    names = _write_files(tree, int(fill * size), rnd, "a")
    versions = [os.path.join(workdir, f"v{k}.raw") for k in range(LEVELS)]
    raw = versions[0]
    sh("truncate", "-s", str(size), raw)
    sh("sgdisk", "-o", "-n", f"1:2048:{size // 512 - 2049}", raw)
    part_size = (size // 512 - 2049 - 2048 + 1) * 512
    sh("mkfs.ext4", "-q", "-F", "-E", f"offset={MiB}", "-d", tree, raw, f"{part_size // 1024}k")
    shutil.rmtree(tree)
    for k in range(1, LEVELS):
        sh("cp", "--sparse=always", versions[k - 1], versions[k])
        spec = f"{versions[k]}?offset={MiB}"
        names = _change(versions[k], spec, workdir, names, int(0.08 * size), rnd, "bc"[k - 1],
                        k == LEVELS - 1, MiB)
    files = [f"level{k}.hds" for k in range(LEVELS)]
    written = [_image(os.path.join(workdir, files[k]), versions[k],
                      versions[k - 1] if k else None, size, cluster) for k in range(LEVELS)]
    desc = chain_descriptor(files, size, cluster)
    write_descriptor(os.path.join(workdir, "DiskDescriptor.xml"), desc)
    for v in versions:
        os.unlink(v)
    guids = [im.guid for im in desc.images]
    exports = []
    for k, g in enumerate(guids):  # qemu-img's input: ploopfs's raw export of each snapshot
        out = os.path.join(workdir, f"snap{k}.raw")
        run_child([PLOOPFS, "export", "--no-progress", "-s", g, workdir, out], "qcow2_bench")
        exports.append(out)
    info = {"params": params, "files": files, "guids": guids, "exports": exports,
            "clusters_written": written,
            "raw_allocated_bytes": os.stat(exports[-1]).st_blocks * 512,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    log(f"qcow2_bench: built {LEVELS} images ({written} clusters) + raw exports in "
        f"{info['build_seconds']} s")
    return info


def qemu_ok(*argv: str) -> None:
    r = subprocess.run(["qemu-img", *argv], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"qcow2_bench: WRONG RESULT: qemu-img {' '.join(argv)}: "
                         f"{r.stdout}{r.stderr}")


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def run(args: argparse.Namespace, workdir: str) -> dict:
    machine = machine_info()  # the load before the rounds
    info = build(workdir, args.size, args.cluster, args.fill, args.seed)
    exports = info["exports"]
    top_raw = exports[-1]
    out = {name: os.path.join(workdir, f"out-{name.replace(' ', '-').replace('+', 'p')}")
           for name in ("ploopfs", "qemu-img", "qemu-img + sync", "ploopfs keep",
                        "qemu-img -B chain", "qemu-img no flush")}
    rec: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}

    def keep_files(name: str) -> list[str]:
        return [os.path.join(out[name], g.strip("{}") + ".qcow2") for g in info["guids"]]

    def timed(name: str, argv: list[str]) -> tuple[float, str]:
        _remove(out[name])
        wall, text = run_child(argv, "qcow2_bench")
        rec.setdefault(name, []).append(wall)
        return wall, text

    def check_report(text: str) -> None:
        r = json.loads(text)
        if r["format"] != "qcow2" or r["data_bytes_written"] <= 0 or \
                r["data_bytes_written"] > sum(os.stat(e).st_blocks * 512 for e in exports):
            raise SystemExit(f"qcow2_bench: WRONG RESULT: {r}")

    def ploopfs_case() -> float:
        wall, text = timed("ploopfs", [PLOOPFS, "export", "-f", "qcow2", "--json",
                                       "--no-progress", workdir, out["ploopfs"]])
        check_report(text)
        sizes["ploopfs"] = os.path.getsize(out["ploopfs"])
        return wall

    def qemu_case() -> float:
        wall, _ = timed("qemu-img", ["qemu-img", "convert", "-t", "writeback", "-f", "raw",
                                     "-O", "qcow2", top_raw, out["qemu-img"]])
        sizes["qemu-img"] = os.path.getsize(out["qemu-img"])
        return wall

    def ploopfs_keep_case() -> float:
        wall, text = timed("ploopfs keep", [PLOOPFS, "export", "-f", "qcow2", "--keep-snapshots",
                                            "--json", "--no-progress", workdir,
                                            out["ploopfs keep"]])
        check_report(text)
        sizes["ploopfs keep"] = sum(map(os.path.getsize, keep_files("ploopfs keep")))
        return wall

    def qemu_keep_case() -> float:
        files = keep_files("qemu-img -B chain")
        script = f"mkdir '{out['qemu-img -B chain']}'"
        for k, (raw, f) in enumerate(zip(exports, files, strict=True)):
            back = f"-B '{os.path.basename(files[k - 1])}' -F qcow2 " if k else ""
            script += (f" && qemu-img convert -t writeback -f raw -O qcow2 {back}"
                       f"'{raw}' '{f}'")
        wall, _ = timed("qemu-img -B chain", ["sh", "-c", script])
        sizes["qemu-img -B chain"] = sum(map(os.path.getsize, files))
        return wall

    def qemu_sync_case() -> float:
        name = "qemu-img + sync"
        wall, _ = timed(name, ["sh", "-c", f"qemu-img convert -f raw -O qcow2 '{top_raw}' "
                                           f"'{out[name]}' && sync '{out[name]}'"])
        return wall

    def qemu_noflush_case() -> float:
        wall, _ = timed("qemu-img no flush", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                                              top_raw, out["qemu-img no flush"]])
        return wall

    plan = [("ploopfs", ploopfs_case), ("qemu-img", qemu_case), ("qemu-img + sync", qemu_sync_case),
            ("ploopfs keep", ploopfs_keep_case), ("qemu-img -B chain", qemu_keep_case),
            ("qemu-img no flush", qemu_noflush_case)]
    run_child(["sh", "-c", f"cat {workdir}/snap*.raw {workdir}/level*.hds >/dev/null"],
              "qcow2_bench")
    for name, fn in plan[:5]:  # warm-up, and the outputs checked by qemu-img
        fn()
        if name in ("ploopfs keep", "qemu-img -B chain"):
            for f, raw in zip(keep_files(name), exports, strict=True):
                qemu_ok("check", "-q", f)
                qemu_ok("compare", "-q", "-f", "qcow2", "-F", "raw", f, raw)
        else:
            qemu_ok("check", "-q", out[name])
            qemu_ok("compare", "-q", "-f", "qcow2", "-F", "raw", out[name], top_raw)
        _remove(out[name])
    rec.clear()

    def each(fn):  # every output removed right after its case, to keep the disk use down
        def case() -> float:
            v = fn()
            for p in out.values():
                _remove(p)
            return v
        return case

    alternate([(n, each(f)) for n, f in plan], args.rounds,
              on_sample=lambda n, r, v: log(f"  round {r + 1} {n:18s} {v:7.3f} s"))
    results = {k: Series(k, "s", v) for k, v in rec.items()}
    ratios = {f"{p} / {q}": Series(f"{p} speed / {q} speed", "x", ratio_series(rec[q], rec[p]))
              for p in ("ploopfs", "ploopfs keep") for q in ("qemu-img", "qemu-img + sync")}
    ratio_chain = Series("ploopfs keep speed / qemu-img -B chain speed", "x",
                         ratio_series(rec["qemu-img -B chain"], rec["ploopfs keep"]))
    return {"bench": "qcow2_bench", "machine": machine,
            "loadavg_at_end": os.getloadavg(),
            "setup": {**info, "workdir": workdir, "rounds": args.rounds, "output_bytes": sizes},
            "results": results, "ratios": ratios, "ratio_chain": ratio_chain,
            "target": {"ratio_min": TARGET,
                       "ratio": min(ratios["ploopfs / qemu-img"].median,
                                    ratios["ploopfs / qemu-img + sync"].median),
                       "ratio_keep": min(ratios["ploopfs keep / qemu-img"].median,
                                         ratios["ploopfs keep / qemu-img + sync"].median),
                       "met": all(r.median >= TARGET for r in ratios.values())}}


def report(res: dict) -> None:
    s = res["setup"]
    p = s["params"]
    o = s["output_bytes"]
    print(f"qcow2_bench: {p['size'] / GiB:g} GiB ext4 disk, {LEVELS}-image chain "
          f"({'+'.join(map(str, s['clusters_written']))} clusters of {p['cluster'] / MiB:g} MiB), "
          f"top raw export holds {s['raw_allocated_bytes'] / MiB:.0f} MiB; qcow2 output: "
          f"ploopfs {o['ploopfs'] / MiB:.0f} MiB, qemu-img {o['qemu-img'] / MiB:.0f} MiB; "
          f"--keep-snapshots: ploopfs {o['ploopfs keep'] / MiB:.0f} MiB, qemu-img "
          f"{o['qemu-img -B chain'] / MiB:.0f} MiB; {s['rounds']} rounds, median (min–max), load "
          f"{res['machine']['loadavg_at_start'][0]:.1f} → {res['loadavg_at_end'][0]:.1f}")
    r, q = res["results"], res["ratios"]
    print(row(("case", "wall s", "ratio"), WIDTHS))
    print(row(("ploopfs export -f qcow2", r["ploopfs"].fmt(1, 2), ""), WIDTHS))
    print(row(("qemu-img convert -t writeback", r["qemu-img"].fmt(1, 2),
               f"{q['ploopfs / qemu-img'].median:.2f}x"), WIDTHS))
    print(row(("qemu-img convert + sync FILE", r["qemu-img + sync"].fmt(1, 2),
               f"{q['ploopfs / qemu-img + sync'].median:.2f}x"), WIDTHS))
    print(row(("ploopfs export -f qcow2 --keep-snapshots", r["ploopfs keep"].fmt(1, 2), ""),
              WIDTHS))
    print(row(("  vs qemu-img convert -t writeback", "",
               f"{q['ploopfs keep / qemu-img'].median:.2f}x"), WIDTHS))
    print(row(("  vs qemu-img convert + sync FILE", "",
               f"{q['ploopfs keep / qemu-img + sync'].median:.2f}x"), WIDTHS))
    print(row(("qemu-img -B chain x3 (info)", r["qemu-img -B chain"].fmt(1, 2),
               f"{res['ratio_chain'].median:.2f}x"), WIDTHS))
    print(row(("qemu-img convert, no flush (info)", r["qemu-img no flush"].fmt(1, 2), ""),
              WIDTHS))
    for k, v in q.items():
        print(f"  ratio {k}: {v.fmt(1, 2)}")
    t = res["target"]
    print(f"target: ploopfs >= {t['ratio_min']}x qemu-img: median {t['ratio']:.2f}x, "
          f"--keep-snapshots {t['ratio_keep']:.2f}x -> {verdict(t['met'])}")


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, "no other benchmark", 2 * GiB, 11)
    p.add_argument("--cluster", type=int, default=MiB, help="ploop cluster size (default 1 MiB)")
    p.add_argument("--fill", type=float, default=0.55,
                   help="share of the disk filled with files in version 0")
    args = p.parse_args(argv)
    res = in_workdir(args.workdir, "ploopfs-bench-qcow2-", lambda d: run(args, d))
    report(res)
    dump_json(args.json, res)
    return 0 if res["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
