"""The read-only file tree a mount exposes, independent of FUSE:

    disk                      raw virtual disk of the selected snapshot (default: top)
    part1 … partN             its partitions (GPT or MBR), raw
    files/ (files-partN/)     the files of the ext2/3/4 or XFS filesystem inside (one per
                              partition holding one; `files` alone when there is one)
    snapshots/<guid>/disk     every snapshot of the descriptor (guid lowercase, no braces)
    snapshots/<guid>/partN
    snapshots/<guid>/files/   (files-partN/) the files of that snapshot
    info.json                 what `ploopfs info --json` prints
    bad-clusters.json         salvage mounts only: damaged ranges known so far (docs/salvage.md)

With an overlay (volume/overlay.py, docs/overlay.md) `disk` and `partN` are the overlay's,
writable (`write`, `sync`; a partition's writes bounded to it), and the top has no `files/`:
its filesystem changes under the mount. snapshots/ stays the source's, read-only.

Front ends see Dir and File nodes with sizes, mtimes, `read(offset, size)` and the bytes
the images store for them (`stored`), and FsMount nodes: where a filesystem's own tree
(content/files.py, opened on first use) takes over."""

from __future__ import annotations

import errno
import json
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ploopfs.content.files import FILE_KINDS, FileSystem, open_filesystem
from ploopfs.content.partitions import Partition, inspect_disk
from ploopfs.content.view import partition_view
from ploopfs.format.descriptor import bare_guid
from ploopfs.services.info import disk_info
from ploopfs.volume.blockmap import ZERO_LEVEL
from ploopfs.volume.image import data_runs
from ploopfs.volume.overlay import Overlay
from ploopfs.volume.source import Disk
from ploopfs.volume.volume import Volume


@dataclass(eq=False)
class File:
    name: str
    size: int
    mtime_ns: int
    read: Callable[[int, int], bytes | bytearray | memoryview]
    # Bytes the images store for this file (its allocated clusters), computed on first use;
    # None: the file is data held in memory, all of it counts.
    _stored: Callable[[], int] | None = field(default=None, repr=False)
    _stored_value: int | None = field(default=None, repr=False)
    # Writable files only (an overlay's disk and partitions): write(offset, data) -> bytes
    # written (short or 0 at the end, as a block device), and sync() making them durable.
    write: Callable[[int, bytes | memoryview], int] | None = field(default=None, repr=False)
    sync: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def stored(self) -> int:
        """st_blocks × 512 of the file: what the images hold for it, at most its size."""
        if self._stored is None:
            return self.size
        if self.write is not None:  # changes with every write
            return self._stored()
        if self._stored_value is None:
            self._stored_value = self._stored()
        return self._stored_value


class LiveFile(File):
    """A small file whose contents change while mounted: re-rendered on every getattr (front
    ends must not cache its attributes or pages); reads serve the last rendering."""

    def __init__(self, name: str, mtime_ns: int, render: Callable[[], bytes]) -> None:
        self._render = render
        self._data = render()
        super().__init__(name, len(self._data), mtime_ns, self._read)

    def refresh(self) -> None:
        self._data = self._render()
        self.size = len(self._data)

    def _read(self, offset: int, length: int) -> bytes:
        return self._data[offset: offset + length]


@dataclass(eq=False)
class Dir:
    name: str
    mtime_ns: int
    _loader: Callable[[], list[File | Dir | FsMount]] | None = None
    _children: dict[str, File | Dir | FsMount] | None = field(default=None)

    @property
    def children(self) -> dict[str, File | Dir | FsMount]:
        """Built on first use: snapshot folders build their block maps only when visited."""
        if self._children is None:
            loaded = self._loader() if self._loader else []
            self._children = {c.name: c for c in loaded}
        return self._children


class FsMount:
    """A folder whose contents are a filesystem's files: `fs` opens it on first use (its
    superblock and root inode only) and keeps it; a failure is kept too, and raised again."""

    def __init__(self, name: str, mtime_ns: int, opener: Callable[[], FileSystem | None],
                 where: str) -> None:
        self.name, self.mtime_ns, self.where = name, mtime_ns, where
        self._opener = opener
        self._fs: FileSystem | None = None
        self._error: Exception | None = None

    @property
    def fs(self) -> FileSystem:
        if self._fs is None:
            if self._error is not None:
                raise self._error
            try:
                fs = self._opener()
                if fs is None:
                    raise OSError(errno.EIO, f"{self.where}: no ext2/3/4 or XFS filesystem")
            except Exception as e:
                self._error = e
                raise
            self._fs = fs
        return self._fs


def _files_opener(vol: Volume, start: int, size: int, label: str
                  ) -> Callable[[], FileSystem | None]:
    def opener() -> FileSystem | None:
        return open_filesystem(partition_view(vol, start, size),
                               lambda o, n: vol.read(start + o, n),
                               lambda v, o: vol.readinto(v, start + o), size, label)

    return opener


def _range_reader(vol: Volume | Overlay, start: int, size: int
                  ) -> Callable[[int, int], bytes | bytearray]:
    def read(offset: int, length: int) -> bytes | bytearray:
        if offset >= size:
            return bytearray()
        return vol.read(start + offset, min(length, size - offset))

    return read


def stored_bytes(vol: Volume, start: int, end: int) -> int:
    """Bytes of the virtual disk range [start, end) that the images store: the clusters the
    merged block map serves from some image (not salvage's zeroed ones), plus, over a raw base,
    the data (not the holes) of its file where no delta maps (format.md §4.1)."""
    end = min(end, vol.size)
    if start >= end:
        return 0
    stored = _in_extents(vol, start, end, zeroed=False)
    if vol.raw_base:
        for a, b in data_runs(vol.images[0].fd, start, min(end, vol.images[0].file_size)):
            stored += b - a - _in_extents(vol, a, b, zeroed=True)
    return stored


def _in_extents(vol: Volume, start: int, end: int, *, zeroed: bool) -> int:
    """Bytes of [start, end) inside extents of the block map (`zeroed`: ZERO_LEVEL ones too).
    Work in proportion to the extents the range touches; whole ones are summed in C."""
    m, c = vol.map, vol.cluster_size
    i0 = max(0, bisect_right(m.a_vstart, start // c) - 1)
    i1 = bisect_left(m.a_vstart, -(-end // c))  # the extents that start before `end`

    def overlap(i: int) -> int:
        a = m.a_vstart[i] * c
        return max(0, min(end, a + m.a_count[i] * c) - max(start, a))

    if i1 - i0 <= 2:  # the inner extents lie wholly inside the range
        total = sum(overlap(i) for i in range(i0, i1))
    else:
        total = overlap(i0) + overlap(i1 - 1) + sum(m.count[i0 + 1:i1 - 1]) * c
    if not zeroed and ZERO_LEVEL in m.level[i0:i1]:
        total -= sum(overlap(i) for i in range(i0, i1) if m.a_level[i] == ZERO_LEVEL)
    return total


def _partition_spans(parts: list[Partition], disk_size: int
                     ) -> Iterator[tuple[Partition, int, int]]:
    """(partition, start, size) of each partition, clipped to the disk: what `partN` serves."""
    for p in parts:
        start = min(p.start, disk_size)
        yield p, start, max(0, min(p.size, disk_size - start))


def volume_files(vol: Volume, mtime_ns: int, label: str = "") -> list[File | Dir | FsMount]:
    """`disk` and `partN` of one volume, and `files`/`files-partN` for each partition (or the
    whole disk) holding a filesystem whose files are served (FILE_KINDS)."""
    files: list[File | Dir | FsMount] = [File("disk", vol.size, mtime_ns, vol.read,
                                              lambda: stored_bytes(vol, 0, vol.size))]
    table = inspect_disk(vol.read, vol.size)
    mounts: list[tuple[str, int, int]] = []
    for p, start, size in _partition_spans(table.partitions, vol.size):
        files.append(File(f"part{p.number}", size, mtime_ns, _range_reader(vol, start, size),
                          lambda a=start, b=start + size: stored_bytes(vol, a, b)))
        if p.fs in FILE_KINDS and size and not p.outside:
            mounts.append((f"part{p.number}", start, size))
    if not table.partitions and table.whole_disk_fs in FILE_KINDS:
        mounts.append(("disk", 0, vol.size))
    for where, start, size in mounts:
        name = "files" if len(mounts) == 1 else f"files-{where}"
        files.append(FsMount(name, mtime_ns, _files_opener(vol, start, size,
                                                           f"{label}{where}"), where))
    return files


def _range_writer(ov: Overlay, start: int, size: int) -> Callable[[int, bytes | memoryview], int]:
    """Writes into [start, start+size) of the overlay's disk: short (0 past the end) at the
    partition's end, as its block device would be."""
    def write(offset: int, data: bytes | memoryview) -> int:
        if offset >= size:
            return 0
        return ov.write(start + offset, memoryview(data)[:size - offset])

    return write


def overlay_files(ov: Overlay, mtime_ns: int) -> list[File | Dir | FsMount]:
    """The writable `disk` and `partN` of an overlay (partition table read at mount time).
    Stored bytes: the source's (once) plus the clusters the delta adds over holes."""
    base = ov.base
    cache: dict[tuple[int, int], int] = {}

    def stored(a: int, b: int) -> int:
        if (a, b) not in cache:
            cache[a, b] = stored_bytes(base, a, b)
        added = ov.added_bytes if (a, b) == (0, ov.size) else ov.added_in(a, b)
        return min(b - a, cache[a, b] + added)

    files: list[File | Dir | FsMount] = [File("disk", ov.size, mtime_ns, ov.read,
                                              lambda: stored(0, ov.size), write=ov.write,
                                              sync=ov.flush)]
    for p, start, size in _partition_spans(inspect_disk(ov.read, ov.size).partitions, ov.size):
        files.append(File(f"part{p.number}", size, mtime_ns, _range_reader(ov, start, size),
                          lambda a=start, b=start + size: stored(a, b),
                          write=_range_writer(ov, start, size), sync=ov.flush))
    return files


def _bytes_reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset: offset + length]


class MountTree:
    def __init__(self, disk: Disk, snapshot: str | None = None,
                 overlay: Overlay | None = None) -> None:
        """`overlay`: an open Overlay over `snapshot`; the top's disk and partN are then its,
        writable (docs/overlay.md)."""
        self.disk = disk
        self.snapshot = snapshot
        self.overlay = overlay
        # errors (bad source, unknown snapshot) surface here; an overlay has opened it already
        self.volume = overlay.base if overlay is not None else disk.volume(snapshot)
        paths = list(disk.paths.values())
        self.mtime_ns = max((os.stat(p).st_mtime_ns for p in paths), default=0)
        info = json.dumps(disk_info(disk, snapshot), indent=2, default=str).encode() + b"\n"
        if overlay is not None:
            top_files = overlay_files(overlay, self._chain_mtime(snapshot))
            self._top_volume_files: list[File | Dir | FsMount] | None = None
        else:
            top_files = volume_files(self.volume, self._chain_mtime(snapshot),
                                     f"snapshot {bare_guid(self.volume_guid)}: ")
            self._top_volume_files = list(top_files)  # shared with snapshots/<top guid>/
        self.disk_file = top_files[0]
        top_files.append(File("info.json", len(info), self.mtime_ns, _bytes_reader(info)))
        top_files.append(Dir("snapshots", self.mtime_ns, self._snapshot_dirs))
        if disk.salvage_log is not None:
            log = disk.salvage_log
            top_files.append(LiveFile("bad-clusters.json", self.mtime_ns, lambda: json.dumps(
                log.summary(), indent=2).encode() + b"\n"))
        self.root = Dir("", self.mtime_ns, lambda: top_files)

    def files_mount(self) -> FsMount | None:
        """The files of the mounted snapshot that `--files` shows: the first partition's
        filesystem, else the whole disk's."""
        return next((c for c in self.root.children.values() if isinstance(c, FsMount)), None)

    def usage(self) -> tuple[int, int]:
        """(size, stored bytes) of the mounted snapshot's `disk`: what statfs reports."""
        f = self.disk_file
        assert isinstance(f, File)
        return f.size, f.stored

    def _chain_mtime(self, snapshot: str | None) -> int:
        """Newest mtime (ns, exact) of the image files a snapshot reads."""
        return max(os.stat(self.disk.paths[e.guid]).st_mtime_ns
                   for e in self.disk.chain(snapshot))

    def _snapshot_dirs(self) -> list[File | Dir | FsMount]:
        out: list[File | Dir | FsMount] = []
        for im in self.disk.descriptor.images:
            guid = im.guid

            def load(guid: str = guid) -> list[File | Dir | FsMount]:
                if guid == self.volume_guid and self._top_volume_files is not None:
                    return list(self._top_volume_files)  # the same nodes: one FileSystem
                vol = self.disk.volume(guid)
                return volume_files(vol, self._chain_mtime(guid), f"snapshot {bare_guid(guid)}: ")

            out.append(Dir(bare_guid(guid), self._chain_mtime(guid), load))
        return out

    @property
    def volume_guid(self) -> str:
        return self.disk.chain(self.snapshot)[-1].guid
