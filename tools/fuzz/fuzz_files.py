"""Fuzz target: the files inside a filesystem (content/files.py), as `mount --files` and
`MNT/files/` serve them from a disk someone else made: `open_filesystem` on a fuzzed ext2/3/4
or XFS image, then a walk of its tree from the root (attributes, directory entries, symlink
targets, extended attributes, and the head and tail of every regular file).

Input: `[u32le filesystem size in 4 KiB units]` then pieces `[u32le offset in 512-byte
sectors][u16le length][bytes]`: the filesystem is zeros with the pieces written at their
offsets. Real filesystems keep their metadata in a few places far apart (XFS puts headers at the
start of every allocation group), which a plain head of 64 KiB could not hold.

Beyond the common oracle: the only error is `FsError` (one unreadable inode: EIO for that
path; the walk asks each node only what its kind answers); every read lies within the
filesystem and asks for at most READ_MAX bytes, all of them together at most WORK_MAX per
input (the work follows what is stored, not what an inode claims); a read returns the length
asked for, clipped to the file's size."""

from __future__ import annotations

import io
import logging
import stat
import struct
from collections import deque

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.content.files import FileSystem, FsError, open_filesystem

logging.disable(logging.CRITICAL)  # one line per unreadable inode: the mount's log, not ours
UNIT = 4096
MAX_FS = 1 << 40  # 1 TiB: sizes a superblock may claim, all of it zeros past the pieces
READ_MAX = 64 << 20  # one read (a directory's data, a file's extent run)
WORK_MAX = 1 << 30  # all of them, per input
MAX_NODES = 4000  # inodes visited per input
FILE_READ = 64 << 10  # bytes read from each end of a regular file


class Disk:
    """The fuzzed filesystem: zeros with pieces; read/readinto with the guards."""

    def __init__(self, size: int, pieces: list[tuple[int, bytes]]) -> None:
        self.size, self.pieces, self.total = size, pieces, 0

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise common.Finding(f"read({offset}, {length})")
        if length > READ_MAX:
            raise common.Finding(f"read of {length} bytes at {offset} (filesystem of "
                                 f"{self.size})")
        self.total += length
        if self.total > WORK_MAX:
            raise common.Finding(f"{self.total} bytes read in all from {len(self.pieces)} "
                                 "pieces")
        n = max(0, min(length, self.size - offset))
        out = bytearray(n)
        for at, data in self.pieces:
            a, b = max(at, offset), min(at + len(data), offset + n)
            if a < b:
                out[a - offset:b - offset] = data[a - at:b - at]
        return bytes(out)

    def readinto(self, view: memoryview, offset: int) -> int:
        data = self.read(offset, len(view))
        view[:len(data)] = data
        return len(data)


class View(io.RawIOBase):
    """The file object the dissect readers open the filesystem through."""

    def __init__(self, disk: Disk) -> None:
        self.disk, self.pos = disk, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else (self.pos + offset if whence == 1 else
                                               self.disk.size + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.disk.read(self.pos, min(len(b), max(0, self.disk.size - self.pos)))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def decode(data: bytes) -> tuple[int, list[tuple[int, bytes]]] | None:
    if len(data) < 4:
        return None
    (units,) = struct.unpack_from("<I", data)
    pieces, pos = [], 4
    while pos + 6 <= len(data):
        sector, n = struct.unpack_from("<IH", data, pos)
        pieces.append((sector * 512, data[pos + 6:pos + 6 + n]))
        pos += 6 + n
    end = max((a + len(d) for a, d in pieces), default=0)
    size = min(MAX_FS, max(end, units * UNIT))
    size -= size % 512
    return (size, pieces) if size >= 1024 else None


def read_file(fs: FileSystem, ino: int, size: int) -> None:
    f = fs.open(ino)
    for off in {0, max(0, size - FILE_READ)}:
        got = f.read(off, FILE_READ)
        if len(got) != max(0, min(FILE_READ, size - off)):
            raise common.Finding(f"inode {ino}: read({off}, {FILE_READ}) of a {size}-byte "
                                 f"file gave {len(got)} bytes")


def walk(fs: FileSystem) -> None:
    seen: set[int] = set()
    todo = deque([fs.root])
    while todo and len(seen) < MAX_NODES:
        ino = todo.popleft()
        if ino in seen:
            continue
        seen.add(ino)
        try:
            a = fs.attr(ino)
            fs.xattrs(ino)
            if stat.S_ISDIR(a.mode):
                todo.extend(fs.entries(ino).values())
            elif stat.S_ISLNK(a.mode):
                fs.readlink(ino)
            elif stat.S_ISREG(a.mode):
                read_file(fs, ino, a.size)
        except FsError:
            continue


def test_one_input(data: bytes) -> None:
    got = decode(data)
    if got is None:
        return
    disk = Disk(*got)
    try:
        fs = open_filesystem(View(disk), disk.read, disk.readinto, disk.size)
    except FsError:
        return
    if fs is not None:
        walk(fs)


if __name__ == "__main__":
    common.main(test_one_input)
