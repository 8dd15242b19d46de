#!/usr/bin/env python3
"""The file layer (`ploopfs mount --files`, content/files.py) against the kernel and fuse2fs.

Builds (once per work dir) a 4 GiB ext4 disk through a kernel loop mount: a 1 GiB random file
`big` and a tree of 100,000 small files (1,000 folders of 100), turned into a one-image ploop
disk (qemu-img convert). Then mounts, all at once:

  ploopfs mount --files DISK                     the product
  kernel: `ploopfs export` raw copy, losetup -r, mount -o ro,noload
  fuse2fs -o ro,norecovery,fakeroot over a plain `ploopfs mount`'s disk  (baseline; skipped
                                                                          when not installed)

and measures in alternating rounds:

* read: the whole of `big` with 1 MiB reads, warm (the backing files in the page cache; the
  mounted file's own pages dropped before each run with posix_fadvise DONTNEED).
  Target: >= 0.7x the kernel's loop mount.
* `find MNT -type f | wc -l` and `du -s MNT`, the kernel's dentry and inode caches dropped before
  each run (drop_caches=2; page cache kept). Target: within 2x fuse2fs.

Needs root, /dev/fuse, mkfs.ext4, qemu-img. Mounts are undone by PID and umount in `finally`.
Usage: .venv/bin/python tools/bench/files_bench.py [--workdir DIR] [--rounds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

from _common import (
    Series,
    alternate,
    dump_json,
    in_workdir,
    log,
    machine_info,
    reuse_build,
    save_build,
    verdict,
)

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOOPFS = os.path.join(REPO, ".venv", "bin", "ploopfs")
TARGETS = {"read_vs_kernel_min": 0.7, "tree_vs_fuse2fs_max": 2.0}


def sh(*args: str, **kw) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw).stdout


def build(workdir: str, nfiles: int, big_mb: int) -> dict:
    params = {"nfiles": nfiles, "big_mb": big_mb, "v": 1}
    old = reuse_build(workdir, params)
    if old:
        return old
    raw = os.path.join(workdir, "fs.raw")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(raw)
    sh("truncate", "-s", "4G", raw)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", raw)
    mnt = os.path.join(workdir, "build-mnt")
    os.makedirs(mnt, exist_ok=True)
    dev = sh("losetup", "-f", "--show", raw).strip()
    try:
        sh("mount", dev, mnt)
        try:
            log(f"build: {big_mb} MiB random file, {nfiles} small files")
            with open(os.path.join(mnt, "big"), "wb") as f:
                for _ in range(big_mb):
                    f.write(os.urandom(MiB))
            per = 100
            for d in range(nfiles // per):
                dd = os.path.join(mnt, "tree", f"d{d // 100:02d}", f"d{d:04d}")
                os.makedirs(dd)
                for i in range(per):
                    with open(os.path.join(dd, f"file-{i:03d}"), "wb") as f:
                        f.write(b"x" * (i * 37 % 3000))
        finally:
            sh("umount", mnt)
    finally:
        sh("losetup", "-d", dev)
    ct = os.path.join(workdir, "ct")
    shutil.rmtree(ct, ignore_errors=True)
    os.makedirs(ct)
    sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, os.path.join(ct, "root.hdd"))
    sys.path.insert(0, REPO)
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(os.path.join(ct, "DiskDescriptor.xml"),
                     chain_descriptor(["root.hdd"], os.path.getsize(raw), MiB))
    os.unlink(raw)
    exported = os.path.join(workdir, "exported.raw")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(exported)
    sh(PLOOPFS, "export", "--no-progress", ct, exported)
    info = {"params": params, "ct": ct, "exported": exported}
    save_build(workdir, info)
    return info


def drop_file_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_rate(path: str) -> float:
    drop_file_cache(path)
    buf = bytearray(MiB)
    n = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n / (time.perf_counter() - t)


def drop_dentries() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def timed_shell(cmd: str) -> float:
    drop_dentries()
    t = time.perf_counter()
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.files, args.big_mb)
    mnts = {k: os.path.join(workdir, f"mnt-{k}") for k in ("ploopfs", "kernel", "disk", "fuse2fs")}
    for p in mnts.values():
        os.makedirs(p, exist_ok=True)
    procs: list[subprocess.Popen] = []
    mounted: list[str] = []
    loopdev = None
    try:
        sh(PLOOPFS, "mount", "--files", info["ct"], mnts["ploopfs"])
        mounted.append(mnts["ploopfs"])
        loopdev = sh("losetup", "-r", "-f", "--show", info["exported"]).strip()
        sh("mount", "-t", "ext4", "-o", "ro,noload", loopdev, mnts["kernel"])
        mounted.append(mnts["kernel"])
        have_fuse2fs = shutil.which("fuse2fs") is not None
        if have_fuse2fs:
            sh(PLOOPFS, "mount", info["ct"], mnts["disk"])
            mounted.append(mnts["disk"])
            p = subprocess.Popen(["fuse2fs", os.path.join(mnts["disk"], "disk"), mnts["fuse2fs"],
                                  "-f", "-o", "ro,norecovery,fakeroot"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            for _ in range(200):
                if os.path.ismount(mnts["fuse2fs"]):
                    break
                time.sleep(0.05)
            mounted.insert(0, mnts["fuse2fs"])
        cases = ["ploopfs", "kernel"] + (["fuse2fs"] if have_fuse2fs else [])
        for c in cases:  # warm the backing files, check the bytes agree
            read_rate(os.path.join(mnts[c], "big"))
        log("read rounds")
        reads = alternate([(c, lambda c=c: read_rate(os.path.join(mnts[c], "big")))
                           for c in cases], args.rounds)
        tree_cases = ["ploopfs"] + (["fuse2fs"] if have_fuse2fs else []) + ["kernel"]
        log("find rounds")
        finds = alternate([(c, lambda c=c: timed_shell(
            f"find '{mnts[c]}/tree' -type f | wc -l")) for c in tree_cases], args.rounds)
        log("du rounds")
        dus = alternate([(c, lambda c=c: timed_shell(f"du -s '{mnts[c]}/tree'"))
                         for c in tree_cases], args.rounds)
    finally:
        for m in mounted:
            subprocess.run(["umount", m], capture_output=True, check=False)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
        if loopdev:
            subprocess.run(["losetup", "-d", loopdev], capture_output=True, check=False)
    res = {"machine": machine_info(), "params": info["params"],
           "read_MBps": {c: Series(c, "B/s", v) for c, v in reads.items()},
           "find_s": {c: Series(c, "s", v) for c, v in finds.items()},
           "du_s": {c: Series(c, "s", v) for c, v in dus.items()}}
    return res


def report(res: dict) -> None:
    r, f, d = res["read_MBps"], res["find_s"], res["du_s"]
    print("read of a 1 GiB file, warm (MB/s, median (min-max)):")
    for c, s in r.items():
        print(f"  {c:8s} {s.fmt(1e6, 0)}")
    ratio = r["ploopfs"].median / r["kernel"].median
    print(f"  ploopfs / kernel = {ratio:.2f} (target >= {TARGETS['read_vs_kernel_min']}) "
          f"{verdict(ratio >= TARGETS['read_vs_kernel_min'])}")
    if "fuse2fs" in r:
        print(f"  ploopfs / fuse2fs = {r['ploopfs'].median / r['fuse2fs'].median:.2f}")
    for name, s in (("find -type f | wc -l", f), ("du -s", d)):
        print(f"{name} over 100,000 files (s):")
        for c, v in s.items():
            print(f"  {c:8s} {v.fmt(1, 2)}")
        if "fuse2fs" in s:
            q = s["ploopfs"].median / s["fuse2fs"].median
            print(f"  ploopfs / fuse2fs = {q:.2f} (target <= {TARGETS['tree_vs_fuse2fs_max']}) "
                  f"{verdict(q <= TARGETS['tree_vs_fuse2fs_max'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--big-mb", type=int, default=1024)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("files_bench: needs root (loop mounts, drop_caches)", file=sys.stderr)
        return 2
    res = in_workdir(args.workdir, "ploopfs-files-bench-", lambda w: run(args, w))
    report(res)
    dump_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
