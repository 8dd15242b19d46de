"""rdiff (librsync) drop-in: signatures, aligned deltas and patching, on the C engine of
native/pf_rdiff.h through the wrappers of ploopfs/native.py (formats: docs/rdiff.md).

* `write_signature` writes exactly what `rdiff signature` writes for the same options
  (librsync 2.3.x defaults).
* `delta_from_signature` matches *aligned* blocks only (fast-rdiff mode): each new block
  is compared with the basis block at the same index first, then looked up in a hash index of
  all basis blocks (moved blocks); anything else is a literal. Data inside a ploop image never
  moves by less than a cluster, so on images this finds what rdiff's rolling search finds, at
  a cost that does not depend on the content (no pathological inputs).
* `DeltaWriter` encodes commands with minimal-width big-endian parameters, merging
  contiguous COPYs and adjacent short literals (< `LITERAL_GATHER`, 64 KiB); longer literals
  are written straight from the caller's buffer, in commands of at most `LITERAL_MAX` (4 MiB).
* `patch` applies any librsync delta like `rdiff patch`, streaming, with bounded memory.

Memory: two read chunks of `CHUNK` bytes (rounded to whole blocks), one pending literal and
the signature (4 + S bytes per basis block, like rdiff).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Literal

from ploopfs import native
from ploopfs.errors import (
    BadDeltaError,
    BadSignatureError,
    OutputError,
    SourceIOError,
    UnsupportedError,
    UsageError,
)
from ploopfs.volume import fileio
from ploopfs.volume.readahead import read_ahead

DELTA_MAGIC = 0x72730236
MAGICS: dict[tuple[str, str], int] = {
    ("md4", "rollsum"): 0x72730136,
    ("blake2", "rollsum"): 0x72730137,
    ("md4", "rabinkarp"): 0x72730146,
    ("blake2", "rabinkarp"): 0x72730147,
}
MAGIC_PARAMS = {v: k for k, v in MAGICS.items()}
STRONG_MAX = {"md4": 16, "blake2": 32}
_HASH_ID = {"md4": native.HASH_MD4, "blake2": native.HASH_BLAKE2}
_WEAK_ID = {"rollsum": native.WEAK_ROLLSUM, "rabinkarp": native.WEAK_RABINKARP}

# Bytes read and hashed per step (rounded down to whole blocks). 16 MiB: with 1 MiB blocks each of
# two hashing threads gets a full batch of 8 blocks for the 8-lane BLAKE2b (native/pf_b2x.h).
CHUNK = 16 << 20
MAX_BLOCK = 64 << 20  # larger blocks would need more than bounded memory per chunk
LITERAL_MAX = 4 << 20  # longest LITERAL command written (LITERAL_N4); longer runs are split
LITERAL_GATHER = 64 << 10  # shorter literals are gathered into one command; longer ones are
# written as they come, from the caller's buffer (a copy into a gathering buffer of up to
# LITERAL_MAX cost time and 4-8 MiB of RSS for nothing: big runs need no merging)
PATCH_READ = 1 << 20  # delta bytes fed to the patcher per step

ReadAt = Callable[[int, int], bytes | bytearray | memoryview]
Progress = Callable[[int], None] | None


def default_threads() -> int:
    """Worker threads for hashing: the CPUs we may run on, at least 2, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 2
    return max(2, min(8, n))


# -- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigParams:
    """Options of `rdiff signature`: -H, -R, -b (0 = rdiff's default), -S (0 = max, -1 = min)."""

    hash: Literal["md4", "blake2"] = "blake2"
    rollsum: Literal["rollsum", "rabinkarp"] = "rabinkarp"
    block_size: int = 0
    sum_size: int = 0

    def __post_init__(self) -> None:
        if self.hash not in STRONG_MAX:
            raise UsageError(f"unknown hash {self.hash!r} (md4 or blake2)")
        if self.rollsum not in _WEAK_ID:
            raise UsageError(f"unknown rollsum {self.rollsum!r} (rollsum or rabinkarp)")
        if self.block_size < 0:
            raise UsageError(f"block size {self.block_size} must be >= 0 (0 = default)")
        if not -1 <= self.sum_size <= STRONG_MAX[self.hash]:
            raise UsageError(f"sum size {self.sum_size} out of range for {self.hash} "
                             f"(-1, 0 or 1..{STRONG_MAX[self.hash]})")

    @property
    def magic(self) -> int:
        return MAGICS[(self.hash, self.rollsum)]

    def resolved(self, basis_size: int) -> SigParams:
        """The values `rdiff signature` (librsync 2.3.x `rs_sig_args`) uses for a basis of
        `basis_size` bytes: block = sqrt(size) rounded down to a multiple of 128, at least 256;
        sum 0 = the hash's full length, -1 = the minimum safe against random collisions."""
        block = self.block_size
        if block == 0:
            block = 256 if basis_size <= 256 * 256 else _isqrt(basis_size) & ~127
        strong = self.sum_size
        if strong == 0:
            strong = STRONG_MAX[self.hash]
        elif strong == -1:
            ln2 = _ln2
            strong = 2 + (ln2(basis_size + (1 << 24)) + ln2(basis_size // block + 1) + 7) // 8
            strong = min(strong, STRONG_MAX[self.hash])
        return replace(self, block_size=block, sum_size=strong)


def _isqrt(n: int) -> int:
    import math

    return math.isqrt(n)


def _ln2(n: int) -> int:
    """floor(log2(n)) for n >= 1 (librsync's rs_long_ln2), 0 for 0."""
    return max(0, n.bit_length() - 1)


def _check_block(block: int, where: str | None) -> None:
    if block > MAX_BLOCK:
        raise UnsupportedError(f"block length {block} is larger than the supported maximum "
                               f"{MAX_BLOCK} ({MAX_BLOCK >> 20} MiB)", where)


# -- signatures ---------------------------------------------------------------------------------
@dataclass
class Signature:
    """A parsed rdiff signature: parameters and the raw records (4-byte weak + S strong bytes
    per basis block, in file order)."""

    params: SigParams
    records: bytes = field(repr=False)
    name: str | None = None

    @property
    def record_size(self) -> int:
        return 4 + self.params.sum_size

    @property
    def nblocks(self) -> int:
        return len(self.records) // self.record_size

    def weak(self, i: int) -> int:
        return int.from_bytes(self.records[i * self.record_size: i * self.record_size + 4], "big")

    def strong(self, i: int) -> bytes:
        r = self.record_size
        return self.records[i * r + 4: (i + 1) * r]


def _chunk_size(block: int) -> int:
    return max(1, CHUNK // block) * block


def _chunks(read_at: ReadAt, size: int, step: int, where: str | None):
    """(offset, data) for consecutive chunks of [0, size), the next one read by a helper
    thread while the caller (the C code, which releases the GIL) works on the current one."""
    def read(off: int) -> bytes | bytearray | memoryview:
        n = min(step, size - off)
        data = read_at(off, n)
        if len(data) != n:
            raise SourceIOError(f"short read: {len(data)} of {n} bytes (file changed?)", where,
                                offset=off + len(data))
        return data

    offsets = range(0, max(size, 0), step)
    yield from zip(offsets, read_ahead(offsets, read), strict=True)


def write_signature(read_at: ReadAt, size: int, out: BinaryIO, params: SigParams | None = None,
                    *, progress: Progress = None, threads: int | None = None,
                    where: str | None = None) -> SigParams:
    """Write the rdiff signature of the `size` bytes read through `read_at(offset, length)` to
    `out`, byte-identical to `rdiff signature` with the same options. Returns the resolved
    parameters (block and sum size after rdiff's defaults)."""
    p = (params or SigParams()).resolved(size)
    _check_block(p.block_size, where)
    step = _chunk_size(p.block_size)
    sw = native.SigWriter(_HASH_ID[p.hash], _WEAK_ID[p.rollsum], p.block_size, p.sum_size,
                          threads or default_threads(), step)
    out.write(struct.pack(">III", p.magic, p.block_size, p.sum_size))
    for off, data in _chunks(read_at, size, step, where):
        out.write(sw.records(data))
        if progress:
            progress(off + len(data))
    return p


def _read_all(path_or_file: str | os.PathLike[str] | BinaryIO) -> tuple[bytes, str]:
    if isinstance(path_or_file, str | os.PathLike):
        name = os.fspath(path_or_file)
        with open(name, "rb") as f:
            fileio.register_source(name)
            return f.read(), name
    return path_or_file.read(), str(getattr(path_or_file, "name", "signature"))


def read_signature(path_or_file: str | os.PathLike[str] | BinaryIO) -> Signature:
    """Parse an rdiff signature of any of the four magics, including legacy
    8-byte MD4 sums. Malformed or truncated input raises BadSignatureError (exit 13) naming
    the byte offset."""
    data, name = _read_all(path_or_file)
    if len(data) < 12:
        raise BadSignatureError(f"truncated signature header ({len(data)} of 12 bytes)", name,
                                offset=len(data))
    magic, block, strong = struct.unpack_from(">III", data)
    if magic not in MAGIC_PARAMS:
        what = ("an rdiff delta, not a signature" if magic == DELTA_MAGIC
                else f"not an rdiff signature (magic 0x{magic:08x})")
        raise BadSignatureError(what, name, offset=0)
    hash_, weak = MAGIC_PARAMS[magic]
    if block == 0:
        raise BadSignatureError("block length 0", name, offset=4)
    if not 1 <= strong <= STRONG_MAX[hash_]:
        raise BadSignatureError(f"strong sum length {strong} out of range for {hash_} "
                                f"(1..{STRONG_MAX[hash_]})", name, offset=8)
    rec = 4 + strong
    extra = (len(data) - 12) % rec
    if extra:
        off = len(data) - extra
        raise BadSignatureError(f"truncated signature record ({extra} of {rec} bytes)", name,
                                offset=off)
    params = SigParams(hash_, weak, block, strong)  # type: ignore[arg-type]
    return Signature(params, data[12:], name)


# -- delta writing ------------------------------------------------------------------------------
@dataclass
class DeltaStats:
    copy_commands: int = 0
    copy_bytes: int = 0
    literal_commands: int = 0
    literal_bytes: int = 0
    delta_bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


class DeltaWriter:
    """Writes a librsync delta to `out`: magic now, commands as they come, END on
    close(). Contiguous copies become one COPY; adjacent short literals are gathered into one
    command, long ones written as they come (commands of up to LITERAL_MAX bytes)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._copy_start = 0
        self._copy_len = 0
        self._lit = bytearray()
        self._closed = False
        self.stats = DeltaStats()
        self._write(struct.pack(">I", DELTA_MAGIC))

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)
        self.stats.delta_bytes += len(data)

    def copy(self, start: int, length: int) -> None:
        """Append `length` bytes of the basis from offset `start`."""
        if start < 0 or length < 0 or start + length >= 1 << 63:
            raise ValueError(f"COPY {start}+{length} out of range")
        if length == 0:
            return
        self._flush_literal()
        if self._copy_len and self._copy_start + self._copy_len == start:
            self._copy_len += length
            return
        self._flush_copy()
        self._copy_start, self._copy_len = start, length

    def literal(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` verbatim."""
        mv = memoryview(data).cast("B")
        if not len(mv):
            return
        self._flush_copy()
        if len(self._lit) + len(mv) <= LITERAL_GATHER:
            self._lit += mv
            return
        self._flush_literal()
        if len(mv) < LITERAL_GATHER:
            self._lit += mv
            return
        for i in range(0, len(mv), LITERAL_MAX):
            self._emit_literal(mv[i:i + LITERAL_MAX])

    def _emit_literal(self, data: bytes | bytearray | memoryview) -> None:
        self._write(native.cmd_literal(len(data)))
        self._write(data)
        self.stats.literal_commands += 1
        self.stats.literal_bytes += len(data)

    def _flush_literal(self) -> None:
        if self._lit:
            self._emit_literal(self._lit)
            self._lit = bytearray()

    def _flush_copy(self) -> None:
        if self._copy_len:
            self._write(native.cmd_copy(self._copy_start, self._copy_len))
            self.stats.copy_commands += 1
            self.stats.copy_bytes += self._copy_len
            self._copy_len = 0

    def close(self) -> DeltaStats:
        """Flush pending commands and write END (idempotent). Does not close `out`."""
        if not self._closed:
            self._flush_literal()
            self._flush_copy()
            self._write(b"\0")
            self._closed = True
        return self.stats


def delta_from_signature(sig: Signature, read_new: ReadAt, new_size: int, out: BinaryIO, *,
                         progress: Progress = None, threads: int | None = None,
                         where: str | None = None) -> DeltaStats:
    """Write a delta that turns the basis of `sig` into the `new_size` bytes read through
    `read_new(offset, length)` (aligned matching, see the module docstring)."""
    p = sig.params
    _check_block(p.block_size, sig.name)
    bl = p.block_size
    step = _chunk_size(bl)
    try:
        ix = native.MatchIndex(_HASH_ID[p.hash], _WEAK_ID[p.rollsum], bl, p.sum_size,
                               sig.records, threads or default_threads(), step)
    except ValueError:
        raise UnsupportedError(f"cannot index {sig.nblocks} signature blocks (too many, or out "
                               "of memory)", sig.name) from None
    w = DeltaWriter(out)
    for off, data in _chunks(read_new, new_size, step, where):
        match = ix.match(data, off // bl)
        _emit_chunk(w, memoryview(data).cast("B"), match, len(match), bl)
        if progress:
            progress(off + len(data))
    return w.close()


def _emit_chunk(w: DeltaWriter, data: memoryview, match: memoryview, nb: int, bl: int) -> None:
    """Commands for one chunk from its per-block matches, one call per run of blocks."""
    k = 0
    while k < nb:
        m = match[k]
        j = k + 1
        if m < 0:
            while j < nb and match[j] < 0:
                j += 1
            w.literal(data[k * bl: j * bl])
        else:
            while j < nb and match[j] == m + (j - k):
                j += 1
            end = min(j * bl, len(data))
            w.copy(m * bl, end - k * bl)
        k = j


# -- patching -----------------------------------------------------------------------------------
@dataclass
class PatchStats:
    commands: int
    output_bytes: int
    delta_bytes: int

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def _open_delta(delta: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, str, bool]:
    if isinstance(delta, str | os.PathLike):
        name = os.fspath(delta)
        try:
            f = open(name, "rb")  # noqa: SIM115 (closed by the caller)
            fileio.register_source(name)
            return f, name, True
        except FileNotFoundError:
            from ploopfs.errors import NotFoundError

            raise NotFoundError("no such file", name) from None
    return delta, str(getattr(delta, "name", "delta")), False


def patch(basis_path: str | os.PathLike[str], delta: str | os.PathLike[str] | BinaryIO,
          out_path: str | os.PathLike[str], *, replace: bool = False,
          progress: Progress = None) -> PatchStats:
    """Apply a librsync delta to `basis_path`, writing `out_path` ('-' = standard output; holes
    where the result is zero), like `rdiff patch`. `replace`: an existing output may be
    replaced if it is an earlier ploopfs output (fileio's rules). A malformed or truncated delta
    raises BadDeltaError (exit 14) naming the offset of the failing command; the partial output
    is removed."""
    basis_name, out_name = os.fspath(basis_path), os.fspath(out_path)
    bfd = fileio.open_readonly(basis_name)
    try:
        bst = os.fstat(bfd)
        f, dname, own = _open_delta(delta)
        try:
            return _patch_stream(bfd, bst.st_size, basis_name, f, dname, out_name, replace,
                                 progress)
        finally:
            if own:
                f.close()
    finally:
        os.close(bfd)


def _patch_stream(bfd: int, bsize: int, bname: str, f: BinaryIO, dname: str, out_name: str,
                  replace: bool, progress: Progress) -> PatchStats:
    head = f.read(4)
    if len(head) < 4 or struct.unpack(">I", head)[0] != DELTA_MAGIC:
        what = (f"truncated delta header ({len(head)} of 4 bytes)" if len(head) < 4
                else f"not an rdiff delta (magic 0x{struct.unpack('>I', head)[0]:08x})")
        raise BadDeltaError(what, dname, offset=0)
    if out_name == "-":
        fileio.check_stdout()
        ofd = os.dup(1)
    else:
        ofd = fileio.create(out_name, replace=replace, what="rdiff patch",
                            hint="; pass --force to replace an earlier output")
    ok = False
    try:
        sparse = stat.S_ISREG(os.fstat(ofd).st_mode)
        st = native.Patcher(bfd, ofd, bsize, sparse)
        fed = _feed(st, f, dname, bname, out_name, progress)
        if st.finish() != 0:
            _raise_patch(st, dname, bname, out_name)
        ok = True
        return PatchStats(st.commands, st.written, 4 + fed)
    finally:
        os.close(ofd)
        if not ok and out_name != "-":
            fileio.remove(out_name)


def _feed(st: native.Patcher, f: BinaryIO, dname: str, bname: str, out_name: str,
          progress: Progress) -> int:
    fed = 0
    while True:
        buf = f.read(PATCH_READ)
        if not buf:
            raise BadDeltaError("unexpected end of delta (no END command)", dname,
                                offset=4 + fed)
        rc, consumed = st.feed(buf)
        fed += consumed
        if rc == st.DONE:
            return fed
        if rc != st.MORE:
            _raise_patch(st, dname, bname, out_name)
        if progress:
            progress(st.written)


def _raise_patch(st: native.Patcher, dname: str, bname: str, out_name: str) -> None:
    msg, off, errno_ = st.error()
    code = _patch_errcode(msg)
    if code == "read":
        raise SourceIOError(f"read failed: {os.strerror(errno_)}", bname)
    if code == "write":
        if errno_ == errno.EPIPE:  # stdout closed early (`| head`): the CLI ends quietly
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        raise OutputError(f"write failed: {os.strerror(errno_)}", out_name)
    raise BadDeltaError(msg, dname, offset=4 + off)


def _patch_errcode(msg: str) -> str:
    if msg.startswith("reading"):
        return "read"
    if msg.startswith("writing"):
        return "write"
    return "delta"


# -- plain-file reading -------------------------------------------------------------------------
class FileReader:
    """`read_at` for a regular file or block device: pread into two reused buffers (the chunk
    loop reads chunk i+1 into one while the caller works on chunk i in the other, and only asks
    for chunk i+2 once it is done with chunk i; anything kept longer, like a pending literal,
    is copied); ranges that are one hole of a sparse file come back as a shared zero buffer
    without reading."""

    RING = 2

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            from ploopfs.errors import NotFoundError

            raise NotFoundError("no such file", self.path) from None
        fileio.register_source(self.path)
        st = os.fstat(self.fd)
        if stat.S_ISBLK(st.st_mode):
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self.size = st.st_size
        else:
            os.close(self.fd)
            raise UsageError("not a regular file or block device", self.path)
        self._sparse = stat.S_ISREG(st.st_mode) and st.st_blocks * 512 < st.st_size
        self._bufs: list[bytearray] = []
        self._next = 0
        self._zeros = b""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def _is_hole(self, off: int, n: int) -> bool:
        if not self._sparse:
            return False
        try:
            return os.lseek(self.fd, off, os.SEEK_DATA) >= off + n
        except OSError:  # ENXIO: no data after off
            return True

    def __call__(self, off: int, n: int) -> bytes | memoryview:
        if self._is_hole(off, n):
            if len(self._zeros) < n:
                self._zeros = bytes(n)
            return memoryview(self._zeros)[:n]
        if len(self._bufs) < self.RING:
            self._bufs.append(bytearray(n))
        i = self._next % len(self._bufs)
        self._next += 1
        if len(self._bufs[i]) < n:
            self._bufs[i] = bytearray(n)
        buf = self._bufs[i]
        view = memoryview(buf)[:n]
        got = 0
        while got < n:
            k = os.preadv(self.fd, [view[got:]], off + got)
            if k == 0:
                break
            got += k
        return view[:got]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
