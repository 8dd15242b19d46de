"""Every command over every hostile input (tests/hostile.py), each run under a time and memory
limit: exit 70 (internal error) is a bug in every case.

For each input and each command (info, snapshots, export in all forms, check, du, compact,
recover, restore-descriptor, diff, signature, delta, patch; mount, a read and umount of the
inputs that open) the run must:

* end within LIMIT_S seconds (else: a hang) under a LIMIT_AS address-space limit (prlimit);
* exit with one of the codes docs/cli.md documents for that command, never 70;
* print no traceback, and at most one line on stderr that is not a warning (exactly one,
  starting with "ploopfs", when it exits with an error code);
* leave every file of the input (and of the good disk it is compared with) unchanged;
* leave nothing mounted and no daemon running (tests/mounting.py's Mounter).

The input is handed to every argument position that reads one: the SOURCE of the disk
commands, both sides of diff, SIG and NEW of delta, BASIS and DELTA of patch. One test per
input; its commands run a few at a time (cores + 1: many wait on fsync or FUSE), `info --json`
first, since the disk's size decides one exception: commands whose output covers every byte
of the disk (SIZE_BOUND) are stopped after SIZE_BOUND_S on a disk over HUGE bytes, which is no
finding as long as they were working, not blocked (docs/cli.md "What is refused").

Cases that fail for a reason in a file this suite may not change are listed in KNOWN_OPEN and
reported as strict xfails: the test fails if they start to pass, or if anything else fails.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hostile as H
import pytest
from conftest import PLOOPFS
from mounting import Mounter, mounts_under

from ploopfs.errors import ExitCode

LIMIT_S = 20.0
LIMIT_AS = 1 << 30
STREAM_CAP = 1 << 20  # bytes of `export SOURCE -` read before the pipe is closed
WORKERS = (os.cpu_count() or 1) + 1  # a process is often waiting (fsync, FUSE)

ERRORS = frozenset(int(c) for c in ExitCode if 3 <= c <= 14)
OK = frozenset({0})
VERDICT = frozenset({0, 1})
REPLACED = frozenset({int(ExitCode.DATA_REPLACED)})
CHECK = frozenset({0, 1, 2, 3})  # check's verdicts; never an error code (docs/check.md)


@dataclass(frozen=True)
class Ctx:
    src: Path  # the hostile SOURCE
    folder: Path  # the folder it was built in
    out: Path  # scratch folder for outputs
    good: Path  # a clean disk (folder)
    good_raw: Path  # a plain file (patch basis)
    good_sig: Path  # an rdiff signature
    good_delta: Path  # an rdiff delta fitting good_raw


@dataclass(frozen=True)
class Cmd:
    name: str
    argv: Callable[[Ctx], list[str | os.PathLike[str]]]
    codes: frozenset[int]
    stream: bool = False  # stdout is the output: read STREAM_CAP bytes, then close the pipe


def _restore_dir(c: Ctx) -> Path:
    return c.src if c.src.is_dir() else c.src.parent


COMMANDS: list[Cmd] = [
    Cmd("info-json", lambda c: ["info", "--json", c.src], OK | ERRORS),  # first: see the test
    Cmd("info", lambda c: ["info", c.src], OK | ERRORS),
    Cmd("snapshots", lambda c: ["snapshots", c.src], OK | ERRORS),
    Cmd("export-raw", lambda c: ["export", c.src, c.out / "export.raw"], OK | ERRORS),
    Cmd("export-stdout", lambda c: ["export", c.src, "-"],
        OK | ERRORS | {int(ExitCode.CLOSED_PIPE)}, stream=True),
    Cmd("export-ploop", lambda c: ["export", "-f", "ploop", c.src, c.out / "export-ploop"],
        OK | ERRORS),
    Cmd("export-salvage", lambda c: ["export", c.src, c.out / "salvage.raw", "--salvage"],
        OK | REPLACED | ERRORS),
    Cmd("check", lambda c: ["check", c.src], CHECK),
    Cmd("check-deep", lambda c: ["check", "--deep", "--json", c.src], CHECK),
    Cmd("du", lambda c: ["du", c.src], VERDICT | ERRORS),
    Cmd("du-dedup", lambda c: ["du", "--dedup", c.src], OK | ERRORS),
    Cmd("compact", lambda c: ["compact", c.src, c.out / "compact"], VERDICT | ERRORS),
    Cmd("recover", lambda c: ["recover", c.src, c.out / "recover"], OK | REPLACED | ERRORS),
    Cmd("restore-descriptor",
        lambda c: ["restore-descriptor", _restore_dir(c), "-o", c.out / "restored.xml"],
        VERDICT | ERRORS),
    Cmd("diff-json-self", lambda c: ["diff", c.src, c.src, "-f", "json", "--hash", "none",
                                     "-o", c.out / "s.json"], OK | ERRORS),
    Cmd("diff-rdiff-self", lambda c: ["diff", c.src, c.src, "-o", c.out / "s.rdiff"], OK | ERRORS),
    Cmd("diff-json-good", lambda c: ["diff", c.good, c.src, "-f", "json", "-o", c.out / "g.json"],
        OK | ERRORS),
    Cmd("diff-rdiff-good", lambda c: ["diff", c.good, c.src, "-o", c.out / "g.rdiff"],
        OK | ERRORS),
    Cmd("signature", lambda c: ["signature", c.src, c.out / "src.sig"], OK | ERRORS),
    Cmd("delta-sig", lambda c: ["delta", c.src, c.good, c.out / "a.delta"], OK | ERRORS),
    Cmd("delta-new", lambda c: ["delta", c.good_sig, c.src, c.out / "b.delta"], OK | ERRORS),
    Cmd("patch-basis", lambda c: ["patch", c.src, c.good_delta, c.out / "a.patched"], OK | ERRORS),
    Cmd("patch-delta", lambda c: ["patch", c.good_raw, c.src, c.out / "b.patched"], OK | ERRORS),
]
MOUNT_CODES = OK | ERRORS
# Commands whose work covers every byte of the (NEW) disk by design: whole-disk hashes (diff's
# default --hash), rdiff output with a record or literal for every block (signature, delta,
# diff -f rdiff), growth past OLD's end read in full (diff against the small good disk). On a
# disk claiming more than HUGE bytes they are stopped after SIZE_BOUND_S: being stopped is no
# finding there, provided the process was working (CPU, I/O or threads running) and stayed
# within LIMIT_AS.
SIZE_BOUND = {"diff-rdiff-self", "diff-json-good", "diff-rdiff-good", "signature", "delta-new"}
HUGE = 4 << 30
SIZE_BOUND_S = 2.0
WORKING_BYTES = 64 << 20  # read + written by a stopped SIZE_BOUND run: it was working

# (input, command) -> why it still fails (a fix due in a file this suite may not change).
KNOWN_OPEN: dict[tuple[str, str], str] = {}


# A KNOWN_OPEN hang is cut short: still running after this long, it still is one. (Once
# fixed, the command must finish within it for the strict xfail to report the fix.)
KNOWN_OPEN_S = 3.0


class KnownBug(AssertionError):
    """Only KNOWN_OPEN cases failed: the strict xfail of this input."""


@dataclass
class Run:
    cmd: str
    argv: list[str]
    code: int | None  # None: killed at the time limit
    stdout: bytes
    stderr: str
    seconds: float
    cpu: float = 0.0  # user + system seconds
    limit: float = LIMIT_S
    size_bound: bool = False  # may be stopped at `limit` (SIZE_BOUND on a huge disk)
    out_file: Path = Path("/dev/null")  # all of stdout (unless streamed)
    moved: int = 0  # bytes read + written by system calls when it was stopped
    active: int = 0  # samples (every 0.1 s) that found a thread running or in disk I/O


def _io_bytes(pid: int) -> int:
    """Bytes the process read and wrote through system calls so far (/proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return sum(int(v) for k, v in (ln.split(":") for ln in f) if k in ("rchar", "wchar"))
    except (OSError, ValueError):
        return 0


def _active(pid: int) -> bool:
    """Is a thread of the process running, runnable or in disk I/O (not all asleep)?"""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                if f.read().rsplit(") ", 1)[1][:1] in ("R", "D"):
                    return True
        except (OSError, IndexError):
            continue
    return False


def _reap(p: subprocess.Popen[bytes], deadline: float) -> tuple[int | None, float, int, int]:
    """(exit code or None if it had to be killed at `deadline`, CPU seconds it used, bytes it
    had read and written when killed, how many of the samples taken every 0.1 s found it
    active)."""
    active = 0
    next_sample = time.monotonic() + 0.1
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if now >= next_sample:
            active += _active(p.pid)
            next_sample = now + 0.1
        if now >= deadline:
            moved = _io_bytes(p.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = -signal.SIGKILL
            return None, ru.ru_utime + ru.ru_stime, moved, active
        time.sleep(0.01)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, 0, active


def run_limited(name: str, argv: list[str | os.PathLike[str]], scratch: Path, *,
                stream: bool = False, env: dict[str, str] | None = None,
                limit: float = LIMIT_S, size_bound: bool = False) -> Run:
    """`ploopfs ARGV` under prlimit --as, killed (its whole process group) after `limit`
    seconds. stdout and stderr go to files, except a streamed stdout: STREAM_CAP bytes are
    read, then the pipe is closed (as `| head -c` would)."""
    args = [str(a) for a in argv]
    err_path = scratch / f"{name}.stderr"
    out_path = scratch / f"{name}.stdout"
    cmd = ["prlimit", f"--as={LIMIT_AS}", "--", str(PLOOPFS), *args]
    t0 = time.monotonic()
    deadline = t0 + limit
    out = b""
    with open(err_path, "wb") as ferr, open(out_path, "wb") as fout:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if stream else fout, stderr=ferr,
                             start_new_session=True, env=env)
        if stream:
            assert p.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(p.stdout, selectors.EVENT_READ)
                got = 0
                while got < STREAM_CAP and time.monotonic() < deadline:
                    if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                        continue
                    chunk = os.read(p.stdout.fileno(), 1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
                    if len(out) < 4096:
                        out += chunk[:4096 - len(out)]
            p.stdout.close()
        code, cpu, moved, active = _reap(p, deadline)
    took = time.monotonic() - t0
    if not stream:
        out = out_path.read_bytes()[:4096]
    return Run(name, args, code, out, err_path.read_text(errors="replace"), took, cpu, limit,
               size_bound, out_path, moved, active)


def disk_size(info_json: Run) -> int:
    """The virtual size `info --json` reported (0 if it cannot tell)."""
    try:
        return int(json.loads(info_json.out_file.read_bytes())["disk"]["size_bytes"])
    except (ValueError, KeyError, TypeError, OSError):
        return 0


def problems_of(r: Run, codes: frozenset[int]) -> list[str]:
    """What is wrong with one run (empty: nothing)."""
    where = f"{r.cmd} ({' '.join(r.argv)})"
    if r.code is None and r.size_bound:
        # Stopped while working through the disk is expected; while waiting is not. Working:
        # CPU, I/O, or threads found running (a loaded machine may give it little CPU).
        samples = int(r.limit / 0.1)
        if r.cpu < 0.25 * r.limit and r.moved < WORKING_BYTES and r.active < samples // 4:
            return [f"{where}: stopped after {r.limit:.0f} s having used {r.cpu:.2f} s of CPU, "
                    f"moved {r.moved} bytes and been active in {r.active} of ~{samples} "
                    "samples (blocked, not working through the disk)"]
        return []
    if r.code is None:
        return [f"{where}: no exit within {r.limit:.0f} s (a hang; {r.cpu:.1f} s CPU)"]
    out = []
    err = r.stderr.strip()
    if r.code == ExitCode.INTERNAL:
        out.append(f"{where}: exit 70 (internal error): {err}")
    elif r.code not in codes:
        out.append(f"{where}: exit {r.code}, not a documented code of this command: {err}")
    if "Traceback" in r.stderr:
        out.append(f"{where}: traceback on stderr: {err[-2000:]}")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("ploopfs: warning:")]
    if len(errors) > 1:
        out.append(f"{where}: {len(errors)} error lines on stderr (one expected): {err[-2000:]}")
    if r.code in ERRORS and not r.cmd.startswith("check") and not (
            len(errors) == 1 and errors[0].startswith("ploopfs")):
        out.append(f"{where}: exit {r.code} without its one 'ploopfs: …' line: {err[-2000:]}")
    if r.code == ExitCode.CLOSED_PIPE and errors:
        out.append(f"{where}: exit 141 must print nothing: {err}")
    if r.seconds >= r.limit:
        out.append(f"{where}: took {r.seconds:.1f} s")
    return out


# -- mount ------------------------------------------------------------------------------------
# An ERROR line of a mount's log may report a damaged disk (EIO to the reader, a filesystem
# that cannot be read); one naming a Python exception that is not an OSError is a bug caught
# by the server's guard.
_EXC_NAME = re.compile(r"\b([A-Za-z_]\w*(?:Error|Exception))\b")
_BUG_NAMES = {n for n, v in vars(builtins).items() if isinstance(v, type)
              and issubclass(v, Exception) and not issubclass(v, OSError)} | {"error"}


def _log_bug(line: str) -> bool:
    if "Traceback" in line or " CRITICAL " in line:
        return True
    return " ERROR " in line and (any(n in _BUG_NAMES for n in _EXC_NAME.findall(line))
                                  or "struct.error" in line or "internal error" in line)


def mount_problems(c: Ctx, mounter: Mounter) -> tuple[list[Run], list[str]]:
    """mount (under the limits), look around, read the start of every disk file, umount."""
    mnt = mounter.mountpoint("mnt")
    log, pidf = mounter.root / "mount.log", mounter.root / "mount.pid"
    r = run_limited("mount", ["mount", c.src, mnt, "--pid-file", pidf, "--log-file", log],
                    c.out, env=mounter.env)
    if pidf.exists():
        mounter.pids.append(int(pidf.read_text()))
    runs, probs = [r], problems_of(r, MOUNT_CODES)
    if r.code != 0:
        if mounts_under(mounter.root):
            probs.append(f"mount exited {r.code} but left {mounts_under(mounter.root)}")
        return runs, probs
    reader = subprocess.run(
        ["timeout", "-s", "KILL", str(int(LIMIT_S)), "sh", "-c",
         'cd "$1" && ls . snapshots >/dev/null && cat info.json >/dev/null; '
         'for f in disk part* $(ls -d snapshots/*/disk | head -8); do '
         '[ -f "$f" ] && head -c 65536 "$f" >/dev/null; done; true', "sh", str(mnt)],
        capture_output=True, text=True, check=False)
    if reader.returncode != 0:
        probs.append(f"reading the mount: exit {reader.returncode}: {reader.stderr[-500:]}")
    u = run_limited("umount", ["umount", mnt], c.out, env=mounter.env)
    runs.append(u)
    probs += problems_of(u, OK)
    if u.code != 0:
        probs.append(f"umount exited {u.code}: {u.stderr.strip()}")
    with contextlib.suppress(FileNotFoundError):
        probs += [f"mount log: {ln}" for ln in log.read_text(errors="replace").splitlines()
                  if _log_bug(ln)]
    return runs, probs


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("hostile-good")
    g = {"disk": H.good_disk(root / "good"),
         "raw": H.good_raw(root / "basis.raw"),
         "sig": H.write(root / "good.sig", H.rdiff_sig(H.pattern(99, H.SIZE))),
         "delta": H.write(root / "good.delta", H.rdiff_delta(H.SIZE))}
    before = H.snapshot_files(root)
    yield g
    assert H.snapshot_files(root) == before, "the good inputs were changed"


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


@pytest.mark.parametrize("h", [
    pytest.param(h, id=h.name,
                 marks=[pytest.mark.xfail(strict=True, raises=KnownBug,
                                          reason="; ".join(v for (n, _), v in KNOWN_OPEN.items()
                                                           if n == h.name))]
                 if any(n == h.name for n, _ in KNOWN_OPEN) else [])
    for h in H.INPUTS])
def test_every_command(h: H.Hostile, good: dict[str, Path], tmp_path: Path) -> None:
    folder, src = H.build(h, tmp_path / "in")
    before = H.snapshot_files(folder)
    out = tmp_path / "out"
    out.mkdir()
    c = Ctx(src, folder, out, good["disk"], good["raw"], good["sig"], good["delta"])
    (tmp_path / "m").mkdir()
    mounter = Mounter(tmp_path / "m")
    problems: dict[str, list[str]] = {}
    runs: list[Run] = []
    try:
        first = COMMANDS[0]  # info --json: the disk's size decides the limits of the rest
        r = run_limited(first.name, first.argv(c), out)
        runs.append(r)
        problems[first.name] = problems_of(r, first.codes)
        huge = r.code == 0 and disk_size(r) > HUGE
        mount = r.code == 0 and _fuse_usable()  # only a disk that opens is mounted
        with ThreadPoolExecutor(WORKERS) as pool:
            if mount:
                mjob = pool.submit(mount_problems, c, mounter)
            jobs = {cmd.name: pool.submit(
                run_limited, cmd.name, cmd.argv(c), out, stream=cmd.stream,
                **({"limit": SIZE_BOUND_S, "size_bound": True}
                   if huge and cmd.name in SIZE_BOUND else
                   {"limit": KNOWN_OPEN_S} if (h.name, cmd.name) in KNOWN_OPEN else {}))
                for cmd in COMMANDS[1:]}
            for cmd in COMMANDS[1:]:
                r = jobs[cmd.name].result()
                runs.append(r)
                problems[cmd.name] = problems_of(r, cmd.codes)
            if mount:
                mruns, problems["mount"] = mjob.result()
                runs += mruns
    finally:
        left = mounter.cleanup()
    if left:
        problems.setdefault("mount", []).extend(f"after the mount: {p}" for p in left)
    after = H.snapshot_files(folder)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        problems["(source files)"] = [f"changed: {changed}"]
    shutil.rmtree(out, ignore_errors=True)  # outputs of huge disks: gigabytes
    failed = {k: v for k, v in problems.items() if v}
    known = {k for k in failed if (h.name, k) in KNOWN_OPEN}
    report = "\n".join(p for v in failed.values() for p in v)
    print(f"{h.name}: " + " ".join(f"{r.cmd}={r.seconds:.2f}/{r.cpu:.2f}" for r in runs))
    if set(failed) - known:
        raise AssertionError(f"{h.name} ({h.note}):\n{report}")
    stale = [k for n, k in KNOWN_OPEN if n == h.name and k not in failed]
    if stale:
        raise AssertionError(f"KNOWN_OPEN lists {stale} for {h.name}, but they pass now")
    if known:
        raise KnownBug(report)


def test_corpus_is_broad() -> None:
    """The corpus keeps the shapes the issue asks for (and stays small: built at test time)."""
    names = {h.name for h in H.INPUTS}
    assert 40 <= len(names) == len(H.INPUTS)
    for want in ("truncated-64", "m_sectors-0", "m_size-max", "bat-duplicated", "dd-billion-laughs",
                 "dd-over-4mib", "chain-2000", "tree-1100-wide", "file-fifo", "dd-is-fifo",
                 "ext4-2e29-groups", "gpt-entries-at-2e63", "mbr-extended-loop", "qcow2",
                 "sig-huge-block", "delta-huge-lengths"):
        assert want in names, want
