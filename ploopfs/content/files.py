"""The files inside an ext2/3/4 or XFS filesystem, read through a file object (a partition of a
Volume, content/view.py) with the dissect project's readers, and no FUSE: inode attributes,
directory listings, symlink targets, extended attributes and file data.

dissect.extfs and dissect.xfs open the filesystem (superblock checks, group descriptors,
allocation groups, XFS inodes, directories and B+tree walks). Some pieces are decoded here
instead, because dissect's answer differs from what the kernel shows, or costs per block:

* ext inodes are unpacked from their raw bytes: uid/gid high halves, signed times with epoch
  bits, `i_blocks` units, device numbers, any inode size (dissect assumes 256 bytes);
* file data maps (ext4 extents, ext2/3 indirect blocks, XFS extent records) are turned into
  sorted extent arrays once per open file; unwritten (preallocated) extents and holes read as
  zeros without touching the disk, and every read is one `read`/`readinto` of the volume per
  extent piece (no per-block Python);
* extended attributes: ext4 in-inode and block entries, XFS short-form, leaf, node and remote
  values (dissect.xfs has none), POSIX ACLs converted to the VFS xattr format the kernel
  returns;
* ext directories: entries parsed from the directory's blocks with struct (htree leaves are
  ordinary entry blocks; inline-data directories too).

Nothing replays a journal: this is the committed state, as a read-only `norecovery` mount shows
it. Any unreadable inode or directory raises `FsError` for that inode alone (logged once, naming
it); the rest of the tree stays readable.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

log = logging.getLogger("ploopfs.files")

Read = Callable[[int, int], bytes | bytearray]  # (offset, length) in the filesystem's bytes
ReadInto = Callable[[memoryview, int], int]  # fills a zeroed buffer from an offset

# The filesystem kinds (content/registry.py's names) whose files are served here.
FILE_KINDS = frozenset({"ext2", "ext3", "ext4", "xfs"})
EXT_MAGIC_OFF, EXT_MAGIC = 1080, b"\x53\xef"
XFS_MAGIC = b"XFSB"
ACL_UNDEFINED_ID = 0xFFFFFFFF
# Directories, symlink targets and xattr values are read whole; none real comes near this
# (256 MiB of ext4 directory blocks hold some 6 million entries).
MAX_META_BYTES = 256 << 20
_ACL_USER, _ACL_GROUP = 0x02, 0x08


class FsError(Exception):
    """An inode or directory that cannot be read: EIO for that path."""

    def __init__(self, ino: int, what: str) -> None:
        self.ino, self.what = ino, what  # ino 0: the filesystem as a whole
        super().__init__(f"inode {ino}: {what}" if ino else what)


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int  # os.makedev(major, minor) for device nodes, else 0
    size: int
    blocks: int  # 512-byte units, as st_blocks
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


class _Lru(OrderedDict):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        if len(self) > self.limit:
            self.popitem(last=False)
        return value


class Extents:
    """A file's data as sorted extents: logical byte `start`, byte `offset` in the filesystem,
    `length`. Holes and unwritten extents are absent (zeros)."""

    __slots__ = ("length", "offset", "start")

    def __init__(self) -> None:
        self.start, self.offset, self.length = array("q"), array("q"), array("q")

    def add(self, start: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        s, o, n = self.start, self.offset, self.length
        if s and s[-1] + n[-1] == start and o[-1] + n[-1] == offset:
            n[-1] += length
        else:
            s.append(start)
            o.append(offset)
            n.append(length)

    def sorted(self) -> Extents:
        if all(self.start[i] < self.start[i + 1] for i in range(len(self.start) - 1)):
            return self
        out = Extents()
        for s, o, n in sorted(zip(self.start, self.offset, self.length, strict=True)):
            out.add(s, o, n)
        return out


class OpenFile:
    """One open regular file: its extent map, built once, and reads that go straight from the
    extents to the volume."""

    __slots__ = ("_ext", "_into", "_read", "ino", "size")

    def __init__(self, ino: int, size: int, extents: Extents, read: Read, readinto: ReadInto,
                 ) -> None:
        self.ino, self.size = ino, size
        self._ext, self._read, self._into = extents, read, readinto

    def read(self, offset: int, length: int) -> bytes | bytearray:
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        e = self._ext
        i = bisect_right(e.start, offset) - 1
        if i >= 0:
            s, n = e.start[i], e.length[i]
            if end <= s + n:  # the usual request: inside one extent, one volume read
                data = self._read(e.offset[i] + offset - s, end - offset)
                if len(data) != end - offset:
                    raise FsError(self.ino, f"short read at filesystem offset {e.offset[i]}")
                return data
        buf = bytearray(end - offset)  # zeros: holes stay as they are
        view = memoryview(buf)
        i = max(i, 0)
        while i < len(e.start) and e.start[i] < end:
            s, n = e.start[i], e.length[i]
            a, b = max(s, offset), min(s + n, end)
            if a < b:
                self._into(view[a - offset:b - offset], e.offset[i] + a - s)
            i += 1
        return buf


class MemFile(OpenFile):
    """A file whose data is held in its inode (ext4 inline data, XFS local format). Its size is
    the inode's: past the data it reads as zeros, as the kernel reads it."""

    __slots__ = ("_data",)

    def __init__(self, ino: int, data: bytes, size: int) -> None:
        super().__init__(ino, size, Extents(), _no_read, _noop_into)
        self._data = data[:size]

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        data = self._data[offset:end]
        return data + bytes(end - offset - len(data))


def _no_read(offset: int, length: int) -> bytes:
    return b""


def _noop_into(view: memoryview, offset: int) -> int:
    return 0


def probe(fh: BinaryIO) -> str | None:
    """"ext" or "xfs" by their magic numbers, or None."""
    fh.seek(0)
    head = fh.read(4)
    if head == XFS_MAGIC:
        return "xfs"
    fh.seek(EXT_MAGIC_OFF)
    if fh.read(2) == EXT_MAGIC:
        return "ext"
    return None


def open_filesystem(fh: BinaryIO, read: Read, readinto: ReadInto, size: int,
                    label: str = "") -> FileSystem | None:
    """The files of the filesystem `fh` holds (`read`/`readinto` reach the same bytes, at the
    same offsets, for file data), or None when it is not ext2/3/4 or XFS. Raises FsError when
    it is, but its superblock or root cannot be read. Only the superblock and the root inode
    are read here."""
    kind = probe(fh)
    if kind is None:
        return None
    cls = ExtFiles if kind == "ext" else XfsFiles
    try:
        return cls(fh, read, readinto, size, label)
    except FsError:
        raise
    except (Exception, RecursionError) as e:  # dissect's errors on a damaged superblock or AG
        raise FsError(0, f"cannot open the {kind} filesystem: {type(e).__name__}: {e}") from None


class FileSystem:
    """What the front ends use; subclasses decode one kind of filesystem."""

    kind = "?"
    root = 0

    def __init__(self, fh: BinaryIO, read: Read, readinto: ReadInto, size: int,
                 label: str) -> None:
        self.fh, self._read, self._into, self.size = fh, read, readinto, size
        self.label = label
        self._attrs = _Lru(1 << 16)
        self._dirs = _Lru(256)
        self._xattrs = _Lru(1024)
        self._logged: set[int] = set()
        self._opening = True  # errors while opening are raised to the caller, not logged

    # -- the interface -------------------------------------------------------------------------
    def attr(self, ino: int) -> Attr:
        a = self._attrs.get(ino)
        if a is None:
            a = self._attrs.put(ino, self._guard(ino, self._attr, ino))
        return a

    def entries(self, ino: int) -> dict[bytes, int]:
        """name -> inode number of a directory's entries, "." and ".." left out."""
        d = self._dirs.get(ino)
        if d is None:
            if not stat.S_ISDIR(self.attr(ino).mode):
                raise NotADirectoryError(ino)
            d = self._dirs.put(ino, self._guard(ino, self._entries, ino))
        else:
            self._dirs.move_to_end(ino)
        return d

    def lookup(self, ino: int, name: bytes) -> int | None:
        return self.entries(ino).get(name)

    def readlink(self, ino: int) -> bytes:
        a = self.attr(ino)
        if not stat.S_ISLNK(a.mode):
            raise OSError(22, "not a symlink")
        return self._guard(ino, self._readlink, ino, a)

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """Extended attributes as the kernel names them (`user.x`, `system.posix_acl_access`
        in the VFS format, ...): name -> value."""
        x = self._xattrs.get(ino)
        if x is None:
            self.attr(ino)
            x = self._xattrs.put(ino, self._guard(ino, self._xattr, ino))
        return x

    def open(self, ino: int) -> OpenFile:
        a = self.attr(ino)
        if not stat.S_ISREG(a.mode):
            raise OSError(22, "not a regular file")
        ext = self._guard(ino, self._extents, ino, a)
        return OpenFile(ino, a.size, ext, self._read, self._into)

    # -- helpers ---------------------------------------------------------------------------------
    def _guard(self, ino: int, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except FsError as e:
            self._fail(e)
        except (Exception, RecursionError) as e:  # dissect and struct errors on damaged data
            self._fail(FsError(ino, f"{type(e).__name__}: {e}"))

    def _fail(self, e: FsError) -> None:
        if self._opening:
            self._attrs.pop(e.ino, None)
            raise e
        if e.ino not in self._logged:
            self._logged.add(e.ino)
            log.error("%s%s: unreadable inode %d: %s", self.label, f" ({self.kind})",
                      e.ino, e.what)
        raise e

    def _check_extent(self, ino: int, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise FsError(ino, f"data at byte {offset} (+{length}) lies outside the "
                               f"filesystem ({self.size} bytes)")

    @staticmethod
    def _check_meta_size(ino: int, size: int) -> None:
        """Directories, symlinks and xattr values are read whole: a size past MAX_META_BYTES
        is damage (or a directory of millions of entries), refused before any work."""
        if size > MAX_META_BYTES:
            raise FsError(ino, f"{size} bytes of directory or attribute data, more than "
                               f"ploopfs reads ({MAX_META_BYTES >> 20} MiB)")

    def _exact(self, offset: int, length: int) -> bytes:
        data = bytes(self._read(offset, length))
        if len(data) != length:
            raise EOFError(f"short read at filesystem offset {offset}")
        return data

    def _data(self, ino: int, a: Attr, limit: int | None = None) -> bytes:
        """A whole (small) file's data: directories, symlink targets, xattr inodes."""
        size = a.size if limit is None else min(a.size, limit)
        self._check_meta_size(ino, size)
        f = OpenFile(ino, size, self._extents(ino, a), self._read, self._into)
        return bytes(f.read(0, f.size))

    # -- per kind -------------------------------------------------------------------------------
    def _attr(self, ino: int) -> Attr:
        raise NotImplementedError

    def _entries(self, ino: int) -> dict[bytes, int]:
        raise NotImplementedError

    def _readlink(self, ino: int, a: Attr) -> bytes:
        raise NotImplementedError

    def _xattr(self, ino: int) -> dict[bytes, bytes]:
        raise NotImplementedError

    def _extents(self, ino: int, a: Attr) -> Extents:
        raise NotImplementedError


# == ACLs ========================================================================================
def _vfs_acl(entries: Iterator[tuple[int, int, int]]) -> bytes:
    """The VFS xattr form of an ACL (version 2; ids only on named user/group entries)."""
    out = [struct.pack("<I", 2)]
    for tag, perm, ident in entries:
        out.append(struct.pack("<HHI", tag, perm,
                               ident if tag in (_ACL_USER, _ACL_GROUP) else ACL_UNDEFINED_ID))
    return b"".join(out)


def _ext_acl(raw: bytes) -> bytes:
    """ext4's compact ACL (version 1; 4-byte entries without an id) in the VFS form."""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != 1:
        raise ValueError("bad ext4 ACL header")

    def it() -> Iterator[tuple[int, int, int]]:
        pos = 4
        while pos < len(raw):
            tag, perm = struct.unpack_from("<HH", raw, pos)
            if tag in (_ACL_USER, _ACL_GROUP):
                yield tag, perm, struct.unpack_from("<I", raw, pos + 4)[0]
                pos += 8
            else:
                yield tag, perm, ACL_UNDEFINED_ID
                pos += 4

    return _vfs_acl(it())


def _xfs_acl(raw: bytes) -> bytes:
    """XFS's on-disk ACL (big-endian count, 12-byte entries) in the VFS form."""
    (count,) = struct.unpack_from(">I", raw)
    if 4 + 12 * count > len(raw):
        raise ValueError("bad XFS ACL")
    return _vfs_acl((tag, perm, ident) for tag, ident, perm, _pad in
                    struct.iter_unpack(">IIHH", raw[4:4 + 12 * count]))


# == ext2/3/4 ====================================================================================
_EXT_INODE = struct.Struct("<HHIIIIIHHIII60sIIII")  # up to i_obso_faddr (116 bytes)
_EXT_OSD2 = struct.Struct("<HHHH")  # blocks_high, file_acl_high, uid_high, gid_high (at 116)
_EXT4_EXTENTS_FL, _EXT4_HUGE_FILE_FL, _EXT4_INLINE_DATA_FL = 0x80000, 0x40000, 0x10000000
_EXT4_EA_INODE_FL = 0x200000
_EXT_XATTR_MAGIC = 0xEA020000
# name index -> prefix, as ext4's xattr handlers list them (7: system.data of inline data, and
# the others, are not listed by the kernel).
_EXT_PREFIX = {1: b"user.", 4: b"trusted.", 6: b"security."}
_EXT_ACL = {2: b"system.posix_acl_access", 3: b"system.posix_acl_default"}


def _ext_time(sec: int, extra: int | None) -> int:
    sec = sec - (1 << 32) if sec & 0x80000000 else sec
    if extra is None:
        return sec * 1_000_000_000
    return (sec + ((extra & 3) << 32)) * 1_000_000_000 + (extra >> 2)


class ExtFiles(FileSystem):
    def __init__(self, fh: BinaryIO, read: Read, readinto: ReadInto, size: int,
                 label: str) -> None:
        from dissect.extfs import ExtFS

        super().__init__(fh, read, readinto, size, label)
        self.dfs = dfs = ExtFS(fh)
        sb = dfs.sb
        self.kind = dfs.type.lower() if isinstance(dfs.type, str) else f"ext{dfs.type}"
        self.block_size = dfs.block_size
        self.inode_size = sb.s_inode_size if sb.s_rev_level else 128
        self.inodes_count = sb.s_inodes_count
        self.huge_file = bool(sb.s_feature_ro_compat & 0x8)
        self.filetype = bool(sb.s_feature_incompat & 0x2)
        self.root = 2
        if self.block_count * self.block_size > size:
            log.warning("%s: the %s filesystem (%d bytes) is larger than its partition (%d)",
                        label, self.kind, self.block_count * self.block_size, size)
        a = self.attr(self.root)
        if not stat.S_ISDIR(a.mode):
            raise FsError(self.root, "the root inode is not a directory")
        self._opening = False

    @property
    def block_count(self) -> int:
        return self.dfs.block_count

    def inode_offset(self, ino: int) -> int:
        """Byte offset of inode `ino` in the filesystem."""
        if not 1 <= ino <= self.inodes_count:
            raise FsError(ino, f"inode number outside 1..{self.inodes_count}")
        group, index = divmod(ino - 1, self.dfs.sb.s_inodes_per_group)
        gd = self.dfs._read_group_desc(group)
        table = gd.bg_inode_table_lo
        if self.dfs._group_desc_struct.__name__ == "ext4_group_desc":
            table |= gd.bg_inode_table_hi << 32
        off = table * self.block_size + index * self.inode_size
        if table == 0 or off + self.inode_size > self.size:
            raise FsError(ino, f"inode table of group {group} outside the filesystem")
        return off

    def _raw(self, ino: int) -> bytes:
        return self._exact(self.inode_offset(ino), self.inode_size)

    def _attr(self, ino: int) -> Attr:
        raw = self._raw(ino)
        (mode, uid, size_lo, atime, ctime, mtime, _dtime, gid, links, blocks_lo, flags, _osd1,
         iblock, _gen, _acl_lo, size_hi, _faddr) = _EXT_INODE.unpack_from(raw)
        blocks_hi, _acl_hi, uid_hi, gid_hi = _EXT_OSD2.unpack_from(raw, 116)
        if mode == 0 and links == 0:
            raise FsError(ino, "not in use (mode 0, no links)")
        extra_end = 128 + (struct.unpack_from("<H", raw, 128)[0] if len(raw) > 128 else 0)

        def extra(off: int) -> int | None:
            return struct.unpack_from("<I", raw, off)[0] if off + 4 <= extra_end else None

        blocks = blocks_lo | (blocks_hi << 32 if self.huge_file else 0)
        if self.huge_file and flags & _EXT4_HUGE_FILE_FL:
            blocks *= self.block_size // 512
        size = size_lo | size_hi << 32
        if flags & _EXT4_INLINE_DATA_FL and stat.S_ISREG(mode):  # as ext4_file_getattr
            blocks += (size + 511) >> 9
        rdev = 0
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            old, new = struct.unpack_from("<II", iblock)
            if old:
                rdev = _makedev((old >> 8) & 0xFF, old & 0xFF)
            else:
                rdev = _makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
        return Attr(ino, mode, links, uid | uid_hi << 16, gid | gid_hi << 16, rdev, size, blocks,
                    _ext_time(atime, extra(140)), _ext_time(mtime, extra(136)),
                    _ext_time(ctime, extra(132)))

    # -- data -------------------------------------------------------------------------------------
    def _extents(self, ino: int, a: Attr) -> Extents:
        raw = self._raw(ino)
        flags = struct.unpack_from("<I", raw, 32)[0]
        iblock = raw[40:100]
        bs = self.block_size
        out = Extents()
        if flags & _EXT4_INLINE_DATA_FL:
            raise FsError(ino, "inline data has no extents")  # callers use _inline
        if flags & _EXT4_EXTENTS_FL:
            for lblk, pblk, n in self._extent_tree(ino, iblock, 0):
                self._check_extent(ino, pblk * bs, n * bs)
                out.add(lblk * bs, pblk * bs, n * bs)
            return out.sorted()
        nblocks = -(-a.size // bs)
        blocks = array("I", iblock[:48])
        ptrs = struct.unpack_from("<III", iblock, 48)
        per = bs // 4
        run: list[int] = [0, 0, 0]  # lblk, pblk, count of the run being built

        def emit(lblk: int, pblk: int) -> None:
            if run[2] and run[0] + run[2] == lblk and run[1] + run[2] == pblk:
                run[2] += 1
                return
            if run[2]:
                self._check_extent(ino, run[1] * bs, run[2] * bs)
                out.add(run[0] * bs, run[1] * bs, run[2] * bs)
            run[:] = [lblk, pblk, 1]

        def walk(ptr: int, level: int, first: int) -> None:
            span = per ** level
            if first >= nblocks:
                return
            if ptr == 0:
                return  # a hole of `span` blocks
            self._check_extent(ino, ptr * bs, bs)
            table = array("I", self._exact(ptr * bs, bs))
            for k, p in enumerate(table):
                lblk = first + k * (span // per)
                if lblk >= nblocks:
                    break
                if p and level == 1:
                    emit(lblk, p)
                elif p:
                    walk(p, level - 1, lblk)

        for k in range(min(12, nblocks)):
            if blocks[k]:
                emit(k, blocks[k])
        first = 12
        for level, ptr in enumerate(ptrs, 1):
            walk(ptr, level, first)
            first += per ** level
        if run[2]:
            self._check_extent(ino, run[1] * bs, run[2] * bs)
            out.add(run[0] * bs, run[1] * bs, run[2] * bs)
        return out

    def _extent_tree(self, ino: int, node: bytes, depth: int) -> Iterator[tuple[int, int, int]]:
        magic, entries, _max, level = struct.unpack_from("<HHHH", node)
        if magic != 0xF30A:
            raise FsError(ino, "bad extent header magic")
        if depth > 5 or 12 + 12 * entries > len(node):
            raise FsError(ino, "bad extent tree")
        for k in range(entries):
            if level == 0:
                lblk, n, hi, lo = struct.unpack_from("<IHHI", node, 12 + 12 * k)
                if n > 32768:  # unwritten: reads as zeros
                    continue
                yield lblk, lo | hi << 32, n
            else:
                _lblk, lo, hi = struct.unpack_from("<IIH", node, 12 + 12 * k)
                child = lo | hi << 32
                self._check_extent(ino, child * self.block_size, self.block_size)
                yield from self._extent_tree(ino, self._exact(child * self.block_size,
                                                              self.block_size), depth + 1)

    def _inline(self, ino: int, raw: bytes) -> bytes:
        """Inline data: the 60 bytes of i_block, then the value of system.data."""
        return raw[40:100] + self._ext_xattrs(ino, raw, raw_names=True).get(b"system.data", b"")

    def _file_bytes(self, ino: int, a: Attr) -> bytes:
        raw = self._raw(ino)
        if struct.unpack_from("<I", raw, 32)[0] & _EXT4_INLINE_DATA_FL:
            return self._inline(ino, raw)[:a.size]
        return self._data(ino, a)

    def open(self, ino: int) -> OpenFile:
        a = self.attr(ino)
        if stat.S_ISREG(a.mode):
            raw = self._guard(ino, self._raw, ino)
            if struct.unpack_from("<I", raw, 32)[0] & _EXT4_INLINE_DATA_FL:
                return MemFile(ino, self._guard(ino, self._inline, ino, raw), a.size)
        return super().open(ino)

    def _readlink(self, ino: int, a: Attr) -> bytes:
        raw = self._raw(ino)
        flags = struct.unpack_from("<I", raw, 32)[0]
        if flags & _EXT4_INLINE_DATA_FL:
            return self._inline(ino, raw)[:a.size]
        acl = struct.unpack_from("<I", raw, 104)[0] | struct.unpack_from("<H", raw, 118)[0] << 32
        ea_blocks = self.block_size // 512 if acl else 0
        if flags & _EXT4_EA_INODE_FL or a.blocks - ea_blocks == 0:  # fast symlink
            return raw[40:40 + min(a.size, 60)]
        return self._data(ino, a)

    # -- directories ------------------------------------------------------------------------------
    def _entries(self, ino: int) -> dict[bytes, int]:
        a = self.attr(ino)
        raw = self._raw(ino)
        out: dict[bytes, int] = {}
        if struct.unpack_from("<I", raw, 32)[0] & _EXT4_INLINE_DATA_FL:
            data = self._inline(ino, raw)
            self._dirents(ino, data[4:60], out, len(data[4:60]))
            self._dirents(ino, data[60:], out, len(data) - 60 or 1)
            return out
        data = self._data(ino, a)
        self._dirents(ino, data, out, self.block_size)
        return out

    def _dirents(self, ino: int, data: bytes, out: dict[bytes, int], block: int) -> None:
        pos, end = 0, len(data)
        big = self.block_size >= 65536
        count = self.inodes_count
        while pos + 8 <= end:
            child, rec_len, name_len, _ftype = struct.unpack_from("<IHBB", data, pos)
            if not self.filetype:
                name_len |= _ftype << 8
            if big and rec_len in (0, 65535):
                rec_len = 65536
            block_end = (pos // block + 1) * block
            if rec_len < 8 or rec_len % 4 or pos + rec_len > min(end, block_end) \
                    or 8 + name_len > rec_len:
                raise FsError(ino, f"bad directory entry at byte {pos} of the directory")
            if child:
                if child > count:
                    raise FsError(ino, f"directory entry for inode {child} past the last")
                name = data[pos + 8:pos + 8 + name_len]
                if name not in (b".", b".."):
                    out[name] = child
            pos += rec_len

    # -- xattrs -----------------------------------------------------------------------------------
    def _xattr(self, ino: int) -> dict[bytes, bytes]:
        return self._ext_xattrs(ino, self._raw(ino), raw_names=False)

    def _ext_xattrs(self, ino: int, raw: bytes, raw_names: bool) -> dict[bytes, bytes]:
        """`raw_names`: system.data and other unlisted names too (inline data needs it)."""
        out: dict[bytes, bytes] = {}
        if len(raw) > 128:
            isize = struct.unpack_from("<H", raw, 128)[0]
            start = 128 + isize
            if start + 4 <= len(raw) and struct.unpack_from("<I", raw, start)[0] == \
                    _EXT_XATTR_MAGIC:
                body = raw[start + 4:]
                self._xattr_entries(ino, body, 0, body, out, raw_names)
        acl = struct.unpack_from("<I", raw, 104)[0] | struct.unpack_from("<H", raw, 118)[0] << 32
        if acl:
            self._check_extent(ino, acl * self.block_size, self.block_size)
            blk = self._exact(acl * self.block_size, self.block_size)
            if struct.unpack_from("<I", blk)[0] != _EXT_XATTR_MAGIC:
                raise FsError(ino, f"bad xattr block {acl}")
            self._xattr_entries(ino, blk, 32, blk, out, raw_names)
        return out

    def _xattr_entries(self, ino: int, buf: bytes, pos: int, values: bytes,
                       out: dict[bytes, bytes], raw_names: bool) -> None:
        while pos + 16 <= len(buf) and struct.unpack_from("<I", buf, pos)[0] != 0:
            name_len, index, value_offs, value_inum, value_size, _hash = \
                struct.unpack_from("<BBHIII", buf, pos)
            name = buf[pos + 16:pos + 16 + name_len]
            if value_inum:
                va = self.attr(value_inum)
                value = self._data(value_inum, va, value_size)
            else:
                if value_offs + value_size > len(values):
                    raise FsError(ino, "xattr value outside its block")
                value = values[value_offs:value_offs + value_size]
            pos += (16 + name_len + 3) & ~3
            if index in _EXT_PREFIX:
                out[_EXT_PREFIX[index] + name] = value
            elif index in _EXT_ACL:
                out[_EXT_ACL[index]] = _ext_acl(value)
            elif raw_names and index == 7:
                out[b"system." + name] = value


def _makedev(major: int, minor: int) -> int:
    return os.makedev(major, minor)


# == XFS =========================================================================================
_XFS_LOCAL, _XFS_EXTENTS, _XFS_BTREE, _XFS_DEV = 1, 2, 3, 0
# magic, mode, version, format, onlink, uid, gid, nlink, projid lo/hi, (v3 big nextents), a/m/c
# times, size, nblocks: the inode core up to byte 72
_XFS_CORE = struct.Struct(">HHBBHIIIHHQQQQqQ")
_XFS_LEAF_OFFSET = 32 << 30  # directory data lives below this file offset
_XFS_ATTR_LOCAL, _XFS_ATTR_ROOT, _XFS_ATTR_SECURE, _XFS_ATTR_PARENT = 1, 2, 4, 8
_XFS_ATTR_INCOMPLETE = 0x80
_SGI_ACL = {b"SGI_ACL_FILE": b"system.posix_acl_access",
            b"SGI_ACL_DEFAULT": b"system.posix_acl_default"}


def _xfs_time(ts: int, bigtime: bool) -> int:
    if bigtime:
        sec, nsec = divmod(ts, 1_000_000_000)
        return (sec - (1 << 31)) * 1_000_000_000 + nsec
    sec, nsec = ts >> 32, ts & 0xFFFFFFFF
    if sec & 0x80000000:
        sec -= 1 << 32
    return sec * 1_000_000_000 + nsec


class XfsFiles(FileSystem):
    kind = "xfs"

    def __init__(self, fh: BinaryIO, read: Read, readinto: ReadInto, size: int,
                 label: str) -> None:
        from dissect.xfs import XFS

        super().__init__(fh, read, readinto, size, label)
        self.dfs = dfs = XFS(fh)
        sb = dfs.sb
        self.block_size = dfs.block_size
        self.v5 = dfs.version == 5
        self.root = sb.sb_rootino
        self.inode_size = sb.sb_inodesize
        self._ino_bits = sb.sb_agblklog + sb.sb_inopblog
        self._ag_bytes = sb.sb_agblocks * self.block_size
        self.dir_block = self.block_size << sb.sb_dirblklog
        self.ftype = bool(dfs._has_ftype)
        self._inodes = _Lru(256)
        a = self.attr(self.root)
        if not stat.S_ISDIR(a.mode):
            raise FsError(self.root, "the root inode is not a directory")
        self._opening = False

    def inode_offset(self, ino: int) -> int:
        """Byte offset of inode `ino` in the filesystem."""
        agno, agino = ino >> self._ino_bits, ino & ((1 << self._ino_bits) - 1)
        off = agno * self._ag_bytes + agino * self.inode_size
        if agno >= self.dfs.sb.sb_agcount or off + self.inode_size > self.size:
            raise FsError(ino, "inode number outside the filesystem")
        return off

    def _raw(self, ino: int) -> bytes:
        """An inode's bytes, its magic and version checked."""
        raw = self._exact(self.inode_offset(ino), self.inode_size)
        if raw[:2] != b"IN" or raw[4] not in (1, 2, 3):
            raise FsError(ino, "bad inode magic or version")
        return raw

    def _inode(self, ino: int) -> Any:
        """dissect's inode (B+tree forks, symlinks)."""
        node = self._inodes.get(ino)
        if node is None:
            node = self.dfs.get_inode(ino)
            node.inode  # noqa: B018 - read and check the magic now
            self._inodes.put(ino, node)
        return node

    def _fsb(self, fsb: int) -> int:
        """A filesystem block number (AG number, block in AG) as a byte offset."""
        sb = self.dfs.sb
        agno, agbno = fsb >> sb.sb_agblklog, fsb & ((1 << sb.sb_agblklog) - 1)
        return (agno * sb.sb_agblocks + agbno) * self.block_size

    def _attr(self, ino: int) -> Attr:
        raw = self._raw(ino)
        (_magic, mode, version, fmt, onlink, uid, gid, nlink, _p1, _p2, _big, atime, mtime, ctime,
         size, nblocks) = _XFS_CORE.unpack_from(raw)
        big = version >= 3 and bool(struct.unpack_from(">Q", raw, 120)[0] & 0x8)
        rdev = 0
        if fmt == _XFS_DEV:
            dev = struct.unpack_from(">I", raw, 0xB0 if version >= 3 else 0x64)[0]
            rdev = _makedev((dev >> 18) & 0x1FF, dev & 0x3FFFF)
        return Attr(ino, mode, nlink if version >= 2 else onlink, uid, gid, rdev, size,
                    nblocks * (self.block_size // 512), _xfs_time(atime, big),
                    _xfs_time(mtime, big), _xfs_time(ctime, big))

    def _records(self, ino: int, attr_fork: bool) -> Iterator[tuple[int, int, int, int]]:
        """(file block, filesystem block, count, unwritten) of the data or attribute fork."""
        from dissect.xfs.c_xfs import c_xfs
        from dissect.xfs.xfs import parse_fsblock

        raw = self._raw(ino)
        fmt, data, fork = self._fork(ino, raw, attr_fork)
        nrext64 = raw[4] >= 3 and struct.unpack_from(">Q", raw, 120)[0] & 0x10
        if attr_fork:
            count = struct.unpack_from(">I" if nrext64 else ">H", raw, 76 if nrext64 else 80)[0]
        else:
            count = struct.unpack_from(">Q", raw, 24)[0] if nrext64 else \
                struct.unpack_from(">I", raw, 76)[0]
        if fmt == _XFS_EXTENTS:
            if count * 16 > len(data):
                raise FsError(ino, "extent list larger than its fork")
            for k in range(count):
                yield parse_fsblock(data[k * 16:(k + 1) * 16])
        elif fmt == _XFS_BTREE:
            node = self._inode(ino)
            fork = node.attrfork() if attr_fork else node.datafork()
            root = c_xfs.xfs_bmdr_block(fork)
            maxrecs = (fork.size - 4) // 16
            fork.seek(4 + maxrecs * 8)
            for ptr in c_xfs.uint64[root.bb_numrecs](fork):
                yield from node.ag.walk_extents(ptr)
        elif fmt != _XFS_LOCAL:
            raise FsError(ino, f"unknown fork format {fmt}")

    def _fork(self, ino: int, raw: bytes, attr_fork: bool) -> tuple[int, bytes, int]:
        """(format, bytes, forkoff) of the data or attribute fork inside the inode."""
        start = 0xB0 if raw[4] >= 3 else 0x64
        forkoff, aformat = raw[82] * 8, raw[83]
        if attr_fork:
            return aformat, raw[start + forkoff:] if forkoff else b"", forkoff
        end = start + forkoff if forkoff else len(raw)
        return raw[5], raw[start:end], forkoff

    def _fork_map(self, ino: int, attr_fork: bool) -> Extents:
        bs = self.block_size
        out = Extents()
        for off, fsb, n, flag in self._records(ino, attr_fork):
            if flag:  # unwritten extent: zeros
                continue
            where = self._fsb(fsb)
            self._check_extent(ino, where, n * bs)
            out.add(off * bs, where, n * bs)
        return out.sorted()

    def _extents(self, ino: int, a: Attr) -> Extents:
        if self._raw(ino)[5] == _XFS_LOCAL:
            raise FsError(ino, "local data has no extents")
        return self._fork_map(ino, False)

    def _local(self, ino: int, a: Attr) -> bytes | None:
        raw = self._raw(ino)
        fmt, data, _ = self._fork(ino, raw, False)
        return data[:a.size] if fmt == _XFS_LOCAL else None

    def open(self, ino: int) -> OpenFile:
        a = self.attr(ino)
        if stat.S_ISREG(a.mode):
            data = self._guard(ino, self._local, ino, a)
            if data is not None:
                return MemFile(ino, data, a.size)
        return super().open(ino)

    def _readlink(self, ino: int, a: Attr) -> bytes:
        return self._inode(ino).link.encode(errors="surrogateescape")

    def _entries(self, ino: int) -> dict[bytes, int]:
        a = self.attr(ino)
        out: dict[bytes, int] = {}
        local = self._local(ino, a)
        if local is not None:  # short form: count, i8count, parent, then the entries
            count, i8 = local[0], local[1]
            isz = 8 if i8 else 4
            pos = 2 + isz
            for _ in range(count):
                nlen = local[pos]
                name = local[pos + 3:pos + 3 + nlen]
                pos += 3 + nlen + (1 if self.ftype else 0)
                if pos + isz > len(local):
                    raise FsError(ino, "short-form directory entry past its fork")
                out[name] = int.from_bytes(local[pos:pos + isz], "big")
                pos += isz
            return out
        ext = self._fork_map(ino, False)
        self._check_meta_size(ino, sum(max(0, min(s + n, _XFS_LEAF_OFFSET) - s)
                                       for s, n in zip(ext.start, ext.length, strict=True)))
        f = OpenFile(ino, _XFS_LEAF_OFFSET, ext, self._read, self._into)
        dbs = self.dir_block
        for k in range(len(ext.start)):  # the mapped data blocks (below the leaf offset)
            first, end = ext.start[k], min(ext.start[k] + ext.length[k], _XFS_LEAF_OFFSET)
            for boff in range(first - first % dbs, end, dbs):
                self._dir_block(ino, bytes(f.read(boff, dbs)), out)
        return out

    def _dir_block(self, ino: int, b: bytes, out: dict[bytes, int]) -> None:
        magic = b[:4]
        if magic in (b"XDB3", b"XD2B"):
            count = struct.unpack_from(">I", b, len(b) - 8)[0]
            end = len(b) - 8 - 8 * count
        elif magic in (b"XDD3", b"XD2D"):
            end = len(b)
        else:
            return  # a hole or a block past the data (freed) section
        pos = 64 if magic[3:] == b"3" else 16
        ft = 1 if self.ftype else 0
        while pos < end:
            if b[pos:pos + 2] == b"\xff\xff":  # unused space
                length = struct.unpack_from(">H", b, pos + 2)[0]
                if length < 8 or length % 8:
                    raise FsError(ino, "bad free entry in a directory block")
                pos += length
                continue
            child, nlen = struct.unpack_from(">QB", b, pos)
            name = b[pos + 9:pos + 9 + nlen]
            size = (9 + nlen + ft + 2 + 7) & ~7
            if nlen == 0 or pos + size > end:
                raise FsError(ino, "bad directory entry")
            if name not in (b".", b".."):
                out[name] = child
            pos += size

    # -- xattrs -----------------------------------------------------------------------------------
    def _xattr(self, ino: int) -> dict[bytes, bytes]:
        raw = self._raw(ino)
        fmt, buf, forkoff = self._fork(ino, raw, True)
        out: dict[bytes, bytes] = {}
        if forkoff == 0:
            return out
        if fmt == _XFS_LOCAL:
            _total, count = struct.unpack_from(">HB", buf)
            pos = 4
            for _ in range(count):
                nlen, vlen, flags = struct.unpack_from(">BBB", buf, pos)
                name = buf[pos + 3:pos + 3 + nlen]
                value = buf[pos + 3 + nlen:pos + 3 + nlen + vlen]
                if pos + 3 + nlen + vlen > len(buf):
                    raise FsError(ino, "short-form xattr past its fork")
                self._xattr_put(out, flags, name, value)
                pos += 3 + nlen + vlen
            return out
        fork = self._fork_map(ino, True)
        if not fork.start:  # an attribute fork in extents format with no extents: empty
            return out
        reader = OpenFile(ino, 1 << 62, fork, self._read, self._into)
        bs = self.block_size

        def block(n: int) -> bytes:
            return bytes(reader.read(n * bs, bs))

        blk, seen = 0, set()
        for _ in range(64):  # down the leftmost path of a da-btree to the first leaf
            b = block(blk)
            magic = struct.unpack_from(">H", b, 8)[0]
            if magic in (0xFEBE, 0x3EBE):
                hdr = 64 if magic == 0x3EBE else 16
                count = struct.unpack_from(">H", b, hdr - (8 if magic == 0x3EBE else 4))[0]
                if count == 0:
                    raise FsError(ino, "empty xattr node")
                blk = struct.unpack_from(">I", b, hdr + 4)[0]
                continue
            break
        while True:  # the leaves, by their forward links
            if blk in seen:
                raise FsError(ino, "xattr leaf chain loops")
            seen.add(blk)
            b = block(blk)
            forw, _back, magic = struct.unpack_from(">IIH", b)
            if magic not in (0xFBEE, 0x3BEE):
                raise FsError(ino, f"bad xattr leaf magic {magic:#x} in attr block {blk}")
            v5 = magic == 0x3BEE
            count = struct.unpack_from(">H", b, 56 if v5 else 12)[0]
            first = 80 if v5 else 32
            for k in range(count):
                _hash, nameidx, flags = struct.unpack_from(">IHB", b, first + 8 * k)
                if flags & _XFS_ATTR_LOCAL:
                    vlen, nlen = struct.unpack_from(">HB", b, nameidx)
                    name = b[nameidx + 3:nameidx + 3 + nlen]
                    value = b[nameidx + 3 + nlen:nameidx + 3 + nlen + vlen]
                else:
                    vblk, vlen, nlen = struct.unpack_from(">IIB", b, nameidx)
                    name = b[nameidx + 9:nameidx + 9 + nlen]
                    value = self._remote(reader, vblk, vlen, v5) \
                        if not flags & _XFS_ATTR_INCOMPLETE else b""
                self._xattr_put(out, flags, name, value)
            if not forw:
                return out
            blk = forw

    def _remote(self, reader: OpenFile, vblk: int, vlen: int, v5: bool) -> bytes:
        bs = self.block_size
        if not v5:
            return bytes(reader.read(vblk * bs, vlen))
        per = bs - 56
        parts, left, n = [], vlen, vblk
        while left > 0:
            b = bytes(reader.read(n * bs, bs))
            if b[:4] != b"XARM":
                raise FsError(reader.ino, f"bad remote xattr block {n}")
            parts.append(b[56:56 + min(per, left)])
            left -= per
            n += 1
        return b"".join(parts)

    @staticmethod
    def _xattr_put(out: dict[bytes, bytes], flags: int, name: bytes, value: bytes) -> None:
        if flags & (_XFS_ATTR_INCOMPLETE | _XFS_ATTR_PARENT):
            return
        if flags & _XFS_ATTR_ROOT:
            if name in _SGI_ACL:
                out[_SGI_ACL[name]] = _xfs_acl(value)
            out[b"trusted." + name] = value
        elif flags & _XFS_ATTR_SECURE:
            out[b"security." + name] = value
        else:
            out[b"user." + name] = value


__all__ = ["FILE_KINDS", "Attr", "ExtFiles", "Extents", "FileSystem", "FsError", "OpenFile", "XfsFiles",
           "open_filesystem", "probe"]
