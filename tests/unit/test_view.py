"""content/view.py: the file object over a read callable behaves like io.BytesIO over the same
bytes (random seeks and reads, reads past the end), and over a Volume and a partition of it."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from ploopfs.content.view import ByteView, partition_view, volume_view
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter

C = 64 << 10


def _reader(model: bytes, calls: list[tuple[int, int]] | None = None):
    def read(offset: int, length: int) -> bytes:
        if calls is not None:
            calls.append((offset, length))
        assert offset >= 0 and length >= 0
        return model[offset:offset + length]
    return read


@pytest.mark.parametrize("seed", range(8))
def test_random_seeks_and_reads_match_bytesio(seed: int) -> None:
    rnd = random.Random(seed)
    model = rnd.randbytes(rnd.choice([0, 1, 511, 4096, 100_003]))
    base = rnd.choice([0, 0, 1, 777])
    size = max(0, len(model) - base - rnd.choice([0, 5]))
    ref = io.BytesIO(model[base:base + size])
    f = ByteView(_reader(model), size, base=base)
    assert f.size == size and f.readable() and f.seekable() and not f.writable()
    for _ in range(300):
        op = rnd.randrange(6)
        if op == 0:
            whence = rnd.choice([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END])
            lo = {os.SEEK_SET: 0, os.SEEK_CUR: -ref.tell(), os.SEEK_END: -size}[whence]
            off = rnd.randint(lo, lo + size + 50)  # past the end too
            assert f.seek(off, whence) == ref.seek(off, whence)
        elif op == 1:
            n = rnd.choice([0, 1, 7, 512, 4096, size + 10, -1])
            assert f.read(n) == ref.read(n)
        elif op == 2:
            buf = bytearray(rnd.randint(0, 9000))
            want = bytearray(len(buf))
            assert f.readinto(buf) == ref.readinto(want)
            assert buf == want
        elif op == 3:
            assert f.read() == ref.read()
        elif op == 4:
            assert f.readall() == ref.read()
        else:
            assert f.tell() == ref.tell()
        assert f.tell() == ref.tell()


def test_reads_past_the_end_and_bad_seeks() -> None:
    calls: list[tuple[int, int]] = []
    f = ByteView(_reader(bytes(range(100)), calls), 60, base=10)
    f.seek(55)
    assert f.read(100) == bytes(range(65, 70))
    assert f.read(1) == b"" and f.read() == b""
    f.seek(1000)
    assert f.read(4) == b"" and f.readinto(bytearray(4)) == 0 and f.tell() == 1000
    assert all(o + n <= 70 for o, n in calls), "read past the view"
    with pytest.raises(OSError):
        f.seek(-1)
    with pytest.raises(ValueError):
        f.seek(0, 3)
    f.close()
    with pytest.raises(ValueError):
        f.read(1)
    with pytest.raises(ValueError):
        f.seek(0)


def test_buffered_and_text_wrappers() -> None:
    model = b"line one\nline two\n" * 1000
    with io.BufferedReader(ByteView(_reader(model), len(model))) as b:
        assert b.readline() == b"line one\n"
        b.seek(-9, os.SEEK_END)
        assert b.read() == b"line two\n"
    assert io.TextIOWrapper(io.BufferedReader(ByteView(_reader(model), len(model)))).readlines() \
        == model.decode().splitlines(keepends=True)


def test_short_reader_is_eof() -> None:
    """A reader that returns less than asked (a lenient reader at damage) ends the read there."""
    f = ByteView(lambda o, n: b"x" * min(n, 3), 10)
    assert f.read(8) == b"xxx" and f.tell() == 3


def test_volume_and_partition_views(tmp_path: Path) -> None:
    model = bytearray(1 << 20)
    model[C:2 * C] = os.urandom(C)
    model[3 * C + 100:3 * C + 200] = b"p" * 100
    with ImageWriter.create(tmp_path / "root.hds", 1 << 20, C) as w:
        w.write_cluster(1, bytes(model[C:2 * C]))
        w.write_cluster(3, bytes(model[3 * C:4 * C]))
    with open_source(tmp_path / "root.hds") as disk:
        vol = disk.volume(None)
        v = volume_view(vol)
        assert v.size == 1 << 20 and v.read() == model
        v.seek(C - 5)
        buf = bytearray(b"\xff") * (C + 10)  # holes must come back as zeros
        assert v.readinto(buf) == C + 10 and buf == model[C - 5:2 * C + 5]
        p = partition_view(vol, 3 * C, 2 << 20)  # cut at the end of the disk
        assert p.size == (1 << 20) - 3 * C
        p.seek(100)
        assert p.read(100) == b"p" * 100
        assert partition_view(vol, 2 << 20, C).read() == b""
