"""pyfuse3 operations over a services.tree (Dir/File nodes), and over the filesystems inside
(FsMount nodes: content/files.py's FileSystem, whose inode numbers map to FUSE inodes stably per
(filesystem, inode), so hard links share one). No format knowledge here.

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

from ploopfs.content.files import FileSystem, FsError, OpenFile
from ploopfs.services.tree import Dir, File, FsMount, LiveFile

log = logging.getLogger("ploopfs.fuse")
T = TypeVar("T")
WRITER = 1 << 61  # in the fh of an overlay node opened for writing (tree inodes are far below)
TIMEOUT = 24 * 3600.0  # nothing changes under a read-only image: cache attributes for long


class FsRef:
    """One inode of a filesystem inside the disk."""

    __slots__ = ("fs", "ino")

    def __init__(self, fs: FileSystem, ino: int) -> None:
        self.fs, self.ino = fs, ino


Node = File | Dir | FsMount | FsRef


def guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError:  # a damaged inode: EIO for this path; files.py logged it once
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception as e:  # any error of ours: EIO for this request, the mount lives on
            log.error("%s failed: %s: %s", fn.__name__, type(e).__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Operations(pyfuse3.Operations):
    def __init__(self, root: Dir | FsMount, *, uid: int, gid: int, direct_io: bool = False,
                 page_cache: bool = False,
                 usage: Callable[[], tuple[int, int]] | None = None) -> None:
        """`usage`: (size, stored bytes) of the mounted disk, for statfs (df). `root`: the
        tree, or (`--files`) the filesystem whose root is the mount's root.

        Caching (docs/mount.md, "Performance and caching"): by default the tree's own files
        (disk, partN, the JSON reports) are direct_io and the files of a filesystem inside go
        through the page cache (keep_cache, kernel readahead). `direct_io`: everything direct;
        `page_cache`: everything through the page cache."""
        super().__init__()
        self.uid, self.gid, self.direct_io = uid, gid, direct_io
        self.page_cache = page_cache and not direct_io
        self.usage = usage
        self._nodes: dict[int, Node] = {}
        self._inodes: dict[int, int] = {}
        self._fs_inodes: dict[tuple[int, int], int] = {}  # (id(fs), ino) -> FUSE inode
        self._parents: dict[int, int] = {pyfuse3.ROOT_INODE: pyfuse3.ROOT_INODE}
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._next = pyfuse3.ROOT_INODE
        if isinstance(root, FsMount):
            fs = root.fs
            self._fs_inode(fs, fs.root, pyfuse3.ROOT_INODE)
        else:
            self._inode(root, pyfuse3.ROOT_INODE)

    # -- inode table -------------------------------------------------------------------------
    def _inode(self, node: Node, parent: int) -> int:
        if isinstance(node, FsMount):
            try:
                fs = node.fs
            except Exception as e:  # shown as an empty folder; the error is logged once
                if not getattr(node, "_logged", False):
                    node._logged = True  # type: ignore[attr-defined]
                    log.error("%s: cannot read the filesystem: %s", node.where, e)
            else:
                return self._fs_inode(fs, fs.root, parent)
        ino = self._inodes.get(id(node))
        if ino is None:
            ino = self._next
            self._next += 1
            self._nodes[ino] = node
            self._inodes[id(node)] = ino
            self._parents[ino] = parent
        return ino

    def _fs_inode(self, fs: FileSystem, fs_ino: int, parent: int) -> int:
        key = (id(fs), fs_ino)
        ino = self._fs_inodes.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._nodes[ino] = FsRef(fs, fs_ino)
            self._fs_inodes[key] = ino
            self._parents[ino] = parent
        return ino

    def _node(self, inode: int) -> Node:
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
        if isinstance(node, FsRef):
            f = node.fs.attr(node.ino)
            a.st_mode, a.st_nlink, a.st_uid, a.st_gid = f.mode, f.nlink, f.uid, f.gid
            a.st_rdev, a.st_size, a.st_blocks = f.rdev, f.size, f.blocks
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = f.atime_ns, f.mtime_ns, f.ctime_ns
            a.st_blksize = 1 << 20
            return a
        if isinstance(node, FsMount):  # a filesystem that cannot be read: an empty folder
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFDIR | 0o555, 2, 0
        elif isinstance(node, Dir):
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2 + sum(isinstance(c, Dir) for c in node.children.values())
            a.st_size = 0
        else:
            if isinstance(node, LiveFile):  # contents change: no attribute caching
                node.refresh()
                a.entry_timeout = a.attr_timeout = 0
            # An overlay's disk and partN (docs/overlay.md) are writable by their owner; their
            # st_blocks grow with the writes, so the kernel asks again after a second.
            a.st_mode = stat.S_IFREG | (0o644 if node.write is not None else 0o444)
            if node.write is not None:
                a.attr_timeout = 1.0
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
        if name == b".":
            return self._attr(parent_inode)
        if name == b"..":
            return self._attr(self._parents[parent_inode])
        if isinstance(parent, FsRef):
            if not stat.S_ISDIR(parent.fs.attr(parent.ino).mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            fs_ino = parent.fs.lookup(parent.ino, name)
            if fs_ino is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(self._fs_inode(parent.fs, fs_ino, parent_inode))
        if isinstance(parent, FsMount):
            raise pyfuse3.FUSEError(errno.EIO)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        n = os.fsdecode(name)
        child = parent.children.get(n)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self._inode(child, parent_inode))

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if isinstance(node, FsRef):
            if not stat.S_ISDIR(node.fs.attr(node.ino).mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            node.fs.entries(node.ino)  # an unreadable directory fails here, with EIO
        elif isinstance(node, FsMount):
            raise pyfuse3.FUSEError(errno.EIO)
        elif not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        node = self._node(fh)
        if isinstance(node, FsRef):
            self._readdir_fs(fh, node, start_id, token)
            return
        assert isinstance(node, Dir)
        children = list(node.children.values())
        for i in range(start_id, len(children)):
            child = children[i]
            ino = self._inode(child, fh)
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._attr(ino), i + 1):
                break

    def _readdir_fs(self, fh: int, node: FsRef, start_id: int,
                    token: pyfuse3.ReaddirToken) -> None:
        fs = node.fs
        entries = list(fs.entries(node.ino).items())  # cached by the filesystem
        for i in range(start_id, len(entries)):
            name, fs_ino = entries[i]
            ino = self._fs_inode(fs, fs_ino, fh)
            try:
                attr = self._attr(ino)
            except FsError:  # listed, but not cached: a stat of it then fails with EIO
                attr = pyfuse3.EntryAttributes()
                attr.st_ino, attr.st_mode = ino, stat.S_IFREG
                attr.entry_timeout = attr.attr_timeout = 0
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not isinstance(node, FsRef) or not stat.S_ISLNK(node.fs.attr(node.ino).mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.fs.readlink(node.ino)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if isinstance(node, Dir | FsMount):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(node, File) and node.write is not None:
            return self._open_writable(inode, flags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if isinstance(node, FsRef):  # the extent map is built once per open file
            mode = node.fs.attr(node.ino).mode
            if stat.S_ISDIR(mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            if not stat.S_ISREG(mode):  # the kernel opens devices and FIFOs itself
                raise pyfuse3.FUSEError(errno.EACCES)
            fh = self._next_fh | 1 << 62  # apart from tree inodes, which are their own fh
            self._next_fh += 1
            self._open[fh] = node.fs.open(node.ino)
            return pyfuse3.FileInfo(fh=fh, keep_cache=not self.direct_io,
                                    direct_io=self.direct_io)
        if isinstance(node, LiveFile):
            return pyfuse3.FileInfo(fh=inode, keep_cache=False, direct_io=True)
        # disk and partN: direct_io unless --page-cache. Through the page cache every pass of a
        # disk is copied twice and fills fresh page-cache memory, whose cost varies 5x on a
        # shared machine; direct, the reply lands in the reader's buffer (docs/mount.md).
        # keep_cache with --page-cache: the data never changes, so the cache survives re-opens.
        return pyfuse3.FileInfo(fh=inode, keep_cache=self.page_cache,
                                direct_io=not self.page_cache)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        f = self._open.get(fh)
        if f is not None:
            return f.read(off, size)
        node = self._nodes[fh & ~WRITER]
        assert isinstance(node, File)
        return node.read(off, size)

    def _open_writable(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        """An overlay's disk or partN (docs/overlay.md): any access mode, but no truncation (its
        size is the disk's). Always direct_io, read-only opens too: disk and partN alias the
        same bytes, and pages cached for one would go stale on a write through the other."""
        if flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EPERM)
        fh = inode | WRITER if flags & (os.O_WRONLY | os.O_RDWR) else inode
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        """Overlay nodes only: short at the end of the disk or partition, ENOSPC past it."""
        node = self._nodes.get(fh & ~WRITER)
        if not isinstance(node, File) or node.write is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            n = node.write(off, buf)
        except OSError as e:
            log.error("write of %d bytes at %d failed: %s", len(buf), off, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        if n == 0 and buf:
            raise pyfuse3.FUSEError(errno.ENOSPC)
        return n

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        self._sync(fh)

    def _sync(self, fh: int) -> None:
        node = self._nodes.get(fh & ~WRITER)
        if isinstance(node, File) and node.sync is not None:
            try:
                node.sync()
            except OSError as e:
                log.error("flush of the overlay failed: %s", e)
                raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    @guarded
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Overlay nodes: a size change is refused (EPERM), anything else (times, modes) is
        accepted and forgotten; elsewhere the file system is read-only."""
        node = self._node(inode)
        if not isinstance(node, File) or node.write is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size and attr.st_size != node.size:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attr(inode)

    async def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    @guarded
    async def flush(self, fh: int) -> None:
        """close(2) of an overlay node opened for writing: everything written before it is made
        durable (a no-op when nothing was written since the last flush). A read-only close
        reports nothing, even after a failed flush (`cat` would call its input unreadable)."""
        if fh & WRITER:
            self._sync(fh)

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
        node = self._node(inode)
        if isinstance(node, FsRef) and (ctx.uid == 0 or not name.startswith(b"trusted.")):
            value = node.fs.xattrs(node.ino).get(name)
            if value is not None:
                return value
        raise pyfuse3.FUSEError(errno.ENODATA)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """As the kernel lists them: trusted.* only to root (CAP_SYS_ADMIN)."""
        node = self._node(inode)
        if not isinstance(node, FsRef):
            return []
        return [n for n in node.fs.xattrs(node.ino)
                if ctx.uid == 0 or not n.startswith(b"trusted.")]

    @guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self._node(inode)
        return not mode & os.W_OK or (isinstance(node, File) and node.write is not None)

    # -- everything that would change something: read-only file system ---------------------
    async def _erofs(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    create = mkdir = mknod = unlink = rmdir = symlink = rename = link = _erofs
    setxattr = removexattr = _erofs  # type: ignore[assignment]

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """An overlay's disk/partN: no discard or preallocation (EOPNOTSUPP, which a loop
        device reports as an unsupported discard, not as an I/O error); elsewhere EROFS."""
        node = self._nodes.get(fh & ~WRITER)
        if isinstance(node, File) and node.write is not None:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        raise pyfuse3.FUSEError(errno.EROFS)
