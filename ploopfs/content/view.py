"""A read-only, seekable file object over any `read(offset, length)` callable: a whole Volume,
one partition of it, or a test buffer. Readers written for files (dissect.extfs, dissect.xfs,
anything taking a binary file object) can then read a virtual disk without a mount or a copy.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ploopfs.volume.volume import Volume

Reader = Callable[[int, int], bytes | bytearray]
# Fills a buffer (holes included) from a byte offset; returns the bytes filled.
ReaderInto = Callable[[memoryview, int], int]


class ByteView(io.RawIOBase):
    """Bytes [base, base+size) of what `read` reads, as a file: read, readinto, seek (SEEK_SET,
    SEEK_CUR, SEEK_END), tell, and `size`. Reads past the end return b"" (seeking there is
    allowed, as on a file); nothing can be written. `readinto`: an optional callable filling a
    buffer directly (a Volume's zero_fill_readinto), so that a large read is not copied."""

    def __init__(self, read: Reader, size: int, *, base: int = 0,
                 readinto: ReaderInto | None = None) -> None:
        super().__init__()
        if size < 0 or base < 0:
            raise ValueError(f"negative size ({size}) or base ({base})")
        self._read, self._into = read, readinto
        self._base, self._size, self._pos = base, size, 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        self._checkClosed()
        return True

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def writable(self) -> bool:
        self._checkClosed()
        return False

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(22, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _want(self, n: int) -> int:
        return max(0, min(n, self._size - self._pos))

    def readinto(self, b: bytearray | memoryview) -> int:  # or any writable buffer
        self._checkClosed()
        view = memoryview(b).cast("B")
        n = self._want(len(view))
        if not n:
            return 0
        if self._into is not None:
            got = self._into(view[:n], self._base + self._pos)
        else:
            data = self._read(self._base + self._pos, n)
            got = min(len(data), n)
            view[:got] = memoryview(data)[:got]
        self._pos += got
        return got

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        n = self._want(self._size if size is None or size < 0 else size)
        if not n:
            return b""
        data = bytes(self._read(self._base + self._pos, n)[:n])
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)


def volume_view(vol: Volume) -> ByteView:
    """The whole virtual disk as a file."""
    return ByteView(vol.read, vol.size, readinto=vol.zero_fill_readinto)


def partition_view(vol: Volume, start: int, length: int) -> ByteView:
    """`length` bytes of the disk from byte `start` (a partition) as a file; a partition
    running past the end of the disk is cut there (nothing past it can be read)."""
    start = max(0, start)
    return ByteView(vol.read, max(0, min(length, vol.size - start)), base=start,
                    readinto=vol.zero_fill_readinto)
