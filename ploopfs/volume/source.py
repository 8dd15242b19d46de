"""Opening a SOURCE: a DiskDescriptor.xml, the folder holding one, a single ploop image file, or a
raw file given a cluster size. Resolves image paths safely and builds volumes per snapshot."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field

from ploopfs.errors import (
    BadChainError,
    BadDescriptorError,
    BadImageError,
    NotFoundError,
    PloopfsError,
    UnsafePathError,
    UnsupportedError,
)
from ploopfs.format.chain import Level, chain_anomalies
from ploopfs.format.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    Descriptor,
    ImageEntry,
    Shot,
)
from ploopfs.format.descriptor_scan import parse_descriptor
from ploopfs.format.findings import Severity
from ploopfs.format.header import (
    NONE_GUID,
    SECTOR,
    TOP_GUID,
    ImageKind,
    chs_geometry,
    parse_header,
    sniff,
)
from ploopfs.format.infer import Hints
from ploopfs.format.probe import FileKind, probe
from ploopfs.volume import fileio
from ploopfs.volume.fileio import open_readonly
from ploopfs.volume.image import RAW_NEEDS_CLUSTER_SIZE, Image, pread_exact
from ploopfs.volume.salvage import SalvageLog, SalvageVolume
from ploopfs.volume.volume import Volume

DESCRIPTOR_NAME = "DiskDescriptor.xml"
CONTAINER_DISK = "root.hdd"  # the disk folder inside an OpenVZ/Virtuozzo container's private area
# Header anomalies every command shows (check shows them all): they change what is read.
SHOWN_HEADER_ANOMALIES = frozenset({"DIRTY", "SIZE_FIELDS", "VERSION_CONVERT"})
MAX_LEVELS = 254  # the block map keeps a level in a byte, and salvage needs one value more


@dataclass
class OpenOptions:
    cluster_size: int | None = None  # bytes; for raw files (and raw bases without <Blocksize>)
    allow_outside_paths: bool = False
    # None: strict (a damaged BAT entry or a read error is an error). "zeros" / "older": serve
    # damaged ranges as zeros / from the next lower level and record them (docs/salvage.md).
    salvage: str | None = None


@dataclass
class Disk:
    """An opened SOURCE. Image files are opened lazily and read-only, once each."""

    source: str
    descriptor: Descriptor
    descriptor_path: str | None  # None when the source is a bare image file
    paths: dict[str, str]  # GUID -> resolved file path
    options: OpenOptions
    warnings: list[str] = field(default_factory=list)
    _images: dict[str, Image] = field(default_factory=dict)
    salvage_log: SalvageLog | None = None  # set when options.salvage is
    # Salvage only: images whose file is missing (GUID -> the error), so that `recover` can keep
    # the rest of the tree; a strict open fails on the first missing file instead.
    missing: dict[str, NotFoundError] = field(default_factory=dict)
    # Salvage only: (cluster sectors, version, BAT entries) of each image whose header parses,
    # read once for the inference hints of all the others (_hints).
    _headers: dict[str, tuple[int, int, int]] | None = None

    def __post_init__(self) -> None:
        if self.options.salvage is not None and self.salvage_log is None:
            self.salvage_log = SalvageLog(self.options.salvage)

    @property
    def top_guid(self) -> str:
        return self.descriptor.top_guid

    def image(self, guid: str, *, level: int) -> Image:
        if guid in self.missing:
            raise self.missing[guid]
        if guid not in self._images:
            bs = self.descriptor.blocksize * SECTOR or self.options.cluster_size
            # Only level 0 may be raw (format.md §0), and only if the descriptor calls it Plain: ploop's
            # mode is per disk (format.md §3), so a Compressed base without a ploop signature is damaged,
            # not raw. Deltas are sniffed whatever their <Type> says (format.md §11 trap 10).
            plain = self.descriptor.image(guid).plain
            reason = ("only the base of a chain may be raw" if level else
                      "the descriptor's <Type> is not Plain, so it is no raw base")
            salvage = self.options.salvage is not None
            im = Image.open(self.paths[guid], raw_cluster_size=bs, allow_raw=level == 0 and plain,
                            not_raw_reason=reason, lenient=salvage,
                            infer=self._hints(guid) if salvage else None)
            if im.inferred is not None:
                self._warn(f"{im.path}: {im.header_error}; {im.inferred.line()}")
            for a in im.anomalies:
                # What changes how the disk reads: damage salvage reads past, an image left in
                # use, a size word that is ignored. The rest is check's to report.
                if a.severity >= Severity.DAMAGED or a.code in SHOWN_HEADER_ANOMALIES:
                    self._warn(f"{im.path} at offset {a.offset}: {a.message}")
            im.salvage = self.options.salvage is not None
            self._images[guid] = im
        return self._images[guid]

    def _hints(self, guid: str) -> Hints:
        """What the descriptor and the other images' readable headers say about a damaged
        header (format.md §4.2: one cluster size and version per chain)."""
        if self._headers is None:  # once: re-reading every header per image was O(n^2)
            self._headers = {}
            for g, path in self.paths.items():
                if g in self.missing:
                    continue
                try:
                    fd = open_readonly(path)
                    try:
                        h = parse_header(pread_exact(fd, 64, 0, path), path)
                    finally:
                        os.close(fd)
                except PloopfsError:
                    continue
                self._headers[g] = Hints.sibling(h)
        sib = [v for g, v in self._headers.items() if g != guid and g not in self.missing]
        d = self.descriptor
        return Hints(d.blocksize, d.disk_size if self.descriptor_path else 0, tuple(sib))

    def source_files(self) -> list[str]:
        """Every file this disk reads: the image files and the descriptor."""
        return [*self.paths.values(), *([self.descriptor_path] if self.descriptor_path else [])]

    def chain(self, snapshot: str | None = None) -> list[ImageEntry]:
        d = self.descriptor
        try:
            return d.chain(None if snapshot is None else d.snapshot_guid(snapshot, self.source))
        except KeyError as e:
            # Only a descriptor read with --salvage gets here (strictly, an unknown TopGUID or
            # parent is refused while parsing): the chain leads to a GUID with no image.
            raise BadChainError(f"the chain leads to {e.args[0]}, which is not an image of this "
                                "disk", self.descriptor_path or self.source,
                                element="Snapshots") from None

    def volume(self, snapshot: str | None = None, *, skip: Collection[str] = ()) -> Volume:
        """The virtual disk as seen from `snapshot` (default: the top). `skip`: GUIDs of levels
        left out of the chain (`recover` drops unreadable levels so the rest stays readable)."""
        entries = [e for e in self.chain(snapshot) if e.guid not in skip]
        if not entries:
            raise BadChainError("no readable level in this chain", self.source)
        if len(entries) > MAX_LEVELS:
            raise BadChainError(f"the chain has {len(entries)} levels; ploopfs reads at most "
                                f"{MAX_LEVELS} (ploop itself makes at most 127)", self.source)
        images = [self.image(e.guid, level=i) for i, e in enumerate(entries)]
        top = images[-1]
        is_top = entries[-1].guid == self.descriptor.top_guid
        for an in chain_anomalies([Level(im.path, im.header) for im in images],
                                  blocksize=self.descriptor.blocksize,
                                  disk_size=self.descriptor.disk_size, current_top=is_top,
                                  descriptor=self.descriptor_path):
            salvageable = an.severity < Severity.FATAL and self.options.salvage is not None
            if an.severity >= Severity.DAMAGED and not salvageable:
                hint = "; try --salvage" if an.severity < Severity.FATAL else ""
                raise BadChainError(an.message + hint, an.file, offset=an.offset,
                                    element=an.element)
            if an.severity >= Severity.WARNING:
                where = an.file or self.source
                where += f" at offset {an.offset}" if an.offset is not None else ""
                self._warn(f"{where}: {an.message}")
        ploop_imgs = [im for im in images if not im.is_raw]
        cluster = ploop_imgs[0].cluster_size if ploop_imgs else images[0].cluster_size
        # The size as ploop shows it (format.md §1.4): <Disk_size> for the current top (the
        # device never shows more); an older snapshot's own top image describes its size
        # (ploop's get_image_param: the size is delta specific). A raw base has no header to
        # size it: the descriptor's size serves there too.
        dsize = self.descriptor.disk_size * SECTOR if self.descriptor_path else 0
        size = dsize if dsize and (is_top or top.is_raw) else top.virtual_size
        if self.salvage_log is not None:
            assert self.options.salvage is not None
            return SalvageVolume(images, size, cluster, self.options.salvage, self.salvage_log,
                                 entries[-1].guid)
        return Volume(images, size, cluster)

    def _warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def close(self) -> None:
        for im in self._images.values():
            im.close()
        self._images.clear()

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def descriptor_in_folder(folder: str) -> str | None:
    """The descriptor a folder SOURCE means: its own DiskDescriptor.xml, else that of root.hdd/
    inside it (a container's private area, /vz/private/101)."""
    for dd in (os.path.join(folder, DESCRIPTOR_NAME),
               os.path.join(folder, CONTAINER_DISK, DESCRIPTOR_NAME)):
        if os.path.lexists(dd):
            return dd
    return None


def open_source(source: str | os.PathLike[str], options: OpenOptions | None = None) -> Disk:
    opts = options or OpenOptions()
    src = os.fspath(source)
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise NotFoundError("no such file or folder", src) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotFoundError("a symbolic link loop (it leads back to itself)", src) from None
        raise NotFoundError(f"cannot access: {e.strerror}", src) from None
    if os.path.isdir(src):
        dd = descriptor_in_folder(src)
        if dd is None:
            raise NotFoundError(
                f"no {DESCRIPTOR_NAME} in this folder (give an image file instead, or rebuild "
                "the descriptor with ploopfs restore-descriptor)", src)
        return _open_descriptor(dd, opts)
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise BadImageError("empty file: neither a ploop image, a descriptor nor a raw disk", src)
    fd = open_readonly(src)
    try:
        head = pread_exact(fd, 64, 0, src)
    finally:
        os.close(fd)
    if probe(head) is FileKind.XML or src.lower().endswith(".xml"):
        return _open_descriptor(src, opts)
    kind = sniff(head)
    if probe(head) is FileKind.QCOW2:
        raise UnsupportedError("qcow2 image (VZ9 qcow2 mode) is not a ploop image", src)
    if kind is ImageKind.RAW and not opts.cluster_size and opts.salvage is not None:
        return _single_image(src, ImageKind.V2, opts)  # a damaged header: try to infer it
    if kind is ImageKind.RAW and not opts.cluster_size:
        raise BadImageError(
            f"not a ploop image or descriptor (first bytes {head[:16]!r}); to read a raw disk "
            "give --cluster-size", src, offset=0, code=RAW_NEEDS_CLUSTER_SIZE)
    return _single_image(src, kind, opts)


def _single_image(path: str, kind: ImageKind, opts: OpenOptions) -> Disk:
    d = Descriptor()
    d.images.append(ImageEntry(TOP_GUID, os.path.basename(path),
                               "Plain" if kind is ImageKind.RAW else "Compressed"))
    d.shots.append(Shot(TOP_GUID, NONE_GUID))
    d.top_guid = TOP_GUID
    disk = Disk(path, d, None, {TOP_GUID: path}, opts)
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), DESCRIPTOR_NAME)
    if os.path.exists(beside):
        disk._warn(f"{path}: one image of the disk described by {beside}; this reads that image "
                   "alone, not the disk: give the descriptor (or its folder) for the whole disk")
    im = disk.image(TOP_GUID, level=0)
    d.blocksize = im.cluster_size // SECTOR
    d.disk_size = im.virtual_size // SECTOR
    d.cylinders, d.heads, d.sectors = chs_geometry(d.disk_size)
    if d.cylinders and d.heads:
        d.sectors = d.disk_size // (d.cylinders * d.heads)
    return disk


def _open_descriptor(path: str, opts: OpenOptions) -> Disk:
    fd = open_readonly(path)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_DESCRIPTOR_BYTES:
            raise BadDescriptorError(
                f"descriptor is {size} bytes, larger than the {MAX_DESCRIPTOR_BYTES} byte cap", path)
        data = pread_exact(fd, size, 0, path)
    finally:
        os.close(fd)
    desc = parse_descriptor(data, path, salvage=opts.salvage is not None)
    disk = Disk(path, desc, path, {}, opts)
    disk.warnings.extend(f"{path}: {w}" for w in desc.warnings)
    folder = os.path.dirname(os.path.abspath(path))
    for i, im in enumerate(desc.images):
        try:
            disk.paths[im.guid] = resolve_image_path(folder, im.file, opts.allow_outside_paths,
                                                     disk.warnings, path,
                                                     f"Storage/Image[{i + 1}]/File")
        except NotFoundError as e:
            if opts.salvage is None:
                raise
            disk.missing[im.guid] = e
            disk.paths[im.guid] = os.path.join(folder, im.file)
            disk.warnings.append(e.message())
    # Every image the descriptor names is a source from now on, before any of them is opened.
    fileio.register_sources(disk.paths.values())
    return disk


def resolve_image_path(folder: str, file: str, allow_outside: bool, warnings: list[str],
                       descriptor: str, element: str) -> str:
    """format.md §5.6: relative to the descriptor's folder; absolute as is. Unless allowed, the real path
    (symlinks resolved) must stay inside the folder, so a descriptor cannot make us read
    /etc/shadow. A moved backup with stale absolute paths falls back to folder/basename."""
    real_folder = os.path.realpath(folder)
    candidate = os.path.normpath(os.path.join(folder, file))
    real = os.path.realpath(candidate)
    inside = os.path.commonpath([real, real_folder]) == real_folder
    if os.path.isabs(file) and (not os.path.exists(candidate) or not (inside or allow_outside)):
        local = os.path.join(folder, os.path.basename(file))
        if os.path.basename(file) and os.path.exists(local):
            warnings.append(f"{descriptor}: <File> {file!r} used as {local!r} (same name, "
                            "descriptor's folder)")
            candidate, real = local, os.path.realpath(local)
            inside = os.path.commonpath([real, real_folder]) == real_folder
    if not inside and not allow_outside:
        raise UnsafePathError(
            f"image path {file!r} leads outside the descriptor's folder (to {real}); pass "
            "--allow-outside-paths if you trust this descriptor", descriptor, element=element)
    if not os.path.exists(candidate):
        what = "does not exist"
        if os.path.islink(candidate):
            try:
                os.stat(candidate)
            except OSError as e:
                what = ("is a symbolic link loop (it leads back to itself)"
                        if e.errno == errno.ELOOP else f"is a dangling symbolic link ({e.strerror})")
        raise NotFoundError(f"image file {file!r} {what}", descriptor, element=element)
    return candidate
