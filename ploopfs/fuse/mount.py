"""Mount lifecycle: option handling, daemonising with a readiness report, signals, readahead,
`--files` (the mount's root is the filesystem inside, served by the same process), and
unmounting.

Order matters (docs/mount.md): everything that can fail for a user reason (bad source,
unknown snapshot, bad mountpoint) happens before the fork, so the error reaches the terminal with
its exit code; the fork happens before pyfuse3.init/trio (never fork a running trio); signals are
blocked until trio's receiver is installed (s3ql#202)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import logging.handlers
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ploopfs.errors import ExitCode, MountError, PloopfsError, UsageError
from ploopfs.volume import fileio

log = logging.getLogger("ploopfs.mount")
SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
READY_TIMEOUT = 60.0
# mount(8)/mount.fuse3 conventions that are not FUSE options: dropped silently.
IGNORED_OPTS = {"defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
                "owner", "group", "comment", "x-systemd.automount"}


@dataclass
class MountOptions:
    snapshot: str | None = None
    files: bool = False
    foreground: bool = False
    readahead_kb: int = 1024
    direct_io: bool = False  # every file direct (default: disk/partN only; docs/mount.md)
    page_cache: bool = False  # disk/partN through the page cache too
    pid_file: str | None = None
    log_file: str | None = None
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    fuse_options: set[str] = field(default_factory=set)
    allow_outside_paths: bool = False
    cluster_size: int | None = None
    salvage: str | None = None  # None (strict), "zeros" or "older" (docs/salvage.md)
    overlay: str | None = None  # DIR: disk and partN writable into a delta there (docs/overlay.md)
    # Opened through fileio before the daemon starts (so a refused path fails the command).
    pid_fd: int | None = field(default=None, repr=False)
    log_fd: int | None = field(default=None, repr=False)


def apply_o_options(opts: MountOptions, items: list[str]) -> list[str]:
    """Fold `-o a,b=c` items into `opts` (ours: snapshot=, uid=, gid=, files, readahead=,
    direct_io, pid_file=, log_file=, allow_outside_paths, salvage[=zeros|older]); the rest are
    FUSE options.
    Returns warnings."""
    warnings: list[str] = []
    rw = False
    for raw in items:
        for item in filter(None, (s.strip() for s in raw.split(","))):
            key, _, val = item.partition("=")
            try:
                if key == "snapshot":
                    opts.snapshot = val
                elif key == "uid":
                    opts.uid = int(val)
                elif key == "gid":
                    opts.gid = int(val)
                elif key in ("files", "direct_io", "page_cache", "allow_outside_paths",
                             "foreground"):
                    setattr(opts, key, True)
                elif key == "readahead":
                    opts.readahead_kb = int(val)
                elif key in ("pid_file", "log_file", "overlay"):
                    setattr(opts, key, val)
                elif key == "cluster_size":
                    opts.cluster_size = int(val)
                elif key == "salvage":
                    if val not in ("", "zeros", "older"):
                        raise UsageError(f"-o {item}: salvage is zeros or older")
                    opts.salvage = val or "zeros"
                elif key == "rw":
                    rw = True  # fine with an overlay, ignored without one (below)
                elif key in ("ro", "auto_unmount"):
                    pass  # always set
                elif key in IGNORED_OPTS or key.startswith("x-"):
                    pass
                else:
                    opts.fuse_options.add(item)
            except ValueError:
                raise UsageError(f"-o {item}: not a number") from None
    if opts.direct_io and opts.page_cache:
        raise UsageError("direct_io and page_cache exclude each other")
    if rw and opts.overlay is None:
        warnings.append("ignoring -o rw: ploopfs mounts are read-only (writable only with "
                        "--overlay DIR, docs/overlay.md)")
    return warnings


# -- mountpoint helpers ---------------------------------------------------------------------------
def _mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as f:
        return [line.split() for line in f]


def _unescape(p: str) -> str:
    return p.encode().decode("unicode_escape") if "\\" in p else p


def is_mountpoint(real: str) -> bool:
    """From /proc/self/mountinfo, so that a dead FUSE mount (ENOTCONN) still counts. `real` must
    already be a real path: resolving it here could stat a FUSE mount served by this very
    thread and deadlock."""
    return any(_unescape(f[4]) == real for f in _mountinfo() if len(f) > 4)


def mount_device(real: str) -> str | None:
    """major:minor of the mount at the real path `real` (the FUSE connection's BDI name)."""
    for f in reversed(_mountinfo()):
        if len(f) > 4 and _unescape(f[4]) == real:
            return f[2]
    return None


def check_mountpoint(path: str, opts: MountOptions | None = None) -> str:
    """The real path of a usable mountpoint, else MountError (exit 12). A folder with entries is
    refused, as FUSE 2's fusermount did: the mount would hide them until unmounted, silently.
    `-o nonempty` mounts anyway; libfuse3 rejects that option as unknown, so it is taken out of
    `opts.fuse_options` here (it never reaches libfuse)."""
    nonempty = opts is not None and "nonempty" in opts.fuse_options
    if opts is not None:
        opts.fuse_options.discard("nonempty")
    real = os.path.realpath(path)
    if not os.path.exists(path):
        raise MountError("mountpoint does not exist", path)
    if not os.path.isdir(real):
        raise MountError("mountpoint is not a directory", path)
    if is_mountpoint(real):
        raise MountError("mountpoint is busy (something is already mounted there)", path)
    if not nonempty:
        try:
            with os.scandir(real) as entries:
                has_entries = next(entries, None) is not None
        except OSError:  # unlistable for this user: fusermount3 checks its access itself
            has_entries = False
        if has_entries:
            raise MountError("mountpoint is not empty: the mount would hide its files "
                             "(-o nonempty mounts anyway)", path)
    return real


def state_file(real_mountpoint: str) -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/run") / "ploopfs"
    if not os.access(base.parent, os.W_OK):
        base = Path(tempfile.gettempdir()) / f"ploopfs-{os.getuid()}"
    key = hashlib.sha256(real_mountpoint.encode()).hexdigest()[:16]
    return base / f"{key}.json"


def set_readahead(real_mountpoint: str, kb: int) -> None:
    """Raise the FUSE connection's BDI readahead (root only): 128 KiB caps sequential reads at
    128 KiB requests (docs/mount.md)."""
    dev = mount_device(real_mountpoint)
    if not dev or kb <= 0:
        return
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
        log.info("read_ahead_kb=%d on %s", kb, path)
    except OSError as e:
        log.info("could not set %s (%s); kernel default readahead stays", path, e.strerror)


# -- unmount --------------------------------------------------------------------------------------
def fusermount_u(mountpoint: str, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    return subprocess.run(args, capture_output=True, text=True, check=False)


def umount(mountpoint: str, lazy: bool = False, wait: float = 10.0) -> None:
    real = os.path.realpath(mountpoint)
    if not is_mountpoint(real):
        raise MountError("not mounted", mountpoint)
    state = _read_state(real)
    r = None
    for _ in range(10):
        r = fusermount_u(real, lazy)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    assert r is not None
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        raise MountError(f"cannot unmount: {msg} (try -z for a lazy unmount)", mountpoint)
    # Wait for our daemon to finish its own clean-up (state and pid files).
    pid = state.get("pid") if state else None
    deadline = time.monotonic() + wait
    while pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


def _read_state(mountpoint: str) -> dict | None:
    try:
        return json.loads(state_file(mountpoint).read_text())
    except (OSError, ValueError):
        return None


# -- mount ----------------------------------------------------------------------------------------
def mount(source: str, mountpoint: str, opts: MountOptions) -> int:
    from ploopfs.services.tree import MountTree
    from ploopfs.volume.source import OpenOptions, open_source

    if opts.overlay is not None and (opts.files or opts.salvage is not None):
        raise UsageError(f"--overlay cannot be combined with {'--files' if opts.files else '--salvage'}"
                         " (an overlay's disk is written under the mount; see docs/overlay.md)")
    target = check_mountpoint(mountpoint, opts)
    disk = open_source(source, OpenOptions(cluster_size=opts.cluster_size,
                                           allow_outside_paths=opts.allow_outside_paths,
                                           salvage=opts.salvage))
    overlay = None
    if opts.overlay is not None:
        from ploopfs.volume.overlay import Overlay

        overlay = Overlay.open(disk, opts.snapshot, opts.overlay)  # marks the delta in use
    try:
        tree = MountTree(disk, opts.snapshot, overlay)
        files = _pick_files(tree) if opts.files else None
        for w in disk.warnings + (overlay.warnings if overlay is not None else []):
            print(f"ploopfs: warning: {w}", file=sys.stderr)
        # After the source is open, so fileio refuses any of its files as pid or log file.
        if opts.log_file:
            opts.log_fd = fileio.open_log(opts.log_file)
        if opts.pid_file:
            opts.pid_fd = fileio.create(opts.pid_file, replace=True, what="pid file")
    except BaseException:
        if overlay is not None:
            overlay.close()
        raise

    if opts.foreground:
        _setup_logging(opts, foreground=True)
        try:
            return _serve(tree, source, target, opts, files, None)
        finally:
            _close_overlay(tree)

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        code = _wait_ready(rfd, pid)
        if code and opts.pid_file:
            fileio.remove(opts.pid_file)
        return code
    # child: detach, report readiness through wfd
    os.close(rfd)
    os.setsid()
    try:
        _setup_logging(opts, foreground=False)
        _redirect_stdio()
        code = _serve(tree, source, target, opts, files, wfd)
    except PloopfsError as e:
        _report(wfd, f"E{int(e.exit_code)} {e.message()}")
        code = int(e.exit_code)
    except BaseException as e:  # never let the daemon die silently
        _report(wfd, f"E{int(ExitCode.INTERNAL)} internal error: {type(e).__name__}: {e}")
        log.exception("mount daemon failed")
        code = int(ExitCode.INTERNAL)
    _close_overlay(tree)
    os._exit(code)


def _close_overlay(tree) -> None:
    """The server's end (docs/overlay.md): flush the overlay and clear its dirty flag. Only
    the process that served it does this; the parent of a background mount never does."""
    ov = tree.overlay
    if ov is None or ov.closed:
        return
    try:
        ov.close()
        log.info("overlay %s closed cleanly", ov.delta_path)
    except (OSError, PloopfsError) as e:
        log.error("overlay %s could not be closed: %s (it stays marked in use)", ov.delta_path, e)


def _wait_ready(rfd: int, pid: int) -> int:
    """Parent: wait for 'OK' or 'E<code> <message>' from the daemon."""
    chunks = []
    deadline = time.monotonic() + READY_TIMEOUT
    poller = select.poll()  # not select(): the pipe's descriptor may be above 1023
    poller.register(rfd, select.POLLIN)
    while time.monotonic() < deadline:
        if poller.poll(200):
            data = os.read(rfd, 4096)
            if not data:
                break
            chunks.append(data)
            if b"\n" in data:  # one line is the whole report; a child may still hold the pipe
                break
        else:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
    os.close(rfd)
    msg = b"".join(chunks).decode(errors="replace").strip()
    if msg.startswith("OK"):
        return 0
    if msg.startswith("E"):
        code, _, text = msg[1:].partition(" ")
        print(f"ploopfs: {text}", file=sys.stderr)
        return int(code) if code.isdigit() else int(ExitCode.MOUNT)
    print("ploopfs: mount daemon exited without reporting readiness", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return int(ExitCode.MOUNT)


def _report(wfd: int | None, msg: str) -> None:
    if wfd is None:
        return
    with contextlib.suppress(OSError):
        os.write(wfd, msg.encode() + b"\n")
        os.close(wfd)


def _redirect_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _setup_logging(opts: MountOptions, foreground: bool) -> None:
    root = logging.getLogger("ploopfs")
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s ploopfs[%(process)d] %(levelname)s %(message)s")
    handler: logging.Handler
    if opts.log_fd is not None:
        handler = logging.StreamHandler(os.fdopen(opts.log_fd, "a", buffering=1))
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        fmt = logging.Formatter("ploopfs[%(process)d]: %(levelname)s %(message)s")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(fmt)
    root.addHandler(handler)


def _pick_files(tree):
    """The filesystem `--files` shows (services/tree.py: the first partition holding an ext2/3/4
    or XFS filesystem, else the whole disk's), opened now: its superblock and root inode are
    read before the fork, so a filesystem that cannot be read at all is refused (exit 12)."""
    from ploopfs.content.files import FsError
    from ploopfs.content.partitions import inspect_disk

    fm = tree.files_mount()
    if fm is None:
        vol = tree.volume
        table = inspect_disk(vol.read, vol.size)
        found = ", ".join(f"part{p.number}: {p.fs or 'unknown'}" for p in table.partitions) or (
            table.whole_disk_fs or "nothing recognisable")
        raise MountError(f"--files needs an ext2/3/4 or XFS filesystem; found {found}",
                         tree.disk.source)
    try:
        fm.fs  # noqa: B018 - open it here, before the fork
    except (FsError, Exception) as e:
        what = e.what if isinstance(e, FsError) else f"{type(e).__name__}: {e}"
        if isinstance(e, FsError):
            what = f"inode {e.ino}: {what}"
        raise MountError(f"--files: the filesystem in {fm.where} has unreadable metadata ({what}); "
                         f"`ploopfs info` tells more, and a mount without --files still serves "
                         f"the raw {fm.where}", tree.disk.source) from None
    return fm


class _PathOption(str):
    """A FUSE option holding a path: pyfuse3 encodes every option as ASCII, which a path need
    not be; this one encodes as the file system does (UTF-8, undecodable bytes kept)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return os.fsencode(str(self))


def fsname_option(source: str) -> str:
    """`fsname=` naming the source (absolute), so that findmnt, df and mount show the disk
    instead of "ploopfs". libfuse splits options at commas and unescapes backslashes: both are
    escaped with a backslash."""
    path = os.path.abspath(source).replace("\\", "\\\\").replace(",", "\\,")
    return _PathOption("fsname=" + path)


def _fuse_options(opts: MountOptions, source: str) -> set[str]:
    # default_permissions: the kernel checks owners and modes (the container's, under
    # --files), as it would on any filesystem. nodev, nosuid: a container's device nodes and
    # set-id files are shown, never used on the host.
    o = {"default_permissions", "nodev", "nosuid", "subtype=ploopfs", "auto_unmount"}
    if opts.overlay is None:  # with an overlay, disk and partN take writes (docs/overlay.md)
        o.add("ro")
    if not any(x.startswith("fsname=") for x in opts.fuse_options):  # -o fsname=… wins
        o.add(fsname_option(source))
    return o | opts.fuse_options


FAST_WAIT_EVERY = 64  # at least every 64th request goes through trio (signals, other tasks)
FAST_WAIT_MS = 10  # how long poll() waits for the next request before going through trio


def install_fast_wait() -> bool:
    """Between pyfuse3.init and pyfuse3.main: wait for the next request with a plain poll() of
    the FUSE fd (up to FAST_WAIT_MS) instead of trio's `wait_readable`, which parks the task
    and runs trio's scheduler and epoll registration for every request (~12 us of CPU each
    here). Only when no request came within FAST_WAIT_MS, and for every FAST_WAIT_EVERY-th
    request, does the wait go through trio, where signals and the other tasks are served (so
    a signal waits at most FAST_WAIT_MS, or 63 requests). Halves the daemon's CPU and latency
    per small request (docs/mount.md, "Performance and caching"). It replaces pyfuse3's
    private `_wait_fuse_readable` (pyfuse3 3.5; the serving loop has one task, `max_tasks=1`,
    so its read lock has no one to exclude; tests/system/test_mount.py notices when it is
    gone); without that name, or without exactly one /dev/fuse fd, nothing is changed and
    False is returned."""
    import pyfuse3

    orig = getattr(pyfuse3, "_wait_fuse_readable", None)
    if orig is None or getattr(orig, "_ploopfs_fast", False):
        return orig is not None
    fds = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                fds.append(int(name))
    if len(fds) != 1:
        return False
    poller = select.poll()
    poller.register(fds[0], select.POLLIN)
    count = 0

    async def wait_fuse_readable() -> bool:
        nonlocal count
        count += 1
        if count % FAST_WAIT_EVERY and poller.poll(FAST_WAIT_MS):
            return True  # pending (or the fd failed: the read that follows says so)
        return await orig()

    wait_fuse_readable._ploopfs_fast = True  # type: ignore[attr-defined]
    pyfuse3._wait_fuse_readable = wait_fuse_readable
    return True


def _start_reaper(mountpoint: str) -> None:
    """Back-up for auto_unmount. fusermount3's watcher (libfuse 3.14) unmounts a killed daemon's
    mount only if open(MOUNTPOINT) then fails with ENOTCONN; when the kill races with a request
    in flight (its own open, or a reader's) the open fails with ECONNABORTED instead and the dead
    mount stays (about 1 SIGKILL in 3 here). This forked watcher waits for the daemon to die
    (EOF on a pipe only the daemon holds) and lazily unmounts the mount if it is dead."""
    r, _w = os.pipe()  # close-on-exec: fusermount3 does not inherit the daemon's end
    if os.fork():
        os.close(r)
        return  # `_w` stays open for the daemon's lifetime
    try:
        for s in SIGNALS:  # Ctrl-C or kill of the process group is for the daemon
            signal.signal(s, signal.SIG_IGN)
        _redirect_stdio()
        # Hold nothing of the daemon's (readiness pipe, images, /dev/fuse) but the log file.
        keep = sorted({r, *_log_fds()})
        for lo, hi in zip([2, *keep], [*keep, os.sysconf("SC_OPEN_MAX")], strict=True):
            os.closerange(lo + 1, hi)
        while os.read(r, 1):
            pass
        if _dead_fuse_mount(mountpoint):
            fusermount_u(mountpoint, lazy=True)
            log.warning("server died without unmounting: lazily unmounted %s", mountpoint)
    finally:
        os._exit(0)


def _log_fds() -> list[int]:
    fds = []
    for h in logging.getLogger("ploopfs").handlers:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            fds.append(h.stream.fileno())  # type: ignore[attr-defined]
    return fds


def _dead_fuse_mount(real: str) -> bool:
    entry = [f for f in _mountinfo() if len(f) > 4 and _unescape(f[4]) == real]
    if not entry or "fuse.ploopfs" not in entry[-1]:
        return False
    for _ in range(20):
        try:
            os.close(os.open(real, os.O_RDONLY | os.O_DIRECTORY))
            return False  # alive: someone else mounted here since
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                return True
            if e.errno != errno.EINTR:
                return False
    return False


@contextlib.contextmanager
def _libfuse_messages() -> Iterator[list[str]]:
    """Capture what C code (libfuse) writes to fd 2 meanwhile, as lines."""
    said: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said += tmp.read().decode(errors="replace").strip().splitlines()


def _serve(tree, source: str, target: str, opts: MountOptions, files, wfd: int | None) -> int:
    import pyfuse3
    import trio

    from ploopfs.fuse.ops import Operations

    ops = Operations(files if files is not None else tree.root, uid=opts.uid, gid=opts.gid,
                     direct_io=opts.direct_io, page_cache=opts.page_cache, usage=tree.usage)
    _start_reaper(target)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    fuse_opts = _fuse_options(opts, source)
    try:
        with _libfuse_messages() as said:
            pyfuse3.init(ops, target, fuse_opts)
    except RuntimeError as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        # libfuse says why on stderr (e.g. "fuse: unknown option(s): `-o foo'"), which is
        # /dev/null in the background; its last line is the useful part of the message.
        why = said[-1].removeprefix("fuse: ") if said else str(e)
        raise MountError(f"cannot mount: {why}", target) from None
    for line in said:  # warnings of a successful mount
        log.warning("%s", line)
    if not install_fast_wait():
        log.info("pyfuse3 %s: its request wait is not the one the shortcut knows; every "
                 "request goes through trio", getattr(pyfuse3, "__version__", "?"))
    state = state_file(target)

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def run_fuse() -> None:
                # One worker task: handlers never await (reads are inline), so more tasks only
                # add trio lock hand-offs between them (~10 us per request, docs/benchmarks.md).
                # Returns on terminate() or when unmounted from outside.
                await pyfuse3.main(max_tasks=1)
                nursery.cancel_scope.cancel()

            with trio.open_signal_receiver(*SIGNALS) as signals:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                nursery.start_soon(run_fuse)
                # The mount answers once the loop runs; prove it from a thread.
                await trio.to_thread.run_sync(os.stat, target)
                # After FUSE_INIT: the kernel sets the BDI readahead while handling INIT.
                set_readahead(target, opts.readahead_kb)
                _write_state(state, target)
                if opts.pid_fd is not None:
                    os.write(opts.pid_fd, f"{os.getpid()}\n".encode())
                    os.close(opts.pid_fd)
                    opts.pid_fd = None
                _report(wfd, "OK")
                log.info("mounted %s on %s", tree.disk.source, target)
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    break
                pyfuse3.terminate()

    try:
        trio.run(main)
    except BaseException as e:
        log.error("mount loop failed: %s: %s", type(e).__name__, e)
        pyfuse3.close(unmount=True)
        _cleanup(state, opts)
        raise
    pyfuse3.close(unmount=True)
    _cleanup(state, opts)
    log.info("unmounted %s", target)
    return 0


def _write_state(state: Path, target: str) -> None:
    """What `umount` needs to wait for this daemon; best effort. Written through fileio like
    every file ploopfs writes (a stale one of an earlier daemon is replaced)."""
    with contextlib.suppress(OSError, PloopfsError):
        state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = fileio.create(state, replace=True, what="mount state")
        try:
            os.write(fd, json.dumps({"pid": os.getpid(), "mountpoint": target}).encode())
        finally:
            os.close(fd)


def _cleanup(state: Path, opts: MountOptions) -> None:
    fileio.remove(state)
    if opts.pid_file:
        fileio.remove(opts.pid_file)
