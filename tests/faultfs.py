"""A tiny read-only FUSE file system for fault injection: it serves one backing file as
MOUNTPOINT/NAME and answers reads that touch [BAD_START, BAD_END) with EIO, like a disk with
unreadable sectors. Run as a subprocess: python faultfs.py BACKING MOUNTPOINT NAME BAD_START BAD_END
(unmounted with fusermount3 -u by the caller; exits when unmounted)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

INO = pyfuse3.ROOT_INODE + 1


class FaultOps(pyfuse3.Operations):
    def __init__(self, backing: str, name: bytes, bad: tuple[int, int]) -> None:
        super().__init__()
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.name = name
        self.bad = bad

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 60
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, self.size
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(INO)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, self.name, self._attr(INO), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)  # no page cache: every read comes here

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if off < self.bad[1] and off + size > self.bad[0]:
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pread(self.fd, size, off)


def main() -> None:
    backing, mnt, name, start, end = sys.argv[1:6]
    ops = FaultOps(backing, name.encode(), (int(start), int(end)))
    pyfuse3.init(ops, mnt, ["fsname=faultfs", "ro"])
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
