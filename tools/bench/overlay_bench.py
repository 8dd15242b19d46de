#!/usr/bin/env python3
"""Writes through `ploopfs mount --overlay` against the same writes to a qcow2 overlay served by
qemu-storage-daemon's FUSE export (docs/overlay.md, docs/benchmarks.md).

The disk (built once per work dir): a v2 ploop image of --size bytes (default 1 GiB), 1 MiB
clusters, every other cluster holding random data; its raw export (`ploopfs export`) is the
qcow2 overlay's backing file. Each round, for each side, a fresh overlay is made and mounted
(untimed), then fio (psync, one job, page cache in between as a user gets it) runs:

  seq    sequential 1 MiB writes over the first --seq-mib MiB of the disk, fsync at the end
         (fio --rw=write --bs=1M --end_fsync=1): MiB/s
  rand   random 4 KiB writes inside the first --rand-region-mib MiB, fsync every 64 writes,
         --rand-mib MiB in all (fio --rw=randwrite --bs=4k --fsync=64): IOPS

  ploopfs   `ploopfs mount SRC MNT --overlay DIR`, fio on MNT/disk (direct_io, one FUSE request
            per write, every fsync a flush of data then BAT)
  qsd       `qemu-img create -f qcow2 -b disk.raw -F raw -o cluster_size=C ov.qcow2` (C = the
            ploop cluster size, so both copy the same amount on a first write into a cluster),
            `qemu-storage-daemon --blockdev file --blockdev qcow2 --export
            type=fuse,writable=on` on a file, fio on that file (cache.direct=off, flushes
            honoured: the qcow2 default)

Rounds alternate (ploopfs qsd, then qsd ploopfs, …); reported: median and min–max of each side
and of the per-round ratio ploopfs/qsd. Targets (issue #19): both ratios >= 0.5. The first
round's ploopfs overlay is checked (`ploopfs check` exit 0), so a broken writer cannot pass as
a fast one.

Usage: .venv/bin/python tools/bench/overlay_bench.py [--workdir DIR] [--size BYTES]
       [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
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
    save_build,
    verdict,
)

from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MiB = 1 << 20
CLUSTER = MiB
TARGET = 0.5
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")
WIDTHS = (34, 26, 26, 22)


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def build(work: str, size: int, seed: int) -> None:
    params = {"size": size, "seed": seed, "v": 1}
    if reuse_build(work, params):
        log(f"overlay_bench: reusing the disk in {work}")
        return
    src = os.path.join(work, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    rng = random.Random(seed)
    with ImageWriter.create(os.path.join(src, "root.hdd"), size, CLUSTER) as w:
        for v in range(0, size // CLUSTER, 2):
            w.write_cluster(v, rng.randbytes(CLUSTER))
    write_descriptor(os.path.join(src, "DiskDescriptor.xml"),
                     chain_descriptor(["root.hdd"], size, CLUSTER))
    raw = os.path.join(work, "disk.raw")
    if os.path.exists(raw):
        os.unlink(raw)
    sh(PLOOPFS, "export", src, raw)
    save_build(work, {"params": params})


def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"overlay_bench: timed out waiting for {what}")
        time.sleep(0.02)


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def fio(target: str, kind: str, args: dict[str, int]) -> float:
    common = ["fio", "--output-format=json", "--ioengine=psync", "--direct=0", "--numjobs=1",
              f"--filename={target}", "--name=w", "--randrepeat=0"]
    if kind == "seq":
        extra = ["--rw=write", "--bs=1M", f"--size={args['seq_mib']}M", "--end_fsync=1"]
    else:
        extra = ["--rw=randwrite", "--bs=4k", f"--size={args['rand_region_mib']}M",
                 f"--io_size={args['rand_mib']}M", "--fsync=64"]
    out = json.loads(sh(*common, *extra))
    job = out["jobs"][0]["write"]
    if kind == "seq":  # wall time including the final fsync: bytes over the job's runtime
        return job["io_bytes"] / MiB / (out["jobs"][0]["job_runtime"] / 1000)
    return float(job["iops"])


class Ploopfs:
    def __init__(self, work: str) -> None:
        self.work = work
        self.checked = False

    def run(self, kind: str, args: dict[str, int]) -> float:
        ov, mnt = os.path.join(self.work, "ov"), os.path.join(self.work, "mnt")
        shutil.rmtree(ov, ignore_errors=True)
        os.makedirs(mnt, exist_ok=True)
        pidf = os.path.join(self.work, "mount.pid")
        sh(PLOOPFS, "mount", os.path.join(self.work, "src"), mnt, "--overlay", ov,
           "--pid-file", pidf)
        with open(pidf) as f:
            pid = int(f.read())
        try:
            v = fio(os.path.join(mnt, "disk"), kind, args)
        finally:
            subprocess.run([PLOOPFS, "umount", mnt], check=False, capture_output=True)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 30, "the ploopfs daemon")
        if not self.checked:
            r = subprocess.run([PLOOPFS, "check", "--allow-outside-paths", ov],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise SystemExit(f"overlay_bench: the overlay fails check: {r.stdout}")
            self.checked = True
        return v


class Qsd:
    def __init__(self, work: str) -> None:
        self.work = work

    def run(self, kind: str, args: dict[str, int]) -> float:
        q = os.path.join(self.work, "ov.qcow2")
        exp = os.path.join(self.work, "qsd-export")
        for p in (q,):
            if os.path.exists(p):
                os.unlink(p)
        open(exp, "a").close()
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(self.work, "disk.raw"),
           "-F", "raw", "-o", f"cluster_size={CLUSTER}", q)
        p = subprocess.Popen(
            ["qemu-storage-daemon", "--blockdev",
             f"driver=file,node-name=f,filename={q}", "--blockdev",
             "driver=qcow2,node-name=q,file=f", "--export",
             f"type=fuse,id=e,node-name=q,mountpoint={exp},writable=on"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: mounted(exp) or p.poll() is not None, 30, "qemu-storage-daemon")
            if p.poll() is not None:
                raise SystemExit(f"qemu-storage-daemon failed: {p.stderr.read()!r}")  # type: ignore[union-attr]
            return fio(exp, kind, args)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)


def main() -> int:
    ap = bench_parser(__doc__, "nothing", 1 << 30, 19)
    ap.add_argument("--seq-mib", type=int, default=512)
    ap.add_argument("--rand-mib", type=int, default=16)
    ap.add_argument("--rand-region-mib", type=int, default=64)
    a = ap.parse_args()
    args = {"seq_mib": a.seq_mib, "rand_mib": a.rand_mib, "rand_region_mib": a.rand_region_mib}

    def run(work: str) -> int:
        build(work, a.size, a.seed)
        pf, qs = Ploopfs(work), Qsd(work)
        results: dict[str, object] = {"machine": machine_info(), "params": vars(a)}
        lines = []
        met_all = True
        for kind, unit in (("seq", "MiB/s"), ("rand", "IOPS")):
            samples = alternate([("ploopfs", lambda k=kind: pf.run(k, args)),
                                 ("qsd", lambda k=kind: qs.run(k, args))], a.rounds,
                                lambda n, r, v, k=kind: log(f"  {k} round {r} {n}: {v:.1f}"))
            s_p = Series(f"{kind} ploopfs", unit, samples["ploopfs"])
            s_q = Series(f"{kind} qsd", unit, samples["qsd"])
            ratio = Series(f"{kind} ratio", "x", ratio_series(samples["ploopfs"], samples["qsd"]))
            met = ratio.median >= TARGET
            met_all &= met
            results[kind] = {"ploopfs": s_p, "qsd": s_q, "ratio": ratio, "target": TARGET,
                             "met": met}
            lines.append(row([f"{kind} ({unit})", s_p.fmt(digits=1), s_q.fmt(digits=1),
                              f"{ratio.fmt(digits=2)} {verdict(met)}"], WIDTHS))
        print(row(["workload", "ploopfs --overlay", "qsd qcow2 FUSE", "ratio (>=0.5)"], WIDTHS))
        for ln in lines:
            print(ln)
        dump_json(a.json, results)
        return 0 if met_all else 1

    return in_workdir(a.workdir, "overlay-bench-", run)


if __name__ == "__main__":
    raise SystemExit(main())
