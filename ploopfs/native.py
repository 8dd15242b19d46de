"""Typed wrappers around the C helpers in ``ploopfs._native`` (built from native/ by cffi)."""

from __future__ import annotations

from typing import TypeAlias

from ploopfs._native import ffi, lib

# Any C-contiguous object exporting the buffer protocol is accepted (bytes, bytearray,
# memoryview, mmap, array.array, numpy arrays); collections.abc.Buffer needs Python 3.12.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["Buffer", "blake2b_lanes", "blake2b_many", "compare_blocks", "count_nonzero_u32", "ffi",
           "first_nonzero", "is_zero", "lib", "version"]


def _view(buf: Buffer) -> memoryview:
    """A flat byte view of any bytes-like object; ValueError unless it is C-contiguous."""
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError("buffer must be C-contiguous")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def version() -> int:
    """ABI version of the compiled module."""
    return int(lib.pf_version())


def first_nonzero(buf: Buffer) -> int:
    """Index of the first non-zero byte of ``buf``, or ``len(buf)`` if every byte is zero."""
    mv = _view(buf)
    n = mv.nbytes
    if n == 0:
        return 0
    return int(lib.pf_first_nonzero(ffi.from_buffer("unsigned char[]", mv), n))


def is_zero(buf: Buffer) -> bool:
    """True if every byte of ``buf`` is zero (an empty buffer is zero)."""
    mv = _view(buf)
    n = mv.nbytes
    return n == 0 or lib.pf_first_nonzero(ffi.from_buffer("unsigned char[]", mv), n) == n


def count_nonzero_u32(buf: Buffer) -> int:
    """Number of non-zero 32-bit entries in ``buf`` (native byte order does not matter).

    ``len(buf)`` in bytes must be a multiple of 4, else ValueError.
    """
    mv = _view(buf)
    n = mv.nbytes
    if n % 4:
        raise ValueError(f"buffer length {n} is not a multiple of 4")
    if n == 0:
        return 0
    # The C side loads uint32_t directly; a from_buffer pointer may be unaligned (e.g. a
    # memoryview slice at an odd offset), so copy to an aligned cdata array in that case.
    ptr = ffi.from_buffer("unsigned char[]", mv)
    if int(ffi.cast("uintptr_t", ptr)) % 4:
        aligned = ffi.new("uint32_t[]", n // 4)
        ffi.memmove(aligned, mv, n)
        return int(lib.pf_count_nonzero_u32(aligned, n // 4))
    return int(lib.pf_count_nonzero_u32(ffi.cast("const uint32_t *", ptr), n // 4))


def compare_blocks(a: Buffer, b: Buffer, block_len: int, threads: int = 2) -> bytes:
    """Per-block equality of two equal-length buffers: byte k is 1 if block k (``block_len``
    bytes, the last one may be short) is equal, else 0. memcmp in C over ``threads`` threads,
    without the GIL."""
    va, vb = _view(a), _view(b)
    if va.nbytes != vb.nbytes:
        raise ValueError(f"buffers differ in length ({va.nbytes} vs {vb.nbytes})")
    if block_len <= 0:
        raise ValueError(f"block length {block_len} must be positive")
    n = -(-va.nbytes // block_len)
    if n == 0:
        return b""
    eq = ffi.new("unsigned char[]", n)
    lib.pf_compare_blocks(ffi.from_buffer("unsigned char[]", va),
                          ffi.from_buffer("unsigned char[]", vb), va.nbytes, block_len, eq, threads)
    return ffi.buffer(eq, n)[:]


def blake2b_many(msgs: list[Buffer], digest_size: int = 32) -> list[bytes]:
    """BLAKE2b (unkeyed) digests of equal-length messages, hashed side by side in SIMD lanes
    (native/pf_b2x.h); equal to ``hashlib.blake2b(m, digest_size=digest_size)`` for each."""
    views = [_view(m) for m in msgs]
    if not views:
        return []
    n = views[0].nbytes
    if any(v.nbytes != n for v in views):
        raise ValueError("messages differ in length")
    if not 1 <= digest_size <= 64:
        raise ValueError(f"digest size {digest_size} is not 1..64")
    keep = [ffi.from_buffer("unsigned char[]", v) for v in views]
    ptrs = ffi.new("const unsigned char *[]", keep)
    out = ffi.new("unsigned char[]", len(views) * digest_size)
    if lib.pf_blake2b_many(ptrs, len(views), n, digest_size, out) != 0:
        raise ValueError("pf_blake2b_many refused its arguments")
    raw = ffi.buffer(out)[:]
    return [raw[i * digest_size:(i + 1) * digest_size] for i in range(len(views))]


def blake2b_lanes(limit: int | None = None) -> int:
    """Lanes per batch of the multi-buffer BLAKE2b in use (8 AVX-512, 4 AVX2, 1 libb2);
    with ``limit``, use at most that many first (tests)."""
    if limit is not None:
        return int(lib.pf_blake2b_limit(limit))
    return int(lib.pf_blake2b_lanes())
