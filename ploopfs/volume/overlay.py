"""A writable ploop delta stacked on a snapshot of a source: `mount --overlay DIR`
(docs/overlay.md).

DIR holds one delta image `root.hds.{GUID}` (the chain's format version: v2, or v1 over a v1
chain) and a `DiskDescriptor.xml` that stacks it, as the top, on the chosen snapshot's chain of
the source, whose images it names by absolute path. Writes never reach a source: the delta is
created through fileio.create or reopened through fileio.open_own, and the source's images stay
open read-only in the base Volume.

Durability (the ploop rules, format.md §2.5):
* copy-on-write at cluster granularity: the first write into a cluster the delta does not hold
  reads the cluster from below, merges, and appends the whole cluster at the end of the delta;
  a cluster the delta holds is written in place;
* a BAT entry on disk never points at data that is not durable: `flush` fdatasyncs the data,
  then writes the changed BAT entries, then fdatasyncs again; after one failed fdatasync no
  flush succeeds (a retry would "succeed" with the data lost);
* the header says m_DiskInUse ("Ynot") from the first open for writing until `close`, which
  flushes and clears it;
* continuing a delta left dirty (a crash): clusters appended after the last flush are
  referenced by no BAT entry; those at the end are cut off (truncate) and any in the middle
  (a BAT update cut short) punched out, so that `check` finds no leak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from array import array
from dataclasses import dataclass

from ploopfs.errors import (
    BadImageError,
    CorruptImageError,
    OutputError,
    UnsupportedError,
)
from ploopfs.format.bat import bat_entry_off
from ploopfs.format.descriptor import ImageEntry
from ploopfs.format.descriptor_scan import parse_descriptor
from ploopfs.format.findings import Severity, worst
from ploopfs.format.header import (
    CIF_EMPTY,
    DISK_CLOSED_V20,
    DISK_IN_USE,
    HEADER_SIZE,
    TOP_GUID,
    Header,
    decode_header,
    new_header,
)
from ploopfs.volume import fileio
from ploopfs.volume.image import Image, data_runs, file_size, pread_exact
from ploopfs.volume.source import DESCRIPTOR_NAME, Disk
from ploopfs.volume.volume import Volume
from ploopfs.volume.writer import BIG_ENDIAN, chain_descriptor, new_guid, write_descriptor

DELTA_PREFIX = "root.hds."
# Appended data after which a flush happens by itself, so that a writer that never calls fsync
# loses at most this much on a crash and the pending BAT entries stay few.
AUTO_FLUSH_BYTES = 256 << 20
_BAT_PAGE = 1024  # BAT slots written per pwrite in flush (4 KiB)
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@dataclass(frozen=True)
class Stacking:
    """What an overlay sits on: the source's chain (base first) as absolute paths, with GUIDs,
    the disk size and cluster size."""

    files: list[str]
    guids: list[str]
    size: int
    cluster_size: int
    version: int
    raw_base: bool


def stacking_of(disk: Disk, snapshot: str | None, base: Volume) -> Stacking:
    chain = disk.chain(snapshot)
    versions = [im.header.version for im in base.images if im.header is not None]
    return Stacking([os.path.abspath(disk.paths[e.guid]) for e in chain],
                    [e.guid for e in chain], base.size, base.cluster_size,
                    versions[0] if versions else 2, base.images[0].is_raw)


class Overlay:
    """The virtual disk of the overlay: the delta's own BAT in memory over the base Volume."""

    def __init__(self, folder: str, delta_path: str, fd: int, header: Header, base: Volume,
                 bat: dict[int, int], next_cluster: int, warnings: list[str]) -> None:
        self.folder = folder
        self.delta_path = delta_path
        self.fd = fd
        self.header = header
        self.base = base
        self.cluster_size = header.cluster_size
        # Whole clusters, as the delta and DIR's descriptor describe the disk (format.md §1.4):
        # a source whose size is not (a raw file) reads as zeros past its end.
        self.size = header.disk_bytes
        self.warnings = warnings
        self._bat = bat  # vcluster -> physical cluster in the delta
        self._next = next_cluster  # next physical cluster to append
        self._eof = next_cluster * header.cluster_size  # the file's size
        self._pending: set[int] = set()  # vclusters whose BAT slot on disk is not written yet
        self._unsynced = False  # data written since the last fdatasync
        self._appended = 0  # bytes appended since the last flush
        # A failed append may have left bytes past the last cluster (_eof); a copy-on-write
        # over a hole below writes only its new bytes there and must cut them off first.
        self._stale_tail = False
        # Why an fdatasync failed, once one has. Linux reports a failed write-back once and
        # marks the pages clean, so a retry "succeeds" with the data lost: no flush may
        # succeed after it, nor write BAT entries for data that may not be on disk (qemu's
        # page_cache_inconsistent). The delta then stays marked in use.
        self._sync_failed: str | None = None
        self._over_holes = {v for v in bat if not self._base_stores(v)}
        self.closed = False
        # While open, the delta and DIR's descriptor are written by this overlay alone: no other
        # output of the process (a pid or log file) may be one of them.
        self._held = [delta_path, os.path.join(folder, DESCRIPTOR_NAME)]
        fileio.hold(self._held)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, disk: Disk, snapshot: str | None, folder: str) -> Overlay:
        """Create the overlay in `folder` (absent or empty), or continue the earlier overlay of
        the same source and snapshot found there; anything else is refused (OutputError, exit
        11). The delta is marked in use (dirty) before this returns."""
        base = disk.volume(snapshot)
        st = stacking_of(disk, snapshot, base)
        folder = os.path.abspath(folder)
        fileio.check_not_source(folder)
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise OutputError("--overlay needs a folder; this is not one", folder)
        if os.path.isdir(folder) and os.listdir(folder):
            if not os.path.lexists(os.path.join(folder, DESCRIPTOR_NAME)):
                raise OutputError(f"is neither empty nor an earlier overlay (no {DESCRIPTOR_NAME}"
                                  "); refusing to write here", folder)
            ov = cls._continue(folder, st, base)
        else:
            ov = cls._create(folder, st, base)
        try:
            ov._set_in_use(True)
        except BaseException:
            ov.closed = True
            fileio.release(ov._held)  # else its paths stayed refused as outputs of this process
            os.close(ov.fd)
            raise
        return ov

    @classmethod
    def _create(cls, folder: str, st: Stacking, base: Volume) -> Overlay:
        made = fileio.create_folder(folder)
        name = DELTA_PREFIX + new_guid()
        path = os.path.join(folder, name)
        desc_path = os.path.join(folder, DESCRIPTOR_NAME)
        fd = -1
        try:
            try:
                hdr = new_header(st.size, st.cluster_size, st.version)
            except ValueError as e:
                raise UnsupportedError(f"cannot make a v{st.version} delta: {e}", path) from None
            fd = fileio.create(path, readable=True, what="overlay delta", mode=0o600)
            _lock(fd, path)
            try:
                os.pwrite(fd, hdr.pack(), 0)
                os.ftruncate(fd, hdr.bat_clusters * hdr.cluster_size)
                os.fsync(fd)
            except OSError as e:
                raise OutputError(f"cannot write: {e.strerror}", path) from None
            guids = [new_guid() if g == TOP_GUID else g for g in st.guids] + [TOP_GUID]
            d = chain_descriptor([*st.files, name], st.size, st.cluster_size, guids,
                                 raw_base=st.raw_base)
            write_descriptor(desc_path, d)
            _fsync_folder(folder)
            if made:  # DIR's own name in its parent
                _fsync_folder(os.path.dirname(folder))
        except BaseException:
            if fd >= 0:
                os.close(fd)
            fileio.remove(desc_path)
            fileio.remove(path)
            if made:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            raise
        return cls(folder, path, fd, hdr, base, {}, hdr.bat_clusters, [])

    @classmethod
    def _continue(cls, folder: str, st: Stacking, base: Volume) -> Overlay:
        desc_path = os.path.join(folder, DESCRIPTOR_NAME)
        dfd = fileio.open_own(desc_path, what="overlay descriptor")
        try:
            size = os.fstat(dfd).st_size
            if size > 1 << 20:
                raise OutputError("is no overlay descriptor (larger than 1 MiB)", desc_path)
            data = pread_exact(dfd, size, 0, desc_path)
        finally:
            os.close(dfd)
        desc = parse_descriptor(data, desc_path)
        chain = desc.chain()
        _check_stacking(desc_path, chain, st, desc.blocksize * 512)
        name = chain[-1].file
        if os.path.basename(name) != name or not name.startswith(DELTA_PREFIX):
            raise OutputError(f"is no overlay: its top image {name!r} is not a "
                              f"{DELTA_PREFIX}{{GUID}} file in this folder", desc_path,
                              element="Storage/Image/File")
        path = os.path.join(folder, name)
        fd = fileio.open_own(path, what="overlay delta")
        try:
            _lock(fd, path)  # before any repair: another server may be writing it
            hdr, bat, nxt, warnings = _load_delta(path, fd, st)
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, path, fd, hdr, base, bat, nxt, warnings)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes | bytearray:
        """Exactly the bytes of the overlay's disk at [offset, offset+length), short only at the
        end of the disk."""
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative offset {offset}")
        c = self.cluster_size
        bat = self._bat
        first, last = offset // c, (end - 1) // c
        if first == last:  # the usual FUSE request
            p = bat.get(first)
            if p is None:
                return self._read_below(offset, end - offset)
            return self._pread(p * c + offset - first * c, end - offset)
        parts: list[bytes | bytearray] = []
        pos = offset
        while pos < end:
            v = pos // c
            p = bat.get(v)
            w = v + 1
            if p is None:  # a run of clusters from below
                while w <= last and w not in bat:
                    w += 1
                n = min(end, w * c) - pos
                parts.append(self._read_below(pos, n))
            else:  # a run of clusters consecutive in the delta
                while w <= last and bat.get(w) == p + (w - v):
                    w += 1
                n = min(end, w * c) - pos
                parts.append(self._pread(p * c + pos - v * c, n))
            pos += n
        return b"".join(parts)

    def _read_below(self, off: int, n: int) -> bytes | bytearray:
        data = self.base.read(off, n)
        if len(data) < n:  # past the end of a source that is not whole clusters: zeros
            data = bytes(data) + bytes(n - len(data))
        return data

    def _pread(self, off: int, n: int) -> bytes:
        data = os.pread(self.fd, n, off)
        while len(data) < n:  # only a file shrunk under us is short: zeros, as a hole reads
            more = os.pread(self.fd, n - len(data), off + len(data))
            if not more:
                return data + bytes(n - len(data))
            data += more
        return data

    # -- writing ---------------------------------------------------------------------------------
    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write at a virtual offset; returns the bytes written, short (0 at or past the end)
        where the disk ends, as a block device does. OSError (ENOSPC, EIO) propagates."""
        if self.closed:
            raise OSError(errno.EBADF, "overlay is closed")
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative offset {offset}")
        mv = memoryview(data).cast("B")
        n = max(0, min(len(mv), self.size - offset))
        c = self.cluster_size
        pos = 0
        new: list[tuple[int, bytes | bytearray | memoryview]] = []  # (vcluster, whole cluster)
        # Before the first byte: a write that fails half-way has still changed clusters the
        # delta holds (in place), and the next flush must sync them.
        self._unsynced = self._unsynced or n > 0
        try:
            while pos < n:
                v, intra = divmod(offset + pos, c)
                take = min(c - intra, n - pos)
                p = self._bat.get(v)
                if p is not None:
                    self._append_new(new)
                    self._pwrite(mv[pos:pos + take], p * c + intra)
                elif take == c:
                    new.append((v, mv[pos:pos + c]))
                else:  # copy-on-write of the cluster from below, then the new bytes over it
                    self._append_new(new)
                    self._cow(v, intra, mv[pos:pos + take])
                pos += take
            self._append_new(new)
        except BaseException:
            self._stale_tail = True  # an append may have written part of its clusters
            raise
        if self._appended >= AUTO_FLUSH_BYTES:
            self.flush()
        return n

    def _append_new(self, new: list[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Append whole new clusters at the end of the delta in one pwritev; only once they are
        written do they enter the in-memory BAT (and the pending set for the next flush)."""
        if not new:
            return
        c = self.cluster_size
        first = self._next
        self._check_room(first + len(new) - 1)
        bufs = [b for _, b in new]
        off = first * c
        total = len(bufs) * c
        done = 0
        while done < total:
            # On an error nothing of this batch is referenced; the next append overwrites it.
            k = os.pwritev(self.fd, _skip(bufs, done), off + done)
            if k <= 0:
                raise OSError(errno.EIO, "short write")
            done += k
        for i, (v, _) in enumerate(new):
            self._bat[v] = first + i
            self._pending.add(v)
            if not self._base_stores(v):
                self._over_holes.add(v)
        self._next = first + len(new)
        self._eof = max(self._eof, self._next * c)
        self._appended += total
        new.clear()

    def _cow(self, v: int, intra: int, piece: memoryview) -> None:
        """Append cluster `v` as the layers below have it with `piece` written at `intra`. A
        hole below stays a hole in the delta (only the piece is written, the file extended); a
        cluster one image holds is copied in the kernel (copy_file_range) where it can be;
        anything else (a raw base's edge) is read, merged and written."""
        c, b, fd = self.cluster_size, self.base, self.fd
        p = self._next
        self._check_room(p)
        off = p * c
        m = b.map
        i = m.find(v)
        if i < 0 and v * c >= b.raw_end():
            if self._stale_tail:  # the rest of the cluster must read as the hole it is
                os.ftruncate(fd, off)
                self._stale_tail = False
            self._pwrite(piece, off + intra)
            if off + c > self._eof:
                os.ftruncate(fd, off + c)
        elif i >= 0 and self._copy_below(m.a_level[i], m.a_offset[i] + (v - m.a_vstart[i]) * c,
                                         off):
            self._pwrite(piece, off + intra)
        else:
            buf = bytearray(c)
            b.readinto(memoryview(buf), v * c)
            buf[intra:intra + len(piece)] = piece
            self._pwrite(memoryview(buf), off)
        self._eof = max(self._eof, off + c)
        self._bat[v] = p
        self._pending.add(v)
        if not self._base_stores(v):
            self._over_holes.add(v)
        self._next = p + 1
        self._appended += c

    def _check_room(self, last: int) -> None:
        """A BAT entry is 32 bits in entry units (512 bytes in v1: a v1 delta ends at 2 TiB,
        format.md §2.2): a cluster it cannot address is refused before anything is written,
        as a full disk (ENOSPC), not found at the next flush."""
        if last * self.cluster_size // self.header.entry_unit > 0xFFFFFFFF:
            raise OSError(errno.ENOSPC, f"the delta cannot address a cluster at byte "
                                        f"{last * self.cluster_size} (32-bit BAT entries)")

    def _copy_below(self, level: int, src_off: int, dst_off: int) -> bool:
        """One whole cluster from an image below into the delta, in the kernel; False where
        that cannot be done (the caller then reads and writes it)."""
        if level >= len(self.base.images):  # salvage's zero level: never here
            return False
        src = self.base.images[level].fd
        c = self.cluster_size
        done = 0
        try:
            while done < c:
                k = os.copy_file_range(src, self.fd, c - done, src_off + done, dst_off + done)
                if k <= 0:
                    return False
                done += k
        except OSError:
            return False
        return True

    def _pwrite(self, data: memoryview, off: int) -> None:
        while data:
            k = os.pwrite(self.fd, data, off)
            if k <= 0:
                raise OSError(errno.EIO, "short write")
            data, off = data[k:], off + k

    def flush(self) -> None:
        """Make everything written so far durable: the data (fdatasync), then the BAT entries
        that point at it, then fdatasync again. A crash at any moment leaves a BAT whose every
        entry points at durable data. After one failed fdatasync every flush fails (EIO)."""
        if self._sync_failed is not None:
            raise OSError(errno.EIO, f"an earlier flush failed ({self._sync_failed}); writes "
                          "since the flush before it may not be on disk")
        if not self._unsynced and not self._pending:
            return
        self._fdatasync()
        self._unsynced = False
        if self._pending:
            unit = self.header.entry_unit
            per = self.cluster_size // unit
            for page in sorted({v // _BAT_PAGE for v in self._pending}):
                lo = page * _BAT_PAGE
                hi = min(lo + _BAT_PAGE, self.header.bat_entries)
                get = self._bat.get
                slots = array("I", (get(k, 0) * per for k in range(lo, hi)))
                if BIG_ENDIAN:
                    slots.byteswap()  # BAT entries are little-endian (format.md §2.1)
                self._pwrite(memoryview(slots.tobytes()), bat_entry_off(lo))
            if self.header.flags & CIF_EMPTY:
                self.header = self.header.with_(flags=self.header.flags & ~CIF_EMPTY)
                self._pwrite(memoryview(self.header.pack()), 0)
            self._fdatasync()
            self._pending.clear()
        self._appended = 0

    def _fdatasync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            self._sync_failed = e.strerror or str(e)
            raise

    def close(self) -> None:
        """Flush and mark the delta closed (m_DiskInUse cleared), as ploop does on unmount."""
        if self.closed:
            return
        try:
            self.flush()
            self._set_in_use(False)
        finally:
            self.closed = True
            fileio.release(self._held)
            os.close(self.fd)
            self.fd = -1

    def _set_in_use(self, on: bool) -> None:
        self.header = self.header.with_(in_use=DISK_IN_USE if on else DISK_CLOSED_V20)
        try:
            self._pwrite(memoryview(self.header.pack()), 0)
            os.fsync(self.fd)
        except OSError as e:
            raise OutputError(f"cannot write the header: {e.strerror}", self.delta_path,
                              offset=0x2C) from None

    # -- accounting ------------------------------------------------------------------------------
    def _base_stores(self, v: int) -> bool:
        b = self.base
        return b.map.find(v) >= 0 or v * self.cluster_size < b.raw_end()

    @property
    def clusters(self) -> int:
        """Clusters the delta holds."""
        return len(self._bat)

    @property
    def added_bytes(self) -> int:
        """Bytes the delta holds over what the source stores nowhere (df's growth)."""
        return len(self._over_holes) * self.cluster_size

    def added_in(self, start: int, end: int) -> int:
        """added_bytes within the virtual range [start, end)."""
        c = self.cluster_size
        total = 0
        for v in self._over_holes:
            a = v * c
            total += max(0, min(end, a + c, self.size) - max(start, a))
        return total


def _skip(bufs: list[bytes | bytearray | memoryview], n: int) -> list[memoryview]:
    out: list[memoryview] = []
    for b in bufs:
        mv = memoryview(b).cast("B")
        if n >= len(mv):
            n -= len(mv)
            continue
        out.append(mv[n:])
        n = 0
        if len(out) == 1024:  # IOV_MAX: the rest in the next pwritev
            break
    return out


def _lock(fd: int, path: str) -> None:
    """One writer per overlay: an exclusive flock on the delta, held while it is open (the
    kernel drops it when the process dies, SIGKILL included)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OutputError("is in use by another ploopfs (an overlay has one writer at a "
                              "time)", path) from None
        # a filesystem without locks: nothing to hold


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_stacking(desc_path: str, chain: list[ImageEntry], st: Stacking,
                    blocksize: int) -> None:
    """The descriptor of an earlier overlay must stack one delta on exactly this chain: the same
    image files (absolute paths, compared after resolving symlinks) and GUIDs (the source's magic
    top GUID is renamed in the overlay) and the same cluster size."""
    def refuse(why: str) -> OutputError:
        return OutputError(f"is an overlay of another disk or snapshot ({why}); refusing to "
                           "continue it (use an empty folder)", desc_path)

    if len(chain) != len(st.files) + 1:
        raise refuse(f"it stacks on {len(chain) - 1} image(s), this snapshot has "
                     f"{len(st.files)}")
    for e, f, g in zip(chain, st.files, st.guids, strict=False):
        if not os.path.isabs(e.file) or os.path.realpath(e.file) != os.path.realpath(f):
            raise refuse(f"image {e.file!r} where this snapshot has {f!r}")
        if g != TOP_GUID and e.guid != g:
            raise refuse(f"snapshot {e.guid} where this snapshot has {g}")
    if blocksize != st.cluster_size:
        raise refuse(f"cluster size {blocksize} bytes, the source's is {st.cluster_size}")


def _load_delta(path: str, fd: int, st: Stacking) -> tuple[Header, dict[int, int], int,
                                                              list[str]]:
    """Read an earlier overlay's delta: header and BAT validated as a strict open does, then the
    clusters a crash left unreferenced dropped (truncated at the end, punched in the middle)."""
    size = file_size(fd)
    head = pread_exact(fd, HEADER_SIZE, 0, path)
    hdr, anomalies = decode_header(head, path, None)
    bad = worst(anomalies, Severity.DAMAGED)
    if bad is not None:
        raise BadImageError(bad.message, path, offset=bad.offset)
    c = st.cluster_size
    want = new_header(st.size, c, st.version)
    if (hdr.version, hdr.cluster_size, hdr.bat_entries, hdr.size_sectors) != (
            want.version, want.cluster_size, want.bat_entries, want.size_sectors):
        raise OutputError(f"is an overlay of another disk (v{hdr.version}, {hdr.cluster_size}-byte "
                          f"clusters, {hdr.disk_bytes} bytes; this snapshot needs "
                          f"v{want.version}, {c}, {want.disk_bytes}); refusing to continue it",
                          path)
    # Only warnings to a strict open, but where ploop puts data: never written otherwise here.
    if hdr.first_block_offset != want.first_block_offset:
        raise BadImageError(f"m_FirstBlockOffset is {hdr.first_block_offset} sectors, a delta "
                            f"of this size has {want.first_block_offset} (a damaged header); "
                            "refusing to continue it", path, offset=0x30)
    if hdr.size_high_v1 != want.size_high_v1:
        raise BadImageError(f"v1 high size word is {hdr.size_high_v1:#x}, not 0 (a damaged "
                            "header); refusing to continue it", path, offset=0x28)
    bat_end = hdr.bat_clusters * c
    if size < bat_end:
        raise CorruptImageError(f"file is {size} bytes, shorter than its header and BAT "
                                f"({bat_end} bytes)", path, offset=size)
    img = Image(path, fd, hdr.kind, hdr, size, c)
    m = img.mapping()  # strict: an entry past EOF or into the BAT raises CorruptImageError
    unit = hdr.entry_unit
    bat: dict[int, int] = {}
    used: set[int] = set()
    for v, e in zip(m.vclusters, m.entries, strict=True):
        off = e * unit
        if off % c:
            raise CorruptImageError(f"BAT entry for virtual cluster {v} = {e} is not on a "
                                    "cluster boundary (no ploopfs overlay writes that)", path,
                                    offset=bat_entry_off(v))
        p = off // c
        if p in used:
            raise CorruptImageError(f"BAT entry for virtual cluster {v} = {e} shares its cluster "
                                    "with another entry", path, offset=bat_entry_off(v))
        used.add(p)
        bat[v] = p
    nxt = max(used, default=hdr.bat_clusters - 1) + 1
    warnings: list[str] = []
    if hdr.dirty:
        warnings.append(f"{path}: was not closed cleanly (m_DiskInUse set): writes after its "
                        "last flush are lost")
    tail = size - nxt * c
    if tail > 0:
        try:
            os.ftruncate(fd, nxt * c)
        except OSError as e:
            raise OutputError(f"cannot cut off unreferenced clusters: {e.strerror}", path) from None
        warnings.append(f"{path}: {-(-tail // c)} cluster(s) appended after the last flush and "
                        "never referenced: cut off")
    # Unreferenced clusters between the BAT and the last referenced one that hold data.
    leaked = sorted({p for a, b in data_runs(fd, hdr.bat_clusters * c, nxt * c)
                     for p in range(a // c, -(-b // c)) if p not in used})
    punched = sum(_punch(fd, p * c, c) for p in leaked)
    if punched:
        warnings.append(f"{path}: {punched} unreferenced cluster(s) inside the image (a BAT "
                        "update cut short): punched out")
    if tail > 0 or punched:
        os.fsync(fd)
    return hdr, bat, nxt, warnings


_libc: ctypes.CDLL | None = None


def _punch(fd: int, off: int, n: int) -> bool:
    """Deallocate [off, off+n) keeping the file size; False where unsupported (the cluster then
    stays as a leak, which `check` reports as a warning)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return _libc.fallocate(fd, _PUNCH, off, n) == 0
