"""Every file ploopfs opens: sources read-only, outputs through one guard.

Sources (images, descriptors, raw disks, rdiff inputs) are opened with `open_readonly`, which
records each file's identity (device and inode) in a process-wide register; a descriptor also
registers every image it names before any of them is opened. Every file ploopfs writes (command
outputs, pid and log files, new disks, reports) is opened with `create`, `create_folder` or
`open_log`, which refuse a path that is, links to or hard-links to a registered source (all three
share the inode), and a folder that holds one. Replacing an existing file (`--force`) is allowed
only for an earlier ploopfs output: outputs carry the extended attribute `user.ploopfs.output`;
where the filesystem keeps no extended attributes, a file that looks like a disk image or a
descriptor is never replaced. Clean-up after a failure removes only files this process created,
checked by inode, never whatever took the name since.

A source deleted while the process runs frees its inode number for a new file. Where the
filesystem numbers inode generations (ext4, XFS, btrfs: FS_IOC_GETVERSION), the register keeps
the source's generation too, and a regular file with the same device and inode but another
generation is a new file, not the source; elsewhere the same inode is refused unless it is of
another type (a folder now holds the number).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterable

from ploopfs.errors import BadImageError, NotFoundError, OutputError, SourceIOError
from ploopfs.format.probe import PROBE_BYTES, FileKind, probe

MARK = "user.ploopfs.output"

# (st_dev, st_ino) -> the path it was registered under, its file type (S_IFMT) and its inode
# generation (None: unknown)
_sources: dict[tuple[int, int], tuple[str, int, int | None]] = {}
# real paths of folders that hold a source
_source_dirs: set[str] = set()
# absolute path -> (st_dev, st_ino) of a file this process created (or replaced as its own)
_created: dict[str, tuple[int, int]] = {}
# (st_dev, st_ino) -> path of a file this process keeps writing (an open overlay's delta and
# descriptor): no other output may be it
_held: dict[tuple[int, int], str] = {}


def _key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


# -- sources ------------------------------------------------------------------------------------
FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long); the kernel writes an int


def _generation(fd: int) -> int | None:
    """The inode's generation number, or None where the filesystem has none (tmpfs, FUSE)."""
    try:
        got = fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8))
    except OSError:
        return None
    return int.from_bytes(got[:4], sys.byteorder)


def _generation_at(st: os.stat_result, path: str | None, fd: int | None) -> int | None:
    """The generation of a regular file, through `fd` or else by opening `path` read-only."""
    if not stat.S_ISREG(st.st_mode):
        return None
    if fd is not None:
        return _generation(fd)
    if path is None:
        return None
    try:
        f = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return _generation(f) if _key(os.fstat(f)) == _key(st) else None
    finally:
        os.close(f)


def _remember(st: os.stat_result, path: str, fd: int | None = None) -> None:
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        if source_named(st, path, fd) is None:  # new, or a new file in a deleted source's inode
            _sources[_key(st)] = (path, stat.S_IFMT(st.st_mode), _generation_at(st, path, fd))
        _source_dirs.add(os.path.dirname(os.path.realpath(path)))


def register_source(path: str | os.PathLike[str]) -> None:
    """Count `path` (symlinks followed) as a source from now on; a missing file is ignored."""
    p = os.fspath(path)
    with contextlib.suppress(OSError, ValueError):
        _remember(os.stat(p), p)


def register_sources(paths: Iterable[str | os.PathLike[str]]) -> None:
    for p in paths:
        register_source(p)


def open_readonly(path: str | os.PathLike[str]) -> int:
    """Open a source read-only and register it. FIFOs, sockets and character devices are
    refused (they could hang a reader or are not disks). Sources are never opened for writing."""
    p = os.fspath(path)
    try:
        # O_NONBLOCK only so that opening a FIFO cannot hang; reads block normally (below).
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise NotFoundError("image file does not exist", p) from None
    except IsADirectoryError:
        raise BadImageError("is a directory, not an image file", p,
                            code="IMAGE_NOT_REGULAR") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotFoundError("symbolic link loop (the link leads back to itself)", p) from None
        raise SourceIOError(f"cannot open: {e.strerror}", p) from None
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):  # O_RDONLY opens a directory without an error
            raise BadImageError("is a directory, not an image file", p, code="IMAGE_NOT_REGULAR")
        raise BadImageError("not a regular file or block device", p, code="IMAGE_NOT_REGULAR")
    os.set_blocking(fd, True)
    _remember(st, p, fd)
    return fd


def source_named(st: os.stat_result, path: str | None = None, fd: int | None = None
                 ) -> str | None:
    """The registered source this file (stat `st`, reached by `path` or open as `fd`) is, if
    any. Same device and inode is the source, unless the file type differs, or both
    generations are known and differ: then the source was deleted and its inode number reused
    (a folder or a new file), and its entry is dropped."""
    entry = _sources.get(_key(st))
    if entry is None:
        return None
    src, kind, gen = entry
    if stat.S_IFMT(st.st_mode) != kind:
        del _sources[_key(st)]
        return None
    if gen is not None:
        now = _generation_at(st, path, fd)
        if now is not None and now != gen:
            del _sources[_key(st)]
            return None
    return src


def _refuse_source(st: os.stat_result, path: str, *, held: bool = True,
                   fd: int | None = None) -> None:
    src = source_named(st, path, fd)
    if src is not None:
        what = "is" if os.path.abspath(path) == os.path.abspath(src) else "is the same file as"
        raise OutputError(f"{what} the source file {src}; refusing to write", path)
    writing = _held.get(_key(st)) if held else None
    if writing is not None:
        raise OutputError(f"is {writing}, which this ploopfs is writing; refusing to write", path)


def hold(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Files this process keeps writing (an open overlay): refused as any other output until
    `release`d. Unlike a source, their folder stays usable."""
    for p in paths:
        with contextlib.suppress(OSError):
            _held[_key(os.stat(p))] = os.fspath(p)


def release(paths: Iterable[str | os.PathLike[str]]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            _held.pop(_key(os.stat(p)), None)


def check_not_source(path: str) -> None:
    """Refuse `path` if it exists and is (or links to) a source file or a folder holding one."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _refuse_source(st, path)
    if stat.S_ISDIR(st.st_mode) and os.path.realpath(path) in _source_dirs:
        raise OutputError("holds a source file; refusing to write here", path)


def check_stdout() -> None:
    """Refuse to write to standard output when it is redirected into a source file (the shell
    opened it, e.g. `>> root.hds`)."""
    try:
        st = os.fstat(1)
    except OSError:
        return
    _refuse_source(st, "standard output", fd=1)


# -- outputs ------------------------------------------------------------------------------------
def _looks_like_disk(fd: int) -> bool:
    """A ploop or qcow2 image or an XML file (a descriptor): never replaced unless marked."""
    try:
        head = os.pread(fd, PROBE_BYTES, 0)
    except OSError:
        return True
    kind = probe(head)
    return kind.is_ploop or kind in (FileKind.QCOW2, FileKind.XML)


def _is_own_output(fd: int) -> bool:
    try:
        os.getxattr(fd, MARK)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return not _looks_like_disk(fd)
        return False


def _mark(fd: int, what: str) -> None:
    # Without extended attributes here, _is_own_output falls back to the file's content.
    with contextlib.suppress(OSError):
        os.setxattr(fd, MARK, what.encode())


def _record(fd: int, path: str) -> None:
    _created[os.path.abspath(path)] = _key(os.fstat(fd))


def create(path: str | os.PathLike[str], *, replace: bool = False, what: str = "output",
           mode: int = 0o644, readable: bool = False, hint: str = "") -> int:
    """Open a new output file for writing and return its descriptor. Without `replace` the name
    must be free. With `replace` (--force) an existing regular file is truncated only if it is an
    earlier ploopfs output and no source; nothing is truncated before those checks pass."""
    p = os.fspath(path)
    access = os.O_RDWR if readable else os.O_WRONLY
    check_not_source(p)
    try:
        fd = os.open(p, access | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except FileExistsError:
        if not replace:
            raise OutputError(f"already exists; refusing to overwrite{hint}", p) from None
        fd = _reopen_own(p, access)
        _record(fd, p)
        return fd
    except OSError as e:
        raise OutputError(f"cannot create: {e.strerror}", p) from None
    _record(fd, p)
    _mark(fd, what)
    return fd


def _reopen_own(p: str, access: int) -> int:
    try:
        fd = os.open(p, access | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError("too many levels of symbolic links (a symlink loop)", p) from None
        raise OutputError(f"cannot open for writing: {e.strerror}", p) from None
    try:
        st = os.fstat(fd)
        _refuse_source(st, p, fd=fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError("exists and is not a regular file; refusing to overwrite", p)
        if not _is_own_output(fd):
            raise OutputError("exists and is not an earlier ploopfs output; refusing to "
                              "overwrite it (remove it first if it should go)", p)
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot overwrite: {e.strerror}", p) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own(path: str | os.PathLike[str], *, what: str = "output") -> int:
    """Reopen an earlier ploopfs output read-write, to continue it (an overlay's delta,
    docs/overlay.md). Refused: a symbolic link, anything but a regular file, a registered source
    or a hard link to one (same inode), a file with other hard links (it might be a source not
    opened yet), and, where the filesystem keeps extended attributes, a file without ploopfs's
    output mark. Nothing is truncated or written here."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise OutputError(f"{what} does not exist", p) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{what} is a symbolic link; refusing to write through it",
                              p) from None
        raise OutputError(f"cannot open {what} for writing: {e.strerror}", p) from None
    try:
        st = os.fstat(fd)
        # a held overlay's own flock refuses a second writer
        _refuse_source(st, p, held=False, fd=fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{what} is not a regular file; refusing to write", p)
        if st.st_nlink > 1:
            raise OutputError(f"{what} has {st.st_nlink} hard links (another name may be a "
                              "source); refusing to write", p)
        try:
            os.getxattr(fd, MARK)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise OutputError(f"{what} is not marked as ploopfs output ({MARK}); "
                                  "refusing to write", p) from None
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd  # not recorded as created: clean-up never removes an earlier output


def open_log(path: str | os.PathLike[str]) -> int:
    """A log file, appended to: new, or any existing regular file (or character device) that is
    no source."""
    p = os.fspath(path)
    check_not_source(p)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        _record(fd, p)
        _mark(fd, "log")
        return fd
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputError(f"cannot create: {e.strerror}", p) from None
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise OutputError(f"cannot open for writing: {e.strerror}", p) from None
    st = os.fstat(fd)
    try:
        _refuse_source(st, p, fd=fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise OutputError("is not a regular file; refusing to log to it", p)
    except BaseException:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def create_folder(outdir: str) -> bool:
    """An output folder: absent (then made) or empty, and no source folder. True if it was
    made here (so a failed command can remove it again)."""
    check_folder(outdir)
    made = not os.path.exists(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create folder: {e.strerror}", outdir) from None
    return made


def check_folder(outdir: str) -> None:
    """create_folder's checks alone (before the slow part of a command)."""
    check_not_source(outdir)
    if os.path.exists(outdir) and (not os.path.isdir(outdir) or os.listdir(outdir)):
        raise OutputError("exists and is not an empty folder; refusing to write", outdir)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove an output of this process (after a failure, or a pid file at exit): only if the
    name still leads to the file this process created."""
    p = os.path.abspath(os.fspath(path))
    ident = _created.pop(p, None)
    if ident is None:
        return
    try:
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and _key(st) == ident and source_named(st, p) is None:
            os.unlink(p)
    except OSError:
        pass


def created(path: str | os.PathLike[str]) -> bool:
    return os.path.abspath(os.fspath(path)) in _created


def write_new(path: str, data: bytes, *, what: str = "output") -> None:
    """A small new file (a descriptor, a report) written whole and made durable: built under a
    private temporary name in the same folder, then linked into place, which fails if the name
    was taken meanwhile. Filesystems without hard links get an exclusive create instead."""
    import tempfile  # here: it pulls in shutil, random, bz2 and lzma (4 ms of every start)

    check_not_source(path)
    if os.path.lexists(path):
        raise OutputError("already exists; refusing to overwrite", path)
    folder, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot create: {e.strerror}", path) from None
    try:
        try:
            os.fchmod(fd, 0o644)
            _mark(fd, what)
            _write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OutputError("already exists; refusing to overwrite", path) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EMLINK):
                raise OutputError(f"cannot write: {e.strerror}", path) from None
            fd = create(path, what=what)
            try:
                _write_all(fd, data, path)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        _created[os.path.abspath(path)] = _key(os.stat(path))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_all(fd: int, data: bytes, path: str) -> None:
    mv = memoryview(data)
    try:
        while mv:
            mv = mv[os.write(fd, mv):]
    except OSError as e:
        raise OutputError(f"write failed: {e.strerror}", path) from None
