#!/usr/bin/env python3
"""Reads through `ploopfs mount` vs qemu-storage-daemon's FUSE export of the same image.

Builds (once per work dir) a 1 GiB raw file of random data, `single.hds` = `qemu-img convert
-O parallels` of it (a single-image v2 disk) and an 8-deep chain (base + 7 deltas written with
ploopfs.volume.writer, each delta overwriting a random share of the clusters in random order,
with the same bytes, so every variant has the raw file's content). Then mounts, all at once:

  ploopfs mount -F single.hds            (default: disk direct_io; + a --page-cache mount)  the product
  ploopfs mount -F chain/ (8 images)      (+ a --page-cache mount)
  qemu-storage-daemon FUSE export of single.hds (default readahead, and one at 1 MiB readahead)
  C libfuse floor (tools/bench/cfuse_floor.c: pread + fuse_reply_buf, keep_cache / direct_io)
  bare pyfuse3 servers (read = constant buffer; read = os.pread)      (tools/bench/_fuse_servers.py)
  instrumented ploopfs (perf_counter_ns probes, same code and options)

checks that every mount reads the raw file's SHA-256, and measures in alternating rounds:

* sequential: `dd if=FILE of=/dev/null bs=1M`, the FUSE file's page cache dropped before each
  run (posix_fadvise DONTNEED on the FUSE file; the backing files stay warm); the daemon's
  rchar is checked to have grown by the whole disk, so no run is served from the page cache;
  plus `dd` of the raw copy (page cache: the limit), and `pcfill`: writing 1 GiB into a new
  tmpfs file, no FUSE at all, which is what filling fresh page-cache memory costs this machine
  in that round (every page-cache mode pays it once per pass; docs/mount.md).
* random: 4 KiB O_DIRECT reads at queue depth 1 (fio psync, or a Python O_DIRECT loop without
  fio) for a fixed time: IOPS, µs per request, daemon CPU µs per request.

Then reports where the time of one request goes (the instrumented server's probes, the ladder
C floor -> bare pyfuse3 -> + pread -> ploopfs, and in-process micro-benchmarks of the lookup).

Variance: every case is reported as median (min-max). When a case's rounds differ by more than
2x, its median is shown only with the reason the recorded evidence names (the daemon read its
image from disk, the daemon's CPU per unit grew: fresh page-cache memory, the load), else it is
withheld ("-") and the report says that the cause was not found.

Targets (issue #20): default mount sequential median >= 3x qsd and every round >= 2x qsd; random
IOPS >= 1.0x qsd; 8-deep chain <= 10 % slower than 1 image in every mode. Needs root, /dev/fuse,
qemu-img, qemu-storage-daemon, a C compiler and libfuse3-dev (the C floor is skipped without
them); fio for the random case (else a Python O_DIRECT loop). Mounts and servers are stopped by
PID in `finally`.

Usage: .venv/bin/python tools/bench/mount_bench.py [--workdir DIR] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
    save_build,
    verdict,
)

from ploopfs.fuse.mount import fusermount_u, is_mountpoint, mount_device, set_readahead
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"seq_vs_qsd_median": 3.0, "seq_vs_qsd_every_round": 2.0, "rand_vs_qsd_min": 1.0,
           "chain_slowdown_max": 0.10}
SPREAD_MAX = 2.0  # a case whose rounds differ more than this needs a named reason for its median
CHAIN_FRACTIONS = "0.30,0.20,0.15,0.10,0.10,0.05,0.05"
START_TIMEOUT = 60.0


# -- building the images --------------------------------------------------------------------------
def build(workdir: str, size: int, fractions: list[float], seed: int) -> dict:
    """disk.raw (random), single.hds (qemu-img convert -O parallels), chain/level0..7.hds +
    DiskDescriptor.xml, all with the same virtual content; reused when the parameters match."""
    params = {"size": size, "fractions": fractions, "seed": seed, "v": 1}
    old = reuse_build(workdir, params)
    if old:
        log(f"mount_bench: reusing the images in {workdir}")
        return old
    t0 = time.perf_counter()
    raw = os.path.join(workdir, "disk.raw")
    rng = np.random.default_rng(seed)
    h = hashlib.sha256()
    with open(raw, "wb") as f:
        for _ in range(0, size, 8 * MiB):
            chunk = rng.bytes(8 * MiB)
            h.update(chunk)
            f.write(chunk)
        os.fsync(f.fileno())
    single = os.path.join(workdir, "single.hds")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(single)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, single], check=True)
    cdir = os.path.join(workdir, "chain")
    shutil.rmtree(cdir, ignore_errors=True)
    os.makedirs(cdir)
    cluster = MiB
    n = size // cluster
    files, per_level = [], []
    with open(raw, "rb") as src:
        for level, frac in enumerate([1.0, *fractions]):
            name = f"level{level}.hds"
            files.append(name)
            order = np.arange(n) if level == 0 else rng.choice(n, max(1, round(frac * n)), replace=False)
            with ImageWriter.create(os.path.join(cdir, name), size, cluster) as w:
                for v in order.tolist():
                    w.write_cluster(v, os.pread(src.fileno(), cluster, v * cluster))
            per_level.append(int(order.size))
    write_descriptor(os.path.join(cdir, "DiskDescriptor.xml"), chain_descriptor(files, size, cluster))
    info = {"params": params, "sha256": h.hexdigest(), "chain_clusters_written_per_level": per_level,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    save_build(workdir, info)
    log(f"mount_bench: built disk.raw, single.hds and an {len(files)}-image chain in "
        f"{info['build_seconds']} s")
    return info


def warm(paths: list[str]) -> None:
    """Read every backing file once so that the page cache holds it. Done again, untimed, before
    every sample: this machine pages out page cache left idle for a minute (DAMON), so a case
    would otherwise read part of its images from disk, more of them the more images it has."""
    buf = bytearray(8 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# -- servers ----------------------------------------------------------------------------------------
@dataclass
class Server:
    key: str
    label: str
    proc: subprocess.Popen
    mountpoint: str  # a directory, or a regular file for qsd
    path: str  # the file to read
    verify: bool = True  # serves the disk's content (not the constant-buffer server)
    ctl: str | None = None  # instrumented: the control file
    info: dict = field(default_factory=dict)
    backing: list[str] = field(default_factory=list)  # the files it reads, kept warm

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_ready(proc: subprocess.Popen, mountpoint: str, pid_file: str | None, logf: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    real = os.path.realpath(mountpoint)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(logf, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"server for {mountpoint} exited with {proc.returncode}: {tail}")
        if is_mountpoint(real) and (pid_file is None or os.path.exists(pid_file)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server for {mountpoint} not ready after {START_TIMEOUT:.0f} s")


class Servers:
    """Starts servers and always stops them, by PID, in reverse order (see close())."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.mnt = os.path.join(workdir, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        self.all: dict[str, Server] = {}

    def _spawn(self, key: str, argv: list[str], mountpoint: str, pid_file: str | None) -> subprocess.Popen:
        logf = os.path.join(self.mnt, f"{key}.log")
        with open(logf, "w") as lf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, mountpoint, pid_file, logf)
        except BaseException:
            self._stop(proc, mountpoint)
            raise
        return proc

    def _dir(self, key: str) -> str:
        d = os.path.join(self.mnt, key)
        os.makedirs(d, exist_ok=True)
        if is_mountpoint(os.path.realpath(d)):
            raise RuntimeError(f"{d} is still mounted (a previous run?); fusermount3 -u it first")
        return d

    def add(self, s: Server) -> Server:
        self.all[s.key] = s
        bdi = mount_device(os.path.realpath(s.mountpoint))
        with contextlib.suppress(OSError), open(f"/sys/class/bdi/{bdi}/read_ahead_kb") as f:
            s.info["read_ahead_kb"] = int(f.read())
        return s

    def ploopfs(self, key: str, label: str, source: str, extra: list[str] | None = None) -> Server:
        d = self._dir(key)
        pf = os.path.join(self.mnt, f"{key}.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pf)
        argv = [sys.executable, "-m", "ploopfs", "mount", source, d, "-F", "--pid-file", pf,
                *(extra or [])]
        s = Server(key, label, self._spawn(key, argv, d, pf), d, os.path.join(d, "disk"))
        s.info["page_cache"] = "--page-cache" in (extra or [])
        return self.add(s)

    def instrumented(self, key: str, label: str, source: str, extra: list[str] | None = None) -> Server:
        d = self._dir(key)
        pf = os.path.join(self.mnt, f"{key}.pid")
        ctl = os.path.join(self.mnt, f"{key}.ctl")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pf)
        extra = extra or []
        argv = [sys.executable, os.path.join(HERE, "_fuse_servers.py"), "instrumented", source, d,
                "--pid-file", pf, "--ctl", ctl, *extra]
        return self.add(Server(key, label, self._spawn(key, argv, d, pf), d, os.path.join(d, "disk"),
                               ctl=None if "--no-probes" in extra else ctl))

    def bare(self, key: str, label: str, mode: str, raw: str, size: int,
             extra: list[str] | None = None) -> Server:
        d = self._dir(key)
        pf = os.path.join(self.mnt, f"{key}.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pf)
        tail = [str(size)] if mode == "bare-const" else [raw]
        argv = [sys.executable, os.path.join(HERE, "_fuse_servers.py"), mode, d, *tail, "--pid-file", pf,
                *(extra or [])]
        return self.add(Server(key, label, self._spawn(key, argv, d, pf), d, os.path.join(d, "disk"),
                               verify=mode != "bare-const"))

    def qsd(self, key: str, label: str, image: str, readahead_kb: int = 0) -> Server:
        f = os.path.join(self.mnt, f"{key}.img")
        if is_mountpoint(os.path.realpath(f)):
            raise RuntimeError(f"{f} is still mounted (a previous run?); fusermount3 -u it first")
        open(f, "w").close()
        argv = ["qemu-storage-daemon",
                "--blockdev", f"driver=file,node-name=file,filename={image},read-only=on",
                "--blockdev", "driver=parallels,node-name=fmt,file=file,read-only=on",
                "--export", f"type=fuse,id=exp,node-name=fmt,mountpoint={f},writable=off"]
        s = Server(key, label, self._spawn(key, argv, f, None), f, f)
        s.info["page_cache"] = True
        if readahead_kb:
            os.stat(f)  # FUSE_INIT done: the kernel sets the BDI readahead while handling it
            set_readahead(os.path.realpath(f), readahead_kb)
        return self.add(s)

    def cfloor(self, key: str, label: str, exe: str, raw: str, direct_io: bool) -> Server:
        d = self._dir(key)
        argv = [exe, raw, d, "1" if direct_io else "0"]
        s = Server(key, label, self._spawn(key, argv, d, None), d, os.path.join(d, "disk"))
        s.info["page_cache"] = not direct_io
        # stat once so that FUSE_INIT is done, then the same readahead as ploopfs sets
        os.stat(s.path)
        set_readahead(os.path.realpath(d), 1024)
        return self.add(s)

    @staticmethod
    def _stop(proc: subprocess.Popen, mountpoint: str) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        real = os.path.realpath(mountpoint)
        for lazy in (False, True):
            if not is_mountpoint(real):
                break
            fusermount_u(real, lazy=lazy)
            time.sleep(0.2)

    def close(self) -> None:
        for s in reversed(list(self.all.values())):
            try:
                self._stop(s.proc, s.mountpoint)
            except Exception as e:  # keep stopping the others
                log(f"mount_bench: stopping {s.key} (pid {s.pid}): {e}")
        self.all.clear()


def build_cfloor(workdir: str) -> str | None:
    exe = os.path.join(workdir, "cfuse_floor")
    src = os.path.join(HERE, "cfuse_floor.c")
    try:
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                               text=True, check=True).stdout.split()
        subprocess.run(["cc", "-O2", "-o", exe, src, *flags], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        log(f"mount_bench: C floor skipped (cannot build {src}: {e})")
        return None
    return exe


# -- measurements -----------------------------------------------------------------------------------
def proc_counters(pid: int) -> tuple[int, float]:
    """(rchar bytes, CPU seconds user+system) of a process, all its threads."""
    rchar, _disk, cpu = proc_io(pid)
    return rchar, cpu


def proc_io(pid: int) -> tuple[int, int, float]:
    """(rchar bytes, bytes read from storage, CPU seconds user+system) of a process: read_bytes
    counts what its reads had to fetch from the disk, i.e. image pages that were not cached."""
    with open(f"/proc/{pid}/io") as f:
        io = {k: int(v) for k, v in (line.split(":") for line in f)}
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return io["rchar"], io["read_bytes"], (int(parts[11]) + int(parts[12])) / ticks


def cpu_mark() -> tuple[float, float, float]:
    """(CPU-seconds the whole machine was busy, steal included; CPU-seconds of our finished
    children; wall time), to tell how much of the machine other processes took meanwhile."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), ru.ru_utime + ru.ru_stime, \
        time.perf_counter()


def others_cpus(m0: tuple[float, float, float], own_cpu_s: float) -> float:
    """CPUs kept busy by other processes (and the host's steal) since mark m0, on average: the
    machine's busy time minus our children's (dd, fio) and the daemon's (own_cpu_s)."""
    m1 = cpu_mark()
    wall = max(m1[2] - m0[2], 1e-9)
    return max(0.0, (m1[0] - m0[0]) - (m1[1] - m0[1]) - own_cpu_s) / wall


def drop_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


DD_RE = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.M)


def dd_seconds(path: str) -> tuple[int, float]:
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True,
                       env={**os.environ, "LC_ALL": "C"}, timeout=600, check=True)
    m = DD_RE.search(r.stderr)
    if not m:
        raise RuntimeError(f"cannot parse dd output: {r.stderr!r}")
    return int(m.group(1)), float(m.group(2))


@dataclass
class Sample:
    value: float  # bytes/s or IOPS
    daemon_cpu_s: float = 0.0
    daemon_read: int = 0
    requests: float = 0.0
    extra: dict = field(default_factory=dict)
    daemon_disk_read: int = 0  # bytes the daemon's reads fetched from storage (not cached)
    load: float = 0.0  # 1-minute load average after the sample
    others: float = 0.0  # CPUs other processes kept busy during the sample (see others_cpus)


class Recorder:
    """Everything measured per case and round, besides the main value."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self.load: list[float] = []

    def add(self, key: str, s: Sample) -> float:
        self.samples.setdefault(key, []).append(s)
        s.load = os.getloadavg()[0]
        self.load.append(s.load)
        return s.value


def with_probe(s: Server | None, fn: Callable[[], Sample]) -> Sample:
    """Run fn; for an instrumented server, reset its probes first and collect them after."""
    if s is None or s.ctl is None:
        return fn()
    out = os.path.join(os.path.dirname(s.ctl), f"{s.key}.probe.json")
    _probe_dump(s, out)  # discard what came before (warm-up, stat, …)
    sample = fn()
    sample.extra["probe"] = _probe_dump(s, out)
    return sample


def _probe_dump(s: Server, out: str) -> dict:
    assert s.ctl
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    with open(s.ctl, "w") as f:
        f.write(out)
    os.kill(s.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not os.path.exists(out):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{s.key}: no probe summary after SIGUSR1")
        time.sleep(0.01)
    with open(out) as f:
        return json.load(f)


def seq_sample(s: Server | None, path: str, size: int) -> Sample:
    """One `dd bs=1M` of the whole file; for a server, its page cache dropped first and its
    rchar checked afterwards."""
    if s is None:
        m0 = cpu_mark()
        n, secs = dd_seconds(path)
        return Sample(n / secs, others=others_cpus(m0, 0.0))
    drop_page_cache(path)

    def run() -> Sample:
        r0, d0, c0 = proc_io(s.pid)
        m0 = cpu_mark()
        n, secs = dd_seconds(path)
        r1, d1, c1 = proc_io(s.pid)
        others = others_cpus(m0, c1 - c0)
        if n != size:
            raise RuntimeError(f"{s.key}: dd read {n} bytes, expected {size}")
        if r1 - r0 < 0.9 * size:
            raise RuntimeError(f"{s.key}: the daemon read only {r1 - r0} bytes for {size}: the page "
                               "cache was not dropped, the figure would be meaningless")
        return Sample(n / secs, daemon_cpu_s=c1 - c0, daemon_read=r1 - r0, daemon_disk_read=d1 - d0,
                      others=others)

    try:
        return with_probe(s, run)
    finally:  # the mounts' caches must not pile up (memory pressure would evict the images)
        drop_page_cache(path)


def pcfill_sample(size: int) -> Sample:
    """Writing `size` bytes into a new tmpfs file (no FUSE, no disk): what bringing fresh
    memory into the page cache costs this machine now, the step every page-cache pass of a
    FUSE file repeats. Removed right after."""
    path = os.path.join("/dev/shm", f"ploopfs-bench-pcfill-{os.getpid()}")
    buf = b"\xa5" * MiB
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        m0 = cpu_mark()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(size // MiB):
            os.write(fd, buf)
        secs = time.perf_counter() - t0
        others = others_cpus(m0, time.process_time() - c0)
    finally:
        os.close(fd)
        os.unlink(path)
    return Sample(size / secs, others=others)


def fio_randread(path: str, seconds: float, bs: int) -> dict:
    r = subprocess.run(
        ["fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={bs}", "--direct=1",
         "--ioengine=psync", "--numjobs=1", f"--runtime={seconds}", "--time_based",
         "--invalidate=0", "--norandommap", "--output-format=json"],
        capture_output=True, text=True, timeout=seconds + 120, check=True)
    j = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["read"]
    return {"iops": j["iops"], "ios": j["total_ios"], "clat_mean_us": j["clat_ns"]["mean"] / 1e3,
            "lat_mean_us": j["lat_ns"]["mean"] / 1e3}


def py_randread(path: str, seconds: float, bs: int) -> dict:
    """fio's job without fio: O_DIRECT preads of `bs` at random aligned offsets, queue depth 1."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, bs)  # page-aligned
    try:
        blocks = os.fstat(fd).st_size // bs
        rnd = random.Random(1)
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while True:
            for _ in range(256):
                os.preadv(fd, [buf], rnd.randrange(blocks) * bs)
            n += 256
            t = time.perf_counter()
            if t >= end:
                break
    finally:
        buf.close()
        os.close(fd)
    return {"iops": n / (t - t0), "ios": n}


def rand_sample(s: Server, seconds: float, use_fio: bool) -> Sample:
    def run() -> Sample:
        r0, d0, c0 = proc_io(s.pid)
        m0 = cpu_mark()
        p0 = time.process_time()
        res = (fio_randread if use_fio else py_randread)(s.path, seconds, 4096)
        r1, d1, c1 = proc_io(s.pid)
        others = others_cpus(m0, c1 - c0 + time.process_time() - p0)
        return Sample(res["iops"], daemon_cpu_s=c1 - c0, daemon_read=r1 - r0, requests=res["ios"],
                      extra=res, daemon_disk_read=d1 - d0, others=others)

    return with_probe(s, run)


def verify(servers: list[Server], sha: str) -> dict[str, float]:
    """SHA-256 of every serving mount's file must be the raw file's (a wrong read cannot pass as a
    fast one); this is also the warm-up. Returns seconds per server."""
    out = {}
    for s in servers:
        if not s.verify:
            continue
        t0 = time.perf_counter()
        h = hashlib.sha256()
        with open(s.path, "rb", buffering=0) as f:
            while chunk := f.read(MiB):
                h.update(chunk)
        if h.hexdigest() != sha:
            raise SystemExit(f"mount_bench: CONTENT MISMATCH on {s.key} ({s.path}): "
                             f"{h.hexdigest()} != {sha}; refusing to benchmark")
        out[s.key] = round(time.perf_counter() - t0, 2)
    return out


# -- in-process micro-benchmarks (no FUSE) ----------------------------------------------------------
def micro(source: str, size: int, n: int = 20000) -> dict[str, float]:
    """ns per call, median of 5 batches, of the pieces of ploopfs' read path for one 4 KiB read
    and one 1 MiB read at random aligned offsets, page cache warm."""
    disk = open_source(source)
    vol = disk.volume()
    fd = vol.images[0].fd
    rnd = random.Random(7)
    offs4 = [rnd.randrange(size // 4096) * 4096 for _ in range(n)]
    offs1m = [rnd.randrange(size // MiB) * MiB for _ in range(n // 20)]
    c = vol.cluster_size
    data_off = next(iter(vol.segments(0, 4096))).offset  # where the image's data starts
    cases: dict[str, tuple[Callable[[int], object], list[int]]] = {
        "BlockMap.find (4 KiB)": (lambda o: vol.map.find(o // c), offs4),
        "Volume.segments (4 KiB, listed)": (lambda o: list(vol.segments(o, 4096)), offs4),
        "bytearray(4096)": (lambda o: bytearray(4096), offs4),
        "os.pread 4 KiB of the image": (lambda o: os.pread(fd, 4096, data_off + o), offs4),
        "Volume.read 4 KiB": (lambda o: vol.read(o, 4096), offs4),
        "bytearray(1 MiB)": (lambda o: bytearray(MiB), offs1m),
        "os.pread 1 MiB of the image": (lambda o: os.pread(fd, MiB, data_off + o), offs1m),
        "Volume.read 1 MiB": (lambda o: vol.read(o, MiB), offs1m),
    }
    out = {}
    try:
        for name, (fn, offs) in cases.items():
            batches = []
            for _ in range(5):
                t0 = time.perf_counter_ns()
                for o in offs:
                    fn(o)
                batches.append((time.perf_counter_ns() - t0) / len(offs))
            out[name] = sorted(batches)[2]
    finally:
        disk.close()
    return out


# -- the run ----------------------------------------------------------------------------------------
# The one image and the chain of each mode side by side: what runs just before a case (a page-
# cache case freeing its 1 GiB, say) weighs on it, so the pairs compared share neighbours.
SEQ_CASES = ["raw", "pcfill", "pfs_pc", "ch8_pc", "pfs", "ch8", "qsd", "qsd_ra", "cfl", "cfl_dio",
             "ipfs"]
RAND_CASES = ["pfs", "ch8", "qsd", "cfl", "bare_const", "bare_pread", "ipfs"]
SEQ_VARIANTS: list[str] = []
VARIANTS = ["pfs_stock", "bare_const_t1", "bare_const_fast"]
PAGE_CACHE = "--page-cache"


def start_all(sv: Servers, workdir: str, size: int, keys: set[str]) -> None:
    raw = os.path.join(workdir, "disk.raw")
    single = os.path.join(workdir, "single.hds")
    chain = os.path.join(workdir, "chain")
    starters: dict[str, Callable[[], object]] = {
        "pfs": lambda: sv.ploopfs("pfs", "ploopfs mount (default: disk direct_io)", single),
        "pfs_pc": lambda: sv.ploopfs("pfs_pc", "ploopfs mount --page-cache (ra 1024)", single,
                                     [PAGE_CACHE]),
        "ch8": lambda: sv.ploopfs("ch8", "ploopfs mount, 8-deep chain", chain),
        "ch8_pc": lambda: sv.ploopfs("ch8_pc", "ploopfs mount --page-cache, 8-deep chain", chain,
                                     [PAGE_CACHE]),
        "qsd": lambda: sv.qsd("qsd", "qemu-storage-daemon FUSE export", single),
        "qsd_ra": lambda: sv.qsd("qsd_ra", "qemu-storage-daemon FUSE export, read_ahead_kb=1024",
                                 single, readahead_kb=1024),
        "bare_const": lambda: sv.bare("bare_const", "bare pyfuse3, read = constant buffer", "bare-const",
                                      raw, size),
        "bare_pread": lambda: sv.bare("bare_pread", "bare pyfuse3, read = os.pread", "bare-pread", raw,
                                      size),
        # the probes time the trio path: the instrumented server runs without the poll shortcut
        "ipfs": lambda: sv.instrumented("ipfs", "ploopfs mount, instrumented (no poll shortcut)",
                                        single),
        # --variants (tools/bench/_fuse_servers.py), not the product
        "pfs_stock": lambda: sv.instrumented("pfs_stock", "ploopfs without the poll shortcut", single,
                                             ["--no-probes", "--no-fast-wait"]),
        "bare_const_t1": lambda: sv.bare("bare_const_t1", "bare pyfuse3 constant, max_tasks=1",
                                         "bare-const", raw, size, ["--max-tasks", "1"]),
        "bare_const_fast": lambda: sv.bare("bare_const_fast", "bare pyfuse3 constant, max_tasks=1 + poll",
                                           "bare-const", raw, size, ["--max-tasks", "1", "--fast-wait"]),
    }
    for key, start in starters.items():
        if key in keys:
            start()
    if keys & {"cfl", "cfl_dio"}:
        exe = build_cfloor(workdir)
        if exe and "cfl" in keys:
            sv.cfloor("cfl", "C libfuse floor (pread, keep_cache, ra 1024)", exe, raw, direct_io=False)
        if exe and "cfl_dio" in keys:
            sv.cfloor("cfl_dio", "C libfuse floor (pread, direct_io)", exe, raw, direct_io=True)


def run(args: argparse.Namespace, workdir: str) -> dict:
    fractions = [float(x) for x in args.chain_fractions.split(",")]
    info = build(workdir, args.size, fractions, args.seed)
    raw = os.path.join(workdir, "disk.raw")
    chain = os.path.join(workdir, "chain")
    warm([raw, os.path.join(workdir, "single.hds"),
          *(os.path.join(chain, f) for f in sorted(os.listdir(chain)) if f.endswith(".hds"))])
    use_fio = shutil.which("fio") is not None and not args.no_fio
    if not use_fio:
        log("mount_bench: fio not found, random reads by a Python O_DIRECT loop")
    rec = Recorder()
    sv = Servers(workdir)
    load0 = os.getloadavg()
    seq_cases = [k for k in SEQ_CASES + (SEQ_VARIANTS if args.variants else [])
                 if not args.cases or k in args.cases]
    rand_cases = [k for k in RAND_CASES + (VARIANTS if args.variants else [])
                  if not args.cases or k in args.cases]
    try:
        start_all(sv, workdir, args.size, set(seq_cases + rand_cases))
        servers = sv.all
        images = {"chain": [os.path.join(chain, f) for f in sorted(os.listdir(chain))
                            if f.endswith(".hds")],
                  "single": [os.path.join(workdir, "single.hds")], "raw": [raw]}
        for k, srv in servers.items():
            srv.backing = images["chain" if k.startswith("ch8") else
                                 "raw" if k.startswith(("cfl", "bare")) else "single"]
        t0 = time.perf_counter()
        verify_s = verify(list(servers.values()), info["sha256"])
        log(f"mount_bench: {len(servers)} mounts serve the raw file's sha256 "
            f"({time.perf_counter() - t0:.1f} s)")

        seq_keys = [k for k in seq_cases if k in ("raw", "pcfill") or k in servers]

        def seq_one(k: str) -> Sample:
            if k == "pcfill":
                return pcfill_sample(args.size)
            if k in servers:
                warm(servers[k].backing)
            return seq_sample(servers.get(k), raw if k == "raw" else servers[k].path, args.size)

        seq = alternate(
            [(k, lambda k=k: rec.add("seq:" + k, seq_one(k))) for k in seq_keys], args.rounds,
            on_sample=lambda k, r, v: log(f"  seq  round {r + 1} {k:10s} {v / 1e6:8.0f} MB/s"))
        rand_keys = [k for k in rand_cases if k in servers]
        rnd = alternate(
            [(k, lambda k=k: rec.add("rand:" + k, (warm(servers[k].backing),
                                                    rand_sample(servers[k], args.rand_seconds,
                                                                use_fio))[1]))
             for k in rand_keys], args.rounds,
            on_sample=lambda k, r, v: log(f"  rand round {r + 1} {k:10s} {v:8.0f} IOPS"))
        labels = {k: s.label for k, s in servers.items()} | {
            "raw": "raw copy, dd (page cache)",
            "pcfill": "tmpfs write 1 GiB (fresh page cache, no FUSE)"}
        server_info = {k: {"pid": s.pid, **s.info} for k, s in servers.items()}
    finally:
        sv.close()
    micro_ns = micro(os.path.join(workdir, "single.hds"), args.size)
    return summarise(args, info, workdir, seq, rnd, rec, labels, server_info, verify_s, micro_ns,
                     use_fio, load0)


def _med(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _probe_median(samples: list[Sample]) -> dict | None:
    probes = [s.extra["probe"] for s in samples if "probe" in s.extra]
    if not probes:
        return None
    fields = [k for k in probes[0] if isinstance(probes[0][k], dict) and "mean_us" in probes[0][k]]
    out: dict = {"requests_per_sample": [p["requests"] for p in probes], "sizes": probes[-1]["sizes"]}
    for k in fields:
        out[k] = {m: _med([p[k][m] for p in probes if k in p])
                  for m in ("mean_us", "median_us", "p10_us", "p90_us")}
    return out


def spread_reasons(kind: str, key: str, samples: list[Sample], page_cache: bool, size: int,
                   cpus: int) -> tuple[float, list[str]]:
    """How far apart a case's rounds are (max / min) and, when more than SPREAD_MAX, the
    reasons the recorded evidence names for it; an empty list means none was found."""
    vals = [x.value for x in samples]
    spread = max(vals) / min(vals) if min(vals) > 0 else float("inf")
    if spread <= SPREAD_MAX or len(samples) < 2:
        return spread, []
    ordered = sorted(samples, key=lambda x: x.value)
    half = len(ordered) // 2
    slow, fast = ordered[:max(1, half)], ordered[-max(1, half):]
    why: list[str] = []
    if key == "pcfill":
        why.append("this row is the machine's own cost of fresh page-cache memory, no FUSE: it "
                   "varies by itself")
    per = (lambda x: x.daemon_cpu_s / (x.daemon_read / (1 << 30)) if x.daemon_read else 0.0) \
        if kind == "seq" else (lambda x: x.daemon_cpu_s / x.requests if x.requests else 0.0)
    read = (lambda x: size) if kind == "seq" else (lambda x: x.requests * 4096)
    cold = [x for x in slow if x.daemon_disk_read > 0.05 * read(x)]
    if cold:
        mib = sum(x.daemon_disk_read for x in cold) / MiB
        why.append(f"the daemon read {mib:.0f} MiB of its images from disk in {len(cold)} slow "
                   "round(s): evicted from the page cache since the warm-up")
    cs, cf = _med([per(x) for x in slow]), _med([per(x) for x in fast])
    if cf > 0 and cs / cf >= 1.4:
        unit = "GiB" if kind == "seq" else "request"
        what = (": copying into fresh page-cache memory costs more (see the tmpfs row)"
                if page_cache and kind == "seq" else "")
        why.append(f"the daemon's CPU per {unit} is {cs / cf:.1f}x higher in the slow rounds{what}")
    os_, of = _med([x.others for x in slow]), _med([x.others for x in fast])
    if os_ >= 0.5 and os_ >= 1.3 * of + 0.2:
        why.append(f"other processes kept {os_:.1f} of {cpus} CPUs busy in the slow rounds "
                   f"against {of:.1f} in the fast ones")
    return spread, why


def summarise(args: argparse.Namespace, info: dict, workdir: str, seq: dict, rnd: dict, rec: Recorder,
              labels: dict, server_info: dict, verify_s: dict, micro_ns: dict, use_fio: bool,
              load0: tuple[float, float, float]) -> dict:
    seq_series = {k: Series(labels[k], "B/s", v) for k, v in seq.items()}
    rand_series = {k: Series(labels[k], "IOPS", v) for k, v in rnd.items()}
    ratios: dict[str, Series] = {}

    def ratio(name: str, a: dict, ka: str, kb: str) -> None:
        if ka in a and kb in a:
            ratios[name] = Series(name, "x", ratio_series(a[ka], a[kb]))

    ratio("seq ploopfs / qsd", seq, "pfs", "qsd")
    ratio("seq ploopfs --page-cache / qsd", seq, "pfs_pc", "qsd")
    ratio("seq ploopfs / qsd ra1024", seq, "pfs", "qsd_ra")
    ratio("seq ploopfs / --page-cache", seq, "pfs", "pfs_pc")
    ratio("seq chain8 / 1 image", seq, "ch8", "pfs")
    ratio("seq chain8 / 1 image, --page-cache", seq, "ch8_pc", "pfs_pc")
    ratio("seq ploopfs / raw dd", seq, "pfs", "raw")
    ratio("seq ploopfs / C floor direct_io", seq, "pfs", "cfl_dio")
    ratio("seq ploopfs --page-cache / C floor keep_cache", seq, "pfs_pc", "cfl")
    ratio("seq ploopfs --page-cache / tmpfs fill", seq, "pfs_pc", "pcfill")
    ratio("seq C floor keep_cache / tmpfs fill", seq, "cfl", "pcfill")
    ratio("seq instrumented / ploopfs", seq, "ipfs", "pfs")
    ratio("rand ploopfs / qsd", rnd, "pfs", "qsd")
    ratio("rand chain8 / 1 image", rnd, "ch8", "pfs")
    ratio("rand ploopfs / C floor", rnd, "pfs", "cfl")
    ratio("rand instrumented / ploopfs", rnd, "ipfs", "pfs")
    ratio("rand ploopfs / without poll shortcut", rnd, "pfs", "pfs_stock")
    ratio("rand without poll shortcut / qsd", rnd, "pfs_stock", "qsd")
    for k in ("bare_const_t1", "bare_const_fast"):
        ratio(f"rand {k} / bare_const", rnd, k, "bare_const")

    # Load-robust view of the random case: daemon CPU per request, qsd's over ours, per round
    # (a daemon that needs less CPU per request loses less when the cores are shared).
    cpu_req = {k: [x.daemon_cpu_s / x.requests for x in rec.samples.get("rand:" + k, []) if x.requests]
               for k in ("pfs", "qsd", "pfs_stock")}
    for k in ("pfs", "pfs_stock"):
        if cpu_req[k] and len(cpu_req[k]) == len(cpu_req["qsd"]):
            name = f"rand CPU/request: qsd / {'ploopfs' if k == 'pfs' else k}"
            ratios[name] = Series(name, "x", ratio_series(cpu_req["qsd"], cpu_req[k]))

    cpus = os.cpu_count() or 1
    per_case: dict[str, dict] = {}
    for key, samples in rec.samples.items():
        kind, k = key.split(":", 1)
        d: dict = {}
        if kind == "seq" and k not in ("raw", "pcfill"):
            d["daemon_cpu_s_per_GiB"] = _med([s.daemon_cpu_s / (s.daemon_read / (1 << 30))
                                              for s in samples if s.daemon_read])
            d["daemon_read_per_run"] = _med([s.daemon_read for s in samples])
        if kind == "rand":
            d["us_per_request"] = _med([1e6 / s.value for s in samples])
            d["daemon_cpu_us_per_request"] = _med([s.daemon_cpu_s * 1e6 / s.requests for s in samples
                                                   if s.requests])
            if "clat_mean_us" in samples[0].extra:
                d["fio_clat_mean_us"] = _med([s.extra["clat_mean_us"] for s in samples])
        d["daemon_disk_read_MiB"] = [round(s.daemon_disk_read / MiB, 1) for s in samples]
        d["load"] = [round(s.load, 2) for s in samples]
        d["others_cpus"] = [round(s.others, 2) for s in samples]
        page_cache = k == "pcfill" or bool(server_info.get(k, {}).get("page_cache"))
        spread, why = spread_reasons(kind, k, samples, page_cache, args.size, cpus)
        d["spread"] = spread
        d["spread_reasons"] = why
        d["median_withheld"] = spread > SPREAD_MAX and not why
        pm = _probe_median(samples)
        if pm:
            d["probe"] = pm
        per_case[key] = d

    def met(name: str, ok: Callable[[Series], bool]) -> dict:
        r = ratios.get(name)
        return {"median": r.median if r else None, "min": r.lo if r else None,
                "met": bool(r and ok(r))}

    chain_ok = 1 - TARGETS["chain_slowdown_max"]
    targets = {
        f"seq ploopfs / qsd: median >= {TARGETS['seq_vs_qsd_median']:g}": met(
            "seq ploopfs / qsd", lambda r: r.median >= TARGETS["seq_vs_qsd_median"]),
        f"seq ploopfs / qsd: every round >= {TARGETS['seq_vs_qsd_every_round']:g}": met(
            "seq ploopfs / qsd", lambda r: r.lo >= TARGETS["seq_vs_qsd_every_round"]),
        f"rand ploopfs / qsd >= {TARGETS['rand_vs_qsd_min']:g}": met(
            "rand ploopfs / qsd", lambda r: r.median >= TARGETS["rand_vs_qsd_min"]),
        f"seq chain8 / 1 image >= {chain_ok:g}": met("seq chain8 / 1 image",
                                                     lambda r: r.median >= chain_ok),
        f"seq chain8 / 1 image, --page-cache >= {chain_ok:g}": met(
            "seq chain8 / 1 image, --page-cache", lambda r: r.median >= chain_ok),
        f"rand chain8 / 1 image >= {chain_ok:g}": met("rand chain8 / 1 image",
                                                      lambda r: r.median >= chain_ok),
    }
    return {
        "bench": "mount_bench",
        "machine": {**machine_info(), "loadavg_at_start": load0, "loadavg_at_end": os.getloadavg(),
                    "loadavg_during": [min(rec.load), _med(rec.load), max(rec.load)]},
        "setup": {**info, "workdir": workdir, "rounds": args.rounds, "rand_seconds": args.rand_seconds,
                  "random_reader": "fio psync 4k direct=1 QD1" if use_fio else "python O_DIRECT loop",
                  "servers": server_info, "verify_seconds": verify_s},
        "labels": labels,
        "seq_bytes_per_s": seq_series,
        "rand_iops": rand_series,
        "ratios": ratios,
        "per_case": per_case,
        "micro_ns": micro_ns,
        "targets": targets,
    }


# -- the report -------------------------------------------------------------------------------------
def _cell(ser: Series, d: dict, scale: float, digits: int) -> str:
    """median (min–max), the median replaced by "—" when the rounds differ more than
    SPREAD_MAX and nothing recorded says why."""
    if d.get("median_withheld"):
        return f"— ({ser.lo / scale:.{digits}f}–{ser.hi / scale:.{digits}f})"
    return ser.fmt(scale, digits)


def report(res: dict) -> None:
    m, s = res["machine"], res["setup"]
    print(f"mount_bench: {s['params']['size'] / MiB:.0f} MiB disk, {s['rounds']} alternating rounds, "
          f"random {s['rand_seconds']} s per sample ({s['random_reader']}); load average "
          f"{m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_during'][0]:.2f}–"
          f"{m['loadavg_during'][2]:.2f} during, on {m['cpus']} CPUs")
    ra = {k: v.get("read_ahead_kb") for k, v in s["servers"].items()}
    print(f"read_ahead_kb per mount: {ra}")
    pc = res["per_case"]
    notes: list[str] = []

    def note(key: str, label: str) -> str:
        d = pc.get(key, {})
        if d.get("spread", 0) <= SPREAD_MAX:
            return ""
        notes.append(f"[{len(notes) + 1}] {label}: rounds differ {d['spread']:.1f}x; " + (
            "; ".join(d["spread_reasons"]) if d["spread_reasons"] else
            "no recorded cause (storage reads, CPU per unit, other processes' CPU): median "
            "withheld"))
        return f" [{len(notes)}]"

    print(f"\n{'sequential dd bs=1M':52s} {'MB/s median (min–max)':>24s} {'daemon CPU s/GiB':>17s}")
    for k, ser in res["seq_bytes_per_s"].items():
        d = pc.get(f"seq:{k}", {})
        cpu = d.get("daemon_cpu_s_per_GiB")
        print(f"{res['labels'][k]:52s} {_cell(ser, d, 1e6, 0):>24s} "
              f"{'' if cpu is None else f'{cpu:.2f}':>17s}{note(f'seq:{k}', res['labels'][k])}")
    print(f"\n{'random 4 KiB O_DIRECT, QD1':52s} {'IOPS median (min–max)':>24s} {'us/req':>7s} "
          f"{'daemon CPU us/req':>18s} {'fio clat us':>12s}")
    for k, ser in res["rand_iops"].items():
        d = pc.get(f"rand:{k}", {})
        print(f"{res['labels'][k]:52s} {_cell(ser, d, 1, 0):>24s} {d.get('us_per_request', 0):7.1f} "
              f"{d.get('daemon_cpu_us_per_request', 0):18.1f} {d.get('fio_clat_mean_us', 0):12.1f}"
              f"{note(f'rand:{k}', res['labels'][k] + ' (random)')}")
    if notes:
        print("\nrounds more than 2x apart:")
        for n in notes:
            print(f"  {n}")
    print(f"\n{'ratio (per round)':52s} {'median (min–max)':>24s}")
    for name, ser in res["ratios"].items():
        print(f"{name:52s} {ser.fmt(1, 2):>24s}")
    for key, title in (("rand:ipfs", "random 4 KiB"), ("seq:ipfs", "sequential dd, direct_io")):
        p = pc.get(key, {}).get("probe")
        if not p:
            continue
        print(f"\nwhere one request's time goes, instrumented ploopfs, {title} (sizes {p['sizes']}; "
              f"µs, median over rounds of the per-round mean / median)")
        for f in ("dispatch", "handler", "lookup", "pread", "ours", "reply", "handoff", "wait_cpu",
                  "wait_idle", "cycle"):
            if f in p:
                indent = "  " if f in ("lookup", "pread", "ours") else ""
                print(f"  {indent + f:12s} {p[f]['mean_us']:9.1f} {p[f]['median_us']:9.1f}")
    print("\nin-process (no FUSE), ns per call:")
    for name, v in res["micro_ns"].items():
        print(f"  {name:36s} {v:10.0f}")
    print()
    for name, t in res["targets"].items():
        med = "n/a" if t["median"] is None else f"{t['median']:.2f} (min {t['min']:.2f})"
        print(f"target {name}: median {med} over {s['rounds']} rounds -> {verdict(t['met'])}")


def mounts_under(folder: str) -> list[str]:
    prefix = os.path.realpath(folder) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p.startswith(prefix)]


def still_mounted(folder: str) -> str | None:
    if mounts_under(folder):
        return f"mount_bench: something is still mounted under {folder}; not removing it"
    return None


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BDI readahead, O_DIRECT FUSE mounts of qsd)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    for tool in ("qemu-img", "qemu-storage-daemon", "fusermount3", "dd"):
        if not shutil.which(tool):
            return f"{tool} not found"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="keep (and reuse) the images here instead of a temp dir")
    p.add_argument("--size", type=int, default=1 << 30, help="virtual disk bytes (default 1 GiB)")
    p.add_argument("--chain-fractions", default=CHAIN_FRACTIONS,
                   help=f"share of clusters each of the 7 deltas overwrites (default {CHAIN_FRACTIONS})")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rand-seconds", type=float, default=4.0, help="seconds per random-read sample")
    p.add_argument("--no-fio", action="store_true", help="use the Python O_DIRECT loop even with fio")
    p.add_argument("--variants", action="store_true",
                   help="also measure prototypes of suggested changes (see _fuse_servers.py)")
    p.add_argument("--cases", type=lambda v: v.split(","),
                   help="only these case keys, comma-separated (raw, pfs, qsd, cfl, ipfs, …)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    why = preflight()
    if why:
        log(f"mount_bench: skipped: {why}")
        dump_json(args.json, {"bench": "mount_bench", "skipped": why})
        return 0
    res = in_workdir(args.workdir, "ploopfs-bench-mount-", lambda d: run(args, d), keep=still_mounted)
    report(res)
    dump_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
