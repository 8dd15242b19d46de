"""Typed wrappers around the C helpers in ``ploopfs._native`` (built from native/ by cffi).

The only module that touches the cffi handles (``ffi``, ``lib``): everything else calls C
through the functions and classes here, which take any C-contiguous buffer, check sizes and
raise instead of returning NULL or -1 (tests/unit/test_native.py checks that no other module
imports ``ploopfs._native``)."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TypeAlias

from ploopfs._native import ffi, lib

# Any C-contiguous object exporting the buffer protocol is accepted (bytes, bytearray,
# memoryview, mmap, array.array, numpy arrays); collections.abc.Buffer needs Python 3.12.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["HASH_BLAKE2", "HASH_MD4", "WEAK_RABINKARP", "WEAK_ROLLSUM", "Blake3", "Buffer", "DedupScanner",
           "DedupTable", "MapArrays", "MatchIndex", "Patcher", "SigWriter", "bat_nonzero", "blake2b_lanes",
           "blake2b_many", "candidate_runs", "cmd_copy", "cmd_literal", "count_nonzero_u32", "diff_window",
           "first_nonzero", "is_zero", "map_merge", "rabinkarp", "rollsum", "strong_sum", "version"]

# Block maps and BAT slots live in array.array (numpy is not imported on the way to a read or
# a diff: it cost every command ~75 ms of its start). Their item sizes, checked once:
assert array("I").itemsize == 4 and array("q").itemsize == 8
_FAILED = int(ffi.cast("size_t", -1))  # the (size_t)-1 of the pf_map functions
_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


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


class Blake3:
    """BLAKE3 (the official C implementation, native/pf_b3.h) with hashlib's interface, plus
    `feed`: a stream given piece by piece, each by its pair (its subtree's two top chaining
    values, from `diff_window`) where one is at hand, else by its bytes. The digest is BLAKE3 of
    the stream either way (what `b3sum` prints)."""

    name = "blake3"
    digest_size = 32

    def __init__(self, data: Buffer | None = None) -> None:
        self._st = ffi.new("unsigned char[]", lib.pf_b3_state_size())
        lib.pf_b3_init(self._st)
        if data is not None:
            self.update(data)

    def update(self, data: Buffer) -> None:
        mv = _view(data)
        if mv.nbytes:
            lib.pf_b3_update(self._st, ffi.from_buffer("unsigned char[]", mv), mv.nbytes)

    def feed(self, data: Buffer | None, length: int, piece: int, pairs: Buffer,
             have: Buffer) -> None:
        """`length` bytes in pieces of `piece` bytes: piece j by pairs[64 j:64 j + 64] when
        have[j] is set (and the stream is at a piece boundary), else by data's bytes."""
        ptr = ffi.NULL
        if data is not None:
            mv = _view(data)
            if mv.nbytes < length:
                raise ValueError(f"{mv.nbytes} bytes of data for a length of {length}")
            ptr = ffi.from_buffer("unsigned char[]", mv)
        if length and lib.pf_b3_feed(self._st, ptr, length, piece,
                                     ffi.from_buffer("unsigned char[]", _view(pairs)),
                                     ffi.from_buffer("unsigned char[]", _view(have))) != 0:
            raise ValueError("a piece has neither a usable pair nor data")

    @property
    def count(self) -> int:
        """Bytes of the stream so far."""
        return int(lib.pf_b3_count(self._st))

    def digest(self) -> bytes:
        out = ffi.new("unsigned char[32]")
        lib.pf_b3_final(self._st, out)
        return bytes(ffi.buffer(out))

    def hexdigest(self) -> str:
        return self.digest().hex()


RELEASE_OLD, RELEASE_NEW = lib.PF_RELEASE_OLD, lib.PF_RELEASE_NEW


def diff_window(old: Buffer, new: Buffer, offset: int, c: int, per: int, n: int, maybe: Buffer,
                flags: Buffer, first: int = 0, stride: int = 1,
                pairs: tuple[Buffer, Buffer, Buffer, Buffer] | None = None,
                release: int = 0, probe: int = 0, zero: Buffer | None = None) -> int:
    """Compare pieces first, first + stride, ... (`per` clusters of `c` bytes each) of a window
    of n clusters at byte `offset` of two disks: flags[k] = 1 where candidate cluster k
    (maybe[k]) differs or reaches past OLD's end, and zero[k] (when given) = 1 where such a
    changed cluster is all zeros in NEW, 0 for other candidates; with `pairs` = (pairs_old,
    have_old, pairs_new, have_new), also each piece's BLAKE3 pair for `Blake3.feed`, NEW's
    copied from OLD's for equal pieces (native/pf_b3.h). `release` (RELEASE_OLD | RELEASE_NEW, only for
    views of a shared file mapping) gives back each compared piece's pages of OLD, and of NEW
    where equal. `probe` (bytes, 0: off): each candidate cluster is compared first over its
    first `probe` bytes and only when they are equal over the rest, asked for first on the
    mapped sides (scan's PROBE windows); returns how many clusters the probe did not decide.
    Without the GIL."""
    vo, vn = _view(old), _view(new)
    per_cluster = [_view(maybe), _view(flags)] + ([] if zero is None else [_view(zero)])
    pv = [_view(x) for x in pairs] if pairs else []
    npieces = -(-n // per) if per > 0 else 0
    if any(a.nbytes < n for a in per_cluster) or any(
            x.nbytes < (64 if i % 2 == 0 else 1) * npieces for i, x in enumerate(pv)):
        raise ValueError("diff_window: maybe, flags, zero or pairs shorter than the window")
    p = [ffi.from_buffer("unsigned char[]", x) for x in pv] if pv else [ffi.NULL] * 4
    a = [ffi.from_buffer("unsigned char[]", x) for x in per_cluster]
    missed = lib.pf_diff_window(
        ffi.from_buffer("unsigned char[]", vo) if vo.nbytes else ffi.NULL, vo.nbytes,
        ffi.from_buffer("unsigned char[]", vn) if vn.nbytes else ffi.NULL, vn.nbytes,
        offset, c, per, n, a[0], a[1], a[2] if zero is not None else ffi.NULL,
        first, stride, p[0], p[1], p[2], p[3], release, probe)
    if missed < 0:
        raise ValueError("pf_diff_window refused its arguments")
    return int(missed)


# -- block maps (native/pf_map.h) ------------------------------------------------------------
def bat_nonzero(raw: Buffer, first: int, lowest: int, highest: int, vclusters: array,
                entries: array) -> int:
    """Append the non-zero slots of a piece of a BAT (little-endian u32 entries, the first one
    being slot `first`) to `vclusters` and their entries to `entries` (both array("I")).
    Returns how many of them lie outside [lowest, highest] (entry units): unreadable."""
    mv = _view(raw)
    n = mv.nbytes // 4
    if n == 0:
        return 0
    ov = _uncleared("uint32_t[]", n)  # only the first k are written, then copied out
    oe = _uncleared("uint32_t[]", n)
    bad = ffi.new("size_t *")
    k = lib.pf_bat_nonzero(ffi.from_buffer("unsigned char[]", mv), n, first, lowest, highest,
                           ov, oe, bad)
    vclusters.frombytes(ffi.buffer(ov, 4 * k))
    entries.frombytes(ffi.buffer(oe, 4 * k))
    return int(bad[0])


def map_merge(levels: Sequence[tuple[array, array | None, int, int]], nclusters: int,
              cluster_size: int) -> tuple[array, array, array, array]:
    """Merge a chain's levels, bottom to top, into extents (pf_map_merge): each level given as
    (vclusters, entries or None for a zero mask, entry unit in bytes, level number).
    Returns (vstart "I", count "I", level "B", offset "q")."""
    levels = [lv for lv in levels if len(lv[0])]
    cap = sum(len(lv[0]) for lv in levels)
    types = (("uint32_t[]", 4), ("uint32_t[]", 4), ("uint8_t[]", 1), ("int64_t[]", 8))
    out = (array("I"), array("I"), array("B"), array("q"))
    if cap:
        cl = ffi.new("pf_map_level[]", len(levels))
        keep = []  # the buffers' cdata must live through the call
        for i, (v, e, unit, level) in enumerate(levels):
            keep.append(ffi.from_buffer("uint32_t[]", v))
            cl[i].v = keep[-1]
            if e is not None:
                keep.append(ffi.from_buffer("uint32_t[]", e))
                cl[i].e = keep[-1]
            cl[i].n = len(v)
            cl[i].unit = unit
            cl[i].level = level
        # Room for the worst case (every cluster its own extent), uncleared: only what the
        # merge writes is touched, and then copied out.
        room = [_uncleared(c, cap) for c, _size in types]
        n = lib.pf_map_merge(cl, len(levels), nclusters, cluster_size, *room, cap)
        if n == _FAILED:
            raise MemoryError("block map: no memory for the merge")
        for i, (a, (_c, size)) in enumerate(zip(out, types, strict=True)):
            a.frombytes(ffi.buffer(room[i], size * n))
            room[i] = ffi.NULL  # freed now: at most one array held twice
    return out


# A merged map as pf_candidate_runs sees it: (vstart, count, level, offset) from map_merge,
# the file key of each level, the level number of zero masks, and whether the base is raw.
MapArrays: TypeAlias = tuple[array, array, array, array, Sequence[int], int, bool]


def candidate_runs(a: MapArrays, b: MapArrays, common: int, cluster_size: int
                   ) -> tuple[array, array]:
    """Runs of clusters [0, common) whose source differs between the maps a and b (not the
    same file and offset, not zeros in both), merged; as (first, count), both array("q")."""
    views = ffi.new("pf_map_view[2]")
    keep = []
    for i, (vstart, count, level, offset, keys, zero_level, raw_base) in enumerate((a, b)):
        ptrs = [ffi.from_buffer(t, x) if len(x) else ffi.NULL for t, x in zip(
            ("uint32_t[]", "uint32_t[]", "uint8_t[]", "int64_t[]"),
            (vstart, count, level, offset), strict=True)]
        keyarr = ffi.new("int64_t[]", list(keys) or [0])
        keep += [*ptrs, keyarr]
        views[i].vstart, views[i].count, views[i].level, views[i].offset = ptrs
        views[i].n = len(vstart)
        views[i].key = keyarr
        views[i].zero_level = zero_level
        views[i].raw_base = int(raw_base)
    # Room for the worst case, most of which is never written: uncleared (untouched pages
    # cost no memory), then the runs found are copied out (a million-extent pair: 67 MB of
    # room, ~2 MB of runs).
    cap = 2 * (len(a[0]) + len(b[0])) + 1
    pf, pr = _uncleared("int64_t[]", cap), _uncleared("int64_t[]", cap)
    k = lib.pf_candidate_runs(views, views + 1, common, cluster_size, pf, pr, cap)
    if k == _FAILED:
        raise ValueError("pf_candidate_runs: more runs than room (maps not sorted?)")
    first, runs = array("q"), array("q")
    first.frombytes(ffi.buffer(pf, 8 * k))
    runs.frombytes(ffi.buffer(pr, 8 * k))
    return first, runs


# -- the rdiff engine (native/pf_rdiff.h: pf_rollsum, pf_sig, pf_search, pf_emit, pf_patch) ----
HASH_MD4, HASH_BLAKE2 = lib.PF_HASH_MD4, lib.PF_HASH_BLAKE2  # strong hashes
WEAK_ROLLSUM, WEAK_RABINKARP = lib.PF_WEAK_ROLLSUM, lib.PF_WEAK_RABINKARP  # weak sums


def rollsum(data: Buffer) -> int:
    """librsync's rollsum of `data` (as a signature stores it)."""
    mv = _view(data)
    return int(lib.pf_rollsum(ffi.from_buffer("unsigned char[]", mv), mv.nbytes))


def rabinkarp(data: Buffer) -> int:
    """librsync's RabinKarp sum of `data` (as a signature stores it)."""
    mv = _view(data)
    return int(lib.pf_rabinkarp(ffi.from_buffer("unsigned char[]", mv), mv.nbytes))


def strong_sum(hash: int, data: Buffer) -> bytes:
    """The full strong sum of `data`: MD4 (16 bytes) or BLAKE2b-256 (32), by HASH_*."""
    mv = _view(data)
    out = ffi.new("unsigned char[]", lib.PF_MAX_STRONG)
    n = lib.pf_strong(hash, ffi.from_buffer("unsigned char[]", mv), mv.nbytes, out)
    if n < 0:
        raise ValueError(f"unknown strong hash {hash}")
    return bytes(ffi.buffer(out, n))


class SigWriter:
    """Signature records of a basis given chunk by chunk (pf_sig_chunk): 4-byte weak sum +
    `sum_len` strong bytes per block of `block_len`, hashed on `nthreads` threads without the
    GIL. Chunks hold whole blocks except the last; at most `max_chunk` bytes each."""

    def __init__(self, hash: int, weak: int, block_len: int, sum_len: int, nthreads: int,
                 max_chunk: int) -> None:
        ctx = lib.pf_sigctx_new(hash, weak, block_len, sum_len, nthreads)
        if ctx == ffi.NULL:
            raise MemoryError("pf_sigctx_new failed")
        self._ctx = ffi.gc(ctx, lib.pf_sigctx_free)
        self._block = block_len
        self._rec = 4 + sum_len
        self._out = ffi.new("unsigned char[]", -(-max_chunk // block_len) * self._rec)

    def records(self, data: Buffer) -> memoryview:
        """The records of `data`'s blocks; valid until the next call."""
        mv = _view(data)
        if -(-mv.nbytes // self._block) * self._rec > len(self._out):
            raise ValueError(f"chunk of {mv.nbytes} bytes is larger than max_chunk")
        n = lib.pf_sig_chunk(self._ctx, ffi.from_buffer("unsigned char[]", mv), mv.nbytes,
                             self._out)
        if n < 0:
            raise RuntimeError("pf_sig_chunk failed")
        return memoryview(ffi.buffer(self._out, n))


class MatchIndex:
    """A hash index over a signature's records (pf_index_new, which copies them) and the aligned
    matcher (pf_match_chunk), hashing on `nthreads` threads without the GIL. ValueError when the
    records cannot be indexed (too many, or no memory)."""

    def __init__(self, hash: int, weak: int, block_len: int, sum_len: int, records: Buffer,
                 nthreads: int, max_chunk: int) -> None:
        mv = _view(records)
        nrec = mv.nbytes // (4 + sum_len)
        recs = ffi.from_buffer("unsigned char[]", mv) if nrec else ffi.NULL
        ix = lib.pf_index_new(hash, weak, block_len, sum_len, recs, nrec, nthreads)
        if ix == ffi.NULL:
            raise ValueError(f"pf_index_new refused {nrec} records")
        self._ix = ffi.gc(ix, lib.pf_index_free)
        self._block = block_len
        self._match = ffi.new("int64_t[]", max(1, -(-max_chunk // block_len)))
        self._view = memoryview(ffi.buffer(self._match)).cast("q")

    def __len__(self) -> int:
        """Distinct records in the index (duplicates keep the first block)."""
        return int(lib.pf_index_size(self._ix))

    def match(self, data: Buffer, first_block: int) -> memoryview:
        """Per block of `data` (new-file blocks first_block, first_block + 1, ...; the last may
        be short): the index of an equal basis block, the one at the same index first, or -1.
        A memoryview of int64 valid until the next call; at most `max_chunk` bytes."""
        mv = _view(data)
        nb = -(-mv.nbytes // self._block)
        if nb > len(self._view):
            raise ValueError(f"chunk of {mv.nbytes} bytes is larger than max_chunk")
        got = lib.pf_match_chunk(self._ix, ffi.from_buffer("unsigned char[]", mv), mv.nbytes,
                                 first_block, self._match)
        if got < 0:
            raise RuntimeError("pf_match_chunk failed")
        return self._view[:got]


def cmd_copy(start: int, length: int) -> bytes:
    """The header of a delta's COPY command (minimal-width big-endian parameters); b"" for 0."""
    out = ffi.new("unsigned char[]", lib.PF_CMD_MAX)
    return bytes(ffi.buffer(out, lib.pf_cmd_copy(out, start, length)))


def cmd_literal(length: int) -> bytes:
    """The header of a delta's LITERAL command of `length` bytes (which follow it)."""
    out = ffi.new("unsigned char[]", lib.PF_CMD_MAX)
    return bytes(ffi.buffer(out, lib.pf_cmd_literal(out, length)))


class Patcher:
    """The streaming patcher (pf_patch): feed a delta after its magic, in pieces of any size;
    the output goes to `out_fd` from the literals and from `basis_fd` (pread). `sparse`: the
    output is a regular file, where all-zero runs become holes (finish() sets its length)."""

    MORE, DONE = lib.PF_PATCH_MORE, lib.PF_PATCH_DONE

    def __init__(self, basis_fd: int, out_fd: int, basis_size: int, sparse: bool) -> None:
        p = lib.pf_patch_new(basis_fd, out_fd, basis_size, int(sparse))
        if p == ffi.NULL:
            raise MemoryError("pf_patch_new failed")
        self._p = ffi.gc(p, lib.pf_patch_free)
        self._consumed = ffi.new("size_t *")

    def feed(self, data: Buffer) -> tuple[int, int]:
        """(MORE: all of `data` used, feed more; DONE: END seen; < 0: an error, see error(),
        and how many bytes of `data` were used)."""
        mv = _view(data)
        rc = lib.pf_patch_feed(self._p, ffi.from_buffer("unsigned char[]", mv), mv.nbytes,
                               self._consumed)
        return int(rc), int(self._consumed[0])

    def finish(self) -> int:
        """Set the output's length (holes at the end): 0, or an error (see error())."""
        return int(lib.pf_patch_finish(self._p))

    def error(self) -> tuple[str, int, int]:
        """(message, offset of the failing command from the first byte fed, errno)."""
        off = ffi.new("uint64_t *")
        err = ffi.new("int *")
        msg = ffi.string(lib.pf_patch_error(self._p, off, err)).decode()
        return msg, int(off[0]), int(err[0])

    @property
    def written(self) -> int:
        """Output bytes produced (holes included)."""
        return int(lib.pf_patch_written(self._p))

    @property
    def commands(self) -> int:
        return int(lib.pf_patch_commands(self._p))


# -- du --dedup (native/pf_dedup.h) ------------------------------------------------------------
class DedupTable:
    """One block size's reference-count table (pf_ddt) and counters, as the scan left them. (A
    plain class: a typing.NamedTuple cost every command importing this module ~1 ms.)"""

    __slots__ = ("blocks", "entries", "hist_entries", "hist_refs", "peak_bytes", "refs", "shift",
                 "zero")

    def __init__(self, shift: int, entries: int, refs: int, peak_bytes: int,
                 hist_entries: list[int], hist_refs: list[int], blocks: int, zero: int) -> None:
        self.shift = shift  # sampling bits: 0 = exact, else 1 in 2^shift distinct hashes kept
        self.entries = entries  # distinct kept hashes
        self.refs = refs  # sum of their counts
        self.peak_bytes = peak_bytes  # most slot-array bytes held at once
        self.hist_entries = hist_entries  # [b]: kept hashes whose count c has floor(log2(c)) == b
        self.hist_refs = hist_refs  # [b]: the sum of their counts
        self.blocks = blocks  # blocks hashed (zero or not)
        self.zero = zero  # all-zero blocks among them


class DedupScanner:
    """The du --dedup scanner (pf_dedup): XXH3-128 of every small and large block of the chunks
    fed, counted per block size in tables of bounded memory (sampling past it). feed() may run
    on several threads at once, without the GIL. ValueError on bad sizes or no memory."""

    def __init__(self, small: int, large: int, small_mem: int, large_mem: int, shift: int,
                 sample_every: int) -> None:
        d = lib.pf_dedup_new(small, large, small_mem, large_mem, shift, sample_every)
        if d == ffi.NULL:
            raise ValueError("pf_dedup_new refused its arguments (or no memory)")
        self._d = ffi.gc(d, lib.pf_dedup_free)
        self.large = large

    def picks_buffer(self, max_bytes: int) -> array:
        """Room for the compression picks of a chunk of up to `max_bytes` (for feed)."""
        return array("Q", bytes(8 * 3 * -(-max_bytes // self.large)))

    def feed(self, data: Buffer, picks: array) -> int:
        """Hash `data` (whole large blocks from a large-block boundary of the disk; the last
        may be short at its end). The k-th compression sample pick is written to picks[3 k:3 k
        + 3] as (index of the large block within data, hash lo, hash hi); returns how many.
        MemoryError when a table cannot grow (or picks is too small)."""
        mv = _view(data)
        got = lib.pf_dedup_feed(self._d, ffi.from_buffer("unsigned char[]", mv), mv.nbytes,
                                ffi.from_buffer("uint64_t[]", picks, require_writable=True),
                                len(picks) // 3)
        if got < 0:
            raise MemoryError("pf_dedup_feed: a hash table could not grow (out of memory)")
        return int(got)

    def table(self, which: int) -> DedupTable:
        """which: 0 = small blocks, 1 = large blocks."""
        t = lib.pf_dedup_table(self._d, which)
        he = ffi.new("uint64_t[]", lib.PF_DDT_BUCKETS)
        hr = ffi.new("uint64_t[]", lib.PF_DDT_BUCKETS)
        lib.pf_ddt_histogram(t, he, hr)
        return DedupTable(int(lib.pf_ddt_shift(t)), int(lib.pf_ddt_entries(t)),
                          int(lib.pf_ddt_refs(t)), int(lib.pf_ddt_peak_bytes(t)), list(he),
                          list(hr), int(lib.pf_dedup_blocks(self._d, which)),
                          int(lib.pf_dedup_zero(self._d, which)))
