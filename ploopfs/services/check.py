"""`ploopfs check`: a read-only diagnosis of a ploop disk (docs/check.md).

Unlike `ploop check` (format.md §7.1) nothing is ever written, the BAT is checked even when
the file size is not cluster-aligned (format.md §11 trap 22), and every problem is reported, not only the
first. Metadata is read here through the format layer's lenient helpers, never through the
strict `Image.mapping()`, so damaged input gives findings instead of exceptions. The virtual
disk (partitions, filesystems, --deep shadows) is read through the volume layer's salvage read
path over the mappings scanned here (`_volume`), as `--salvage=older` reads it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from ploopfs.content.partitions import LUKS_MAGIC, inspect_disk
from ploopfs.errors import PloopfsError, UnsafePathError
from ploopfs.format.bat import bat_entry_off, classify_entries, decode_entries, duplicate_slots
from ploopfs.format.chain import Level, chain_anomalies
from ploopfs.format.descriptor import MAX_DESCRIPTOR_BYTES, Descriptor, ImageEntry, Shot
from ploopfs.format.descriptor_scan import PROBLEMS as DESCRIPTOR_PROBLEMS
from ploopfs.format.descriptor_scan import scan_descriptor
from ploopfs.format.extension import parse_extension
from ploopfs.format.findings import Severity
from ploopfs.format.header import (
    DISK_CLOSED_V21,
    HEADER_SIZE,
    NONE_GUID,
    SECTOR,
    TOP_GUID,
    Header,
    decode_header_fields,
    header_anomalies,
)
from ploopfs.format.infer import Hints, Inference, infer_header
from ploopfs.format.probe import FileKind, probe
from ploopfs.volume.fileio import open_readonly
from ploopfs.volume.image import Image, Mapping, bat_chunks, data_runs, file_size
from ploopfs.volume.salvage import SalvageLog, SalvageVolume
from ploopfs.volume.source import (
    DESCRIPTOR_NAME,
    MAX_LEVELS,
    descriptor_in_folder,
    resolve_image_path,
)

PLOOP_MAX_LEVELS = 127  # ploop snapshot refuses to grow a chain past this (format.md §2.6)

BAT_CHUNK = 1 << 20  # bytes of BAT read at a time
MAX_PER_CODE = 20  # per image and code, individual findings; the rest are summed up in one
DEEP_CHUNK = 8 << 20


VERDICTS = {0: "clean", 1: "warnings", 2: "damaged but salvageable", 3: "unreadable"}

# Default severity of every code; docs/check.md lists them. Some are raised or lowered in context
# (e.g. a missing image is FATAL in the checked chain and DAMAGED elsewhere).
CODES: dict[str, Severity] = {
    "SOURCE_NOT_FOUND": Severity.FATAL,
    "SOURCE_UNREADABLE": Severity.FATAL,
    "SNAPSHOT_NOT_FOUND": Severity.FATAL,
    "IMAGE_NOT_REGULAR": Severity.FATAL,
    "IMAGE_EMPTY": Severity.FATAL,
    "IMAGE_READ_ERROR": Severity.FATAL,
    "HEADER_TRUNCATED": Severity.FATAL,
    "HEADER_SIGNATURE": Severity.FATAL,
    "HEADER_INFERRED": Severity.INFO,
    "HEADER_TYPE": Severity.DAMAGED,
    "CLUSTER_SIZE": Severity.FATAL,
    "SIZE_FIELDS": Severity.WARNING,
    "FIRST_BLOCK_OFFSET": Severity.WARNING,
    "DIRTY": Severity.WARNING,
    "IN_USE_TAG": Severity.INFO,
    "FLAGS_UNKNOWN": Severity.INFO,
    "VERSION_CONVERT": Severity.DAMAGED,
    "FILE_NOT_CLUSTER_ALIGNED": Severity.WARNING,
    "BAT_TRUNCATED": Severity.DAMAGED,
    "BAT_PAST_EOF": Severity.DAMAGED,
    "BAT_INTO_HEADER": Severity.DAMAGED,
    "BAT_DUPLICATE": Severity.DAMAGED,
    "BAT_V1_UNALIGNED": Severity.DAMAGED,
    "BAT_PADDING_NONZERO": Severity.WARNING,
    "BAT_RESERVED": Severity.DAMAGED,
    "LEAKED_CLUSTERS": Severity.WARNING,
    "PREALLOCATED_TAIL": Severity.INFO,
    "EXTENSION_IGNORED": Severity.INFO,
    "EXTENSION_PAST_EOF": Severity.WARNING,
    "EXTENSION_MAGIC": Severity.WARNING,
    "EXTENSION_CHECKSUM": Severity.WARNING,
    "EXTENSION_CORRUPT": Severity.WARNING,
    "EXTENSION_OVERLAP": Severity.DAMAGED,
    "DESCRIPTOR_MISSING": Severity.FATAL,
    "CHAIN_DEPTH": Severity.WARNING,
    "DESCRIPTOR_FILE_MISSING": Severity.FATAL,
    "DESCRIPTOR_UNSAFE_PATH": Severity.FATAL,
    "DESCRIPTOR_CLUSTER_MISMATCH": Severity.DAMAGED,
    "DESCRIPTOR_VERSION_MISMATCH": Severity.DAMAGED,
    "DESCRIPTOR_DISK_SIZE": Severity.WARNING,
    "DESCRIPTOR_LOWER_LARGER": Severity.WARNING,
    "PARTITION_TABLE": Severity.WARNING,
    "PARTITION_OUTSIDE": Severity.WARNING,
    "PARTITION_OVERLAP": Severity.WARNING,
    "LUKS": Severity.INFO,
    "DEEP_IO_ERROR": Severity.DAMAGED,
    "DEEP_HOLE": Severity.INFO,
    "DEEP_SHADOW": Severity.INFO,
    "DEEP_FILESYSTEM": Severity.WARNING,
    **{code: sev for code, (sev, _error) in DESCRIPTOR_PROBLEMS.items()},
}


@dataclass
class Finding:
    code: str
    severity: Severity
    message: str
    file: str | None = None
    offset: int | None = None  # byte offset in `file`
    vcluster: int | None = None  # virtual cluster (BAT slot index)
    pcluster: int | None = None  # physical cluster in `file`
    element: str | None = None  # DiskDescriptor.xml element

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["severity"] = self.severity.name.lower()
        return d


@dataclass
class ImageSummary:
    guid: str
    file: str
    level: int | None  # position in the checked chain, None if not in it
    kind: str = "unknown"
    file_size: int = 0
    cluster_size: int = 0
    virtual_size: int = 0
    allocated: int = 0  # non-zero BAT entries that can be read


@dataclass
class CheckReport:
    source: str
    snapshot: str | None
    findings: list[Finding] = field(default_factory=list)
    images: list[ImageSummary] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)  # GUIDs, base first
    deep: bool = False

    @property
    def exit_code(self) -> int:
        return max((int(f.severity) for f in self.findings), default=0)

    @property
    def verdict(self) -> str:
        return VERDICTS[self.exit_code]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def counts(self) -> dict[str, int]:
        out = {s.name.lower(): 0 for s in Severity}
        for f in self.findings:
            out[f.severity.name.lower()] += 1
        return out

    def to_json(self) -> dict:
        return {"source": self.source, "snapshot": self.snapshot, "deep": self.deep,
                "exit_code": self.exit_code, "verdict": self.verdict, "counts": self.counts(),
                "chain": self.chain, "images": [asdict(i) for i in self.images],
                "findings": [f.to_json() for f in self.findings]}


class _Report:
    """Collects findings; caps per-entry findings per (file, code)."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        self._count: dict[tuple[str | None, str], int] = {}

    def add(self, code: str, message: str, *, severity: Severity | None = None,
            capped: bool = False, **loc: object) -> None:
        key = (loc.get("file"), code)  # type: ignore[arg-type]
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        if capped and n >= MAX_PER_CODE:
            return
        self.report.findings.append(Finding(code, CODES[code] if severity is None else severity,
                                            message, **loc))  # type: ignore[arg-type]

    def close_caps(self) -> None:
        for (file, code), n in self._count.items():
            if n > MAX_PER_CODE:
                sev = max(f.severity for f in self.report.findings if f.code == code and f.file == file)
                self.report.findings.append(Finding(
                    code, sev, f"{n - MAX_PER_CODE} more like the above ({n} in all)", file=file))


# -- one image ------------------------------------------------------------------------------------
@dataclass
class _Scanned:
    """What `_scan_image` learned: the header and the readable mapping, for the chain checks."""

    path: str
    fd: int
    header: Header | None  # None: raw or unusable
    raw: bool
    file_size: int
    vcl: np.ndarray  # readable non-zero slots (sorted)
    off: np.ndarray  # their file byte offsets (uint64)
    usable: bool  # metadata good enough to read data through it

    @property
    def cluster_size(self) -> int:
        return self.header.cluster_size if self.header else 0

    def image(self, c: int) -> Image:
        """This level for the volume layer's reads, with the readable mapping scanned here."""
        m = Mapping.of(self.vcl, self.off, self.header.entry_unit) if self.header else Mapping.empty()
        return Image.decoded(self.path, self.fd, self.header, self.file_size, c, m)


def _empty(path: str, fd: int, size: int, raw: bool = False) -> _Scanned:
    return _Scanned(path, fd, None, raw, size, np.zeros(0, np.uint32), np.zeros(0, np.uint64), raw)


def _pread(fd: int, n: int, off: int) -> bytes:
    return os.pread(fd, n, off)


def _scan_image(r: _Report, path: str, fd: int, *, raw_ok: bool, in_chain: bool,
                hints: Callable[[], Hints] = Hints) -> _Scanned:
    size = file_size(fd)
    sev_fatal = Severity.FATAL if in_chain else Severity.DAMAGED
    if size == 0:
        r.add("IMAGE_EMPTY", "empty file", file=path, severity=sev_fatal)
        return _empty(path, fd, size)
    head = _pread(fd, HEADER_SIZE, 0)
    kind = probe(head)
    if not kind.is_ploop:
        if raw_ok:
            return _empty(path, fd, size, raw=True)
        qcow2 = kind is FileKind.QCOW2
        what = "qcow2 image (VZ9 qcow2 mode)" if qcow2 else f"signature {head[:16]!r}"
        inf = None if qcow2 else _infer(fd, size, hints())
        if inf is None:
            r.add("HEADER_SIGNATURE", f"not a ploop image ({what}); only a Plain base may be raw; "
                  "a raw file alone needs --cluster-size",
                  file=path, offset=0, severity=sev_fatal)
            return _empty(path, fd, size)
        # The header is gone but the BAT behind it is consistent with one cluster size and
        # version: --salvage readers read on with the inferred header, so the image is damaged,
        # not unreadable; check the rest with that header.
        r.add("HEADER_SIGNATURE", f"not a ploop header ({what}), but the BAT behind it is intact: "
              "readable with --salvage", file=path, offset=0, severity=Severity.DAMAGED)
        r.add("HEADER_INFERRED", inf.line(), file=path, offset=0)
        sc = _scan_bat(r, path, fd, inf.header, size)
        _check_leaks_and_extension(r, sc)
        return sc
    if len(head) < HEADER_SIZE:
        r.add("HEADER_TRUNCATED", f"file is {size} bytes, the header needs {HEADER_SIZE}",
              file=path, offset=size, severity=sev_fatal)
        return _empty(path, fd, size)
    hdr = decode_header_fields(head)
    if not _check_header(r, path, hdr, size, sev_fatal):
        return _empty(path, fd, size)
    sc = _scan_bat(r, path, fd, hdr, size)
    _check_leaks_and_extension(r, sc)
    return sc


def _infer(fd: int, size: int, hints: Hints) -> Inference | None:
    """The header as --salvage readers would infer it from the BAT (format/infer.py), or None."""
    try:
        inf, _why = infer_header(lambda off, n: _pread(fd, n, off), size, hints)
    except OSError:
        return None
    return inf


def _check_header(r: _Report, path: str, h: Header, size: int, sev_fatal: Severity) -> bool:
    """The header rules of the format layer, reported; False when the BAT cannot be
    interpreted at all."""
    usable = True
    for a in header_anomalies(h, size):
        msg = a.message
        if a.code == "VERSION_CONVERT":
            idx = path + ".idx"
            msg += f"; BAT backup {idx} is present" if os.path.lexists(idx) else \
                "; no .idx BAT backup found"
        if a.severity is Severity.FATAL:
            usable = False
        r.add(a.code, msg, file=path, offset=a.offset,
              severity=sev_fatal if a.severity is Severity.FATAL else a.severity)
    return usable


def _scan_bat(r: _Report, path: str, fd: int, h: Header, size: int) -> _Scanned:
    """Read every slot of the header/BAT clusters (padding included, format.md §2.1) and classify."""
    nslots = h.bat_slots
    end_valid = bat_entry_off(h.bat_entries)
    if size < end_valid:
        r.add("BAT_TRUNCATED", f"file is {size} bytes but the BAT of {h.bat_entries} entries ends "
              f"at {end_valid}: slots from virtual cluster {(max(size, HEADER_SIZE) - HEADER_SIZE) // 4}"
              " on are lost", file=path, offset=size)
    v_parts, e_parts = [], []
    pad_v, pad_e = [], []
    start = bat_entry_off(0)
    stop = min(bat_entry_off(nslots), size // 4 * 4)
    for pos, n in bat_chunks(fd, start, stop):
        try:
            raw = _pread(fd, n, pos)
        except OSError as e:
            r.add("IMAGE_READ_ERROR", f"reading the BAT failed: {e.strerror}", file=path, offset=pos,
                  severity=Severity.DAMAGED)
            continue
        ent = decode_entries(raw[: len(raw) // 4 * 4])
        nz = np.flatnonzero(ent)
        if nz.size:
            first = (pos - start) // 4
            idx = nz.astype(np.int64) + first
            vals = ent[nz]
            valid = idx < h.bat_entries
            v_parts.append(idx[valid])
            e_parts.append(vals[valid])
            pad_v.append(idx[~valid])
            pad_e.append(vals[~valid])
    vcl = np.concatenate(v_parts) if v_parts else np.zeros(0, np.int64)
    ent = np.concatenate(e_parts) if e_parts else np.zeros(0, np.uint32)
    for i, e in zip(_cat(pad_v).tolist(), _cat(pad_e).tolist(), strict=True):
        r.add("BAT_PADDING_NONZERO", f"padding slot past m_Size {h.bat_entries} holds {e} "
              "(ploop check: 'beyond block device size')", file=path, offset=bat_entry_off(i),
              vcluster=i, capped=True)
    probs = classify_entries(ent, h, size)
    offs = ent.astype(np.uint64) * np.uint64(h.entry_unit)
    for code, mask, why in (
            ("BAT_RESERVED", probs.reserved, "reserved value 0xffffffff"),
            ("BAT_INTO_HEADER", probs.into_header,
             f"points into the header/BAT clusters (data starts at cluster {h.bat_clusters})"),
            ("BAT_PAST_EOF", probs.past_eof, f"cluster ends past the end of the {size} byte file"),
            ("BAT_V1_UNALIGNED", probs.v1_unaligned,
             f"v1 sector entry is not a multiple of the cluster ({h.cluster_sectors} sectors)")):
        for i in np.flatnonzero(mask).tolist():
            v, e, o = int(vcl[i]), int(ent[i]), int(offs[i])
            r.add(code, f"entry {e}: {why}", file=path, offset=bat_entry_off(v), vcluster=v,
                  pcluster=o // h.cluster_size, capped=True)
    good = ~probs.unreadable
    vcl, offs = vcl[good], offs[good]
    _check_duplicates(r, path, h, vcl, offs)
    return _Scanned(path, fd, h, False, size, vcl.astype(np.uint32), offs, True)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _check_duplicates(r: _Report, path: str, h: Header, vcl: np.ndarray, offs: np.ndarray) -> None:
    for v, first, o in duplicate_slots(vcl, offs):
        r.add("BAT_DUPLICATE", f"shares its cluster at byte {o} with virtual cluster {first}",
              file=path, offset=bat_entry_off(v), vcluster=v, pcluster=o // h.cluster_size,
              capped=True)


def _check_leaks_and_extension(r: _Report, sc: _Scanned) -> None:
    """Unreferenced clusters in the data area (format.md §2.5, §6.4, §11 trap 5/6). The format extension
    and its CBT bitmap clusters are metadata, not leaks. Unreferenced clusters that hold no data
    (holes) are not leaks of anything: at the end of the file they are a preallocated tail
    (dm-ploop, qemu, format.md §2.5), reported as info; inside the data area they are punched holes
    (discard), not reported."""
    h = sc.header
    assert h is not None
    c = h.cluster_size
    nclu = sc.file_size // c  # a partial last cluster is FILE_NOT_CLUSTER_ALIGNED, not a leak
    used = np.zeros(max(nclu, 0), bool)
    used[: min(h.bat_clusters, nclu)] = True
    if sc.off.size:
        first = (sc.off // np.uint64(c)).astype(np.int64)
        last = ((sc.off + np.uint64(c - 1)) // np.uint64(c)).astype(np.int64)  # v1 unaligned: 2
        used[first[first < nclu]] = True
        used[last[last < nclu]] = True
    meta = _extension_clusters(r, sc, used)
    used[[m for m in meta if m < nclu]] = True
    free = np.flatnonzero(~used)
    if free.size == 0:
        return
    data = _data_clusters(sc.fd, free, c, sc.file_size)
    leaked = free[data]
    top_used = int(np.flatnonzero(used).max()) if used.any() else -1
    tail_holes = free[~data & (free > top_used)]
    if leaked.size:
        r.add("LEAKED_CLUSTERS", f"{leaked.size} cluster(s) with data are referenced by no BAT entry "
              f"(first: cluster {int(leaked[0])}, last: {int(leaked[-1])}); a crash between "
              "allocation and BAT update leaves these", file=sc.path,
              offset=int(leaked[0]) * c, pcluster=int(leaked[0]))
    if tail_holes.size:
        r.add("PREALLOCATED_TAIL", f"{tail_holes.size} unreferenced sparse cluster(s) at the end of "
              "the file (preallocation); qemu-img check counts them as leaked",
              file=sc.path, offset=int(tail_holes[0]) * c, pcluster=int(tail_holes[0]))


def _extension_clusters(r: _Report, sc: _Scanned, used: np.ndarray) -> list[int]:
    """Clusters of the Format Extension and its bitmaps (format.md §6); their problems are findings."""
    h = sc.header
    assert h is not None
    if h.ext_offset == 0:
        return []
    c = h.cluster_size
    off = h.ext_offset * SECTOR
    if h.in_use != DISK_CLOSED_V21:
        r.add("EXTENSION_IGNORED", "m_FormatExtensionOffset is set but m_DiskInUse is not 'v2.1': "
              "ploop ignores the extension", file=sc.path, offset=0x38)
    if off + c > sc.file_size:
        r.add("EXTENSION_PAST_EOF", f"format extension at byte {off} ends past the end of the "
              f"{sc.file_size} byte file", file=sc.path, offset=0x38)
        return []
    out = [off // c]
    if off // c < used.size and used[off // c] and off // c >= h.bat_clusters:
        r.add("EXTENSION_OVERLAP", "the format extension cluster is also referenced by the BAT",
              file=sc.path, offset=off, pcluster=off // c)
    try:
        raw = _pread(sc.fd, c, off)
        ext = parse_extension(raw, c, sc.path, off)
    except PloopfsError as e:
        code = e.code or "EXTENSION_CORRUPT"
        r.add(code, e.what, file=sc.path, offset=e.offset if e.offset is not None else off)
        return out
    except (OSError, ValueError, OverflowError) as e:
        r.add("EXTENSION_CORRUPT", f"unreadable format extension: {e}", file=sc.path, offset=off)
        return out
    if not ext.md5_ok:
        r.add("EXTENSION_CHECKSUM", "MD5 of the format extension does not match (qemu: 'Wrong "
              "checksum in Format Extension header')", file=sc.path, offset=off + 8)
    for bm in ext.bitmaps:
        for e in bm.l1:
            if e > 1:
                boff = e * SECTOR
                if boff + c > sc.file_size:
                    r.add("EXTENSION_CORRUPT", f"CBT bitmap cluster at byte {boff} lies past the end "
                          "of file", file=sc.path, offset=off)
                else:
                    out.append(boff // c)
    return out


def _data_clusters(fd: int, clusters: np.ndarray, c: int, size: int) -> np.ndarray:
    """For each cluster index given (sorted): does any byte of it hold data (not a hole)?
    Walks the data runs of the given clusters' runs only."""
    out = np.zeros(clusters.size, bool)
    if clusters.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(clusters) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [clusters.size]])
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        first = int(clusters[s])
        for d, hole in data_runs(fd, first * c, min((int(clusters[e - 1]) + 1) * c, size)):
            out[s + d // c - first: s + -(-hole // c) - first] = True
    return out


def _holes(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The [hole, data) runs within [start, end): what `_data_runs` leaves out."""
    pos = start
    for d, hole in data_runs(fd, start, end):
        if d > pos:
            yield pos, d
        pos = max(pos, hole)
    if pos < end:
        yield pos, end


# -- the disk -------------------------------------------------------------------------------------
def check(source: str | os.PathLike[str], snapshot: str | None = None, deep: bool = False, *,
          allow_outside_paths: bool = False, raw_cluster_size: int | None = None) -> CheckReport:
    """Diagnose a SOURCE (descriptor, its folder, or one image file; a raw file when
    `raw_cluster_size` is given). Never raises on damaged input and never writes; see
    docs/check.md for the codes."""
    src = os.fspath(source)
    report = CheckReport(src, snapshot, deep=deep)
    r = _Report(report)
    fds: list[int] = []
    try:
        _check_source(r, src, snapshot, deep, allow_outside_paths, fds, raw_cluster_size)
    finally:
        for fd in fds:
            os.close(fd)
    r.close_caps()
    report.findings.sort(key=lambda f: -int(f.severity))
    return report


def _check_source(r: _Report, src: str, snapshot: str | None, deep: bool, allow_outside: bool,
                  fds: list[int], raw_cluster_size: int | None) -> None:
    try:
        os.stat(src)
    except OSError as e:
        r.add("SOURCE_NOT_FOUND", e.strerror or "cannot access", file=src)
        return
    if os.path.isdir(src):
        dd = descriptor_in_folder(src)
        if dd is None:
            r.add("DESCRIPTOR_MISSING", f"no {DESCRIPTOR_NAME} in this folder (restore-descriptor "
                  "can rebuild it)", file=src)
            return
        _check_descriptor_source(r, dd, snapshot, deep, allow_outside, fds)
        return
    fd = _open(r, src, fds, in_chain=True)
    if fd is None:
        return
    head = _pread(fd, HEADER_SIZE, 0)
    if probe(head) is FileKind.XML or src.lower().endswith(".xml"):
        _check_descriptor_source(r, src, snapshot, deep, allow_outside, fds)
        return
    r.report.chain = [TOP_GUID]
    sc = _scan_image(r, src, fd, raw_ok=bool(raw_cluster_size), in_chain=True)
    r.report.images.append(_summary(TOP_GUID, src, 0, sc))
    _after_chain(r, [sc], None, deep, raw_cluster_size)


def _open(r: _Report, path: str, fds: list[int], *, in_chain: bool) -> int | None:
    """`path` opened read-only and added to `fds` (closed at the end), or None and a finding."""
    code = "SOURCE_UNREADABLE"
    try:
        fds.append(open_readonly(path))
        return fds[-1]
    except PloopfsError as e:
        kind = e.code if e.code == "IMAGE_NOT_REGULAR" else code
        r.add(kind, e.what, file=path, severity=CODES[kind] if in_chain else Severity.DAMAGED)
    except OSError as e:
        r.add(code, e.strerror or str(e), file=path)
    return None


def _check_descriptor_source(r: _Report, dd: str, snapshot: str | None, deep: bool,
                             allow_outside: bool, fds: list[int]) -> None:
    fd = _open(r, dd, fds, in_chain=True)
    if fd is None:
        return
    size = file_size(fd)
    data = _pread(fd, min(size, MAX_DESCRIPTOR_BYTES + 1), 0)  # one byte more: too large
    desc, problems = scan_descriptor(data)
    for p in problems:
        r.add(p.code, p.message, file=dd, element=p.element, severity=p.severity)
    if desc is None:
        return
    chain = _select_chain(r, dd, desc, snapshot)
    r.report.chain = [g.guid for g in chain]
    if desc.encryption_keyid:
        r.add("LUKS", f"<Encryption><KeyId> {desc.encryption_keyid}: the disk is encrypted; its "
              "contents need the key", file=dd, element="Disk_Parameters/Encryption/KeyId")
    folder = os.path.dirname(os.path.abspath(dd))
    in_chain = {im.guid: lvl for lvl, im in enumerate(chain)}
    scanned: dict[str, _Scanned] = {}
    for i, im in enumerate(desc.images):
        lvl = in_chain.get(im.guid)
        is_root = any(s.guid == im.guid and s.parent == NONE_GUID for s in desc.shots)
        def hints(guid: str = im.guid) -> Hints:
            """As the salvage readers use them (source.py): <Blocksize>, <Disk_size> and the
            headers of the images read so far (format.md §4.2: one cluster size and version a chain)."""
            sib = tuple(Hints.sibling(sc.header) for g, sc in scanned.items()
                        if g != guid and sc.header is not None)
            return Hints(desc.blocksize, desc.disk_size, sib)

        sc = _check_listed_image(r, dd, folder, i, im, lvl, allow_outside, fds, is_root, hints)
        if sc is not None:
            scanned[im.guid] = sc
        r.report.images.append(_summary(im.guid, im.file, lvl, sc))
    if not chain:
        return
    if any(im.guid not in scanned for im in chain):
        return  # a missing level was already reported as FATAL
    levels = [scanned[im.guid] for im in chain]
    _check_chain(r, dd, desc, chain, levels, snapshot)
    _after_chain(r, levels, desc, deep)


def _check_listed_image(r: _Report, dd: str, folder: str, i: int, im: ImageEntry, lvl: int | None,
                        allow_outside: bool, fds: list[int], is_root: bool,
                        hints: Callable[[], Hints] = Hints) -> _Scanned | None:
    element = f"Storage/Image[{i + 1}]/File"
    sev = Severity.FATAL if lvl is not None else Severity.DAMAGED
    try:
        path = resolve_image_path(folder, im.file, allow_outside, [], dd, element)
    except PloopfsError as e:
        code = "DESCRIPTOR_UNSAFE_PATH" if isinstance(e, UnsafePathError) else \
            "DESCRIPTOR_FILE_MISSING"
        r.add(code, e.what, file=dd, element=element, severity=sev)
        return None
    fd = _open(r, path, fds, in_chain=lvl is not None)
    if fd is None:
        return None
    plain = im.plain
    try:
        # Only a base may be raw (format.md §0): level 0 of the checked chain, or a root of another branch.
        raw_ok = plain and (lvl == 0 or (lvl is None and is_root))
        return _scan_image(r, path, fd, raw_ok=raw_ok, in_chain=lvl is not None, hints=hints)
    except OSError as e:
        r.add("IMAGE_READ_ERROR", f"read failed: {e.strerror}", file=path, severity=sev)
        return None


def _select_chain(r: _Report, dd: str, d: Descriptor, snapshot: str | None) -> list[ImageEntry]:
    """Base-first images of the checked snapshot, following ParentGUID as far as it leads."""
    shots = {s.guid: s for s in d.shots}
    images = {im.guid: im for im in d.images}
    if snapshot is not None:
        try:
            g = d.snapshot_guid(snapshot)
        except PloopfsError as e:
            r.add("SNAPSHOT_NOT_FOUND", e.what, file=dd, element="Snapshots")
            return []
    else:
        g = d.top_guid if d.top_guid in shots else _fallback_top(d)
        if not g:
            r.add("DESCRIPTOR_TOPGUID", "cannot tell which image is the top: nothing to check as a "
                  "disk", file=dd, element="Snapshots/TopGUID", severity=Severity.FATAL)
            return []
    out: list[ImageEntry] = []
    seen: set[str] = set()
    while g != NONE_GUID and g in images and g not in seen:
        seen.add(g)
        out.append(images[g])
        s: Shot | None = shots.get(g)
        if s is None:
            break
        g = s.parent
    out.reverse()
    if len(out) > MAX_LEVELS:
        r.add("CHAIN_DEPTH", f"the chain has {len(out)} levels; ploopfs reads at most "
              f"{MAX_LEVELS}", file=dd, element="Snapshots", severity=Severity.FATAL)
        return []
    if len(out) > PLOOP_MAX_LEVELS:
        r.add("CHAIN_DEPTH", f"the chain has {len(out)} levels; ploop itself makes at most "
              f"{PLOOP_MAX_LEVELS} and may refuse it (ploopfs reads it)", file=dd,
              element="Snapshots")
    return out


def _fallback_top(d: Descriptor) -> str:
    """The magic top GUID if present, else the only leaf of the tree (format.md §5.4)."""
    if any(s.guid == TOP_GUID for s in d.shots):
        return TOP_GUID
    parents = {s.parent for s in d.shots}
    leaves = [s.guid for s in d.shots if s.guid not in parents]
    return leaves[0] if len(leaves) == 1 else ""


def _check_chain(r: _Report, dd: str, d: Descriptor, chain: list[ImageEntry],
                 levels: list[_Scanned], snapshot: str | None) -> None:
    """The chain rules of the format layer (format.md §4.2, §5.2), reported. (A raw file above
    the base was already reported as HEADER_SIGNATURE: only bases are raw.)"""
    for an in chain_anomalies([Level(sc.path, sc.header) for sc in levels],
                              blocksize=d.blocksize, disk_size=d.disk_size,
                              current_top=bool(chain) and chain[-1].guid == d.top_guid,
                              descriptor=dd):
        r.add(an.code, an.message, file=an.file, offset=an.offset, element=an.element,
              severity=an.severity)


def _summary(guid: str, file: str, level: int | None, sc: _Scanned | None) -> ImageSummary:
    s = ImageSummary(guid, sc.path if sc else file, level)
    if sc is None:
        return s
    s.file_size = sc.file_size
    if sc.raw:
        s.kind = "raw"
    elif sc.header is not None:
        s.kind = f"ploop-v{sc.header.version}"
        s.cluster_size = sc.cluster_size
        s.virtual_size = sc.header.disk_bytes
        s.allocated = int(sc.vcl.size)
    return s


# -- content: partitions, LUKS, --deep ------------------------------------------------------------
def _volume(levels: list[_Scanned], c: int, size: int) -> SalvageVolume:
    """The virtual disk over the scanned levels, read as --salvage reads it (volume/salvage.py,
    policy "older"): through the readable entries only, an entry left out or a range that
    cannot be read served by the next lower level that maps it, or as zeros. Never raises."""
    return SalvageVolume([sc.image(c) for sc in levels], size, c, "older", SalvageLog("older"),
                         "check")


def _after_chain(r: _Report, levels: list[_Scanned], d: Descriptor | None, deep: bool,
                 raw_cluster_size: int | None = None) -> None:
    if not levels or not all(sc.usable for sc in levels):
        return
    ploop = [sc for sc in levels if sc.header is not None]
    c = ploop[0].cluster_size if ploop else (d.blocksize * SECTOR if d and d.blocksize else
                                             raw_cluster_size or 1 << 20)
    if any(sc.cluster_size != c for sc in ploop):
        return  # reported as DESCRIPTOR_CLUSTER_MISMATCH; content checks need one cluster size
    top = levels[-1]
    if d and d.disk_size:
        size = d.disk_size * SECTOR  # what ploop shows (format.md §1.4)
    elif top.header is not None:
        size = top.header.disk_bytes
    else:
        size = top.file_size
    disk = _volume(levels, c, size)
    _check_partitions(r, disk, size, levels[-1].path)
    if deep:
        _deep(r, levels, c)
        _deep_filesystems(r, disk, size, c, levels[-1].path)


def _check_partitions(r: _Report, disk: SalvageVolume, size: int, where: str) -> None:
    try:
        table = inspect_disk(disk.read, size)
    except (ValueError, IndexError, UnicodeError, OSError, MemoryError) as e:
        r.add("PARTITION_TABLE", f"partition table unreadable: {type(e).__name__}: {e}", file=where)
        return
    for p in table.problems:
        code = "PARTITION_OUTSIDE" if "outside" in p else "PARTITION_TABLE"
        r.add(code, p, file=where + " (virtual disk)")
    parts = sorted(table.partitions, key=lambda p: p.start)
    for a, b in itertools.pairwise(parts):
        if b.start < a.start + a.size and a.type not in ("0x05", "0x0f", "0x85"):
            r.add("PARTITION_OVERLAP", f"partitions {a.number} and {b.number} overlap",
                  file=where + " (virtual disk)", offset=b.start)
    if table.luks:
        r.add("LUKS", f"LUKS encrypted ({table.luks}, magic {LUKS_MAGIC!r}): the contents need the "
              "key", file=where + " (virtual disk)")


def _deep(r: _Report, levels: list[_Scanned], c: int) -> None:
    """Read every referenced cluster of the chain: I/O errors, holes inside referenced clusters,
    clusters identical to what the level below would serve (format.md §2.5). Holes and shadows are summed
    up in one finding per image: partly written clusters are sparse in every real image."""
    # Every cluster any level maps, or a raw base holds, lies inside the levels below's disk.
    span = max([-(-sc.file_size // c) if sc.raw else int(sc.vcl[-1]) + 1 if sc.vcl.size else 0
                for sc in levels]) * c
    for lvl, sc in enumerate(levels):
        if sc.raw or sc.header is None:
            continue
        lower = _volume(levels[:lvl], c, span) if lvl else None
        full = _data_clusters_offsets(sc.fd, sc.off, c, sc.file_size)
        _aggregate(r, "DEEP_HOLE", sc, c, np.flatnonzero(~full),
                   "referenced cluster(s) contain holes: they read as zeros, as in ploop (the "
                   "guest never wrote those parts); VZ7 `ploop check -S` would fill them")
        shadows: list[int] = []
        for i, data in _read_clusters(sc, c):
            v, o = int(sc.vcl[i]), int(sc.off[i])
            if data is None:
                r.add("DEEP_IO_ERROR", "read error inside a referenced cluster", file=sc.path,
                      offset=o, vcluster=v, pcluster=o // c, capped=True)
            elif lower is not None and _same_below(lower, v, data, c):
                shadows.append(i)
        _aggregate(r, "DEEP_SHADOW", sc, c, np.array(sorted(shadows), np.int64),
                   "cluster(s) identical to what the level below serves (copy-on-write copies "
                   "that changed nothing)")


def _deep_filesystems(r: _Report, disk: SalvageVolume, size: int, c: int, where: str) -> None:
    """Every filesystem the registry analyses (content/registry.py), read in full as du reads
    it (superblock, group descriptors or AG headers, bitmaps or free-space trees): each of its
    findings (damaged or unreadable metadata, which du and compact keep whole) is one
    DEEP_FILESYSTEM finding, its line naming the partition and the analyser's own code."""
    from ploopfs.content.usage import analyse_disk

    try:
        dfs = analyse_disk(disk.read, size, bitmaps=True, cluster_size=c)
    except (ValueError, IndexError, UnicodeError, OSError, MemoryError) as e:
        r.add("DEEP_FILESYSTEM", f"filesystems not analysed: {type(e).__name__}: {e}",
              file=where + " (virtual disk)")
        return
    for fs in dfs.filesystems:
        for f in fs.findings:
            r.add("DEEP_FILESYSTEM", f"{fs.kind} filesystem in {f.line()}",
                  file=where + " (virtual disk)", offset=fs.start)


def _aggregate(r: _Report, code: str, sc: _Scanned, c: int, idx: np.ndarray, what: str) -> None:
    if idx.size == 0:
        return
    vs = sorted(int(sc.vcl[i]) for i in idx.tolist())
    first = int(sc.off[idx[0]])
    shown = ", ".join(map(str, vs[:10])) + (", …" if len(vs) > 10 else "")
    r.add(code, f"{len(vs)} {what}; virtual clusters {shown}", file=sc.path, offset=first,
          vcluster=int(sc.vcl[idx[0]]), pcluster=first // c)


def _data_clusters_offsets(fd: int, offs: np.ndarray, c: int, size: int) -> np.ndarray:
    """True where the cluster at each byte offset is fully data (no hole inside)."""
    ok = np.ones(offs.size, bool)
    if offs.size == 0:
        return ok
    order = np.argsort(offs)
    so = offs[order].astype(np.int64)
    for hole, nxt in _holes(fd, int(so[0]), min(int(so[-1]) + c, size)):
        # clusters [o, o+c) intersecting [hole, nxt)
        lo = int(np.searchsorted(so, hole - c, side="right"))
        hi = int(np.searchsorted(so, nxt, side="left"))
        ok[order[lo:hi]] = False
    return ok


def _read_clusters(sc: _Scanned, c: int) -> Iterator[tuple[int, bytes | memoryview | None]]:
    """(index into sc.vcl, cluster bytes or None on a read error), in file order; runs of
    contiguous clusters are read in DEEP_CHUNK pieces; a failed or short piece is retried
    cluster by cluster (a read error can also show up as a short read)."""
    order = np.argsort(sc.off).tolist()
    per = max(1, DEEP_CHUNK // c)
    k = 0
    while k < len(order):
        run = [order[k]]
        while (len(run) < per and k + len(run) < len(order)
               and int(sc.off[order[k + len(run)]]) == int(sc.off[run[-1]]) + c):
            run.append(order[k + len(run)])
        buf = _read_full(sc.fd, c * len(run), int(sc.off[run[0]]))
        if buf is not None:
            view = memoryview(buf)
            for j, i in enumerate(run):
                yield i, view[j * c:(j + 1) * c]
        else:
            for i in run:
                yield i, _read_full(sc.fd, c, int(sc.off[i]))
        k += len(run)


def _read_full(fd: int, n: int, off: int) -> bytes | None:
    """Exactly n bytes, or None if a read fails or ends early (the ranges are inside the file)."""
    parts = []
    got = 0
    while got < n:
        try:
            b = _pread(fd, n - got, off + got)
        except OSError:
            return None
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


_PROBE = 4096


def _same_below(lower: SalvageVolume, vc: int, data: bytes | memoryview, c: int) -> bool:
    """Is `data` what the levels below serve for virtual cluster vc (zeros if unmapped)? The
    first 4 KiB are compared first, so a changed cluster rarely costs a full read."""
    head = lower.read(vc * c, min(_PROBE, c))
    return head == data[:len(head)] and lower.read(vc * c, c) == data
