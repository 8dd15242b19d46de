"""Writing new ploop images and descriptors (never an existing source).

Images are laid out as ploop lays them (format.md §2.4, §2.5): header + BAT padded to whole clusters,
data clusters appended at the end of the file, BAT entries in sectors (v1) or clusters (v2).
The result passes `qemu-img check -f parallels` and reads back identically through qemu.
"""

from __future__ import annotations

import os
import sys
from array import array

from ploopfs.errors import OutputError
from ploopfs.format.bat import bat_entry_off
from ploopfs.format.descriptor import Descriptor, ImageEntry, Shot, render_descriptor
from ploopfs.format.header import CIF_EMPTY, NONE_GUID, SECTOR, TOP_GUID, Header, new_header
from ploopfs.format.header import chs_geometry as _chs
from ploopfs.volume import fileio

BIG_ENDIAN = sys.byteorder == "big"

DEFAULT_CLUSTER = 1 << 20
MAX_BAT_ENTRIES = 0xFFFFFFFF  # m_Size and the entries are 32-bit (format.md §2.6)


class ImageWriter:
    """A new expanded image. Clusters are written whole; the BAT is written on close()."""

    def __init__(self, path: str, fd: int, header: Header) -> None:
        self.path = path
        self.fd = fd
        self.header = header
        self.cluster_size = header.cluster_size
        self._alloc_head = header.bat_clusters  # next free physical cluster
        self._bat: dict[int, int] = {}  # vcluster -> physical cluster

    @classmethod
    def create(cls, path: str | os.PathLike[str], size_bytes: int,
               cluster_size: int = DEFAULT_CLUSTER, version: int = 2,
               *, exist_ok: bool = False) -> ImageWriter:
        p = os.fspath(path)
        clusters = -(-size_bytes // cluster_size) if cluster_size > 0 else 0
        if clusters > MAX_BAT_ENTRIES:
            # A disk of a descriptor claiming more than any ploop image addresses (format.md
            # §2.6), e.g. a huge <Disk_size> over a small raw base: no image can hold it.
            raise OutputError(
                f"a ploop image cannot hold this disk: {size_bytes} bytes are {clusters} "
                f"clusters of {cluster_size} bytes, a BAT has at most {MAX_BAT_ENTRIES}", p)
        hdr = new_header(size_bytes, cluster_size, version)
        fd = fileio.create(p, replace=exist_ok, readable=True, what="ploop image")
        try:
            os.pwrite(fd, hdr.pack(), 0)
            os.ftruncate(fd, hdr.bat_clusters * hdr.cluster_size)
        except OSError as e:
            os.close(fd)
            raise OutputError(f"cannot write: {e.strerror}", p) from None
        return cls(p, fd, hdr)

    @property
    def nclusters(self) -> int:
        return self.header.bat_entries

    @property
    def allocated(self) -> int:
        return len(self._bat)

    def _check_cluster(self, vcluster: int) -> None:
        if not 0 <= vcluster < self.header.bat_entries:
            raise ValueError(f"virtual cluster {vcluster} outside 0..{self.header.bat_entries - 1}")

    def allocate(self, vcluster: int) -> int:
        """File byte offset of `vcluster`'s cluster, appended if new (clusters allocated one
        after another are contiguous). The caller writes the whole cluster there itself, e.g.
        with os.copy_file_range."""
        self._check_cluster(vcluster)
        phys = self._bat.get(vcluster)
        if phys is None:
            phys = self._alloc_head
            self._alloc_head += 1
            self._bat[vcluster] = phys
        return phys * self.cluster_size

    def write_cluster(self, vcluster: int, data: bytes | bytearray | memoryview) -> None:
        """Write one whole cluster (shorter data is zero-padded), allocating it if needed."""
        if len(data) > self.cluster_size:
            raise ValueError("data larger than a cluster")
        off = self.allocate(vcluster)
        self._pwrite(data, off)
        if len(data) < self.cluster_size:
            self._pwrite(bytes(self.cluster_size - len(data)), off + len(data))

    def write_clusters(self, vcluster: int, data: bytes | bytearray | memoryview) -> None:
        """Write whole clusters vcluster, vcluster+1, … (the last one may be short and is
        zero-padded); one pwrite when they are all new (appended one after another)."""
        c = self.cluster_size
        mv = memoryview(data).cast("B")
        n = -(-len(mv) // c)
        offs = [self.allocate(vcluster + i) for i in range(n)]
        if all(offs[i] == offs[0] + i * c for i in range(n)) and len(mv) == n * c:
            self._pwrite(mv, offs[0])
            return
        for i in range(n):
            self.write_cluster(vcluster + i, mv[i * c:(i + 1) * c])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write at any virtual offset; partial clusters keep what this image already holds
        there (zeros for a new cluster). No copy-up from lower deltas: callers that stack on a
        parent write whole clusters."""
        mv = memoryview(data)
        c = self.cluster_size
        pos = 0
        while pos < len(mv):
            v, intra = divmod(offset + pos, c)
            n = min(c - intra, len(mv) - pos)
            if n == c:
                self.write_cluster(v, mv[pos:pos + n])
            else:
                self._check_cluster(v)
                if v not in self._bat:
                    self.write_cluster(v, b"")
                self._pwrite(mv[pos:pos + n], self._bat[v] * c + intra)
            pos += n

    def _pwrite(self, data: bytes | bytearray | memoryview, off: int) -> None:
        mv = memoryview(data)
        try:
            while mv:
                n = os.pwrite(self.fd, mv, off)
                mv, off = mv[n:], off + n
        except OSError as e:
            raise OutputError(f"write failed: {e.strerror}", self.path, offset=off) from None

    def close(self) -> Header:
        """Write the BAT (grouped by 64 KiB pages of slots) and the final header; fsync."""
        if self.fd < 0:
            return self.header
        unit = self.header.entry_unit
        page = 16384  # slots per write
        per_page: dict[int, list[int]] = {}
        for k in self._bat:
            per_page.setdefault(k // page, []).append(k)
        for p in sorted(per_page):
            first = p * page
            last = min(first + page, self.header.bat_entries)
            existing = os.pread(self.fd, 4 * (last - first), bat_entry_off(first))
            slots = array("I", existing[: len(existing) // 4 * 4])
            slots.frombytes(bytes(4 * (last - first - len(slots))))  # past EOF: zeros
            if BIG_ENDIAN:
                slots.byteswap()  # BAT entries are little-endian (format.md §2.1)
            for k in per_page[p]:
                slots[k - first] = self._bat[k] * self.cluster_size // unit
            if BIG_ENDIAN:
                slots.byteswap()
            self._pwrite(slots.tobytes(), bat_entry_off(first))
        flags = self.header.flags & ~CIF_EMPTY if self._bat else self.header.flags
        self.header = self.header.with_(flags=flags)
        self._pwrite(self.header.pack(), 0)
        try:
            # The file ends at the last data cluster, a whole number of clusters (format.md §2.5).
            os.ftruncate(self.fd, max(self._alloc_head, self.header.bat_clusters) * self.cluster_size)
            os.fsync(self.fd)
        except OSError as e:
            raise OutputError(f"cannot finish image: {e.strerror}", self.path) from None
        finally:
            os.close(self.fd)
            self.fd = -1
        return self.header

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            if exc[0] is None:
                self.close()
            else:
                os.close(self.fd)
                self.fd = -1


def new_guid() -> str:
    import uuid  # here: uuid imports platform, 3 ms of every start otherwise

    return "{" + str(uuid.uuid4()) + "}"


def chain_descriptor(files: list[str], size_bytes: int, cluster_size: int,
                     guids: list[str] | None = None, raw_base: bool = False) -> Descriptor:
    """A descriptor for a linear chain `files[0]` (base) … `files[-1]` (top), as ploop names
    them (format.md §4.3): the top carries the magic top GUID, the others fresh GUIDs."""
    n = len(files)
    if guids is None:
        guids = [new_guid() for _ in range(n - 1)] + [TOP_GUID]
    size_sectors = -(-size_bytes // cluster_size) * (cluster_size // SECTOR)
    cyl, heads, _ = _chs(size_sectors)
    d = Descriptor(
        disk_size=size_sectors, cylinders=cyl, heads=heads,
        sectors=size_sectors // (cyl * heads) if cyl and heads else 0,
        blocksize=cluster_size // SECTOR, top_guid=guids[-1])
    typ = "Plain" if raw_base else "Compressed"  # ploop labels every image alike (format.md §3)
    parent = NONE_GUID
    for f, g in zip(files, guids, strict=True):
        d.images.append(ImageEntry(g, f, typ))
        d.shots.append(Shot(g, parent))
        parent = g
    return d


def write_descriptor(path: str | os.PathLike[str], d: Descriptor, *, overwrite: bool = False) -> None:
    """Atomic write (temporary file, fsync, then into place) as ploop does (format.md §5.1). The
    temporary file has a fresh unique name (never ploop's own `DiskDescriptor.xml.tmp`, which
    may hold a half-written descriptor worth keeping). Without `overwrite` the name must be
    free; with it, only an earlier ploopfs output is replaced (fileio's rules)."""
    p = os.fspath(path)
    data = render_descriptor(d)
    if not overwrite or not os.path.lexists(p):
        fileio.write_new(p, data, what="descriptor")
        return
    fd = fileio.create(p, replace=True, what="descriptor")
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", p) from None
    finally:
        os.close(fd)
