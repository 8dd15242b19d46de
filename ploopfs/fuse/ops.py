"""pyfuse3 operations over a services.tree (Dir/File nodes). No format knowledge here.

Reads are served inline (no threads: docs/mount.md measured a thread hop per request halving
throughput); every handler turns unexpected exceptions into EIO plus a log line, so a bug never
kills the mount."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from ploopfs.services.tree import Dir, File, LiveFile

log = logging.getLogger("ploopfs.fuse")
T = TypeVar("T")
TIMEOUT = 24 * 3600.0  # nothing changes under a read-only image: cache attributes for long


def guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:  # any error of ours: EIO for this request, the mount lives on
            log.error("%s failed: %s: %s", fn.__name__, type(e).__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Operations(pyfuse3.Operations):
    def __init__(self, root: Dir, *, uid: int, gid: int, direct_io: bool = False,
                 usage: Callable[[], tuple[int, int]] | None = None) -> None:
        """`usage`: (size, stored bytes) of the mounted disk, for statfs (df)."""
        super().__init__()
        self.uid, self.gid, self.direct_io = uid, gid, direct_io
        self.usage = usage
        self._nodes: dict[int, File | Dir] = {pyfuse3.ROOT_INODE: root}
        self._inodes: dict[int, int] = {id(root): pyfuse3.ROOT_INODE}
        self._parents: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}
        self._next = pyfuse3.ROOT_INODE + 1

    # -- inode table -------------------------------------------------------------------------
    def _inode(self, node: File | Dir, parent: int) -> int:
        ino = self._inodes.get(id(node))
        if ino is None:
            ino = self._next
            self._next += 1
            self._nodes[ino] = node
            self._inodes[id(node)] = ino
            self._parents[ino] = parent
        return ino

    def _node(self, inode: int) -> File | Dir:
        try:
            return self._nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        if isinstance(node, Dir):
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2 + sum(isinstance(c, Dir) for c in node.children.values())
            a.st_size = 0
        else:
            if isinstance(node, LiveFile):  # contents change: no attribute caching
                node.refresh()
                a.entry_timeout = a.attr_timeout = 0
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = node.size
            # What the images store for it (du, ls -s), not the size: a sparse file's blocks.
            a.st_blocks = -(-min(node.stored, node.size) // 512)
        a.st_uid, a.st_gid = self.uid, self.gid
        ns = node.mtime_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        a.st_blksize = 1 << 20
        return a

    # -- queries ------------------------------------------------------------------------------
    @guarded
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        n = os.fsdecode(name)
        if n == ".":
            return self._attr(parent_inode)
        if n == "..":
            return self._attr(self._parents[parent_inode])
        child = parent.children.get(n)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self._inode(child, parent_inode))

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not isinstance(self._node(inode), Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        assert isinstance(node, Dir)
        children = list(node.children.values())
        for i in range(start_id, len(children)):
            child = children[i]
            ino = self._inode(child, fh)
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._attr(ino), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        # keep_cache: the data never changes, so the page cache survives re-opens.
        if isinstance(node, LiveFile):
            return pyfuse3.FileInfo(fh=inode, keep_cache=False, direct_io=True)
        return pyfuse3.FileInfo(fh=inode, keep_cache=not self.direct_io, direct_io=self.direct_io)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        node = self._nodes[fh]
        assert isinstance(node, File)
        return node.read(off, size)

    async def release(self, fh: int) -> None:
        return None

    async def flush(self, fh: int) -> None:
        return None

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """df: the size of the mounted disk, used = what its images store (`du disk`), free =
        the rest, which the disk could still allocate (docs/mount.md: never 100 % for a
        sparse disk, so disk-full monitoring stays quiet). Inodes: 0 of 0, "not applicable"."""
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 512
        size, stored = self.usage() if self.usage is not None else (0, 0)
        s.f_blocks = -(-size // 512)
        s.f_bfree = s.f_bavail = s.f_blocks - min(s.f_blocks, -(-stored // 512))
        s.f_files = s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._node(inode)
        raise pyfuse3.FUSEError(errno.ENODATA)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._node(inode)
        return []

    @guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self._node(inode)
        return not mode & os.W_OK

    # -- everything that would change something: read-only file system ---------------------
    async def _erofs(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = write = create = mkdir = mknod = unlink = rmdir = symlink = rename = link = _erofs
    setxattr = removexattr = fallocate = _erofs  # type: ignore[assignment]
