"""The virtual disk of one snapshot: a chain of images, its block map, and exact reads."""

from __future__ import annotations

import mmap
import os
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ploopfs.errors import CorruptImageError, SourceIOError
from ploopfs.volume.blockmap import BlockMap
from ploopfs.volume.image import Image

ZERO_FILL_PIECE = 4 << 20  # the zero mapping's least size, and the most zero_fill copies at once
_zeros = memoryview(b"")
_zeros_lock = threading.Lock()


def zeros(n: int) -> memoryview:
    """`n` zero bytes, read-only, costing no RSS: a private anonymous read-only mapping, every
    page of which is the kernel's one zero page. It grows (never shrinks) to the largest `n`
    asked for; a view handed out earlier keeps its own mapping alive."""
    global _zeros
    with _zeros_lock:
        if len(_zeros) < n:
            _zeros = memoryview(mmap.mmap(-1, max(n, ZERO_FILL_PIECE), prot=mmap.PROT_READ,
                                          flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        return _zeros[:n]


def zero_fill(dst: memoryview) -> None:
    """Write zeros into all of `dst`, copied from `zeros` in pieces of at most 4 MiB: a hole
    never costs a transient allocation or a mapping of its own size, however large the read (a
    hostile header may claim 512 MiB clusters)."""
    z = zeros(min(len(dst), ZERO_FILL_PIECE))
    for p in range(0, len(dst), ZERO_FILL_PIECE):
        q = min(p + ZERO_FILL_PIECE, len(dst))
        dst[p:q] = z[:q - p]


@dataclass(frozen=True)
class Segment:
    """A piece of the virtual disk: `length` bytes at virtual `voffset`, served from `level`'s
    file at `offset`, or zeros (`level` is None). `raw_fill` marks a raw base read that may run
    past the end of that file; the rest is zeros (format.md §4.1 rule 3)."""

    voffset: int
    length: int
    level: int | None
    offset: int
    raw_fill: bool = False


class Volume:
    def __init__(self, images: Sequence[Image], size: int, cluster_size: int,
                 zero: Sequence[array] | None = None) -> None:
        """`images[0]` is the base, `images[-1]` the top. `size` is the virtual disk size.
        `zero`: per level, clusters masked as zeros (salvage, BlockMap)."""
        self.images = list(images)
        self.size = size
        self.cluster_size = cluster_size
        # BAT slots are numbered in 32 bits (format.md §2.1): no level maps a cluster past 2^32,
        # whatever size a descriptor claims (a huge <Disk_size> reads as zeros past them).
        nclusters = min(-(-size // cluster_size), 1 << 32)
        self.map = BlockMap([im.mapping() for im in self.images], nclusters, cluster_size, zero)
        self.raw_base = self.images[0].is_raw
        self._fds = [im.fd for im in self.images]

    # -- planning ------------------------------------------------------------------------------
    def raw_end(self) -> int:
        """Over a raw base, the end of the part of the disk its file covers (past it the base
        reads as zeros and holds nothing, format.md §4.1 rule 3); 0 without a raw base."""
        return min(self.size, self.images[0].file_size) if self.raw_base else 0

    def stored_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) pieces of the disk that some file holds, sorted and disjoint: the
        block map's extents and the part a raw base's file covers. Everything else reads as
        zeros, so work in proportion to what is stored, not to the size a descriptor claims
        (a huge <Disk_size> over a small raw base), reads only these."""
        c = self.cluster_size
        pieces = [(0, self.raw_end())] + [
            (e.vstart * c, min((e.vstart + e.count) * c, self.size)) for e in self.map.extents()]
        merged: list[list[int]] = []
        for s, e in sorted(pieces):
            if s >= e:
                continue
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        return [(s, e - s) for s, e in merged]

    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        """Where each byte of [offset, offset+length) comes from, clipped to the disk size,
        adjacent pieces of one extent or one hole merged."""
        end = min(offset + length, self.size)
        pos = offset
        c = self.cluster_size
        m = self.map
        while pos < end:
            v = pos // c
            i = m.find(v)
            if i >= 0:
                ext_end = (m.a_vstart[i] + m.a_count[i]) * c
                n = min(end, ext_end) - pos
                yield Segment(pos, n, m.a_level[i],
                              m.a_offset[i] + pos - m.a_vstart[i] * c)
            else:
                nxt = -i - 1
                hole_end = m.a_vstart[nxt] * c if nxt < len(m) else self.size
                n = min(end, hole_end) - pos
                if self.raw_base:
                    yield Segment(pos, n, 0, pos, raw_fill=True)
                else:
                    yield Segment(pos, n, None, 0)
            pos += n

    # -- reading -------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes | bytearray:
        """Exactly the bytes of the virtual disk at [offset, offset+length), short only at the
        end of the disk."""
        end = min(offset + length, self.size)
        n = end - offset
        if n <= 0:
            return bytearray()
        # Fast path, the usual FUSE request: the range lies inside one mapped extent, so one
        # os.pread answers it, without a zero-filled buffer or Segment objects (~5 us less per
        # 4 KiB request, tools/bench/mount_bench.py). Anything else, and a short or failed read,
        # takes the general path below, which zero-fills holes and reports the error.
        m, c = self.map, self.cluster_size
        i = m.find(offset // c)
        if i >= 0 and end <= (m.a_vstart[i] + m.a_count[i]) * c:
            try:
                data = os.pread(self._fds[m.a_level[i]], n, m.a_offset[i] + offset - m.a_vstart[i] * c)
            except OSError:
                data = b""
            if len(data) == n:
                return data
        buf = bytearray(n)
        self.readinto(memoryview(buf), offset)
        return buf

    def readinto(self, view: memoryview, offset: int) -> int:
        """Fill `view` (zero-initialised by the caller where holes may occur) from `offset`;
        returns the byte count (less than len(view) only past the end of the disk)."""
        total = min(len(view), max(0, self.size - offset))
        for seg in self.segments(offset, total):
            if seg.level is None:
                continue
            dst = view[seg.voffset - offset: seg.voffset - offset + seg.length]
            self._pread_into(seg.level, dst, seg.offset, allow_short=seg.raw_fill)
        return total

    def zero_fill_readinto(self, view: memoryview, offset: int) -> int:
        """Like readinto, but writes zeros into holes itself (for reused buffers)."""
        total = min(len(view), max(0, self.size - offset))
        for seg in self.segments(offset, total):
            dst = view[seg.voffset - offset: seg.voffset - offset + seg.length]
            if seg.level is None:
                zero_fill(dst)
            else:
                self._fill(seg, dst)
        return total

    def _fill(self, seg: Segment, dst: memoryview) -> None:
        """Read one data segment into `dst`, zeros past the end of a raw base (strict: a short
        read of a mapped cluster is an error). SalvageVolume overrides this one step."""
        self._pread_into(seg.level, dst, seg.offset, allow_short=seg.raw_fill,  # type: ignore[arg-type]
                         zero_rest=True)

    def _pread_into(self, level: int, dst: memoryview, offset: int, *, allow_short: bool,
                    zero_rest: bool = False) -> None:
        fd = self._fds[level]
        got = 0
        want = len(dst)
        while got < want:
            try:
                n = os.preadv(fd, [dst[got:]], offset + got)
            except OSError as e:
                raise SourceIOError(f"read failed: {e.strerror}", self.images[level].path,
                                    offset=offset + got) from None
            if n == 0:
                break
            got += n
        if got < want:
            if not allow_short:
                raise CorruptImageError(
                    f"cluster data ends early: read {got} of {want} bytes (file shrank?)",
                    self.images[level].path, offset=offset + got)
            if zero_rest:
                zero_fill(dst[got:])

    def close(self) -> None:
        for im in self.images:
            im.close()
