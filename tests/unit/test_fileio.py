"""volume/fileio.py: open_own reopens only ploopfs's own earlier output (an overlay's delta,
docs/overlay.md), never a source, a link to one or an unmarked file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ploopfs.errors import ExitCode, PloopfsError
from ploopfs.volume import fileio


def xattrs(folder: Path) -> bool:
    probe = folder / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def test_open_own(tmp_path: Path) -> None:
    """fileio.open_own reopens only ploopfs's own earlier output, never a source or a link."""
    out = tmp_path / "out.img"
    os.close(fileio.create(out, what="test"))
    os.close(fileio.open_own(out))
    src = tmp_path / "src.img"
    src.write_bytes(b"s" * 4096)
    fileio.register_source(src)
    cases = [(src, "source"), (tmp_path / "hard", "source"), (tmp_path / "sym", "symbolic link"),
             (tmp_path / "twice", "hard links")]
    if xattrs(tmp_path):  # without extended attributes no file carries the mark
        cases.append((tmp_path / "plain", "not marked"))
    for bad, why in cases:
        if bad.name == "hard":
            os.link(src, bad)
        elif bad.name == "twice":  # our own output, but with a second name
            os.close(fileio.create(bad, what="test"))
            os.link(bad, tmp_path / "twice-link")
        elif bad.name == "sym":
            bad.symlink_to(out)
        elif bad.name == "plain":
            bad.write_bytes(b"p")
        with pytest.raises(PloopfsError) as e:
            os.close(fileio.open_own(bad))
        assert e.value.exit_code == ExitCode.OUTPUT and why in e.value.what, e.value.what
    assert src.read_bytes() == b"s" * 4096


def test_a_deleted_sources_inode_number_reused(tmp_path: Path) -> None:
    """A source deleted while the process runs frees its inode number; a new file given that
    number is no source when the filesystem tells generations apart (ext4, XFS), while a hard
    link to a live source stays refused."""
    src = tmp_path / "src.img"
    src.write_bytes(b"s" * 4096)
    fd = fileio.open_readonly(src)
    os.close(fd)
    with open(src, "rb") as f:
        if fileio._generation(f.fileno()) is None:
            pytest.skip("this filesystem numbers no inode generations")
    link = tmp_path / "link"
    os.link(src, link)
    with pytest.raises(PloopfsError) as e:
        fileio.check_not_source(str(link))
    assert e.value.exit_code == ExitCode.OUTPUT
    ino = src.stat().st_ino
    link.unlink()
    src.unlink()
    reused = None
    for i in range(2000):  # ext4 and XFS hand a freed inode number out again soon
        p = tmp_path / f"new{i}"
        p.write_bytes(b"n")
        if p.stat().st_ino == ino:
            reused = p
            break
    if reused is None:
        pytest.skip("the freed inode number was not handed out again")
    fileio.check_not_source(str(reused))  # not refused: a new file
    os.close(fileio.open_log(reused))


def test_a_folder_given_a_deleted_sources_inode_number(tmp_path: Path) -> None:
    """A folder that gets a deleted source's inode number is no source (another file type), on
    any filesystem: an output folder there is not refused."""
    src = tmp_path / "gone.img"
    src.write_bytes(b"g" * 4096)
    fileio.register_source(src)
    ino = src.stat().st_ino
    src.unlink()
    reused = None
    for i in range(2000):
        d = tmp_path / f"dir{i}"
        d.mkdir()
        if d.stat().st_ino == ino:
            reused = d
            break
    if reused is None:
        pytest.skip("the freed inode number was not handed out again")
    fileio.check_not_source(str(reused))
