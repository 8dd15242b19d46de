"""The sinks of `ploopfs diff`: what the scan (engine.py) tells about every run of NEW's clusters
(same, or changed with NEW's bytes) becomes JSON ranges, a librsync delta or a ploop delta image.
A sink's `needs_bytes` says whether it looks at NEW's changed bytes (the scan can otherwise stop
comparing a changed cluster at its first difference)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import IO, Any

from ploopfs.services.diff.engine import HASHES
from ploopfs.services.rdiff import DeltaWriter
from ploopfs.volume.writer import ImageWriter


class HashingFile:
    """The delta file: hashed as it is written, and its writeback started every WRITEBACK
    bytes (POSIX_FADV_DONTNEED starts writing dirty pages and drops the clean ones), so the
    final fsync waits only for the tail and the output does not crowd the page cache."""

    WRITEBACK = 16 << 20

    def __init__(self, f: IO[bytes], alg: str | None) -> None:
        self.f = f
        self.h = HASHES[alg]() if alg else None
        self.size = 0
        self._kicked = 0  # bytes whose writeback was started

    def write(self, data: bytes | memoryview) -> int:
        if self.h:
            self.h.update(data)
        self.size += len(data)
        n = self.f.write(data)
        if self.size - self._kicked >= self.WRITEBACK:
            self.f.flush()
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.f.fileno(), self._kicked, self.size - self._kicked,
                                 os.POSIX_FADV_DONTNEED)
            self._kicked = self.size
        return n


class RangesSink:
    """Merged changed ranges with the hash of NEW's bytes of each, streamed as JSON objects to
    `emit` (or kept in `ranges` when emit is None)."""

    def __init__(self, cluster_size: int, alg: str | None,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.c = cluster_size
        self.alg = alg
        self.needs_bytes = alg is not None  # for the hash of each range
        self.emit = emit
        self.ranges: list[dict[str, Any]] = []
        self._cur: dict[str, Any] | None = None
        self._h: Any = None
        self._zero = True

    def same(self, c0: int, n: int) -> None:
        self.flush()

    def changed(self, c0: int, n: int, data: memoryview, zero: bytes | bytearray) -> None:
        cur = self._cur
        if cur is None or cur["cluster"] + cur["clusters"] != c0:
            self.flush()
            cur = self._cur = {"cluster": c0, "clusters": 0, "offset": c0 * self.c, "length": 0}
            self._h = HASHES[self.alg]() if self.alg else None
            self._zero = True
        cur["clusters"] += n
        cur["length"] += len(data)
        if self._h:
            self._h.update(data)
        self._zero = self._zero and zero.count(0) == 0

    def flush(self) -> None:
        if self._cur is None:
            return
        cur, self._cur = self._cur, None
        cur["zero"] = self._zero
        if self._h:
            cur[self.alg] = self._h.hexdigest()
        if self.emit:
            self.emit(cur)
        else:
            self.ranges.append(cur)


class RdiffSink:
    """COPY of unchanged clusters from the basis (at the same offset), LITERALs of changed
    bytes; DeltaWriter merges contiguous copies and adjacent literals."""

    needs_bytes = True  # NEW's changed bytes go into the delta

    def __init__(self, writer: DeltaWriter, cluster_size: int, new_size: int) -> None:
        self.w = writer
        self.c = cluster_size
        self.size = new_size

    def same(self, c0: int, n: int) -> None:
        start = c0 * self.c
        self.w.copy(start, min(n * self.c, self.size - start))

    def changed(self, c0: int, n: int, data: memoryview, zero: bytes | bytearray) -> None:
        self.w.literal(data)

    def close(self) -> dict[str, int]:
        return self.w.close().to_json()


class PloopSink:
    """Changed clusters into a new delta image. A change to all-zero is written as an explicit
    zero cluster: a hole would fall through to OLD's data (format.md §11 trap 24). Only zero clusters that
    no image of OLD's chain can map (past every one of them, format.md §1.4, §11 trap 7) stay holes."""

    needs_bytes = True  # NEW's changed bytes go into the delta image

    def __init__(self, writer: ImageWriter, zero_hole_from: int) -> None:
        self.w = writer
        self.c = writer.cluster_size
        self.zero_hole_from = zero_hole_from  # first cluster no lower image maps
        self.written = 0
        self.zero_written = 0

    def same(self, c0: int, n: int) -> None:
        pass

    def changed(self, c0: int, n: int, data: memoryview, zero: bytes | bytearray) -> None:
        c = self.c
        for k in range(n):
            if zero[k] and c0 + k >= self.zero_hole_from:
                continue
            self.w.write_cluster(c0 + k, data[k * c:(k + 1) * c])
            self.written += 1
            self.zero_written += zero[k]
