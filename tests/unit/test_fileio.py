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
