#!/usr/bin/env python3
"""FUSE servers that only tools/bench/mount_bench.py runs (never the product), to show where
the time per request goes:

* ``bare-const MNT SIZE``: a bare pyfuse3 + trio server with one file ``disk`` whose read
  returns a slice of a constant buffer: pyfuse3 + trio + kernel, nothing else.
* ``bare-pread MNT BACKING``: the same, its read an ``os.pread`` of a backing file: + pread.
* ``instrumented SOURCE MNT [--direct-io | --page-cache] [--no-fast-wait]``: the real
  ``ploopfs mount -F`` (same options, tree, readahead, signals) with ``time.perf_counter_ns``
  probes around the pieces of one read request (see ``Probe``). On SIGUSR1 it writes a summary
  of the requests since the last SIGUSR1 to the path named in the ``--ctl`` file and starts
  afresh. The probes time the trio path, so with probes the product's poll() shortcut
  (``ploopfs.fuse.mount.install_fast_wait``) is off; ``--no-probes --no-fast-wait`` is the
  product without the shortcut, nothing else changed.

Loop variants of the bare servers: ``--max-tasks 1`` runs pyfuse3's main loop with one task (no
trio Lock hand-over between two tasks per request); ``--fast-wait`` is the product's shortcut
(``install_fast_wait``: a non-blocking ``poll()`` of the FUSE fd first, through trio only when
no request is pending and at least every 64 requests).

Every server writes ``--pid-file`` once it answers; SIGTERM/SIGINT unmount and exit 0.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import stat
import statistics
import sys
import time
from array import array
from collections import Counter
from typing import Any

import pyfuse3
import trio

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository, for `ploopfs`

from ploopfs.fuse.mount import set_readahead  # noqa: E402

DISK_INO = pyfuse3.ROOT_INODE + 1
TIMEOUT = 86400.0


# -- bare pyfuse3 servers ---------------------------------------------------------------------------
class BareOps(pyfuse3.Operations):
    """One read-only file `disk`; read() is either a constant slice or a plain os.pread."""

    def __init__(self, size: int, backing_fd: int | None) -> None:
        super().__init__()
        self.size = size
        self.fd = backing_fd
        self.const = memoryview(bytes(1 << 20))

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = TIMEOUT
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, self.size
        a.st_blksize = 1 << 20
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != b"disk":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(DISK_INO)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, DISK_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != DISK_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        if self.fd is None:
            return self.const[:max(0, min(size, self.size - off))]
        return os.pread(self.fd, size, off)


def loop_variants(args: argparse.Namespace) -> None:
    """--max-tasks / --fast-wait (see the module doc); to be called before pyfuse3.init."""
    if args.max_tasks:
        pyfuse3.main = functools.partial(pyfuse3.main, max_tasks=args.max_tasks)
    if not args.fast_wait:
        return
    from ploopfs.fuse.mount import install_fast_wait

    orig_init = pyfuse3.init

    def init(*a: Any, **kw: Any) -> None:
        orig_init(*a, **kw)
        install_fast_wait()

    pyfuse3.init = init


def serve_bare(args: argparse.Namespace) -> int:
    loop_variants(args)
    if args.mode == "bare-pread":
        fd = os.open(args.backing, os.O_RDONLY)
        ops = BareOps(os.fstat(fd).st_size, fd)
    else:
        ops = BareOps(args.size, None)
    mnt = os.path.realpath(args.mountpoint)
    pyfuse3.init(ops, mnt, {"ro", "default_permissions", "fsname=benchfs", "auto_unmount"})

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                await trio.to_thread.run_sync(os.stat, mnt)
                set_readahead(mnt, args.readahead)
                with open(args.pid_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
                async for _ in signals:
                    break
                pyfuse3.terminate()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


# -- the instrumented ploopfs server ------------------------------------------------------------------
class Probe:
    """Per read request, the pieces of one request cycle (R = the FUSE fd became readable):

    dispatch   R -> our read handler entered: fuse_session_receive_buf (read(2) of /dev/fuse),
               libfuse parsing, pyfuse3 making and awaiting the handler coroutine;
    handler    our Operations.read (guarded wrapper, tree, Volume.read), of which
      lookup     BlockMap.find and Volume.segments (with the Segment objects) if used,
      pread      os.pread / os.preadv of the image file,
      ours       the rest (wrapper, bytearray allocation, views, loop);
    reply      handler returned -> pyfuse3 back at _wait_fuse_readable: fuse_reply_buf (writev(2)
               to /dev/fuse, the kernel copies the data to the reader), loop;
    handoff    _wait_fuse_readable entered -> trio.lowlevel.wait_readable called (by the other
               pyfuse3 task): the trio Lock hand-over and task switch;
    wait_cpu   inside wait_readable, on CPU: epoll registration, trio's run loop, scheduling;
    wait_idle  inside wait_readable, off CPU: the daemon sleeps in epoll_wait until the next
               request arrives = the kernel round trip (reply delivery, the reader's next
               syscall, queueing, wake-up) + the reader's own user-space time.
    The pieces add up to the cycle (R to next R) by construction.
    """

    FIELDS = ("cycle", "dispatch", "handler", "lookup", "pread", "ours", "reply", "handoff",
              "wait_cpu", "wait_idle")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.data = {k: array("q") for k in self.FIELDS}
        self.sizes: Counter[int] = Counter()
        self.r = self.h_in = self.h_out = self.x = self.ws = 0
        self.lookup = self.pread = 0
        self.pending: list[int] | None = None  # one finished request, waiting for its next R
        self.t0 = time.perf_counter_ns()
        self.cpu0 = time.process_time_ns()

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.data["cycle"]), "sizes": dict(self.sizes),
                               "wall_s": (time.perf_counter_ns() - self.t0) / 1e9,
                               "process_cpu_s": (time.process_time_ns() - self.cpu0) / 1e9}
        for k, arr in self.data.items():
            if arr:
                s = sorted(arr)
                out[k] = {"mean_us": statistics.fmean(arr) / 1e3, "median_us": s[len(s) // 2] / 1e3,
                          "p10_us": s[len(s) // 10] / 1e3, "p90_us": s[len(s) * 9 // 10] / 1e3}
        return out


PROBE = Probe()


def instrument() -> None:
    """Wrap the pieces of the real read path; the product code itself runs unchanged."""
    import ploopfs.fuse.ops as ops_mod
    import ploopfs.volume.blockmap as blockmap_mod
    import ploopfs.volume.volume as volume_mod

    ns, cpu, p = time.perf_counter_ns, time.thread_time_ns, PROBE

    orig_wait_readable = trio.lowlevel.wait_readable
    orig_wait_fuse = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    state = {"fd": -1}

    async def wait_readable(fd: Any) -> None:
        if fd != state["fd"]:
            await orig_wait_readable(fd)
            return
        p.ws = ns()
        c0 = cpu()
        await orig_wait_readable(fd)
        c1 = cpu()
        r = ns()
        if p.pending is not None and p.x:
            d = p.data
            wait, wcpu = r - p.ws, c1 - c0
            for k, v in zip(("dispatch", "handler", "lookup", "pread", "ours", "reply"), p.pending,
                            strict=True):
                d[k].append(v)
            d["handoff"].append(p.ws - p.x)
            d["wait_cpu"].append(wcpu)
            d["wait_idle"].append(wait - wcpu)
            d["cycle"].append(r - p.r)
        p.pending = None
        p.x = 0
        p.r = r

    async def wait_fuse_readable() -> bool:
        if p.pending is not None and not p.x:
            p.x = ns()
            p.pending.append(p.x - p.h_out)  # reply
        return await orig_wait_fuse()

    trio.lowlevel.wait_readable = wait_readable
    pyfuse3._wait_fuse_readable = wait_fuse_readable  # type: ignore[attr-defined]

    orig_init = pyfuse3.init

    def init(*a: Any, **kw: Any) -> None:
        orig_init(*a, **kw)
        state["fd"] = _session_fd()

    pyfuse3.init = init

    class TimedOs:
        """`os` for ploopfs.volume.volume, with pread and preadv timed."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def pread(fd: int, n: int, off: int) -> bytes:
            t = ns()
            data = os.pread(fd, n, off)
            p.pread += ns() - t
            return data

        @staticmethod
        def preadv(fd: int, bufs: Any, off: int, *flags: int) -> int:
            t = ns()
            n = os.preadv(fd, bufs, off, *flags)
            p.pread += ns() - t
            return n

    volume_mod.os = TimedOs()  # type: ignore[assignment]
    vol_cls, map_cls = volume_mod.Volume, blockmap_mod.BlockMap
    orig_segments, orig_find = vol_cls.segments, map_cls.find
    nested = [False]

    def segments(self: Any, offset: int, length: int) -> Any:
        t = ns()
        nested[0] = True
        try:
            segs = list(orig_segments(self, offset, length))
        finally:
            nested[0] = False
        p.lookup += ns() - t
        return iter(segs)

    def find(self: Any, vcluster: int) -> int:
        if nested[0]:
            return orig_find(self, vcluster)
        t = ns()
        i = orig_find(self, vcluster)
        p.lookup += ns() - t
        return i

    vol_cls.segments = segments  # type: ignore[method-assign]
    map_cls.find = find  # type: ignore[method-assign]

    class Ops(ops_mod.Operations):
        async def read(self, fh: int, off: int, size: int) -> Any:
            h_in = ns()
            p.lookup = p.pread = 0
            out = await super().read(fh, off, size)
            h_out = ns()
            p.sizes[size] += 1
            if p.r:
                handler = h_out - h_in
                p.pending = [h_in - p.r, handler, p.lookup, p.pread,
                             handler - p.lookup - p.pread]
                p.x = 0
            p.h_out = h_out
            return out

    ops_mod.Operations = Ops  # type: ignore[misc]


def _session_fd() -> int:
    """The /dev/fuse fd pyfuse3 opened (the newest fd of this process pointing at /dev/fuse)."""
    best = -1
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                best = max(best, int(name))
        except OSError:
            continue
    return best


def serve_instrumented(args: argparse.Namespace) -> int:
    import ploopfs.fuse.mount as mount_mod
    from ploopfs.fuse.mount import MountOptions, mount

    loop_variants(args)
    if args.probes or not args.product_fast_wait:
        mount_mod.install_fast_wait = lambda: True  # type: ignore[assignment]  # (no log line)
    if args.probes:
        instrument()

    def dump(signum: int, frame: Any) -> None:
        try:
            with open(args.ctl) as f:
                path = f.read().strip()
        except OSError:
            return
        summary = PROBE.summary()
        PROBE.reset()
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)
    opts = MountOptions(foreground=True, direct_io=args.direct_io, page_cache=args.page_cache,
                        pid_file=args.pid_file, readahead_kb=args.readahead)
    return mount(args.source, args.mountpoint, opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bare-const")
    b.add_argument("mountpoint")
    b.add_argument("size", type=int)
    b = sub.add_parser("bare-pread")
    b.add_argument("mountpoint")
    b.add_argument("backing")
    i = sub.add_parser("instrumented")
    i.add_argument("source")
    i.add_argument("mountpoint")
    i.add_argument("--direct-io", action="store_true")
    i.add_argument("--page-cache", action="store_true")
    i.add_argument("--no-fast-wait", dest="product_fast_wait", action="store_false",
                   help="the product without its poll() shortcut")
    i.add_argument("--ctl", required=True, help="file holding the path of the next summary")
    i.add_argument("--no-probes", dest="probes", action="store_false")
    for sp in sub.choices.values():
        sp.add_argument("--pid-file", required=True)
        sp.add_argument("--readahead", type=int, default=1024)
        sp.add_argument("--max-tasks", type=int, default=0, help="pyfuse3.main(max_tasks=N)")
        sp.add_argument("--fast-wait", action="store_true")
    args = p.parse_args(argv)
    if args.mode == "instrumented":
        return serve_instrumented(args)
    return serve_bare(args)


if __name__ == "__main__":
    sys.exit(main())
