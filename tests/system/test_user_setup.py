"""What an ordinary user gets after `tools/setup` (which runs as root), and the mount guards that
protect users.

* `.venv/bin/ploopfs` runs for user `nobody`: `--version`, then `info` and `export` of a disk that
  only nobody can read (a pyenv interpreter under /root, or a venv made under umask 077, breaks
  exactly this). Where /dev/fuse lets ordinary users mount, nobody also mounts the disk, reads
  it and unmounts it.
* A non-empty mountpoint is refused (its files would be hidden); `-o nonempty` mounts anyway.
* `--files -o allow_other` keeps the container's owners and modes for other users (the daemon
  reads every file itself, so the kernel must check them: `default_permissions`, always on).

Sources are hashed before and after every test (guard_sources / corpus_case). Mounts are made
and always torn down by tests/mounting.py's Mounter.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PLOOPFS, REPO, expected_hashes, sha256_file
from mounting import CMD_TIMEOUT, EXIT_TIMEOUT, Mounter, is_mounted, mount_entry, wait_pid_gone

from ploopfs.errors import ExitCode

EXT4_CASE = "ext4-gpt-chain2"
NOBODY = "nobody"
try:
    NOBODY_GID = pwd.getpwnam(NOBODY).pw_gid  # nogroup on Debian
except KeyError:
    NOBODY_GID = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY_GID}", "--clear-groups"]
Guard = Callable[..., None]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as user nobody)")


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


needs_fuse = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")


def as_nobody(*cmd: str | os.PathLike[str], env: dict[str, str] | None = None,
              timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, *map(os.fspath, cmd)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


def nobody_env(home: Path) -> dict[str, str]:
    """An ordinary user's environment: no pyenv on PATH, HOME, TMPDIR and the runtime folder
    their own."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "TMPDIR": str(home), "XDG_RUNTIME_DIR": str(home)}


def chown_nobody(*paths: Path) -> None:
    for p in paths:
        os.chown(p, pwd.getpwnam(NOBODY).pw_uid, NOBODY_GID, follow_symlinks=False)


def chown_tree(root: Path) -> None:
    chown_nobody(root)
    for dirpath, dirnames, filenames in os.walk(root):
        chown_nobody(*(Path(dirpath, n) for n in dirnames + filenames))


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A folder of nobody's, mode 0700 (only nobody, and root, can enter it), outside pytest's
    tmp_path (whose parent /tmp/pytest-of-root is 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to act as user nobody)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    try:
        pwd.getpwnam(NOBODY)
    except KeyError:
        pytest.skip(f"no user {NOBODY}")
    # The repository itself must be reachable by other users; a checkout under a root-only
    # folder (e.g. /root) cannot be fixed by tools/setup, so that alone is a reason to skip.
    reach = as_nobody("/usr/bin/test", "-x", REPO)
    if reach.returncode != 0:
        pytest.skip(f"{REPO} is not traversable by user {NOBODY} (a folder above it is not "
                    "o+x): other users cannot run this checkout's .venv/bin/ploopfs at all")
    home = Path(tempfile.mkdtemp(prefix="ploopfs-nobody-"))
    try:
        chown_nobody(home)
        home.chmod(0o700)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def nobody_disk(nobody_home: Path, corpus_root: Path, guard_sources: Guard) -> Path:
    """The ext4 corpus case copied into nobody's folder and owned by nobody: only nobody (and
    root) can read it. Its files are hashed now and checked at teardown."""
    disk = nobody_home / EXT4_CASE
    shutil.copytree(corpus_root / EXT4_CASE, disk)
    chown_tree(disk)
    disk.chmod(0o700)
    guard_sources(disk)
    return disk


class NobodyMounter(Mounter):
    """A Mounter whose `ploopfs` commands run as nobody, in a folder of nobody's; teardown
    (fusermount3 -u, ending PIDs) still runs as root."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        chown_nobody(root)
        super().__init__(root)
        chown_nobody(self.root / "tmp", self.root / "run")
        self.env.update(nobody_env(self.root), TMPDIR=str(self.root / "tmp"),
                        XDG_RUNTIME_DIR=str(self.root / "run"))

    def mountpoint(self, name: str = "mnt") -> Path:
        p = super().mountpoint(name)
        chown_nobody(p)
        return p

    def run(self, *args: str | os.PathLike[str], timeout: float = CMD_TIMEOUT,
            cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return super().run(*args, timeout=timeout, cmd=[*AS_NOBODY, *(cmd or [str(PLOOPFS)])])




# -- 1. the installed CLI, as an ordinary user ----------------------------------------------------
def test_version_as_nobody(nobody_home: Path) -> None:
    r = as_nobody(PLOOPFS, "--version", env=nobody_env(nobody_home))
    assert r.returncode == 0, (
        f"{PLOOPFS} does not run for user {NOBODY} (exit {r.returncode}): {r.stderr.strip()}; "
        "tools/setup must build the venv on an interpreter every user can run")
    assert r.stdout.startswith("ploopfs "), r.stdout


def test_info_and_export_as_nobody(nobody_home: Path, nobody_disk: Path) -> None:
    env = nobody_env(nobody_home)
    st = nobody_disk.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid != 0, "the disk must be nobody's own"

    info = as_nobody(PLOOPFS, "info", nobody_disk, env=env)
    assert info.returncode == 0, info.stderr
    assert info.stderr == "", info.stderr
    meta = json.loads((nobody_disk / "case.json").read_text())
    j = as_nobody(PLOOPFS, "info", "--json", nobody_disk, env=env)
    assert j.returncode == 0, j.stderr
    assert json.loads(j.stdout)["disk"]["size_bytes"] == meta["virtual_size_bytes"]

    out = nobody_home / "top.raw"
    r = as_nobody(PLOOPFS, "export", "--no-progress", nobody_disk, out, env=env)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_uid == st.st_uid, "the export belongs to the user who made it"
    assert sha256_file(out) == expected_hashes(nobody_disk)["expected.raw"]


# -- 2. a mount as an ordinary user ----------------------------------------------------------------
def _unprivileged_fuse() -> str | None:
    """Why ordinary users cannot make FUSE mounts here, or None when they can."""
    exe = shutil.which("fusermount3")
    if exe is None:
        return "no fusermount3"
    st = os.stat(exe)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        return f"{exe} is not setuid root ({stat.filemode(st.st_mode)})"
    # fusermount3 opens /dev/fuse with the user's own file-system uid
    r = as_nobody("/usr/bin/test", "-r", "/dev/fuse", "-a", "-w", "/dev/fuse")
    if r.returncode != 0:
        mode = stat.filemode(os.stat("/dev/fuse").st_mode) if os.path.exists("/dev/fuse") else "-"
        return (f"/dev/fuse ({mode}) is not readable and writable by {NOBODY}: ordinary users "
                "cannot mount FUSE file systems on this machine (Debian's udev makes it 0666)")
    return None


@needs_root
def test_mount_as_nobody(nobody_home: Path, nobody_disk: Path) -> None:
    why = _unprivileged_fuse()
    if why:
        pytest.skip(why)
    env = nobody_env(nobody_home)
    out = nobody_home / "top.raw"
    r = as_nobody(PLOOPFS, "export", "--no-progress", nobody_disk, out, env=env)
    assert r.returncode == 0, r.stderr
    want = sha256_file(out)

    mounter = NobodyMounter(nobody_home / "m")
    try:
        m = mounter.mount(nobody_disk)
        ls = as_nobody("ls", m.mountpoint, env=env)
        assert ls.returncode == 0, ls.stderr
        assert {"disk", "info.json", "part1", "snapshots"} <= set(ls.stdout.split())
        got = as_nobody("sha256sum", m / "disk", env=env)
        assert got.returncode == 0, got.stderr
        assert got.stdout.split()[0] == want
        u = mounter.umount(m)
        assert u.returncode == 0, u.stderr
        assert not is_mounted(m.mountpoint)
        assert wait_pid_gone(m.pid, EXIT_TIMEOUT), f"daemon {m.pid} did not exit"
    finally:
        problems = mounter.cleanup()
    assert not problems, problems


# -- 3. a non-empty mountpoint ---------------------------------------------------------------------
@needs_fuse
def test_nonempty_mountpoint_refused_unless_nonempty(corpus_case: Callable[[str], Path],
                                                     mounter: Mounter) -> None:
    d = corpus_case("v1-chain2")
    want = expected_hashes(d)["expected.raw"]
    mnt = mounter.mountpoint("full")
    (mnt / "keep.txt").write_text("hidden by a mount\n")
    for extra in ([], ["--files"]):  # refused before anything is opened or forked
        r = mounter.run("mount", d, mnt, *extra, "--pid-file", mounter.root / "bad.pid",
                        "--log-file", mounter.root / "bad.log")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == int(ExitCode.MOUNT) == 12, r.stderr
        assert len(lines) == 1 and lines[0].startswith(f"ploopfs: {mnt}: "), r.stderr
        assert "not empty" in lines[0] and "-o nonempty" in lines[0], lines[0]
        assert r.stdout == ""
        assert not is_mounted(mnt) and not (mounter.root / "bad.pid").exists()

    # -o nonempty mounts anyway (libfuse3 never sees the option), here and via mount.fuse3
    m = mounter.mount(d, "-o", "nonempty", mnt=mnt)
    assert sha256_file(m / "disk") == want
    assert "keep.txt" not in os.listdir(mnt)
    assert mounter.umount(m).returncode == 0
    assert not is_mounted(mnt) and os.listdir(mnt) == ["keep.txt"]
    r = mounter.run(d / "DiskDescriptor.xml", mnt, "-t", "fuse.ploopfs", "-o",
                    f"ro,nonempty,pid_file={mounter.root / 'helper.pid'}", cmd=["mount.fuse3"])
    if (mounter.root / "helper.pid").exists():
        mounter.pids.append(int((mounter.root / "helper.pid").read_text()))
    assert r.returncode == 0, r.stderr
    assert sha256_file(mnt / "disk") == want
    assert mounter.run("umount", mnt).returncode == 0
    assert not is_mounted(mnt) and os.listdir(mnt) == ["keep.txt"]


# -- 4. --files -o allow_other keeps the container's permissions -------------------------------
def _sh(*args: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(a) for a in args], check=True, capture_output=True, timeout=120)


def _ext4_ploop_disk(tmp: Path) -> Path:
    """A one-image ploop disk whose whole virtual disk is an ext4 (as `ploop init -P` makes),
    with root-owned files of modes 0644 and 0600 and a 0700 folder (mkfs.ext4 -d keeps owners
    and modes)."""
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    tree = tmp / "tree"
    (tree / "private").mkdir(parents=True)
    (tree / "public.txt").write_text("anyone may read this\n")
    (tree / "secret.txt").write_text("root only\n")
    (tree / "private" / "inner.txt").write_text("behind a 0700 folder\n")
    (tree / "public.txt").chmod(0o644)
    (tree / "secret.txt").chmod(0o600)
    (tree / "private" / "inner.txt").chmod(0o644)
    (tree / "private").chmod(0o700)
    tree.chmod(0o755)
    fs = tmp / "fs.raw"
    size = 8 << 20
    with fs.open("wb") as f:
        f.truncate(size)
    _sh("mkfs.ext4", "-q", "-F", "-d", tree, fs)
    disk = tmp / "disk"
    disk.mkdir()
    _sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", fs, disk / "root.hdd")
    write_descriptor(disk / "DiskDescriptor.xml", chain_descriptor(["root.hdd"], size, 1 << 20))
    return disk


def _read_as_nobody(mnt: Path, rel: str) -> subprocess.CompletedProcess[bytes]:
    """`cat` as nobody through a directory fd (the test's tmp folders are 0700)."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return subprocess.run([*AS_NOBODY, "cat", f"/proc/self/fd/{fd}/{rel}"], pass_fds=(fd,),
                              capture_output=True, timeout=30, check=False)
    finally:
        os.close(fd)


@needs_root
@needs_fuse
def test_files_allow_other_keeps_container_permissions(mounter: Mounter, tmp_path: Path,
                                                       guard_sources: Guard) -> None:
    disk = _ext4_ploop_disk(tmp_path / "build")
    guard_sources(disk)
    m = mounter.mount(disk, "--files", "-o", "allow_other")
    st = os.stat(m / "secret.txt")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    # root reads everything
    assert (m / "secret.txt").read_text() == "root only\n"
    assert (m / "private" / "inner.txt").read_text() == "behind a 0700 folder\n"
    # another user reads what the container lets them read, and nothing else
    ok = _read_as_nobody(m.mountpoint, "public.txt")
    assert ok.returncode == 0 and ok.stdout == b"anyone may read this\n", ok.stderr
    for rel in ("secret.txt", "private/inner.txt"):
        denied = _read_as_nobody(m.mountpoint, rel)
        assert denied.returncode != 0 and denied.stdout == b"", (rel, denied.stdout)
        assert b"Permission denied" in denied.stderr, (rel, denied.stderr)
    entry = mount_entry(m.mountpoint)  # the kernel checks them: default_permissions
    assert entry is not None and entry.fstype.startswith("fuse."), entry
    assert "allow_other" in entry.options and "default_permissions" in entry.options, entry
    for change in (lambda: os.chmod(m / "public.txt", 0o666), lambda: os.chown(m / "secret.txt", 1, 1),
                   lambda: (m / "public.txt").write_text("x")):
        with pytest.raises(OSError) as exc:
            change()
        assert exc.value.errno == errno.EROFS
    assert mounter.umount(m).returncode == 0
    assert not is_mounted(m.mountpoint)
