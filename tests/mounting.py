"""Real FUSE mounts for the mount tests: every mount is made by a subprocess, awaited with a
deadline, and always torn down by PID; nothing may be left mounted or running.

A `Mounter` owns one test's temporary folder (`root`). Every daemon it starts gets
TMPDIR=root/tmp (so the private `ploopfs-disk-*` mount of `--files` lands under root) and
XDG_RUNTIME_DIR=root/run (its state file), so "nothing left under root" covers both layers and
tests never see other people's mounts. `cleanup()` unmounts (fusermount3 -u, then -z), waits for
every process it started, ends stragglers by PID, checks the daemons' logs for ERROR lines and
reports what it had to force or found. A watchdog
timer kills the test's daemons by PID if a test hangs on a mount (a killed daemon aborts its
FUSE connection, so blocked reads return ENOTCONN instead of hanging the run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import PLOOPFS, REPO, sha256_file

READY_TIMEOUT = 30.0  # a mount (or qsd export) must be up by then
CMD_TIMEOUT = 90.0  # any one subprocess
EXIT_TIMEOUT = 15.0  # a daemon must be gone this long after its mount went away
WATCHDOG = 170.0  # hard limit for one test's mounts


# -- /proc/self/mountinfo ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MountEntry:
    dev: str  # major:minor of the connection
    point: str
    fstype: str
    source: str
    options: str


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mountinfo() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append(MountEntry(fields[2], _unescape(fields[4]), fields[sep + 1],
                                  _unescape(fields[sep + 2]), fields[5] + "," + fields[sep + 3]))
    return out


def mount_entry(path: str | os.PathLike[str]) -> MountEntry | None:
    """The topmost mount at exactly `path` (which must be a real path: resolving it could stat a
    hung mount)."""
    p = os.fspath(path)
    found = [e for e in mountinfo() if e.point == p]
    return found[-1] if found else None


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return mount_entry(path) is not None


def mounts_under(root: str | os.PathLike[str]) -> list[MountEntry]:
    r = os.fspath(root)
    return [e for e in mountinfo() if e.point == r or e.point.startswith(r + "/")]


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# -- processes --------------------------------------------------------------------------------------
def proc_state(pid: int) -> str | None:
    """The /proc state letter, None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Zombies count as exited: an orphaned daemon is reaped by init whenever init gets to it."""
    return proc_state(pid) not in (None, "Z", "X")


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    return " ".join(argv(pid))


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a unique temporary path: only
    processes this test started can mention it)."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        if text in cmdline(int(name)) and pid_alive(int(name)):
            out.append(int(name))
    return out


def end_pid(pid: int) -> str | None:
    """SIGTERM, then SIGKILL, one PID we started. Returns what had to be done, None if it had
    already exited."""
    if not pid_alive(pid):
        return None
    what = f"pid {pid} ({cmdline(pid)})"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_pid_gone(pid, 5):
        return f"{what} needed SIGTERM"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_pid_gone(pid, 5)
    return f"{what} needed SIGKILL"


def fusermount_u(path: str | os.PathLike[str], lazy: bool = False) -> bool:
    args = ["fusermount3", "-u", *(["-z"] if lazy else []), os.fspath(path)]
    try:
        r = subprocess.run(args, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


# -- mounts -----------------------------------------------------------------------------------------
@dataclass
class Mount:
    mountpoint: Path
    pid: int
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None  # foreground (-f) mounts only
    err_file: Path | None = None
    errors_expected: bool = False  # else any ERROR line in its log fails the test

    def __truediv__(self, rel: str) -> Path:
        return self.mountpoint / rel

    def log_lines(self) -> list[str]:
        try:
            return self.log_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def error_lines(self) -> list[str]:
        return [ln for ln in self.log_lines() if " ERROR " in ln or " CRITICAL " in ln]

    def stderr(self) -> str:
        return self.err_file.read_text(errors="replace") if self.err_file else ""


class Mounter:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        (self.root / "tmp").mkdir(exist_ok=True)
        (self.root / "run").mkdir(exist_ok=True, mode=0o700)
        self.env = dict(os.environ, TMPDIR=str(self.root / "tmp"),
                        XDG_RUNTIME_DIR=str(self.root / "run"),
                        PATH=f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.mounts: list[Mount] = []
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._names: set[str] = set()
        self.expired = False
        self._watchdog = threading.Timer(WATCHDOG, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    # -- helpers for tests --------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        n, i = name, 1
        while n in self._names:
            i += 1
            n = f"{name}{i}"
        self._names.add(n)
        return n

    def mountpoint(self, name: str = "mnt") -> Path:
        p = self.root / self._unique(name)
        p.mkdir()
        return p

    def run(self, *args: str | os.PathLike[str], timeout: float = CMD_TIMEOUT,
            cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """`ploopfs ARGS` (or `cmd ARGS`) with this mounter's environment."""
        argv = [*(cmd or [str(PLOOPFS)]), *map(os.fspath, args)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                              check=False)

    def popen(self, argv: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """A tracked background process; stdout+stderr go to root/<name>.err."""
        err = self.root / f"{self._unique(name)}.err"
        with open(err, "wb") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=self.env)
        self.procs.append(p)
        self.pids.append(p.pid)
        return p, err

    def mount(self, source: str | os.PathLike[str], *args: str | os.PathLike[str],
              mnt: Path | None = None, name: str = "mnt", warning: str | None = None) -> Mount:
        """`ploopfs mount` in the background; returns once it reported readiness. Its stderr
        must be empty, or (with `warning`) warning lines that each contain that text."""
        mnt = mnt or self.mountpoint(name)
        log, pidf = self.root / f"{mnt.name}.log", self.root / f"{mnt.name}.pid"
        r = self.run("mount", source, mnt, "--pid-file", pidf, "--log-file", log, *args)
        if pidf.exists():
            self.pids.append(int(pidf.read_text()))
        assert r.returncode == 0, f"mount failed ({r.returncode}): {r.stderr.strip()}"
        if warning is None:
            assert r.stderr == "", r.stderr
        else:
            lines = r.stderr.splitlines()
            assert lines and all(ln.startswith("ploopfs: warning:") and warning in ln
                                 for ln in lines), r.stderr
        assert pidf.exists(), "mount reported ready without writing its pid file"
        assert is_mounted(mnt), f"mount returned 0 but {mnt} is not mounted"
        m = Mount(mnt, int(pidf.read_text()), log)
        self.mounts.append(m)
        return m

    def mount_fg(self, source: str | os.PathLike[str], *args: str | os.PathLike[str],
                 mnt: Path | None = None, name: str = "mnt") -> Mount:
        """`ploopfs mount -F` under Popen (its exit code stays observable); ready when mountinfo
        lists the mountpoint and its root answers."""
        mnt = mnt or self.mountpoint(name)
        log = self.root / f"{mnt.name}.log"
        p, err = self.popen([str(PLOOPFS), "mount", "-F", os.fspath(source), str(mnt),
                             "--log-file", str(log), *map(os.fspath, args)], mnt.name)
        wait_until(lambda: is_mounted(mnt) or p.poll() is not None, READY_TIMEOUT,
                   f"foreground mount on {mnt}")
        assert p.poll() is None, f"mount -F exited {p.returncode}: {err.read_text()}"
        os.listdir(mnt)  # served by the loop, i.e. the daemon is up
        m = Mount(mnt, p.pid, log, p, err)
        self.mounts.append(m)
        return m

    def umount(self, m: Mount, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("umount", *args, m.mountpoint)

    def own_pids(self) -> list[int]:
        """Live processes whose command line names a path inside root: only ours can."""
        return pids_mentioning(f"{self.root}/")

    # -- teardown -----------------------------------------------------------------------------
    def _expire(self) -> None:
        self.expired = True
        for pid in [*self.pids, *self.own_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> list[str]:
        """Unmount, wait, end stragglers; returns the problems found (empty when clean)."""
        self._watchdog.cancel()
        problems = [f"watchdog: mounts still up after {WATCHDOG:.0f} s"] if self.expired else []
        for _ in range(3):  # stacked mounts (--files) come off one layer at a time
            for e in reversed(mounts_under(self.root)):
                if not fusermount_u(e.point) and not fusermount_u(e.point, lazy=True):
                    problems.append(f"cannot unmount {e.point}")
        for p in self.procs:
            try:
                p.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"{p.args!r} still running after its mount went away")
        for pid in self.pids:
            if not wait_pid_gone(pid, EXIT_TIMEOUT):
                problems.append(f"daemon {pid} still running after its mount went away")
        # helpers (fusermount3's auto_unmount watcher, fuse2fs) follow their daemon shortly
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self.own_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in [*self.pids, *self.own_pids()]:
            if (done := end_pid(pid)) is not None:
                problems.append(done)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        left = mounts_under(self.root)
        if left:
            problems.append(f"stale mounts: {[e.point for e in left]}")
        for m in self.mounts:  # check the logs (pyfuse3's test-suite practice)
            if not m.errors_expected and m.error_lines():
                problems.append(f"{m.log_file.name}: {m.error_lines()}")
            if "Traceback" in m.stderr():
                problems.append(f"{m.mountpoint.name}: traceback on stderr: {m.stderr()}")
        return problems


# -- helpers on mounted trees -------------------------------------------------------------------
def sha256_range(path: str | os.PathLike[str], offset: int = 0, size: int | None = None) -> str:
    if offset == 0 and size is None:
        return sha256_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size if size is not None else -1
        while left:
            chunk = f.read(1 << 20 if left < 0 else min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def pread_direct(fd: int, offset: int, length: int) -> bytes:
    """An O_DIRECT read into a page-aligned buffer (offset/length multiples of 4096)."""
    buf = mmap.mmap(-1, max(length, 4096))
    try:
        n = os.preadv(fd, [memoryview(buf)[:length]], offset)
        return bytes(buf[:n])
    finally:
        buf.close()


def partx_table(path: str | os.PathLike[str]) -> dict[int, tuple[int, int]]:
    """Partitions as util-linux sees them: number -> (start, size) in bytes; {} when none."""
    r = subprocess.run(["partx", "-b", "-g", "-o", "NR,START,SECTORS", os.fspath(path)],
                       capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        assert "failed to read partition table" in r.stderr, r.stderr
        return {}
    out = {}
    for line in r.stdout.splitlines():
        nr, start, sectors = map(int, line.split())
        out[nr] = (start * 512, sectors * 512)
    return out


def compare_tree(root: Path, files: list[dict[str, Any]]) -> None:
    """The tree under `root` holds exactly the entries of a files-<GUID>.json (lost+found
    aside): types, symlink targets, sizes and SHA-256 of every file."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if rel != "lost+found" and not rel.startswith("lost+found/"):
                seen.add(rel)
    assert seen == {f["path"] for f in files}
    for f in files:
        p = root / f["path"]
        if f["type"] == "dir":
            assert p.is_dir() and not p.is_symlink(), f["path"]
        elif f["type"] == "symlink":
            assert p.is_symlink() and os.readlink(p) == f["target"], f["path"]
        else:
            assert f["type"] == "file", f
            assert p.is_file() and not p.is_symlink(), f["path"]
            assert p.stat().st_size == f["size"], f["path"]
            assert sha256_file(p) == f["sha256"], f["path"]


def expected_files(case_dir: Path, guid: str) -> list[dict[str, Any]]:
    return json.loads((case_dir / f"files-{guid}.json").read_text())


@contextlib.contextmanager
def loop_device(path: Path) -> Iterator[str]:
    """A read-only loop device over `path`, always detached."""
    r = subprocess.run(["losetup", "-r", "-f", "--show", str(path)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, f"losetup -r {path}: {r.stderr.strip()}"
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def kernel_mount(dev: str, mnt: Path, fstype: str = "ext4",
                 options: str = "ro,noload") -> Iterator[Path]:
    subprocess.run(["mount", "-t", fstype, "-o", options, dev, str(mnt)], check=True,
                   capture_output=True, timeout=60)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60,
                           check=False)
