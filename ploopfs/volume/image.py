"""One image file of a chain: a ploop v1/v2 delta or a raw ("Plain") base, opened read-only."""

from __future__ import annotations

import errno
import os
import stat
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ploopfs.errors import (
    BadImageError,
    CorruptImageError,
    PloopfsError,
    SourceIOError,
    UnsupportedError,
)
from ploopfs.format.bat import (
    bat_entry_off,
    classify_entries,
    duplicate_slots,
    find_bad_entries,
    raise_bad_entry,
    readable_entries,
)
from ploopfs.format.extension import FormatExtension, parse_extension
from ploopfs.format.findings import Anomaly, Severity, worst
from ploopfs.format.header import HEADER_SIZE, SECTOR, Header, ImageKind, decode_header, sniff
from ploopfs.format.infer import Hints, Inference, infer_header
from ploopfs.format.probe import FileKind, probe
from ploopfs.native import bat_nonzero
from ploopfs.volume.fileio import open_readonly

if TYPE_CHECKING:
    import numpy as np

RAW_NEEDS_CLUSTER_SIZE = "RAW_NEEDS_CLUSTER_SIZE"  # error code: a raw file opened without one

# BAT is scanned in chunks of this many bytes: bounded memory for 64 TiB disks (256 MiB BATs).
BAT_CHUNK = 1 << 20


def bat_chunks(fd: int, start: int, stop: int, chunk: int = BAT_CHUNK) -> Iterator[tuple[int, int]]:
    """(offset, length) of the BAT reads between `start` and `stop`, skipping the holes of a
    sparse file (a hole reads as zeros: unallocated slots) with SEEK_DATA; pieces stay aligned
    to 4-byte slots. Where SEEK_DATA is unsupported everything is read."""
    pos = start
    while pos < stop:
        try:
            data_pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            data_pos = pos
        if data_pos >= stop:
            return
        if data_pos > pos:
            pos = data_pos - (data_pos - start) % 4
        n = min(chunk, stop - pos)
        yield pos, n
        pos += max(n, 4)


def data_runs(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The [data, hole) byte runs of a file within [start, end), by SEEK_DATA/SEEK_HOLE; where
    the filesystem cannot tell (lseek fails other than ENXIO), the rest counts as data. Moves
    the file offset, which no reader uses (they pread)."""
    pos = start
    while pos < end:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no data past pos
                yield pos, end
            return
        if d >= end:
            return
        try:
            hole = min(os.lseek(fd, d, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        yield d, hole
        pos = max(hole, d + 1)


def file_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def pread_exact(fd: int, length: int, offset: int, path: str) -> bytes:
    try:
        data = os.pread(fd, length, offset)
    except OSError as e:
        raise SourceIOError(f"read of {length} bytes failed: {e.strerror}", path,
                            offset=offset) from None
    return data


@dataclass
class Mapping:
    """The non-zero BAT slots of one image, 8 bytes each: virtual cluster numbers (sorted) and
    the raw entries; a cluster's file byte offset is `entry * unit` (format.md §2.2)."""

    vclusters: array  # array("I")
    entries: array  # array("I")
    unit: int  # bytes per entry unit: 512 (v1) or the cluster size (v2)

    @classmethod
    def empty(cls, unit: int = 1) -> Mapping:
        return cls(array("I"), array("I"), unit)

    @classmethod
    def of(cls, vclusters: np.ndarray, offsets: np.ndarray, unit: int) -> Mapping:
        """From numpy arrays of sorted virtual clusters and their file byte offsets."""
        return cls(_u32(vclusters), _u32(offsets // unit), unit)

    def __len__(self) -> int:
        return len(self.vclusters)

    def offset(self, vcluster: int) -> int | None:
        """File byte offset of `vcluster`'s data, or None if this image does not map it."""
        i = bisect_left(self.vclusters, vcluster)  # sorted
        if i < len(self.vclusters) and self.vclusters[i] == vcluster:
            return self.entries[i] * self.unit
        return None


def _u32(a: np.ndarray) -> array:
    """A numpy result back as array("I") (salvage's rare paths use numpy)."""
    return array("I", a.astype("=u4").tobytes())


@dataclass(frozen=True)
class BadSlot:
    """A BAT entry dropped by a salvage read (docs/salvage.md): `code` is the `check` finding
    code, `reason` one line of text."""

    vcluster: int
    entry: int
    code: str
    reason: str


class Image:
    """An opened image file. `header` is None for a raw file."""

    def __init__(self, path: str, fd: int, kind: ImageKind, header: Header | None,
                 size: int, cluster_size: int) -> None:
        self.path = path
        self.fd = fd
        self.kind = kind
        self.header = header
        self.file_size = size
        self.cluster_size = cluster_size
        self._mapping: Mapping | None = None
        # Salvage (docs/salvage.md): set before the first mapping() call; unreadable entries are
        # then dropped into `bad_slots` instead of raising.
        self.salvage = False
        self.bad_slots: list[BadSlot] = []
        self.inferred: Inference | None = None  # the header was inferred (salvage, infer.py)
        self.header_error: str | None = None  # why the header on disk could not be used
        self.anomalies: list[Anomaly] = []  # what the header's fields break (format layer)

    @classmethod
    def open(cls, path: str, *, raw_cluster_size: int | None = None,
             allow_raw: bool = True, not_raw_reason: str = "only the base of a chain may be raw",
             infer: Hints | None = None, lenient: bool = False) -> Image:
        """`allow_raw=False` refuses a file without a ploop signature, saying `not_raw_reason`.
        The header's anomalies (format layer) are kept in `anomalies`; one at or above DAMAGED
        is refused, or with `lenient` (salvage) only a FATAL one. `infer` (salvage only): when
        the header is unreadable, infer it from the BAT and data (format/infer.py) instead of
        failing; `inferred` then says how."""
        fd = open_readonly(path)
        try:
            size = file_size(fd)
            if size == 0:
                raise BadImageError("empty file: neither a ploop image nor a raw disk", path)
            head = pread_exact(fd, HEADER_SIZE, 0, path)
            kind = sniff(head)
            try:
                if kind is ImageKind.RAW:
                    if probe(head) is FileKind.QCOW2:  # format.md §11 trap 18
                        raise UnsupportedError("qcow2 image (VZ9 qcow2 mode) is not a ploop image",
                                               path)
                    if not allow_raw:
                        raise BadImageError(
                            f"not a ploop image (signature {head[:16]!r}); {not_raw_reason}", path,
                            offset=0)
                    if not raw_cluster_size:
                        infer = None  # a raw base: no ploop header to infer
                        raise BadImageError(
                            f"not a ploop image (signature {head[:16]!r}); to read it as a raw disk "
                            "give --cluster-size", path, offset=0, code=RAW_NEEDS_CLUSTER_SIZE)
                    return cls(path, fd, kind, None, size, raw_cluster_size)
                hdr, anomalies = decode_header(head, path, size)
                bad = worst(anomalies, Severity.FATAL if lenient else Severity.DAMAGED)
                if bad is not None:
                    raise BadImageError(bad.message, path, offset=bad.offset)
                bat_end = bat_entry_off(hdr.bat_entries)
                if size < bat_end:
                    raise CorruptImageError(
                        f"file is {size} bytes but its BAT of {hdr.bat_entries} entries ends at "
                        f"byte {bat_end} (truncated image?)", path, offset=size)
            except (BadImageError, CorruptImageError) as e:
                if infer is None:
                    raise
                return cls._inferred(path, fd, size, infer, e)
            img = cls(path, fd, kind, hdr, size, hdr.cluster_size)
            img.anomalies = anomalies
            return img
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def decoded(cls, path: str, fd: int, header: Header | None, size: int, cluster_size: int,
                mapping: Mapping) -> Image:
        """An image another reader has already decoded leniently (check's scan): its header
        (None: raw) and readable mapping as given, not read again. Its reads are salvage
        reads (volume/salvage.py); the caller keeps owning `fd`."""
        img = cls(path, fd, ImageKind.RAW if header is None else header.kind, header, size,
                  cluster_size)
        img._mapping = mapping
        img.salvage = True
        return img

    @classmethod
    def _inferred(cls, path: str, fd: int, size: int, hints: Hints, error: PloopfsError) -> Image:
        inf, why = infer_header(lambda off, n: pread_exact(fd, n, off, path), size, hints)
        if inf is None:
            raise type(error)(f"{error.what}; header inference failed: {why}", path,
                              offset=error.offset)
        img = cls(path, fd, inf.header.kind, inf.header, size, inf.header.cluster_size)
        img.inferred = inf
        img.header_error = error.what
        return img

    # -- properties ----------------------------------------------------------------------------
    @property
    def is_raw(self) -> bool:
        return self.header is None

    @property
    def virtual_size(self) -> int:
        """Bytes of virtual disk this image describes, as ploop reads it: the whole clusters
        of m_SizeInSectors, floor(m_SizeInSectors / m_Sectors) × cluster (format.md §1.4). A
        trailing partial cluster (images from other tools; qemu counts it) is not part of the
        disk. A raw file covers ceil(st_size/512) sectors (format.md §3)."""
        if self.header is None:
            return -(-self.file_size // SECTOR) * SECTOR
        return self.header.disk_bytes

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- BAT -----------------------------------------------------------------------------------
    def mapping(self) -> Mapping:
        """Read and validate the BAT once: strict, the first entry that cannot be read (past EOF,
        into the header, reserved value) raises CorruptImageError naming its byte offset."""
        if self._mapping is None:
            m = self._read_mapping()
            if self.salvage and len(m) > 1:
                m = self._drop_duplicates(m)
            self._mapping = m
        return self._mapping

    def _drop_duplicates(self, m: Mapping) -> Mapping:
        """Salvage: of the slots sharing one physical cluster (format.md §2.3) the lowest virtual
        cluster keeps it; the others are recorded in `bad_slots` and dropped, exactly the slots
        `check` reports as BAT_DUPLICATE (format/bat.duplicate_slots)."""
        import numpy as np  # salvage only: the usual open stays free of numpy's import

        vcl, ent = np.frombuffer(m.vclusters, "=u4"), np.frombuffer(m.entries, "=u4")
        dups = duplicate_slots(vcl, ent)
        if not dups:
            return m
        for v, first, e in dups:
            self.bad_slots.append(BadSlot(
                v, e, "BAT_DUPLICATE", f"shares its cluster (byte {e * m.unit}) with virtual "
                f"cluster {first}"))
        keep = ~np.isin(vcl, np.array([v for v, _, _ in dups], np.uint32))
        return Mapping(_u32(vcl[keep]), _u32(ent[keep]), m.unit)

    def _read_mapping(self) -> Mapping:
        hdr = self.header
        if hdr is None:
            return Mapping.empty()
        lowest, highest = readable_entries(hdr, self.file_size)  # in entry units (format.md §2.3)
        vclusters, entries = array("I"), array("I")
        start = bat_entry_off(0)
        end = bat_entry_off(hdr.bat_entries)
        for pos, n in bat_chunks(self.fd, start, end):
            raw = pread_exact(self.fd, n, pos, self.path)
            if len(raw) != n:
                raise CorruptImageError(f"BAT truncated: read {len(raw)} of {n} bytes", self.path,
                                        offset=pos + len(raw))
            v, e = array("I"), array("I")
            bad = bat_nonzero(raw, (pos - start) // 4, lowest, highest, v, e)
            if bad:
                import numpy as np  # rare: say which entry is wrong, or drop the bad ones

                nz, vals = np.frombuffer(v, "=u4"), np.frombuffer(e, "=u4")
                if not self.salvage:
                    raise_bad_entry(find_bad_entries(nz, vals, hdr, self.file_size)[0],
                                    self.path)
                nz, vals = self._drop_bad(nz, vals)
                v, e = _u32(nz), _u32(vals)
            vclusters += v
            entries += e
        return Mapping(vclusters, entries, hdr.entry_unit)

    def _drop_bad(self, nz: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Salvage: keep the readable entries, record the others in `bad_slots` (format.md §2.3, §2.8)."""
        import numpy as np  # salvage only

        hdr = self.header
        assert hdr is not None
        p = classify_entries(vals, hdr, self.file_size)
        bad = p.unreadable
        reasons = find_bad_entries(nz[bad], vals[bad], hdr, self.file_size, limit=int(bad.sum()))
        codes = np.where(p.reserved[bad], 0, np.where(p.into_header[bad], 1, 2)).tolist()
        names = ("BAT_RESERVED", "BAT_INTO_HEADER", "BAT_PAST_EOF")
        self.bad_slots.extend(BadSlot(r.index, r.entry, names[k], r.reason)
                              for r, k in zip(reasons, codes, strict=True))
        return nz[~bad], vals[~bad]

    # -- format extension (format.md §6) ---------------------------------------------------------------
    def extension(self) -> FormatExtension | None:
        """The Format Extension, if the header points at one. ploop trusts it only when
        m_DiskInUse is "v2.1" (format.md §6.1); callers can tell from `header.in_use`."""
        hdr = self.header
        if hdr is None or hdr.ext_offset == 0:
            return None
        off = hdr.ext_offset * SECTOR
        c = hdr.cluster_size
        if off + c > self.file_size:
            raise CorruptImageError(f"format extension at byte {off} lies past the end of file",
                                    self.path, offset=0x38)
        return parse_extension(pread_exact(self.fd, c, off, self.path), c, self.path, off)
