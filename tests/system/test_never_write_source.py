"""No command writes, truncates or removes a file of a source: not by its own path, through a
folder or descriptor source, a symlink, a hard link, or a redirected standard output. `--force`
replaces only ploopfs's own earlier outputs. Every source tree is hashed before and after
(corpus_case), and every refused target must still exist with its bytes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PLOOPFS, run_cli, sha256_file
from mounting import Mounter, is_mounted

OUTPUT = 11  # docs/cli.md: writing the output failed / refused


@pytest.fixture
def disk(corpus_case: Callable[[str], Path]) -> Path:
    return corpus_case("v1-chain2")


def _targets(disk: Path, links: Path) -> dict[str, Path]:
    """Every way to name a file of `disk`: the descriptor, each image, a symlink to an image,
    a symlink to the descriptor, a hard link to an image (outside the source folder)."""
    images = sorted(p for p in disk.iterdir() if p.name.startswith("root.hdd"))
    links.mkdir(exist_ok=True)
    sym, symd, hard = links / "sym-image", links / "sym-descriptor", links / "hard-image"
    sym.symlink_to(images[-1])
    symd.symlink_to(disk / "DiskDescriptor.xml")
    os.link(images[0], hard)
    return {"descriptor": disk / "DiskDescriptor.xml", "base": images[0], "delta": images[-1],
            "symlink": sym, "symlink-descriptor": symd, "hardlink": hard}


def _refused(r: subprocess.CompletedProcess[bytes], target: Path, before: str) -> None:
    assert r.returncode == OUTPUT, (r.returncode, r.stderr.decode())
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "refusing" in err, err
    assert target.exists() and sha256_file(target) == before, f"{target} was changed"


@pytest.fixture
def targets(disk: Path, tmp_path: Path) -> dict[str, Path]:
    return _targets(disk, tmp_path / "links")


NAMES = ["descriptor", "base", "delta", "symlink", "symlink-descriptor", "hardlink"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("force", [False, True])
def test_signature_never_writes_a_source(disk: Path, targets: dict[str, Path], name: str,
                                         force: bool) -> None:
    t = targets[name]
    before = sha256_file(t)
    _refused(run_cli("signature", *(["--force"] if force else []), disk, t), t, before)


@pytest.mark.parametrize("name", NAMES)
def test_delta_and_export_and_diff_never_write_a_source(disk: Path, targets: dict[str, Path],
                                                        tmp_path: Path, name: str) -> None:
    t = targets[name]
    before = sha256_file(t)
    sig = tmp_path / "sig"
    assert run_cli("signature", disk, sig).returncode == 0
    _refused(run_cli("delta", "--force", sig, disk, t), t, before)
    _refused(run_cli("export", disk, t), t, before)
    _refused(run_cli("diff", disk, disk, "-o", t), t, before)
    _refused(run_cli("diff", "-f", "json", disk, disk, "-o", t), t, before)
    _refused(run_cli("restore-descriptor", disk, "-o", t), t, before)


def test_patch_never_writes_its_inputs_or_a_foreign_file(disk: Path, tmp_path: Path) -> None:
    raw, sig, delta = tmp_path / "old.raw", tmp_path / "sig", tmp_path / "delta"
    assert run_cli("export", disk, raw).returncode == 0
    assert run_cli("signature", raw, sig).returncode == 0
    assert run_cli("delta", sig, disk, delta).returncode == 0
    for t in (raw, delta):
        _refused(run_cli("patch", "--force", raw, delta, t), t, sha256_file(t))
    # a file ploopfs did not write: --force does not replace it either
    foreign = tmp_path / "foreign.raw"
    foreign.write_bytes(b"not ours" * 100)
    _refused(run_cli("patch", "--force", raw, delta, foreign), foreign, sha256_file(foreign))
    # a source image of another disk is no output of ours
    img = disk / "root.hdd"
    _refused(run_cli("patch", "--force", raw, delta, img), img, sha256_file(img))


def test_force_replaces_our_own_earlier_output(disk: Path, tmp_path: Path) -> None:
    sig = tmp_path / "sig"
    assert run_cli("signature", disk, sig).returncode == 0
    first = sha256_file(sig)
    r = run_cli("signature", disk, sig)
    assert r.returncode == OUTPUT and b"--force" in r.stderr
    r = run_cli("signature", "--force", "--block-size", "8192", disk, sig)
    assert r.returncode == 0, r.stderr.decode()
    assert sha256_file(sig) != first  # really replaced
    # rdiff reads our replaced signature: it is a complete, valid file
    raw = tmp_path / "disk.raw"
    assert run_cli("export", disk, raw).returncode == 0
    ref = tmp_path / "ref.sig"
    subprocess.run(["rdiff", "signature", "-b", "8192", raw, ref], check=True)
    assert sha256_file(ref) == sha256_file(sig)


@pytest.mark.parametrize("cmd", ["export-ploop", "recover", "compact", "diff-ploop"])
def test_folder_outputs_never_write_into_a_source_folder(disk: Path, cmd: str) -> None:
    args = {"export-ploop": ["export", "-f", "ploop", disk, disk],
            "recover": ["recover", disk, disk],
            "compact": ["compact", disk, disk],
            "diff-ploop": ["diff", "-f", "ploop", disk, disk, "-o", disk]}[cmd]
    r = run_cli(*args)
    assert r.returncode == OUTPUT, r.stderr.decode()
    assert "refusing" in r.stderr.decode()


def test_stdout_redirected_into_a_source_is_refused(disk: Path) -> None:
    img = disk / "root.hdd"
    before = sha256_file(img)
    for args in (["export", disk, "-"], ["signature", disk, "-"],
                 ["diff", "-f", "json", disk, disk, "-o", "-"]):
        with open(img, "ab") as out:
            r = subprocess.run([str(PLOOPFS), *map(str, args)], stdout=out,
                               stderr=subprocess.PIPE, check=False, timeout=60)
        assert r.returncode == OUTPUT, (args, r.stderr.decode())
        assert sha256_file(img) == before




@pytest.mark.parametrize("name", ["descriptor", "delta", "symlink", "hardlink"])
@pytest.mark.parametrize("opt", ["--pid-file", "--log-file"])
def test_mount_pid_and_log_files_never_a_source(disk: Path, targets: dict[str, Path],
                                                mounter: Mounter, name: str, opt: str) -> None:
    t = targets[name]
    before = sha256_file(t)
    mnt = mounter.mountpoint()
    r = mounter.run("mount", disk, mnt, opt, t)
    assert r.returncode == OUTPUT, r.stderr
    assert "refusing" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not is_mounted(mnt), "a refused mount left a mount behind"
    assert t.exists() and sha256_file(t) == before


def test_mount_pid_file_removed_only_if_ours(disk: Path, mounter: Mounter,
                                             tmp_path: Path) -> None:
    """umount removes the pid file the mount wrote; a foreign file at that name is refused
    and left alone."""
    m = mounter.mount(disk)
    pidf = mounter.root / f"{m.mountpoint.name}.pid"
    assert pidf.read_text().strip() == str(m.pid)
    assert mounter.umount(m).returncode == 0
    mounter.mounts.remove(m)
    from mounting import wait_until

    wait_until(lambda: not pidf.exists(), 10, "pid file removed at unmount")
    foreign = tmp_path / "foreign.pid"
    foreign.write_text("12345\n")
    mnt = mounter.mountpoint("again")
    r = mounter.run("mount", disk, mnt, "--pid-file", foreign)
    assert r.returncode == OUTPUT and "not an earlier ploopfs output" in r.stderr, r.stderr
    assert foreign.read_text() == "12345\n" and not is_mounted(mnt)


def test_failed_output_removes_only_what_it_created(disk: Path, tmp_path: Path) -> None:
    """A patch whose delta is bad fails after creating its output: that output goes, and a
    file the command did not create is never removed."""
    raw, bad = tmp_path / "old.raw", tmp_path / "bad.delta"
    assert run_cli("export", disk, raw).returncode == 0
    bad.write_bytes(b"rs\x026" + b"\x41" * 10)  # DELTA magic, then a bogus command
    out = tmp_path / "out.raw"
    r = run_cli("patch", raw, bad, out)
    assert r.returncode == 14, r.stderr.decode()
    assert not out.exists()
    img = disk / "root.hdd"
    _refused(run_cli("patch", raw, bad, img), img, sha256_file(img))
