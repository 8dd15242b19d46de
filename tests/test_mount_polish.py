"""What `findmnt`, `df`, `stat` and `du` say about a mount (users' issues on `ploopfs mount`).

1. The mount's source is the disk's path (absolute), also through mount.fuse3, for any path.

Independent references: `qemu-img map` (which bytes of the disk some image holds, for every
snapshot's chain), util-linux partx (partition ranges), findmnt/df/stat from coreutils and
util-linux, e2fsck -fn (the damage is real), fuse2fs itself (what the refusal prevents).
Mounts are made and always torn down through tests/mounting.py's Mounter, by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PLOOPFS
from mounting import (
    Mount,
    Mounter,
    is_mounted,
    mount_entry,
)

from ploopfs.format.descriptor import bare_guid
from ploopfs.fuse.mount import fsname_option

KiB, MiB = 1 << 10, 1 << 20
CaseFactory = Callable[[str], Path]
EXT4_CASE = "ext4-gpt-chain2"
IN_USE = "marked in use"
UTF8 = {"LC_ALL": "C.UTF-8"}  # findmnt and df print non-ASCII paths as \x.. escapes in C


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


pytestmark = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse and fusermount3")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fuse2fs mounts)")


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Mounts for one test; at teardown every mount is gone and every process ended by PID."""
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        problems = m.cleanup()
    assert not problems, problems


# -- helpers ----------------------------------------------------------------------------------
def sh(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run([os.fspath(a) for a in args], check=True, capture_output=True,
                          text=True, timeout=300,
                          env=None if env is None else dict(os.environ, **env)).stdout


def case_meta(d: Path) -> dict:
    return json.loads((d / "case.json").read_text())


def sparse_case(corpus_case: CaseFactory, name: str) -> Path:
    """A corpus case copied, a raw base's zeros made holes again (the copy wrote them out):
    what a raw base stores is its data, so the figures below depend on it. Contents unchanged."""
    d = corpus_case(name)
    base = case_meta(d)["chain_base_to_top"][0]
    if not isinstance(base.get("header"), dict):
        sh("fallocate", "--dig-holes", d / base["file"])
    return d


def chains(d: Path) -> dict[str, tuple[list[Path], bool]]:
    """bare GUID -> (image files of its chain, base first; raw base?)."""
    levels = case_meta(d)["chain_base_to_top"]
    raw = not isinstance(levels[0].get("header"), dict)  # "raw (no header)"
    return {bare_guid(lv["guid"]): ([d / x["file"] for x in levels[:i + 1]], raw)
            for i, lv in enumerate(levels)}


def qemu_data_runs(img: str) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the disk that qemu-img map reports as data: held by some
    image of the chain (a raw base: the data of its file, holes aside)."""
    args = ["qemu-img", "map", "--output=json", img]
    if not img.startswith("json:"):
        args[3:3] = ["-f", "parallels"]
    return [(e["start"], e["start"] + e["length"]) for e in json.loads(sh(*args)) if e["data"]]


def clipped(runs: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(max(0, min(e, b) - max(s, a)) for s, e in runs)


def df_row(path: Path, fields: str) -> list[str]:
    """One `df --output=FIELDS -B1 PATH` row, split."""
    lines = sh("df", "-B1", f"--output={fields}", path, env=UTF8).splitlines()
    assert len(lines) == 2, lines
    return lines[1].split()


def findmnt(path: Path, column: str) -> str:
    return sh("findmnt", "-no", column, "--mountpoint", path, env=UTF8).strip()


def mount_with_cwd(mounter: Mounter, cwd: Path, source: str, mnt: Path, *args: str) -> Mount:
    """`ploopfs mount SOURCE MNT` run in `cwd` (a relative SOURCE), tracked like Mounter.mount."""
    log, pidf = mounter.root / f"{mnt.name}.log", mounter.root / f"{mnt.name}.pid"
    r = subprocess.run([str(PLOOPFS), "mount", source, str(mnt), "--pid-file", str(pidf),
                        "--log-file", str(log), *args], cwd=cwd, env=mounter.env,
                       capture_output=True, text=True, timeout=90, check=False)
    if pidf.exists():
        mounter.pids.append(int(pidf.read_text()))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    m = Mount(mnt, int(pidf.read_text()), log)
    mounter.mounts.append(m)
    return m


# -- 1. the source: the disk's absolute path --------------------------------------------------
def test_fsname_escapes_commas_and_backslashes() -> None:
    """libfuse splits -o at commas and unescapes backslashes: both are escaped."""
    assert fsname_option("/a/b") == "fsname=/a/b"
    assert fsname_option("/x,y\\z w") == "fsname=/x\\,y\\\\z w"
    assert fsname_option("rel/dir") == "fsname=" + os.path.join(os.getcwd(), "rel/dir")
    assert fsname_option("/ü").encode("us-ascii") == "fsname=/ü".encode()  # what pyfuse3 calls


@pytest.mark.parametrize("form", ["folder", "descriptor", "image"])
def test_source_is_the_disk_path(corpus_case: CaseFactory, mounter: Mounter, form: str) -> None:
    """A relative SOURCE in a folder whose name has a comma, a backslash, a space and a
    non-ASCII letter: findmnt, df and /proc/self/mountinfo name it absolute and exact; the type
    stays fuse.ploopfs."""
    d = corpus_case("v1-chain2")
    weird = mounter.root / "ct 101,a\\b-ü"
    if form == "image":  # a lone image (next to its descriptor it would draw a warning)
        weird.mkdir()
        shutil.copy(d / case_meta(d)["chain_base_to_top"][0]["file"], weird / "root.hds")
    else:
        shutil.copytree(d, weird)
    rel = {"folder": weird.name, "descriptor": f"{weird.name}/DiskDescriptor.xml",
           "image": f"{weird.name}/root.hds"}[form]
    mnt = mounter.mountpoint()
    m = mount_with_cwd(mounter, mounter.root, rel, mnt)
    want = str(mounter.root / rel)
    e = mount_entry(mnt)
    assert e is not None and (e.source, e.fstype) == (want, "fuse.ploopfs"), e
    assert findmnt(mnt, "SOURCE") == want
    assert findmnt(mnt, "FSTYPE") == "fuse.ploopfs"
    assert df_row(mnt, "source") == want.split()  # df prints it as is; split at the space
    assert os.listdir(m.mountpoint)  # and it serves
    assert mounter.umount(m).returncode == 0


def test_source_through_mount_fuse3(corpus_case: CaseFactory, mounter: Mounter) -> None:
    """The fstab form (mount.fuse3 runs `ploopfs SOURCE MNT -o OPTIONS`) names SOURCE too; an
    explicit -o fsname= wins over it."""
    d = corpus_case("v1-chain2")
    src = d / "DiskDescriptor.xml"
    for i, extra in enumerate(["", ",fsname=ct101-backup"]):
        mnt = mounter.mountpoint(f"helper{i}")
        pidf = mounter.root / f"helper{i}.pid"
        r = mounter.run(src, mnt, "-t", "fuse.ploopfs", "-o",
                        f"ro,nofail,pid_file={pidf}{extra}", cmd=["mount.fuse3"])
        if pidf.exists():
            mounter.pids.append(int(pidf.read_text()))
        assert r.returncode == 0, r.stderr
        assert findmnt(mnt, "SOURCE") == (str(src) if not extra else "ct101-backup")
        assert findmnt(mnt, "FSTYPE") == "fuse.ploopfs"
        assert mounter.run("umount", mnt).returncode == 0
        assert not is_mounted(mnt)


