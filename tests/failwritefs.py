"""A tiny FUSE file system that serves one backing file read-write as MOUNTPOINT/NAME and fails
every write with EIO while the file FLAG exists, like a disk whose writes fail for a while. A
kernel loop device over MOUNTPOINT/NAME with a filesystem on it then sees real write-back
errors (tests/system/test_overlay_mount.py: fsync's error is reported once). Run as a
subprocess: python failwritefs.py BACKING MOUNTPOINT NAME FLAG (unmounted with fusermount3 -u
by the caller; exits when unmounted)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

INO = pyfuse3.ROOT_INODE + 1


class FailWriteOps(pyfuse3.Operations):
    def __init__(self, backing: str, name: bytes, flag: str) -> None:
        super().__init__()
        self.fd = os.open(backing, os.O_RDWR)
        self.name = name
        self.flag = flag

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = 60
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            a.st_mode, a.st_nlink = stat.S_IFREG | 0o644, 1
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
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, self.name, self._attr(INO), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if os.path.exists(self.flag):
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pwrite(self.fd, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if os.path.exists(self.flag):
            raise pyfuse3.FUSEError(errno.EIO)
        os.fsync(self.fd)

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None


def main() -> None:
    backing, mnt, name, flag = sys.argv[1:5]
    ops = FailWriteOps(backing, name.encode(), flag)
    pyfuse3.init(ops, mnt, ["fsname=failwritefs"])
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


if __name__ == "__main__":
    main()
