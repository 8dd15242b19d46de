"""`ploopfs mount SOURCE MNT --overlay DIR` (docs/overlay.md): writes through MNT/disk and
MNT/partN, a kernel loop mount of MNT/part1 read-write (e2fsck -fy, an XFS log replay), the
daemon SIGKILLed and the overlay continued, refusals as one line with their exit code. Every
source is hashed before and checked unchanged after (corpus_case, guard_sources)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import random
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from mounting import Mounter, is_mounted, wait_pid_gone, wait_until
from test_space import gpt_disk, to_ploop

from ploopfs.errors import PloopfsError
from ploopfs.format.header import decode_header_fields

KiB, MiB = 1 << 10, 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mount)")


SMALL_OK = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}  # mkfs.xfs under 300 MiB


def sh(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **SMALL_OK}).stdout


def delta(folder: Path) -> Path:
    (d,) = glob.glob(str(folder / "root.hds.*"))
    return Path(d)


def dirty(folder: Path) -> bool:
    with open(delta(folder), "rb") as f:
        return decode_header_fields(f.read(64)).dirty


def check(folder: Path) -> tuple[int, list[str]]:
    r = run_cli("check", "--json", "--allow-outside-paths", folder)
    return r.returncode, [f["code"] for f in json.loads(r.stdout)["findings"]]


def export(folder: Path, out: Path) -> bytes:
    r = run_cli("export", "--allow-outside-paths", folder, out)
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


class LoopRW:
    """A read-write loop device over a file (no offset), always detached."""

    def __init__(self, path: Path) -> None:
        self.dev = sh("losetup", "-f", "--show", path).strip()

    def __enter__(self) -> str:
        return self.dev

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["losetup", "-d", self.dev], capture_output=True, timeout=60, check=False)


def kmount(dev: str, mnt: Path, fstype: str, opts: str = "rw") -> None:
    mnt.mkdir(exist_ok=True)
    sh("mount", "-t", fstype, "-o", opts, dev, mnt)


def kumount(mnt: Path) -> None:
    r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=120, check=False)
    if r.returncode:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=120, check=False)


def test_write_loop_mount_e2fsck_and_continue(corpus_case: Callable[[str], Path],
                                              mounter: Mounter, tmp_path: Path) -> None:
    src = corpus_case("ext4-gpt-chain2")
    ov = tmp_path / "ov"
    m = mounter.mount(src, "--overlay", ov)
    assert dirty(ov)
    disk, part = m / "disk", m / "part1"
    assert oct(os.stat(disk).st_mode & 0o777) == "0o644"
    model = bytearray(disk.read_bytes())
    start = model.index(part.read_bytes()[:1 << 16])  # part1's offset in the disk (1 MiB)
    assert start == MiB
    psize = os.path.getsize(part)
    df0 = os.statvfs(m.mountpoint)
    # through the disk: the last MiB (backup GPT area) and a write straddling the end
    fd = os.open(disk, os.O_RDWR)
    try:
        data = random.Random(1).randbytes(70000)
        size = len(model)
        assert os.pwrite(fd, data, size - 30000) == 30000  # short at the end, as a device
        model[size - 30000:] = data[:30000]
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"x", size)
        assert e.value.errno == errno.ENOSPC
        os.fsync(fd)
    finally:
        os.close(fd)
    # a partition's writes stop at its end
    fd = os.open(part, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"p" * 8192, psize - 4096) == 4096
        model[start + psize - 4096:start + psize] = b"p" * 4096
    finally:
        os.close(fd)
    assert disk.read_bytes() == model, "disk and part1 alias the same bytes, no stale cache"
    # refused: truncation, writes to snapshots/
    with pytest.raises(OSError) as e:
        os.truncate(disk, 4096)
    assert e.value.errno == errno.EPERM
    snap = next((m / "snapshots").iterdir()) / "disk"
    with pytest.raises(OSError) as e:
        os.open(snap, os.O_WRONLY)
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    # the kernel mounts part1 read-write through a loop device, then e2fsck checks and repairs
    lm = tmp_path / "lm"
    with LoopRW(part) as dev:
        kmount(dev, lm, "ext4")
        try:
            (lm / "written-by-kernel").write_bytes(b"k" * 300000)
            (lm / "dir1").exists()
        finally:
            kumount(lm)
        r = subprocess.run(["e2fsck", "-fy", dev], capture_output=True, text=True, timeout=120)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        r = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout
    assert os.statvfs(m.mountpoint).f_bfree <= df0.f_bfree, "df: the overlay's growth counts as used"
    final = disk.read_bytes()
    assert final[size - 30000:] == model[size - 30000:]
    assert mounter.umount(m).returncode == 0
    assert wait_pid_gone(m.pid, 15)
    assert not dirty(ov), "a clean unmount clears the dirty flag"
    assert check(ov) == (0, [])
    assert export(ov, tmp_path / "x.raw") == final
    # continued: the same bytes, and the kernel sees its file
    m2 = mounter.mount(src, "--overlay", ov)
    assert (m2 / "disk").read_bytes() == final
    assert mounter.umount(m2).returncode == 0


def test_sigkill_daemon_then_continue(corpus_case: Callable[[str], Path], mounter: Mounter,
                                      tmp_path: Path) -> None:
    src = corpus_case("v2-single")
    ov = tmp_path / "ov"
    m = mounter.mount(src, "-o", f"overlay={ov},rw")  # rw: no warning with an overlay
    disk = m / "disk"
    synced = random.Random(2).randbytes(3 * MiB + 77)
    fd = os.open(disk, os.O_WRONLY)
    os.pwrite(fd, synced, 5 * MiB + 3)
    os.fsync(fd)
    os.pwrite(fd, b"after the last fsync" * 1000, 10 * MiB)  # may be lost
    os.kill(m.pid, signal.SIGKILL)
    with pytest.raises(OSError):  # the connection is gone
        os.pwrite(fd, b"y", 0)
    with contextlib.suppress(OSError):  # the flush of close(2) fails too (ENOTCONN)
        os.close(fd)
    assert wait_pid_gone(m.pid, 15)
    wait_until(lambda: not is_mounted(m.mountpoint), 15, "the killed mount going away")
    assert dirty(ov), "a SIGKILL leaves the delta marked in use"
    code, codes = check(ov)
    assert code <= 1 and set(codes) <= {"DIRTY", "LEAKED_CLUSTERS"}, codes
    m2 = mounter.mount(src, "--overlay", ov, warning="root.hds.")
    got = (m2 / "disk").read_bytes()
    assert got[5 * MiB + 3:8 * MiB + 80] == synced, "everything before the fsync is there"
    assert mounter.umount(m2).returncode == 0
    assert wait_pid_gone(m2.pid, 15)
    assert check(ov) == (0, []) and not dirty(ov)


def xfs_log_state(dev: Path | str) -> str:
    out = subprocess.run(["xfs_logprint", "-t", str(dev)], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    st = re.search(r"state: <(\w+)>", out)
    assert st, out
    return st[1]


def shut_down_dirty(tmp_path: Path, kind: str, mib: int, fill: Callable[[Path], None]) -> Path:
    """A new `kind` filesystem image, filled through a kernel loop mount by `fill` and then shut
    down (`xfs_io shutdown -f`, which ext4 honours too) with transactions left in its log."""
    fs = tmp_path / f"{kind}.img"
    with open(fs, "wb") as f:
        f.truncate(mib * MiB)
    sh(*(["mkfs.xfs", "-q", "-f"] if kind == "xfs" else ["mkfs.ext4", "-q", "-F"]), fs)
    mnt = tmp_path / "build"
    with LoopRW(fs) as dev:
        kmount(dev, mnt, kind)
        try:
            fill(mnt)
            sh("xfs_io", "-x", "-c", "shutdown -f", mnt)
        finally:
            kumount(mnt)
    return fs


def test_xfs_dirty_log_replayed_on_overlay(tmp_path: Path, mounter: Mounter,
                                           guard_sources: Callable[..., None]) -> None:
    """An XFS left with transactions in its log (xfs_io shutdown -f): a read-write kernel mount
    of MNT/part1 replays it into the overlay; the source keeps its dirty log."""
    def fill(mnt: Path) -> None:
        for i in range(40):
            (mnt / f"f{i}").write_bytes(random.Random(i).randbytes(30000))
        os.sync()
        for i in range(40, 60):
            (mnt / f"f{i}").write_bytes(b"z" * 3000)

    fs = shut_down_dirty(tmp_path, "xfs", 64, fill)
    assert xfs_log_state(fs) == "DIRTY"
    raw, _ = gpt_disk(tmp_path, fs)
    src = to_ploop(raw, tmp_path / "src")
    guard_sources(src)
    ov = tmp_path / "ov"
    m = mounter.mount(src, "--overlay", ov)
    lm = tmp_path / "lm"
    with LoopRW(m / "part1") as dev:
        assert xfs_log_state(dev) == "DIRTY"
        kmount(dev, lm, "xfs")  # replays the log into the overlay
        try:
            names = sorted(p.name for p in lm.iterdir())
            assert {f"f{i}" for i in range(60)} <= set(names), names
            assert (lm / "f7").read_bytes() == random.Random(7).randbytes(30000)
        finally:
            kumount(lm)
        assert xfs_log_state(dev) == "CLEAN"
        r = subprocess.run(["xfs_repair", "-n", dev], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    assert mounter.umount(m).returncode == 0
    assert wait_pid_gone(m.pid, 15)
    assert check(ov) == (0, [])
    # the source still has its dirty log, the overlay's export a clean one
    assert xfs_log_state(raw_part(export(ov, tmp_path / "o.raw"), tmp_path / "o1")) == "CLEAN"


def raw_part(disk: bytes, out: Path) -> Path:
    out.write_bytes(disk[MiB:len(disk) - MiB])
    return out


@pytest.mark.parametrize("case", ["busy", "elsewhere", "corrupt", "files", "no-outside",
                                  "pid-file-on-descriptor", "log-file-on-delta"])
def test_refused_in_one_line(case: str, corpus_case: Callable[[str], Path], mounter: Mounter,
                             tmp_path: Path) -> None:
    src = corpus_case("v2-single")
    ov = tmp_path / "ov"
    args: list[str] = []
    want = 11
    if case == "busy":
        ov.mkdir()
        (ov / "keep.txt").write_text("mine")
    elif case in ("elsewhere", "corrupt"):
        other = corpus_case("v1-chain2") if case == "elsewhere" else src
        m = mounter.mount(other, "--overlay", ov)
        if case == "corrupt":
            fd = os.open(m / "disk", os.O_WRONLY)
            os.pwrite(fd, b"c" * 100, 0)
            os.close(fd)
        assert mounter.umount(m).returncode == 0
        assert wait_pid_gone(m.pid, 15)
        if case == "corrupt":
            with open(delta(ov), "r+b") as f:
                f.seek(64)
                f.write((10 ** 6).to_bytes(4, "little"))
            want = 5
    elif case == "files":
        args, want = ["--files"], 64
    elif case in ("pid-file-on-descriptor", "log-file-on-delta"):
        m = mounter.mount(src, "--overlay", ov)  # an overlay to continue
        assert mounter.umount(m).returncode == 0
        assert wait_pid_gone(m.pid, 15)
        args = (["--pid-file", str(ov / "DiskDescriptor.xml")] if case.startswith("pid")
                else ["--log-file", str(delta(ov))])
    before = {p.name: p.read_bytes() for p in ov.iterdir()} if ov.exists() else None
    if case == "no-outside":  # opening an overlay as a source needs --allow-outside-paths
        m = mounter.mount(src, "--overlay", ov)
        assert mounter.umount(m).returncode == 0
        r = run_cli("info", ov)
        assert r.returncode == 8, r.stderr
        assert len(r.stderr.decode().strip().splitlines()) == 1
        return
    mnt = mounter.mountpoint()
    r = mounter.run("mount", src, mnt, "--overlay", ov, *args)
    assert r.returncode == want, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ploopfs"), r.stderr
    assert not is_mounted(mnt)
    if before is not None:
        assert {p.name: p.read_bytes() for p in ov.iterdir()} == before, "DIR unchanged"


def test_sigkill_daemon_at_random_moments(corpus_case: Callable[[str], Path], mounter: Mounter,
                                          tmp_path: Path) -> None:
    """Writes of one page each (so a kill never tears one) with an fsync every few, the daemon
    SIGKILLed at a random moment: each cluster afterwards is as the writes left it at some point
    between the last completed fsync and the write in flight."""
    src = corpus_case("v2-single")
    base = bytes(run_cli("export", src, "-").stdout)
    c = MiB
    rng = random.Random(11)
    for round_ in range(2):
        ov = tmp_path / f"ov{round_}"
        m = mounter.mount(src, "--overlay", ov)
        m.errors_expected = True  # killed mid-request
        every = rng.choice([4, 16])
        wrng = random.Random(rng.randrange(1 << 30))
        ops: list[tuple[int, bytes]] = []  # as many as get written before the kill
        flushed = done = 0
        killed = False
        fd = os.open(m / "disk", os.O_WRONLY)
        killer = threading.Timer(rng.uniform(0.05, 0.4), os.kill, (m.pid, signal.SIGKILL))
        killer.start()
        try:
            while len(ops) < 10 ** 6:
                ops.append((wrng.randrange(len(base) // 4096) * 4096, wrng.randbytes(4096)))
                off, data = ops[-1]
                os.pwrite(fd, data, off)
                done = i = len(ops)
                if i % every == 0:
                    os.fsync(fd)
                    flushed = i
        except OSError:  # the daemon is gone
            killed = True
        finally:
            killer.join()
            with contextlib.suppress(OSError):
                os.close(fd)
        assert killed, "the kill came after all writes: make the run longer"
        assert wait_pid_gone(m.pid, 15)
        wait_until(lambda mp=m.mountpoint: not is_mounted(mp), 15, "the killed mount going away")
        assert dirty(ov)
        code, codes = check(ov)
        assert code <= 1 and set(codes) <= {"DIRTY", "LEAKED_CLUSTERS",
                                             "FILE_NOT_CLUSTER_ALIGNED"}, codes
        print(f"round {round_}: killed after write {done}, last fsync after {flushed}")
        model = bytearray(base)
        states = [bytes(model)] if flushed == 0 else []
        for i, (off, data) in enumerate(ops[:done + 1], 1):
            model[off:off + 4096] = data
            if i >= flushed:
                states.append(bytes(model))
        m2 = mounter.mount(src, "--overlay", ov, warning="root.hds.")
        got = (m2 / "disk").read_bytes()
        assert mounter.umount(m2).returncode == 0
        assert wait_pid_gone(m2.pid, 15)
        for v in range(len(base) // c):
            assert any(s[v * c:(v + 1) * c] == got[v * c:(v + 1) * c] for s in states), (
                f"round {round_}: cluster {v}: no state between write {flushed} and {done + 1}")
        assert check(ov) == (0, [])


def test_ext4_dirty_journal_replayed_on_overlay(tmp_path: Path, mounter: Mounter,
                                                guard_sources: Callable[..., None]) -> None:
    """An ext4 shut down with transactions in its journal (needs_recovery): a read-write kernel
    mount of MNT/part1 replays it into the overlay, e2fsck -fn then finds it clean."""
    def fill(mnt: Path) -> None:
        for i in range(30):
            (mnt / f"g{i}").write_bytes(random.Random(i).randbytes(20000))
        os.sync()
        for i in range(20):  # metadata only: in the journal once it is flushed
            (mnt / f"d{i}").mkdir()

    fs = shut_down_dirty(tmp_path, "ext4", 32, fill)
    assert "needs_recovery" in sh("dumpe2fs", "-h", fs)
    assert "commit block" in sh("debugfs", "-R", "logdump", fs), "transactions to replay"
    raw, _ = gpt_disk(tmp_path, fs)
    src = to_ploop(raw, tmp_path / "src")
    guard_sources(src)
    ov = tmp_path / "ov"
    m = mounter.mount(src, "--overlay", ov)
    lm = tmp_path / "lm"
    with LoopRW(m / "part1") as dev:
        kmount(dev, lm, "ext4")  # replays the journal into the overlay
        try:
            assert (lm / "g9").read_bytes() == random.Random(9).randbytes(20000)
            assert all((lm / f"d{i}").is_dir() for i in range(20)), "replayed from the journal"
        finally:
            kumount(lm)
        head = sh("dumpe2fs", "-h", dev)
        assert "needs_recovery" not in head and re.search(r"Journal start:\s+0\n", head), head
        r = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout
    assert mounter.umount(m).returncode == 0
    assert wait_pid_gone(m.pid, 15)
    assert check(ov) == (0, [])


@contextlib.contextmanager
def failing_host(mounter: Mounter, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(a loop device holding a new journal-less ext4, flag): the device's writes fail with EIO
    while the flag file exists (tests/faultfs.py --fail-writes under it)."""
    import sys

    from conftest import REPO

    backing = tmp_path / "host.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    fmnt = mounter.mountpoint("failwrite")
    flag = tmp_path / "fail-writes"
    p, err = mounter.popen([sys.executable, str(REPO / "tests" / "faultfs.py"), str(backing),
                            str(fmnt), "host.img", "--fail-writes", str(flag)], "faultfs")
    wait_until(lambda: is_mounted(fmnt) or p.poll() is not None, 20, "faultfs mount")
    assert p.poll() is None, err.read_text()
    try:
        with LoopRW(fmnt / "host.img") as dev:
            sh("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E",
               "lazy_itable_init=0,lazy_journal_init=0", dev)
            yield dev, flag
    finally:
        with contextlib.suppress(FileNotFoundError):
            flag.unlink()


def test_failed_open_releases_its_files(corpus_case: Callable[[str], Path], mounter: Mounter,
                                        tmp_path: Path) -> None:
    """Continuing an overlay whose dirty mark cannot be written (the host's writes fail): the
    open fails, and its delta and descriptor are not left held as files this process writes
    (they would refuse later outputs, a log file, for the rest of the process)."""
    from ploopfs.errors import ExitCode
    from ploopfs.volume import fileio
    from ploopfs.volume.overlay import Overlay
    from ploopfs.volume.source import open_source

    src = corpus_case("v2-single")
    host = tmp_path / "host"
    with failing_host(mounter, tmp_path) as (dev, flag):
        kmount(dev, host, "ext4")
        try:
            ov = Overlay.open(open_source(src), None, str(host / "ov"))
            ov.write(0, b"q" * 4096)
            ov.close()
            (delta,) = glob.glob(str(host / "ov" / "root.hds.*"))
            flag.touch()
            with pytest.raises(PloopfsError) as e:
                Overlay.open(open_source(src), None, str(host / "ov"))
            assert e.value.exit_code == ExitCode.OUTPUT and "header" in e.value.what, e.value
            flag.unlink()
            for path in (delta, str(host / "ov" / "DiskDescriptor.xml")):
                os.close(fileio.open_log(path))  # appends nothing; refused if still held
        finally:
            kumount(host)


def test_failed_fsync_is_not_forgotten(corpus_case: Callable[[str], Path], mounter: Mounter,
                                       tmp_path: Path) -> None:
    """Linux reports a failed write-back to fsync once, and a later fsync succeeds although
    the data never reached the disk (the pages are clean again). DIR here is on ext4 on a loop
    device whose writes fail for a while (tests/faultfs.py --fail-writes). After a flush failed, the
    overlay must not write BAT entries for data whose write-back failed: every later flush
    fails, close leaves the delta marked in use, and once the host filesystem is remounted the
    cluster reads as it was below, never as the lost write's zeros."""
    from ploopfs.volume.overlay import Overlay
    from ploopfs.volume.source import OpenOptions, open_source

    src = corpus_case("v2-single")
    host = tmp_path / "host"
    second: OSError | None = None
    with failing_host(mounter, tmp_path) as (dev, flag):
            kmount(dev, host, "ext4")
            try:
                ov = Overlay.open(open_source(src), None, str(host / "ov"))
                c = ov.cluster_size
                x = next(v for v in range(ov.size // c)
                         if ov.base.map.find(v) >= 0 and any(ov.read(v * c, c)))
                below = bytes(ov.read(x * c, c))
                ov.write(x * c, b"\x5a" * c)  # a new cluster, in the page cache
                flag.touch()
                with pytest.raises(OSError):
                    ov.flush()  # its write-back fails
                flag.unlink()
                try:
                    ov.flush()
                except OSError as e:
                    second = e
                with contextlib.suppress(OSError, PloopfsError):
                    ov.close()
            finally:
                kumount(host)
            kmount(dev, host, "ext4", "ro")  # what the disk holds, not the page cache
            try:
                with open_source(host / "ov", OpenOptions(allow_outside_paths=True)) as d:
                    got = bytes(d.volume().read(x * c, c))
                is_dirty = dirty(host / "ov")
            finally:
                kumount(host)
    assert got in (below, b"\x5a" * c), "a BAT entry points at data whose write-back failed"
    assert second is not None, "a flush after a failed one claimed success"
    assert is_dirty, "the delta was marked closed after a failed flush"


def test_failed_flush_through_the_mount(corpus_case: Callable[[str], Path], mounter: Mounter,
                                        tmp_path: Path) -> None:
    """The same failed write-back seen through the mount: fsync of a writer fails with EIO and
    keeps failing, a writer's close reports it, but a read-only open still reads and closes
    cleanly (close errors are for writes: `cat` calls its input unreadable otherwise)."""
    src = corpus_case("v2-single")
    host = tmp_path / "host"
    with failing_host(mounter, tmp_path) as (dev, flag):
        kmount(dev, host, "ext4")
        try:
            m = mounter.mount(src, "--overlay", host / "ov")
            m.errors_expected = True  # the failed flushes, checked below
            try:
                fd = os.open(m / "disk", os.O_RDWR)
                os.pwrite(fd, b"\x5a" * 8192, 3 * MiB)
                flag.touch()
                with pytest.raises(OSError) as e:
                    os.fsync(fd)
                assert e.value.errno == errno.EIO
                flag.unlink()
                with pytest.raises(OSError):
                    os.fsync(fd)  # not forgotten
                r = subprocess.run(["cat", str(m / "disk")], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, timeout=120)
                assert r.returncode == 0, r.stderr
                with pytest.raises(OSError) as e:
                    os.close(fd)
                assert e.value.errno == errno.EIO
                assert any("flush of the overlay failed" in x for x in m.error_lines())
            finally:
                mounter.umount(m)
                wait_pid_gone(m.pid, 15)
        finally:
            kumount(host)
