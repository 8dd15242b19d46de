"""A tiny FUSE file system for fault injection. It serves one backing file as MOUNTPOINT/NAME,
with no page cache (every request reaches it), and fails on purpose:

* reads that touch [BAD_START, BAD_END) get EIO, like a disk with unreadable sectors
  (read-only mount): `python faultfs.py BACKING MOUNTPOINT NAME BAD_START BAD_END`;
* with `--fail-writes FLAG`, the file is read-write and every write and fsync gets EIO while
  the file FLAG exists, like a disk whose writes fail for a while (a kernel loop device over
  MOUNTPOINT/NAME then sees real write-back errors):
  `python faultfs.py BACKING MOUNTPOINT NAME --fail-writes FLAG`.

Run as a subprocess; it prints "ready" once mounted, is unmounted with fusermount3 -u by the
caller and exits when unmounted."""

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
    def __init__(self, backing: str, name: bytes, bad: tuple[int, int],
                 fail_writes: str | None = None) -> None:
        super().__init__()
        self.writable = fail_writes is not None
        self.fd = os.open(backing, os.O_RDWR if self.writable else os.O_RDONLY)
        self.name = name
        self.bad = bad
        self.flag = fail_writes

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 60
        w = 0o200 if self.writable else 0
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o555 | w, 2
        else:
            a.st_mode, a.st_nlink = stat.S_IFREG | 0o444 | w, 1
            a.st_size = os.fstat(self.fd).st_size
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(INO)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        if not self.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
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

    def _failing(self) -> bool:
        return self.flag is not None and os.path.exists(self.flag)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if not self.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._failing():
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pwrite(self.fd, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if self._failing():
            raise pyfuse3.FUSEError(errno.EIO)
        os.fsync(self.fd)

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None


def main() -> None:
    backing, mnt, name = sys.argv[1:4]
    if sys.argv[4:5] == ["--fail-writes"]:
        ops = FaultOps(backing, name.encode(), (0, 0), fail_writes=sys.argv[5])
        options = ["fsname=faultfs"]
    else:
        ops = FaultOps(backing, name.encode(), (int(sys.argv[4]), int(sys.argv[5])))
        options = ["fsname=faultfs", "ro"]
    pyfuse3.init(ops, mnt, options)
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
