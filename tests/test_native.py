"""Tests of ploopfs.native (the cffi-built C helpers) against pure-Python references."""

from __future__ import annotations

import array
import random
import struct

import pytest

from ploopfs import native


def ref_first_nonzero(buf: bytes) -> int:
    for i, b in enumerate(buf):
        if b:
            return i
    return len(buf)


def ref_count_nonzero_u32(buf: bytes) -> int:
    return sum(1 for (v,) in struct.iter_unpack("<I", buf) if v)


def sparse_buffer(rng: random.Random, n: int, nonzero: int) -> bytes:
    b = bytearray(n)
    for _ in range(nonzero):
        if n:
            b[rng.randrange(n)] = rng.randrange(1, 256)
    return bytes(b)


def test_version() -> None:
    assert native.version() == 1


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]])
def test_empty(empty: native.Buffer) -> None:
    assert native.first_nonzero(empty) == 0
    assert native.is_zero(empty) is True
    assert native.count_nonzero_u32(empty) == 0


def test_every_position_and_offset() -> None:
    for length in range(71):
        for off in range(9):
            base = bytearray(off + length + 3)
            view = memoryview(base)[off : off + length]
            assert native.first_nonzero(view) == length
            assert native.is_zero(view)
            for pos in range(length):
                base[off + pos] = 0x80
                assert native.first_nonzero(view) == pos, (length, off, pos)
                assert not native.is_zero(view)
                base[off + pos] = 0


def test_bytes_outside_view_are_ignored() -> None:
    base = b"\x01" + bytes(100) + b"\x01"
    for length in range(101):
        assert native.first_nonzero(memoryview(base)[1 : 1 + length]) == length


@pytest.mark.parametrize("seed", range(5))
def test_random_first_nonzero(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        n = rng.randrange(0, 3000)
        buf = sparse_buffer(rng, n, rng.randrange(0, 3))
        off = rng.randrange(0, 8) if n > 8 else 0
        expected = ref_first_nonzero(buf[off:])
        for candidate in (buf[off:], bytearray(buf)[off:], memoryview(buf)[off:]):
            assert native.first_nonzero(candidate) == expected
            assert native.is_zero(candidate) is (expected == len(buf) - off)


def test_large_buffers() -> None:
    n = (8 << 20) + 5
    buf = bytearray(n)
    assert native.is_zero(buf)
    for pos in (0, 1, 4095, 4096, n // 2, n - 8, n - 1):
        buf[pos] = 1
        assert native.first_nonzero(buf) == pos
        assert native.first_nonzero(memoryview(buf)[1:]) == (pos - 1 if pos else n - 1)
        buf[pos] = 0


def test_other_buffer_types() -> None:
    # multi-byte item formats are handled as raw bytes
    arr = array.array("I", [0, 0, 0x100, 0])
    assert native.first_nonzero(arr) == ref_first_nonzero(arr.tobytes())
    assert native.count_nonzero_u32(arr) == 1
    assert native.first_nonzero(memoryview(arr)) == ref_first_nonzero(arr.tobytes())
    two_d = memoryview(bytes(12)).cast("B", (3, 4))
    assert native.is_zero(two_d)


def test_non_contiguous_rejected() -> None:
    strided = memoryview(b"\x00\x01" * 8)[::2]
    for fn in (native.first_nonzero, native.is_zero, native.count_nonzero_u32):
        with pytest.raises(ValueError, match="contiguous"):
            fn(strided)


@pytest.mark.parametrize("seed", range(5))
def test_random_count_nonzero_u32(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(200):
        n = rng.randrange(0, 600)
        vals = [0 if rng.random() < 0.5 else 1 << rng.randrange(32) for _ in range(n)]
        raw = struct.pack(f"<{n}I", *vals)
        expected = sum(1 for v in vals if v)
        assert ref_count_nonzero_u32(raw) == expected
        assert native.count_nonzero_u32(raw) == expected
        assert native.count_nonzero_u32(bytearray(raw)) == expected
        # unaligned start: the wrapper must cope (it copies to aligned memory)
        for off in range(1, 4):
            padded = bytes(off) + raw + bytes(4 - off)
            assert native.count_nonzero_u32(memoryview(padded)[off : off + len(raw)]) == expected


def test_count_nonzero_u32_every_byte_lane() -> None:
    for lane in range(4):
        raw = bytearray(4 * 9)
        raw[4 * 5 + lane] = 1
        assert native.count_nonzero_u32(raw) == 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 4097])
def test_count_nonzero_u32_bad_length(n: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        native.count_nonzero_u32(bytes(n))


def test_count_nonzero_u32_large() -> None:
    n = 1 << 20
    arr = array.array("I", bytes(4 * n))
    for i in range(0, n, 1000):
        arr[i] = i + 1
    assert native.count_nonzero_u32(arr) == len(range(0, n, 1000))


@pytest.mark.parametrize("lanes", [8, 4, 1])
def test_blake2b_many_equals_hashlib(lanes: int) -> None:
    """The multi-buffer BLAKE2b (native/pf_b2x.c) against hashlib's, for each lane width the
    CPU offers: lengths around the 128-byte block edges, partial batches, digest sizes 1..64,
    unaligned messages."""
    import hashlib

    got_lanes = native.blake2b_lanes(lanes)
    try:
        assert got_lanes <= lanes
        rng = random.Random(lanes)
        area = rng.randbytes(300_000)
        for length in (0, 1, 127, 128, 129, 256, 1000, 4096, 65537):
            for count in (1, 3, 4, 5, 8, 9, 17):
                for size in (1, 16, 20, 32, 64):
                    starts = [rng.randrange(len(area) - length) for _ in range(count)]
                    msgs = [memoryview(area)[s:s + length] for s in starts]
                    want = [hashlib.blake2b(m, digest_size=size).digest() for m in msgs]
                    assert native.blake2b_many(msgs, size) == want, (length, count, size)
    finally:
        native.blake2b_lanes(8)


def test_blake2b_many_bad_arguments() -> None:
    with pytest.raises(ValueError):
        native.blake2b_many([b"ab", b"abc"])
    with pytest.raises(ValueError):
        native.blake2b_many([b"ab"], 65)
    assert native.blake2b_many([]) == []
