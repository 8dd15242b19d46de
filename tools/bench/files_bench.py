#!/usr/bin/env python3
"""The file layer (`ploopfs mount --files`, content/files.py) against the kernel and fuse2fs,
and the ways people read a mount, in each caching mode (docs/mount.md, "Performance and
caching").

Builds (once per work dir) a 4 GiB GPT disk with one ext4 partition at 1 MiB, through a kernel
loop mount: a 1 GiB random file `big` and a tree of 100,000 small files (1,000 folders of 100),
turned into a one-image ploop disk (qemu-img convert). Then mounts, all at once:

  ploopfs mount --files DISK                  the product (the files through the page cache)
  ploopfs mount --files --direct-io DISK      the files past the page cache
  kernel: `ploopfs export` raw copy, mount -o ro,noload,loop,offset=1 MiB      (the floor)
  ploopfs mount DISK (default: disk/partN direct_io), and ploopfs mount --page-cache DISK, each
    with a kernel loop mount (mount -o ro,noload,loop) of its part1
  fuse2fs -o ro,norecovery,fakeroot over the default mount's part1  (skipped when not installed)

and measures in alternating rounds (every read's file has its own pages dropped first with
posix_fadvise DONTNEED; the image files stay in the page cache):

* read: the whole of `big` with 1 MiB reads. Target: >= 0.7x the kernel's loop mount, and
  faster than fuse2fs.
* uses, default vs --page-cache: `dd bs=1M` and `dd bs=32K` of part1 (1 GiB), `qemu-img convert`
  of part1 to a null target, `big` through a loop mount of part1, and re-reads (not dropped)
  of part1 and of `big` (--files).
* `find MNT -type f | wc -l` and `du -s MNT`, the kernel's dentry and inode caches dropped before
  each run (drop_caches=2; page cache kept). Target: within 2x fuse2fs.

Needs root, /dev/fuse, mkfs.ext4, sgdisk, qemu-img. Mounts are undone by umount (loop devices
with them) in `finally`; fuse2fs is stopped by PID.
Usage: .venv/bin/python tools/bench/files_bench.py [--workdir DIR] [--rounds 5] [--json OUT]
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
from collections.abc import Callable

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
PART_START = MiB  # part1 starts here, as `ploop init` makes it
BIG = 1 << 30


def sh(*args: str, **kw) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw).stdout


def build(workdir: str, nfiles: int, big_mb: int) -> dict:
    params = {"nfiles": nfiles, "big_mb": big_mb, "v": 2}
    old = reuse_build(workdir, params)
    if old:
        return old
    raw = os.path.join(workdir, "fs.raw")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(raw)
    sh("truncate", "-s", "4G", raw)
    sh("sgdisk", "-n", f"1:{PART_START // 512}:0", "-t", "1:8300", raw)
    mnt = os.path.join(workdir, "build-mnt")
    os.makedirs(mnt, exist_ok=True)
    start, sectors = (int(x) for x in sh("partx", "-b", "-g", "-n", "1", "-o", "START,SECTORS",
                                         raw).split())
    dev = sh("losetup", "-f", "--show", "-o", str(start * 512), "--sizelimit",
             str(sectors * 512), raw).strip()
    try:
        sh("mkfs.ext4", "-q", "-F", "-b", "4096", dev)
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


def read_rate(path: str, size: int | None = None, bs: int = MiB, drop: bool = True) -> float:
    """Bytes/s of reading `path` (its first `size` bytes, else all) in `bs` reads; its own
    page-cache pages dropped first unless `drop` is False (a re-read)."""
    if drop:
        drop_file_cache(path)
    buf = bytearray(bs)
    view = memoryview(buf)
    n = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while size is None or n < size:
            k = f.readinto(view if size is None else view[:min(bs, size - n)])
            if not k:
                break
            n += k
    return n / (time.perf_counter() - t)


def reread_rate(path: str, size: int | None = None) -> float:
    """A second read right after a first (untimed) one: what a cache keeps of it."""
    read_rate(path, size)
    return read_rate(path, size, drop=False)


def qemu_img_rate(path: str, size: int) -> float:
    """`qemu-img convert` of `path` (raw) to qemu's null driver: its read path alone."""
    drop_file_cache(path)
    t = time.perf_counter()
    sh("qemu-img", "convert", "-n", "-f", "raw", path, "--target-image-opts",
       f"driver=null-co,size={size}")
    return size / (time.perf_counter() - t)


def drop_dentries() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def timed_shell(cmd: str) -> float:
    drop_dentries()
    t = time.perf_counter()
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _loop_mount(image: str, mnt: str, offset: int = 0) -> None:
    sh("mount", "-t", "ext4", "-o", f"ro,noload,loop,offset={offset}", image, mnt)


def run(args: argparse.Namespace, workdir: str) -> dict:
    info = build(workdir, args.files, args.big_mb)
    names = ("files", "files_dio", "kernel", "disk", "disk_pc", "loop", "loop_pc", "fuse2fs")
    mnts = {k: os.path.join(workdir, f"mnt-{k}") for k in names}
    for p in mnts.values():
        os.makedirs(p, exist_ok=True)
    procs: list[subprocess.Popen] = []
    mounted: list[str] = []  # unmounted in reverse order
    ct = info["ct"]
    try:
        for key, extra in (("files", ["--files"]), ("files_dio", ["--files", "--direct-io"]),
                           ("disk", []), ("disk_pc", ["--page-cache"])):
            sh(PLOOPFS, "mount", *extra, ct, mnts[key])
            mounted.append(mnts[key])
        _loop_mount(info["exported"], mnts["kernel"], PART_START)
        mounted.append(mnts["kernel"])
        for key, over in (("loop", "disk"), ("loop_pc", "disk_pc")):
            _loop_mount(os.path.join(mnts[over], "part1"), mnts[key])
            mounted.append(mnts[key])
        have_fuse2fs = shutil.which("fuse2fs") is not None
        if have_fuse2fs:
            p = subprocess.Popen(["fuse2fs", os.path.join(mnts["disk"], "part1"), mnts["fuse2fs"],
                                  "-f", "-o", "ro,norecovery,fakeroot"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            for _ in range(200):
                if os.path.ismount(mnts["fuse2fs"]):
                    break
                time.sleep(0.05)
            mounted.append(mnts["fuse2fs"])
        big = {k: os.path.join(mnts[k], "big") for k in ("files", "files_dio", "kernel", "loop",
                                                          "loop_pc", "fuse2fs")}
        part1 = {k: os.path.join(mnts[k], "part1") for k in ("disk", "disk_pc")}
        read_cases = ["files", "files_dio", "kernel"] + (["fuse2fs"] if have_fuse2fs else [])
        for c in [*read_cases, "loop", "loop_pc"]:  # warm the backing files
            read_rate(big[c])
        uses: list[tuple[str, Callable[[], float]]] = []
        for k, tag in (("disk", "default"), ("disk_pc", "--page-cache")):
            uses += [
                (f"dd bs=1M of part1 (1 GiB), {tag}", lambda k=k: read_rate(part1[k], BIG)),
                (f"dd bs=32K of part1 (1 GiB), {tag}",
                 lambda k=k: read_rate(part1[k], BIG, 32 << 10)),
                (f"qemu-img convert of part1, {tag}",
                 lambda k=k: qemu_img_rate(part1[k], os.path.getsize(part1[k]))),
                (f"loop mount of part1: read big, {tag}",
                 lambda k=k: read_rate(big["loop" if k == "disk" else "loop_pc"])),
                (f"re-read of part1 (1 GiB), {tag}", lambda k=k: reread_rate(part1[k], BIG)),
            ]
        uses += [("re-read of big, --files (default)", lambda: reread_rate(big["files"])),
                 ("re-read of big, kernel loop mount", lambda: reread_rate(big["kernel"])),
                 ("cat-size reads (128K) of big, --files (default)",
                  lambda: read_rate(big["files"], bs=128 << 10)),
                 ("cat-size reads (128K) of big, --files --direct-io",
                  lambda: read_rate(big["files_dio"], bs=128 << 10))]
        log("read rounds")
        reads = alternate([(c, lambda c=c: read_rate(big[c])) for c in read_cases], args.rounds)
        log("use rounds")
        used = alternate(uses, args.rounds)
        tree_cases = ["files"] + (["fuse2fs"] if have_fuse2fs else []) + ["kernel"]
        log("find rounds")
        finds = alternate([(c, lambda c=c: timed_shell(
            f"find '{mnts[c]}/tree' -type f | wc -l")) for c in tree_cases], args.rounds)
        log("du rounds")
        dus = alternate([(c, lambda c=c: timed_shell(f"du -s '{mnts[c]}/tree'"))
                         for c in tree_cases], args.rounds)
    finally:
        ours = {mnts[k] for k in ("files", "files_dio", "disk", "disk_pc")}
        for m in reversed(mounted):  # loop mounts (autoclear) before the mounts under them
            if m == mnts["fuse2fs"]:
                subprocess.run(["fusermount3", "-u", m], capture_output=True, check=False)
            elif m in ours:  # retries while a loop device still holds part1
                subprocess.run([PLOOPFS, "umount", m], capture_output=True, check=False)
            else:
                subprocess.run(["umount", m], capture_output=True, check=False)
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    res = {"machine": machine_info(), "params": info["params"], "rounds": args.rounds,
           "read_MBps": {c: Series(c, "B/s", v) for c, v in reads.items()},
           "uses_MBps": {c: Series(c, "B/s", v) for c, v in used.items()},
           "find_s": {c: Series(c, "s", v) for c, v in finds.items()},
           "du_s": {c: Series(c, "s", v) for c, v in dus.items()}}
    return res


def report(res: dict) -> None:
    r, f, d = res["read_MBps"], res["find_s"], res["du_s"]
    print(f"read of a 1 GiB file, its pages dropped first, 1 MiB reads (MB/s, median (min-max), "
          f"{res.get('rounds', '?')} rounds):")
    for c, s in r.items():
        print(f"  {c:10s} {s.fmt(1e6, 0)}")
    per_round = [a / b for a, b in zip(r["files"].samples, r["kernel"].samples, strict=True)]
    ratio = Series("files / kernel", "x", per_round)
    print(f"  --files / kernel = {ratio.fmt(1, 2)} (target >= {TARGETS['read_vs_kernel_min']}) "
          f"{verdict(ratio.median >= TARGETS['read_vs_kernel_min'])}")
    dio = Series("files_dio / kernel", "x",
                 [a / b for a, b in zip(r["files_dio"].samples, r["kernel"].samples, strict=True)])
    print(f"  --files --direct-io / kernel = {dio.fmt(1, 2)}")
    if "fuse2fs" in r:
        q = Series("files / fuse2fs", "x",
                   [a / b for a, b in zip(r["files"].samples, r["fuse2fs"].samples, strict=True)])
        print(f"  --files / fuse2fs = {q.fmt(1, 2)} (target > 1) {verdict(q.median > 1)}")
    print("the ways people read a mount (MB/s, median (min-max)):")
    for c, s in res["uses_MBps"].items():
        print(f"  {c:50s} {s.fmt(1e6, 0)}")
    for name, s in (("find -type f | wc -l", f), ("du -s", d)):
        print(f"{name} over 100,000 files (s):")
        for c, v in s.items():
            print(f"  {c:8s} {v.fmt(1, 2)}")
        if "fuse2fs" in s:
            q = s["files"].median / s["fuse2fs"].median
            print(f"  ploopfs / fuse2fs = {q:.2f} (target <= {TARGETS['tree_vs_fuse2fs_max']}) "
                  f"{verdict(q <= TARGETS['tree_vs_fuse2fs_max'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir")
    p.add_argument("--rounds", type=int, default=5)
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
