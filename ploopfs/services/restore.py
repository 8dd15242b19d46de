"""`ploopfs restore-descriptor`: rebuild a lost DiskDescriptor.xml from the image files alone
(docs/restore.md). Never writes to the images; never replaces a file.

Image files carry no chain links (format.md §0, §5.8), so the snapshot tree is inferred:

* structure: a raw ("Plain") file can only be the base (format.md §0); a lower delta is never larger than
  the one above it (format.md §1.4); all deltas share cluster size and version (format.md §4.2);
* names: `X` is the base of `X.{GUID}` deltas (format.md §4.3, §5.9); GUIDs in names are kept as
  snapshot GUIDs;
* the dirty flag: an image left "in use" is the writable top (format.md §1.3);
* content (parsimony): a write to a cluster that a lower delta maps first copies the whole
  cluster up (format.md §2.5, §4.1 copy-on-write), so a delta's cluster equals the visible cluster below
  it except in the sectors written since. Every candidate tree is scored by the number of
  512-byte sectors that must have been written to explain every delta's clusters from what lies
  below it (zeros, or the raw base, under the lowest one). The true tree needs the fewest: in a
  reversed pair the child's copied-up data would have to be written twice;
* mtimes: weak, only to break ties;
* what survives of a damaged old descriptor (image GUIDs, parent links, the top), if any.

Candidates are compared lexicographically (structure, old descriptor, names, dirty flag,
content, fewer branches, mtimes); each link and the top are "high" confidence only when a strong kind of
evidence separates the choice from its best alternative.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ploopfs.errors import (
    BadChainError,
    BadImageError,
    CorruptImageError,
    ExitCode,
    NotFoundError,
    OutputError,
    UnsupportedError,
    UsageError,
)
from ploopfs.format.descriptor import (
    MAX_DESCRIPTOR_BYTES,
    Descriptor,
    ImageEntry,
    Shot,
    render_descriptor,
)
from ploopfs.format.descriptor_scan import parse_descriptor, scan_descriptor
from ploopfs.format.header import (
    CIF_EMPTY,
    HEADER_SIZE,
    NONE_GUID,
    SECTOR,
    TOP_GUID,
    ImageKind,
    chs_geometry,
    sniff,
)
from ploopfs.format.infer import CANDIDATE_SECTORS, Hints
from ploopfs.format.probe import FileKind, probe
from ploopfs.volume import fileio
from ploopfs.volume.fileio import open_readonly
from ploopfs.volume.image import Image, pread_exact
from ploopfs.volume.source import DESCRIPTOR_NAME

# Content margin (in sectors) above which content alone decides a link with high confidence:
# 4 KiB of data that the alternative would have to explain as written twice.
CONTENT_MARGIN = 8
DEFAULT_SAMPLE = 1024  # shared clusters read at most (evenly spread); 0 = all
TREE_SEARCH_MAX = 6  # every rooted tree is scored up to this many ploop images
CHAIN_SEARCH_MAX = 7  # every linear order up to this many; beyond, a local search
MAX_IMAGES = 512  # a folder with more image files is refused: inference grows with n^2
LOCAL_SEARCH_SECONDS = 2.0  # moves tried by the local search of a long chain, at most
LOCAL_SEARCH_KEEP = 64  # its best chains kept as candidates
_GUID_IN_NAME = re.compile(
    r"\{([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}")
# Files of a ploop folder that are never images (format.md §5.9) and common companions.
_NOT_IMAGES = re.compile(r"(^DiskDescriptor\.xml|\.xml|\.tmp|\.idx|\.json|\.sha256|\.txt|"
                         r"\.drh|\.Backup|^\.statfs|\.md|\.log)$", re.I)
_IMAGE_LIKE = re.compile(r"\.(hdd|hds|img|raw)$", re.I)
# Key components, most significant first, and whether a decision by them is strong.
# "structure" counts only what exact sizes prove; a size that may be a lower bound only gives
# "uncertain sizes", weaker than content.
KEY_NAMES = ("structure", "old descriptor", "names", "dirty flag", "content", "uncertain sizes",
             "fewer branches", "mtimes")
STRONG = {"structure", "old descriptor", "names", "dirty flag"}
CONTENT = KEY_NAMES.index("content")
# A GUID namespace for names that carry none: uuid5(namespace, file name) is stable per name.
GUID_NAMESPACE = uuid.UUID("8c5e2f0a-5b7e-4f43-9c55-706c6f6f7066")


# -- scanned images -------------------------------------------------------------------------------
@dataclass
class Candidate:
    """One image file of DIR."""

    name: str  # file name inside DIR
    path: str
    image: Image
    mtime_ns: int
    named_base: bool = False  # other image files are named `<name>.<suffix>` (format.md §5.9)
    file_guid: str | None = None  # a {GUID} in the file name
    old_guid: str | None = None  # its GUID in a damaged old descriptor
    old_parent: str | None = None  # its parent's file name there ("" = the base)
    # The size in the header may be only a lower bound (a header inferred from the BAT, or one
    # rebuilt that way by `recover`): then it never decides a link on its own (docs/restore.md).
    size_exact: bool = True
    size_floor: int = 0  # what the size is at least: (last mapped cluster + 1) x cluster
    size_note: str | None = None  # why the size is not exact

    @property
    def raw(self) -> bool:
        return self.image.is_raw

    @property
    def dirty(self) -> bool:
        return bool(self.image.header and self.image.header.dirty)

    @property
    def size(self) -> int:
        return self.image.virtual_size

    @property
    def floor(self) -> int:
        """The size this image certainly has: its header's when exact, else its lower bound."""
        return self.size if self.size_exact else self.size_floor

    def facts(self) -> dict[str, Any]:
        h = self.image.header
        return {
            "file": self.name, "kind": self.image.kind.value, "cluster_size": self.image.cluster_size,
            "virtual_size": self.size, "dirty": self.dirty,
            "empty_flag": bool(h and h.flags & CIF_EMPTY), "mtime_ns": self.mtime_ns,
            "mapped_clusters": 0 if h is None else len(self.image.mapping()),
            "size_exact": self.size_exact, "size_at_least": self.floor,
            "size_note": self.size_note, "header_error": self.image.header_error,
            "header_inferred": self.image.inferred.line() if self.image.inferred else None,
            "bad_bat_entries": len(self.image.bad_slots),
            "named_base": self.named_base, "file_guid": self.file_guid,
            "old_descriptor_guid": self.old_guid, "old_descriptor_parent": self.old_parent,
        }


@dataclass
class Scan:
    folder: str
    images: list[Candidate]  # ploop images, in name order
    raw: Candidate | None
    cluster_size: int
    ignored: list[dict[str, str]] = field(default_factory=list)
    old_top: str | None = None  # file name of the top in a damaged old descriptor
    old_notes: list[str] = field(default_factory=list)
    salvage: bool = False
    left_out: list[dict[str, str]] = field(default_factory=list)  # --salvage: unreadable images

    def close(self) -> None:
        for c in self.all():
            c.image.close()

    def all(self) -> list[Candidate]:
        return [*([self.raw] if self.raw else []), *self.images]


def scan_folder(folder: str, cluster_size: int | None = None, salvage: bool = False) -> Scan:
    """Open every image file of `folder` read-only. Errors: the folder missing or without
    images (NOT_FOUND), only non-images (BAD_IMAGE), mixed cluster sizes or versions, several
    raw candidates (BAD_CHAIN). A ploop image whose header or BAT cannot be used is an error
    (BAD_IMAGE, CORRUPT), and so is a file without signature that is a damaged delta rather
    than a raw base; with `salvage` such headers are inferred from the BAT (format/infer.py),
    unreadable BAT entries dropped, and what cannot be used is left out (`Scan.left_out`)."""
    if not os.path.isdir(folder):
        raise NotFoundError("no such folder" if not os.path.exists(folder) else "not a folder",
                            folder)
    ploop: list[Candidate] = []
    raws: list[tuple[str, str, int, int]] = []
    ignored: list[dict[str, str]] = []
    damaged: list[tuple[str, str, int, str]] = []  # salvage: (name, path, mtime, why), inferred below
    left_out: list[dict[str, str]] = []
    try:
        for entry, path, st in _files(folder, ignored):
            kind = _sniff_file(path, st, ignored)
            if kind is None:
                continue
            if kind is ImageKind.RAW:
                raws.append((entry, path, st.st_size, st.st_mtime_ns))
                continue
            _open_ploop(entry, path, st.st_mtime_ns, ploop, damaged, salvage)
            if len(ploop) + len(damaged) + len(raws) > MAX_IMAGES:
                raise UnsupportedError(
                    f"more than {MAX_IMAGES} image files: restore-descriptor infers trees of at "
                    f"most {MAX_IMAGES} images (ploop's chains have at most 127)", folder)
        if ploop or damaged or salvage:
            raws = _unsigned_deltas(raws, ploop, damaged, salvage)
        if damaged:
            ploop = sorted(ploop + _infer_damaged(damaged, ploop, cluster_size, left_out),
                           key=lambda c: c.name)
        if not ploop:
            raws = _image_named(raws, ignored)
            if not raws:
                _no_images(folder, [*left_out, *ignored])
        if ploop and salvage:
            ploop = _one_disk(ploop, left_out)
        cluster = _common_cluster(ploop) if ploop else _raw_cluster(raws, cluster_size)
        raw = _pick_raw(raws, ploop, cluster, ignored)
        for c in ploop:
            c.image.salvage = salvage  # unreadable BAT entries are dropped and recorded
            _strict(c.image.mapping)  # strict: a damaged BAT is an error here (exit 5)
    except BaseException:
        for c in ploop:
            c.image.close()
        raise
    scan = Scan(folder, ploop, raw, cluster, ignored, salvage=salvage, left_out=left_out)
    _name_evidence(scan)
    _size_evidence(scan)
    return scan


# -- damaged images (--salvage) -------------------------------------------------------------------
_SALVAGE_HINT = "restore-descriptor --salvage infers the header or leaves the file out"


def _strict(fn: Callable[[], Any]) -> Any:
    """Call fn; a damaged header or BAT error gets the hint that --salvage exists."""
    try:
        return fn()
    except (BadImageError, CorruptImageError) as e:
        raise _hinted(e) from e


def _hinted(e: BadImageError | CorruptImageError) -> BadImageError | CorruptImageError:
    return type(e)(f"{e.what}; {_SALVAGE_HINT}", e.where, offset=e.offset)


def _open_ploop(name: str, path: str, mtime: int, ploop: list[Candidate],
                damaged: list[tuple[str, str, int, str]], salvage: bool) -> None:
    """A file with a ploop signature. Its header must be usable; with `salvage` a damaged one
    is set aside, to be inferred once the readable headers are known (they are the hints)."""
    try:
        ploop.append(Candidate(name, path, Image.open(path), mtime))
    except (BadImageError, CorruptImageError) as e:
        if not salvage:
            raise _hinted(e) from e
        damaged.append((name, path, mtime, e.what))


def _unsigned_deltas(raws: list[tuple[str, str, int, int]], ploop: list[Candidate],
                     damaged: list[tuple[str, str, int, str]], salvage: bool
                     ) -> list[tuple[str, str, int, int]]:
    """Files without a ploop signature that are not a raw base but a delta whose header was
    damaged (a zeroed header, say): named as a snapshot delta of another image (ploop names
    deltas after the first image, format.md §4.3, and only the base may be raw, §0), or
    starting with a BAT in the layout of the other images (after the 64 header bytes, every
    non-zero slot of the first cluster names a distinct data cluster inside the file, §2).
    Taken as a raw base, such a file made a wrong chain with high confidence. Strict: an
    error; salvage: set aside to be inferred. Returns the remaining raw candidates."""
    names = [c.name for c in ploop] + [d[0] for d in damaged] + [r[0] for r in raws]
    refs = sorted({(c.image.header.cluster_sectors, c.image.header.version) for c in ploop
                   if c.image.header is not None})
    if not refs and salvage:
        refs = [(cs, v) for cs in CANDIDATE_SECTORS for v in (2, 1)]
    keep = []
    for name, path, size, mtime in raws:
        base = next((o for o in names if o != name and name.startswith(o + ".")), None)
        why = (f"named as a snapshot delta of {base}" if base else
               "its first cluster holds a ploop BAT" if _bat_like(path, size, refs) else None)
        if why is None:
            keep.append((name, path, size, mtime))
        elif salvage:
            damaged.append((name, path, mtime, f"no ploop signature, but {why}: a damaged header"))
        else:
            raise BadImageError(f"no ploop signature, but {why}: a ploop image with a damaged "
                                f"header, not a raw base; {_SALVAGE_HINT}", path, offset=0)
    return keep


def _bat_like(path: str, size: int, refs: list[tuple[int, int]]) -> bool:
    """Whether the slots after the 64 header bytes, up to the end of the first cluster, are a
    BAT for one of the (cluster sectors, version) layouts: at least one non-zero slot, and every
    non-zero slot a distinct data cluster inside the file (format.md §2.2, §2.3)."""
    refs = [(cs, v) for cs, v in refs if size >= 2 * cs * SECTOR]
    if not refs:
        return False
    fd = open_readonly(path)
    try:
        head = pread_exact(fd, max(cs for cs, _v in refs) * SECTOR, 0, path)
    finally:
        os.close(fd)
    for cs, version in refs:
        c = cs * SECTOR
        e = np.frombuffer(head[HEADER_SIZE:HEADER_SIZE + (c - HEADER_SIZE) // 4 * 4], "<u4")
        nz = e[e != 0].astype(np.int64)
        if not nz.size:
            continue
        cl = nz if version == 2 else np.where(nz % cs == 0, nz // cs, -1)
        if (cl >= 1).all() and ((cl + 1) * c <= size).all() and np.unique(cl).size == cl.size:
            return True
    return False


def _infer_damaged(damaged: list[tuple[str, str, int, str]], ploop: list[Candidate],
                   cluster_size: int | None, left_out: list[dict[str, str]]) -> list[Candidate]:
    """--salvage: infer each damaged header from its BAT, with the readable headers as hints
    (one cluster size and version per disk, format.md §4.2), as salvage readers do; an image
    whose header cannot be inferred is left out, and the report says why."""
    sib = tuple(Hints.sibling(h) for h in (c.image.header for c in ploop) if h is not None)
    hints = Hints(cluster_size // SECTOR if cluster_size else 0, 0, sib)
    out = []
    for name, path, mtime, why in damaged:
        try:
            im = Image.open(path, allow_raw=False, not_raw_reason="a damaged header", infer=hints)
        except (BadImageError, CorruptImageError) as e:
            left_out.append({"file": name, "reason": e.what})
            continue
        im.header_error = why
        out.append(Candidate(name, path, im, mtime))
    return out


def _one_disk(ploop: list[Candidate], left_out: list[dict[str, str]]) -> list[Candidate]:
    """--salvage: the images with the most common cluster size and version form the disk
    (format.md §4.2); any other is left out instead of refusing the folder."""
    def layout(c: Candidate) -> tuple[int, int]:
        assert c.image.header is not None
        return c.image.header.cluster_sectors, c.image.header.version

    # Readable headers count first, inferred ones break ties.
    counts: dict[tuple[int, int], tuple[int, int]] = {}
    for c in ploop:
        readable, total = counts.get(layout(c), (0, 0))
        counts[layout(c)] = (readable + (c.image.inferred is None), total + 1)
    best = max(counts, key=lambda k: (counts[k], -k[0]))
    for c in ploop:
        if layout(c) != best:
            left_out.append({"file": c.name, "reason": f"cluster size {layout(c)[0]} sectors, "
                             f"v{layout(c)[1]}; the other images have {best[0]}, v{best[1]}: "
                             "not one disk"})
            c.image.close()
    return [c for c in ploop if layout(c) == best]


def _files(folder: str, ignored: list[dict[str, str]]) -> Iterator[tuple[str, str, os.stat_result]]:
    real = os.path.realpath(folder)
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _NOT_IMAGES.search(name) or name.startswith("."):
            if os.path.isfile(path) and name != DESCRIPTOR_NAME:  # that one is the old descriptor
                ignored.append({"file": name, "reason": "not an image file by its name"})
            continue
        target = os.path.realpath(path)
        if os.path.commonpath([target, real]) != real:
            ignored.append({"file": name, "reason": f"symlink leading outside the folder ({target})"})
            continue
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            ignored.append({"file": name, "reason": "not a regular file"})
            continue
        yield name, path, st


def _sniff_file(path: str, st: os.stat_result, ignored: list[dict[str, str]]) -> ImageKind | None:
    name = os.path.basename(path)
    if st.st_size == 0:
        ignored.append({"file": name, "reason": "empty file"})
        return None
    fd = open_readonly(path)
    try:
        head = pread_exact(fd, HEADER_SIZE, 0, path)
    finally:
        os.close(fd)
    if probe(head) is FileKind.QCOW2:
        ignored.append({"file": name, "reason": "qcow2 image (VZ9 qcow2 mode), needs no descriptor"})
        return None
    return sniff(head)


def _no_images(folder: str, ignored: list[dict[str, str]]) -> None:
    if not ignored:
        raise NotFoundError("no image files in this folder", folder)
    first = ignored[0]
    raise BadImageError(f"no ploop image or raw disk among {len(ignored)} file(s) ({first['file']}: "
                        f"{first['reason']})", folder)


def _image_named(raws: list[tuple[str, str, int, int]], ignored: list[dict[str, str]]
                 ) -> list[tuple[str, str, int, int]]:
    """With no ploop image, only a file named like an image (.hdd/.hds/.img/.raw) is taken as
    a raw disk."""
    for r in raws:
        if not _IMAGE_LIKE.search(r[0]):
            ignored.append({"file": r[0], "reason": "no ploop signature and not named like an "
                                                    "image (.hdd, .hds, .img, .raw)"})
    return [r for r in raws if _IMAGE_LIKE.search(r[0])]


def _common_cluster(ploop: list[Candidate]) -> int:
    first = ploop[0]
    assert first.image.header is not None
    for c in ploop[1:]:
        h = c.image.header
        assert h is not None
        if h.cluster_sectors != first.image.header.cluster_sectors:
            raise BadChainError(
                f"cluster size {h.cluster_sectors} sectors differs from "
                f"{first.image.header.cluster_sectors} in {first.name}: not one disk",
                c.path, offset=0x1C)
        if h.version != first.image.header.version:
            raise BadChainError(f"format v{h.version} mixed with v{first.image.header.version} of "
                                f"{first.name}: not one disk", c.path, offset=0)
    return first.image.cluster_size


def _raw_cluster(raws: list[tuple[str, str, int, int]], cluster_size: int | None) -> int:
    """Only raw files: the cluster size is given, or as ploop picks it (format.md §5.8
    select_best_blocksize): the largest power of two from 1 MiB down to 32 KiB dividing the size."""
    if cluster_size:
        return cluster_size
    size = raws[0][2]
    for shift in range(20, 14, -1):
        if size % (1 << shift) == 0:
            return 1 << shift
    raise BadImageError(f"raw file size {size} is not a multiple of 32 KiB; give --cluster-size "
                        "", raws[0][1])


def _pick_raw(raws: list[tuple[str, str, int, int]], ploop: list[Candidate], cluster: int,
              ignored: list[dict[str, str]]) -> Candidate | None:
    """A raw base has no header; its size must be a whole number of clusters (format.md §0, §3)."""
    names = [c.name for c in ploop]
    fits = []
    for name, path, size, mtime in raws:
        named = any(n.startswith(name + ".") for n in names)
        if size % cluster:
            ignored.append({"file": name, "reason": f"no ploop signature and its size {size} is not "
                                                    f"a multiple of the cluster size {cluster}"})
        else:
            fits.append((named, name, path, mtime))
    if not fits:
        if not ploop:
            _no_images(os.path.dirname(raws[0][1]), ignored)
        return None
    fits.sort(reverse=True)
    if len(fits) > 1 and fits[0][0] == fits[1][0]:
        raise BadChainError(
            "several files could be the raw base (" + ", ".join(f[1] for f in fits) + "); only one "
            "raw file can be in a disk: move the others away", os.path.dirname(fits[0][2]))
    for f in fits[1:]:
        ignored.append({"file": f[1], "reason": "a second raw file; the base is " + fits[0][1]})
    _named, name, path, mtime = fits[0]
    return Candidate(name, path, Image.open(path, raw_cluster_size=cluster), mtime)


def _name_evidence(scan: Scan) -> None:
    names = [c.name for c in scan.all()]
    for c in scan.all():
        c.named_base = any(n.startswith(c.name + ".") for n in names if n != c.name)
        m = _GUID_IN_NAME.search(c.name)
        if m:
            c.file_guid = "{" + m.group(1).lower() + "}"


def _size_evidence(scan: Scan) -> None:
    """Mark the header sizes that may be only a lower bound, so that they never decide a link:

    * an inferred header (--salvage): m_Size came from the last mapped BAT slot or from another
      image, a guess either way (format/infer.py);
    * a header whose size ends exactly at its last mapped cluster while another image is
      larger. That is what `ploopfs recover` writes for a lone image whose header it had to
      infer (m_Size from the last mapped slot, "a lower bound"); such a header cannot be told
      from one ploop wrote, so its size is not trusted to order the chain either. Grown disks
      (format.md §1.4) then rest on names and content, as they should."""
    largest = max((c.size for c in scan.all()), default=0)
    for c in scan.images:
        vcl = c.image.mapping().vclusters
        c.size_floor = min(c.size, (vcl[-1] + 1) * scan.cluster_size if len(vcl) else 0)
        if c.image.inferred is not None:
            src = next((e for e in c.image.inferred.evidence if e.startswith("m_Size from")),
                       "m_Size guessed")
            c.size_exact = False
            c.size_note = (f"its header was inferred from its BAT ({src}): its size of {c.size} "
                           f"bytes is a guess, at least {c.size_floor}")
        elif c.size_floor == c.size and c.size < largest:
            c.size_exact = False
            c.size_note = (f"its size of {c.size} bytes ends at its last mapped cluster, while "
                           "another image is larger: a header rebuilt from the BAT alone (as "
                           "`ploopfs recover` writes for a lone image whose header it inferred) "
                           "looks exactly like this, so the size may be only a lower bound")


# -- what survives of an old descriptor ----------------------------------------------------------
def salvage_old_descriptor(data: bytes) -> tuple[dict[str, str], dict[str, str], str, str]:
    """GUIDs, parents and the top of a damaged (e.g. truncated) descriptor, as far as the one
    descriptor decoder reads it (scan_descriptor with `recover`: what libxml2's recovering
    parser still finds in a document that is no longer XML, the same refusals: no DTD or entity,
    at most MAX_DESCRIPTOR_BYTES). Returns ({file basename: GUID}, {GUID: parent GUID}, the top
    GUID (the magic top GUID when <TopGUID> is lost, as ploop reads it), why nothing could be
    read ("" when something was)). Unreadable parts are skipped."""
    d, problems = scan_descriptor(data, recover=True)
    if d is None:
        worst = max(problems, key=lambda p: p.severity, default=None)
        return {}, {}, TOP_GUID, worst.message if worst else "no usable <Image>"
    files = {os.path.basename(im.file): im.guid for im in d.images if os.path.basename(im.file)}
    return files, {s.guid: s.parent for s in d.shots}, d.top_guid, ""


def apply_old_descriptor(scan: Scan, path: str) -> None:
    fd = open_readonly(path)
    try:
        data = pread_exact(fd, MAX_DESCRIPTOR_BYTES, 0, path)
    finally:
        os.close(fd)
    files, parents, top, unusable = salvage_old_descriptor(data)
    by_guid = {g: f for f, g in files.items()}
    known = 0
    for c in scan.all():
        g = files.get(c.name)
        if g is None:
            continue
        c.old_guid = g
        known += 1
        p = parents.get(g)
        if p == NONE_GUID:
            c.old_parent = ""
        elif p in by_guid:
            c.old_parent = by_guid[p]
    if top in by_guid and by_guid[top] in {c.name for c in scan.images}:
        scan.old_top = by_guid[top]
    links = sum(c.old_parent is not None for c in scan.all())
    scan.old_notes.append(f"old descriptor {path}: {known} image GUID(s), {links} parent link(s)"
                          f"{', the top' if scan.old_top else ''} recovered"
                          f"{f' (unusable: {unusable})' if unusable else ''}")


# -- content evidence ----------------------------------------------------------------------------
@dataclass
class Content:
    """Sector comparisons over the sampled virtual clusters mapped by two or more ploop images.
    M[v, x]: image x maps cluster v; D[v, x, y]: sectors image x must have written over y's
    cluster (y = n: the base content, zeros or the raw base): the sectors in which they differ,
    but 0 when x's cluster is all zeros (Z[v, x]), a cluster allocated as zeros by a discard or
    a zeroing write, one operation that shadows whatever lies below (format.md §4.1, §11 trap
    24), so it says nothing about the order; E[v, x, y]: sectors equal and non-zero in both."""

    M: np.ndarray
    D: np.ndarray
    E: np.ndarray
    Z: np.ndarray
    shared_total: int  # clusters mapped by >= 2 ploop images, before sampling
    sampled: int
    bytes_read: int = 0
    _memo: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)

    def cost(self, x: int, ancestors: tuple[int, ...]) -> int:
        """Sectors image x must have written, given its ancestors (nearest first)."""
        key = (x, ancestors)
        if key not in self._memo:
            n = self.M.shape[1]
            near = np.full(self.M.shape[0], n, np.intp)
            todo = self.M[:, x].copy()
            for a in ancestors:
                hit = todo & self.M[:, a]
                near[hit] = a
                todo &= ~self.M[:, a]
            rows = np.flatnonzero(self.M[:, x])
            self._memo[key] = int(self.D[rows, x, near[rows]].sum())
        return self._memo[key]


def content_evidence(scan: Scan, sample: int = DEFAULT_SAMPLE) -> Content:
    imgs = scan.images
    n = len(imgs)
    maps = [c.image.mapping() for c in imgs]
    # Memory follows the mapped clusters, not the virtual size (a 4 PiB disk has 2^32 slots).
    vcls = [np.frombuffer(m.vclusters, np.uint32) for m in maps]
    allv = np.concatenate(vcls) if maps else np.zeros(0, np.uint32)
    uniq, counts = np.unique(allv, return_counts=True)
    shared = uniq[counts >= 2].astype(np.int64)
    total = int(shared.size)
    if sample and shared.size > sample:
        shared = shared[np.linspace(0, shared.size - 1, sample).astype(np.intp)]
    V = int(shared.size)
    M = np.zeros((V, n), bool)
    offs = np.zeros((V, n), np.int64)
    for x, m in enumerate(maps):
        vcl, ent = vcls[x], np.frombuffer(m.entries, np.uint32)
        pos = np.searchsorted(vcl.astype(np.int64), shared)
        pos_c = np.minimum(pos, max(len(m) - 1, 0))
        hit = (pos < len(m)) & (vcl[pos_c] == shared) if len(m) else np.zeros(V, bool)
        M[:, x] = hit
        offs[hit, x] = ent[pos_c[hit]].astype(np.int64) * m.unit
    D = np.zeros((V, n, n + 1), np.int32)
    E = np.zeros((V, n, n + 1), np.int32)
    Z = np.zeros((V, n), bool)
    c = scan.cluster_size
    read = 0
    for i, v in enumerate(shared.tolist()):
        xs = np.flatnonzero(M[i]).tolist()
        data = {x: _sectors(imgs[x].image, int(offs[i, x]), c) for x in xs}
        read += c * len(xs)
        base = _base_sectors(scan, v, c)
        nz = {x: data[x].any(axis=1) for x in xs}
        for x in xs:
            Z[i, x] = not nz[x].any()
            diff = (data[x] != base).any(axis=1) if base is not None else nz[x]
            D[i, x, n] = 0 if Z[i, x] else int(diff.sum())
            if base is not None:
                E[i, x, n] = int((~diff & nz[x]).sum())
        for x, y in itertools.combinations(xs, 2):
            diff = int((data[x] != data[y]).any(axis=1).sum())
            # Copy-on-write: x over y wrote the sectors where they differ, unless x is a zero
            # cluster (discarded or zeroed as a whole, one operation). Not symmetric.
            D[i, x, y] = 0 if Z[i, x] else diff
            D[i, y, x] = 0 if Z[i, y] else diff
            E[i, x, y] = E[i, y, x] = int((nz[x] & (data[x] == data[y]).all(axis=1)).sum())
    return Content(M, D, E, Z, total, V, read)


def _sectors(im: Image, off: int, c: int) -> np.ndarray:
    data = pread_exact(im.fd, c, off, im.path)
    if len(data) < c:
        data += bytes(c - len(data))
    return np.frombuffer(data, np.uint8).reshape(c // SECTOR, SECTOR)


def _base_sectors(scan: Scan, v: int, c: int) -> np.ndarray | None:
    """The raw base's cluster v (zeros past its end, format.md §4.1), or None for an all-zero base."""
    if scan.raw is None:
        return None
    return _sectors(scan.raw.image, v * c, c)


# -- candidate trees -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    parent: tuple[int, ...]  # per ploop image: its parent's index, -1 for the base level
    top: int

    def ancestors(self, x: int) -> tuple[int, ...]:
        out = []
        p = self.parent[x]
        while p >= 0:
            out.append(p)
            p = self.parent[p]
        return tuple(out)

    def children(self, x: int) -> list[int]:
        return [i for i, p in enumerate(self.parent) if p == x]

    def leaves(self) -> list[int]:
        return [i for i in range(len(self.parent)) if not self.children(i)]

    def links(self) -> list[tuple[int, int]]:
        return list(enumerate(self.parent))


def _acyclic(parent: tuple[int, ...]) -> bool:
    n = len(parent)
    for x in range(n):
        p, steps = parent[x], 0
        while p >= 0:
            steps += 1
            if steps > n or p == x:
                return False
            p = parent[p]
    return True


def candidate_trees(n: int, raw_base: bool, chains_only: bool) -> Iterator[Tree]:
    """Every rooted tree (a raw base may carry several branches, otherwise one root), with every
    leaf as top; or every linear order."""
    if chains_only:
        for perm in itertools.permutations(range(n)):
            parent = [-1] * n
            for a, b in itertools.pairwise(perm):
                parent[b] = a
            yield Tree(tuple(parent), perm[-1])
        return
    for parent in itertools.product(range(-1, n), repeat=n):
        if any(p == i for i, p in enumerate(parent)):
            continue
        if not raw_base and parent.count(-1) != 1:
            continue
        if not _acyclic(parent):
            continue
        t = Tree(parent, 0)
        for leaf in t.leaves():
            yield Tree(parent, leaf)


class Scorer:
    def __init__(self, scan: Scan, content: Content) -> None:
        self.scan = scan
        self.content = content
        self.imgs = scan.images

    def key(self, t: Tree) -> tuple[int, ...]:
        imgs = self.imgs
        raw = self.scan.raw
        structure = uncertain = names = mtime = 0
        for x, p in t.links():
            # A lower delta is never larger (format.md §1.4). Proven only when the child's size
            # is exact and the parent is certainly larger; a size that may be a lower bound
            # (inferred from the BAT) proves nothing.
            below = imgs[p] if p >= 0 else raw
            if below is not None and imgs[x].size < below.size:
                if imgs[x].size_exact and imgs[x].size < below.floor:
                    structure += 1
                else:
                    uncertain += 1
            if p >= 0:
                names += imgs[x].named_base  # `X` is the base of `X.{…}` (format.md §5.9)
                mtime += imgs[p].mtime_ns > imgs[x].mtime_ns
        old = sum(1 for x, p in t.links() if imgs[x].old_parent is not None and imgs[x].old_parent
                  != (imgs[p].name if p >= 0 else self.scan.raw.name if self.scan.raw else ""))
        old += self.scan.old_top is not None and self.scan.old_top != imgs[t.top].name
        if self.scan.raw is not None and self.scan.raw.named_base:
            names += sum(1 for x, p in t.links() if p == -1 and not imgs[x].name.startswith(
                self.scan.raw.name + "."))
        dirty = sum(1 for i, c in enumerate(imgs) if c.dirty and i != t.top)
        content = sum(self.content.cost(x, t.ancestors(x)) for x in range(len(imgs)))
        leaves = t.leaves()
        branches = len(leaves) - 1
        mtime += sum(imgs[leaf].mtime_ns > imgs[t.top].mtime_ns for leaf in leaves)
        return (structure, old, names, dirty, content, uncertain, branches, mtime)


def search(scorer: Scorer, n: int, raw_base: bool) -> list[tuple[tuple[int, ...], Tree]]:
    """Scored candidates, best first."""
    if n <= TREE_SEARCH_MAX:
        cands = candidate_trees(n, raw_base, chains_only=False)
    elif n <= CHAIN_SEARCH_MAX:
        cands = candidate_trees(n, raw_base, chains_only=True)
    else:
        cands = iter(_local_chain_search(scorer, n))
    scored = [(scorer.key(t), t) for t in cands]
    scored.sort(key=lambda kt: (kt[0], kt[1].parent, kt[1].top))
    return scored


def _local_chain_search(scorer: Scorer, n: int) -> list[Tree]:
    """Many images: start from the order sizes, names and mtimes suggest, then move single
    images while that improves the key. Bounded: at most LOCAL_SEARCH_SECONDS of moves (each
    key costs in proportion to the chain, so a full pass over hundreds of images would take
    minutes), then the best order found; the LOCAL_SEARCH_KEEP best chains visited are the
    candidates the confidence is judged against."""
    imgs = scorer.imgs

    def chain(order: list[int]) -> Tree:
        parent = [-1] * n
        for a, b in itertools.pairwise(order):
            parent[b] = a
        return Tree(tuple(parent), order[-1])

    order = sorted(range(n), key=lambda i: (not imgs[i].named_base, imgs[i].size, imgs[i].dirty,
                                            imgs[i].mtime_ns, imgs[i].name))
    best = chain(order)
    best_key = scorer.key(best)
    visited: list[tuple[tuple[int, ...], Tree]] = [(best_key, best)]
    deadline = time.monotonic() + LOCAL_SEARCH_SECONDS
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for i, j in itertools.permutations(range(n), 2):
            if time.monotonic() >= deadline:
                break
            o = order[:]
            o.insert(j, o.pop(i))
            t = chain(o)
            k = scorer.key(t)
            visited.append((k, t))
            if len(visited) > 4 * LOCAL_SEARCH_KEEP:
                visited = heapq.nsmallest(LOCAL_SEARCH_KEEP, visited, key=lambda kt: kt[0])
            if k < best_key:
                order, best, best_key, improved = o, t, k, True
                break
    kept = heapq.nsmallest(LOCAL_SEARCH_KEEP, visited, key=lambda kt: kt[0])
    unique = {t.parent: t for _, t in kept}
    return list(unique.values())


# -- decisions and confidence ----------------------------------------------------------------------
@dataclass
class Decision:
    what: str
    decided_by: str
    confidence: str
    margin: int | None  # content margin in sectors, when content decided
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "decided_by": self.decided_by, "confidence": self.confidence,
                "content_margin_sectors": self.margin, "text": self.text}


def _decide(best: tuple[int, ...], alt: tuple[int, ...] | None) -> tuple[str, str, int | None]:
    """(decided_by, confidence, content margin) of `best` against its best alternative."""
    if alt is None:
        return "no alternative", "high", None
    for name, a, b in zip(KEY_NAMES, best, alt, strict=True):
        if a != b:
            if name in STRONG:
                return name, "high", None
            if name == "content":
                margin = b - a
                return name, "high" if margin >= CONTENT_MARGIN else "low", margin
            return name, "low", None
    return "nothing (a tie)", "low", 0


def _first(scored: list[tuple[tuple[int, ...], Tree]], pred: Callable[[Tree], bool]
           ) -> tuple[int, ...] | None:
    return next((k for k, t in scored if pred(t)), None)


# -- the result ------------------------------------------------------------------------------------
@dataclass
class Restored:
    folder: str
    descriptor: Descriptor
    files: list[str]  # per ploop image index (raw base excluded)
    guids: list[str]
    guid_sources: list[str]
    tree: Tree
    decisions: list[Decision]
    links: list[dict[str, Any]]
    scan_facts: list[dict[str, Any]]
    ignored: list[dict[str, str]]
    notes: list[str]
    content: dict[str, int]
    output: str | None = None
    written: bool = False
    salvage: bool = False
    left_out: list[dict[str, str]] = field(default_factory=list)  # unreadable images (--salvage)
    undecided: list[str] = field(default_factory=list)  # what the damage left open
    damage: dict[str, int] = field(default_factory=dict)  # left_out, inferred, bad_bat_entries

    @property
    def confidence(self) -> str:
        return "low" if any(d.confidence == "low" for d in self.decisions) else "high"

    @property
    def partial(self) -> bool:
        """Rebuilt from what could be read (--salvage): an image left out, a header inferred
        or BAT entries unreadable."""
        return any(self.damage.values())

    @property
    def exit_code(self) -> int:
        if self.partial:
            return int(ExitCode.DATA_REPLACED)  # done, but not from everything the disk held
        return 0 if self.confidence == "high" else 1

    def to_json(self) -> dict[str, Any]:
        d = self.descriptor
        return {
            "folder": self.folder, "output": self.output, "written": self.written,
            "confidence": self.confidence, "exit_code": self.exit_code,
            "top_guid": d.top_guid, "cluster_size": d.blocksize * SECTOR,
            "disk_size": d.disk_size * SECTOR,
            "chain": [im.file for im in d.chain()],  # base first, up to the top
            "images": self.scan_facts, "links": self.links,
            "decisions": [x.to_json() for x in self.decisions], "ignored": self.ignored,
            "notes": self.notes, "content": self.content, "salvage": self.salvage,
            "partial": self.partial, "damage": self.damage, "left_out": self.left_out,
            "undecided": self.undecided,
        }


def restore(folder: str, *, output: str | None = None, sample: int = DEFAULT_SAMPLE,
            cluster_size: int | None = None, write: bool = True,
            old_descriptor: str | bool | None = True, salvage: bool = False) -> Restored:
    """Infer the tree of the images in `folder` and (unless `write` is False) write the
    descriptor to `output` (default: folder/DiskDescriptor.xml), never replacing a file.
    `old_descriptor`: a damaged descriptor to take GUIDs and links from; True = the folder's
    DiskDescriptor.xml if there is one; False/None = none. `salvage`: damaged headers are
    inferred and unreadable images left out instead of failing; the result says what that
    left undecided (`partial`, exit 15)."""
    target = output if output is not None else os.path.join(folder, DESCRIPTOR_NAME)
    if write and os.path.lexists(target):
        hint = "" if output is not None else "; give -o NEW_FILE to write it elsewhere"
        raise OutputError(f"already exists; refusing to overwrite{hint}", target)
    scan = scan_folder(folder, cluster_size, salvage)
    try:
        old = os.path.join(folder, DESCRIPTOR_NAME) if old_descriptor is True else old_descriptor
        if old and (old_descriptor is not True or os.path.isfile(old)):
            apply_old_descriptor(scan, old)
        res = infer(scan, sample, target)
        res.salvage, res.left_out = scan.salvage, scan.left_out
        res.undecided, res.damage = damage_report(scan)
    finally:
        scan.close()
    res.output = target
    if write:
        fileio.write_new(target, render_descriptor(res.descriptor), what="descriptor")
        res.written = True
    return res


def damage_report(scan: Scan) -> tuple[list[str], dict[str, int]]:
    """What the damage found by a --salvage scan leaves undecided, and counts of it."""
    out: list[str] = []
    for lo in scan.left_out:
        out.append(f"where {lo['file']} belongs in the tree: it was left out (see above), so "
                   "what it holds is not part of the rebuilt disk, and a delta that was above "
                   "it now reads through to the level below")
    inferred = [c for c in scan.images if c.image.inferred is not None]
    for c in inferred:
        assert c.image.inferred is not None
        out.append(f"the header of {c.name} ({c.image.header_error}): "
                   f"{c.image.inferred.line()}; the file is not repaired, so only salvage "
                   "readers open it: read the disk with --salvage, or run `ploopfs recover` "
                   "on the new descriptor for a clean copy")
    bad = 0
    for c in scan.images:
        if c.image.bad_slots:
            bad += len(c.image.bad_slots)
            codes = sorted({b.code for b in c.image.bad_slots})
            out.append(f"the data of {len(c.image.bad_slots)} cluster(s) of {c.name}: their BAT "
                       f"entries cannot be read ({', '.join(codes)}), so they were left out of "
                       "the content comparison; a --salvage read serves them from the level "
                       "below or as zeros")
    return out, {"left_out": len(scan.left_out), "inferred": len(inferred), "bad_bat_entries": bad}


def infer(scan: Scan, sample: int, target: str) -> Restored:
    n = len(scan.images)
    notes: list[str] = list(scan.old_notes)
    if n == 0:
        assert scan.raw is not None
        return _raw_only(scan, target)
    content = content_evidence(scan, sample)
    if content.sampled < content.shared_total:
        notes.append(f"content compared on {content.sampled} of {content.shared_total} shared "
                     "clusters (--sample)")
    scorer = Scorer(scan, content)
    scored = search(scorer, n, scan.raw is not None)
    if n > CHAIN_SEARCH_MAX:
        notes.append(f"{n} images: only linear chains near the suggested order were scored")
    elif n > TREE_SEARCH_MAX:
        notes.append(f"{n} images: only linear chains were scored (trees up to {TREE_SEARCH_MAX})")
    best_key, best = scored[0]
    decisions, links = _explain(scan, content, scored, notes)
    _, size_guess = disk_size_of(scan, best)
    if size_guess:
        decisions.append(Decision("disk size", "uncertain sizes", "low", None, size_guess))
    notes.extend(f"{c.name}: {c.size_note}" for c in scan.images if c.size_note)
    guids, sources = _guids(scan, best)
    desc = build_descriptor(scan, best, guids, target)
    notes.extend(check_ploop_rules(desc, target))
    facts = []
    for i, c in enumerate(scan.images):
        f = c.facts() | {"guid": guids[i], "guid_source": sources[i],
                         "parent": scan.images[best.parent[i]].name if best.parent[i] >= 0 else
                         (scan.raw.name if scan.raw else None)}
        facts.append(f)
    if scan.raw:
        rg, rsource = raw_guid(scan, guids)
        facts.insert(0, scan.raw.facts() | {"guid": rg, "guid_source": rsource, "parent": None})
    return Restored(scan.folder, desc, [c.name for c in scan.images], guids, sources, best,
                    decisions, links, facts, scan.ignored, notes,
                    {"shared_clusters": content.shared_total, "sampled_clusters": content.sampled,
                     "bytes_read": content.bytes_read, "best_key": dict(zip(KEY_NAMES, best_key,
                                                                             strict=True))})


def _explain(scan: Scan, content: Content, scored: list[tuple[tuple[int, ...], Tree]],
             notes: list[str]) -> tuple[list[Decision], list[dict[str, Any]]]:
    best_key, best = scored[0]
    imgs = scan.images
    base_name = scan.raw.name if scan.raw else None
    decisions: list[Decision] = []
    links: list[dict[str, Any]] = []
    for x in _levels(best):  # base first
        p = best.parent[x]
        alt = _first(scored, lambda t, x=x, p=p: t.parent[x] != p)
        by, conf, margin = _decide(best_key, alt)
        stats = _link_stats(content, x, p)
        above = imgs[p].name if p >= 0 else base_name
        if above is None:
            what = f"{imgs[x].name} is the base"
            detail = ("the only image" if len(imgs) == 1 else
                      f"{stats['nonzero_sectors']} non-zero sectors in clusters shared with other "
                      "deltas" if stats["shared_clusters"] else "it shares no cluster with the others")
        else:
            what = f"{imgs[x].name} is above {above}"
            detail = (f"{stats['cow_clusters']} of {stats['shared_clusters']} shared clusters agree "
                      f"outside {stats['written_sectors']} written sectors"
                      if stats["shared_clusters"] else "no shared cluster")
        why = _why(by, margin, imgs[x], imgs[p] if p >= 0 else scan.raw)
        text = f"{what}: {detail}; decided by {why}"
        d = Decision(what, by, conf, margin, text)
        decisions.append(d)
        links.append({"child": imgs[x].name, "parent": above, **stats, "decided_by": by,
                      "confidence": conf, "content_margin_sectors": margin, "text": text})
    alt = _first(scored, lambda t: t.top != best.top)
    by, conf, margin = _decide(best_key, alt)
    top = imgs[best.top]
    decisions.append(Decision("top", by, conf, margin,
                              f"top is {top.name}: decided by {_why(by, margin, top, None)}"))
    _conflicts(scan, content, scored, notes, decisions)
    return decisions, links


def _why(by: str, margin: int | None, child: Candidate, parent: Candidate | None) -> str:
    if by == "content":
        return f"content (the best alternative needs {margin} more written sectors)"
    if by == "old descriptor":
        return "what survives of the old descriptor"
    if by == "names":
        return "file names (X is the base of X.{GUID})"
    if by == "dirty flag":
        return f"the dirty flag (m_DiskInUse) of {child.name}, left by the writable top"
    if by == "structure":
        return "sizes/raw format (a lower delta is never larger, only the base may be raw)"
    if by == "uncertain sizes":
        return ("sizes of which one may be only a lower bound (a header inferred from its BAT; "
                "weak evidence)")
    if by == "mtimes":
        return "modification times only (weak evidence)"
    if by == "fewer branches":
        return "preferring a chain over a tree (no evidence either way)"
    if by == "no alternative":
        return "being the only possibility"
    return "nothing: the evidence is tied"


def _link_stats(content: Content, x: int, p: int) -> dict[str, int]:
    M, D, E = content.M, content.D, content.E
    n = M.shape[1]
    if p < 0:
        rows = np.flatnonzero(M[:, x])
        return {"shared_clusters": int(rows.size), "cow_clusters": int((E[rows, x, n] > 0).sum()),
                "written_sectors": int(D[rows, x, n].sum()), "nonzero_sectors": int(D[rows, x, n].sum())}
    rows = np.flatnonzero(M[:, x] & M[:, p])
    return {"shared_clusters": int(rows.size), "cow_clusters": int((E[rows, x, p] > 0).sum()),
            "written_sectors": int(D[rows, x, p].sum()), "nonzero_sectors": 0}


def _conflicts(scan: Scan, content: Content, scored: list[tuple[tuple[int, ...], Tree]],
               notes: list[str], decisions: list[Decision]) -> None:
    """The old descriptor, names or the dirty flag overruling clear content evidence is worth a
    warning."""
    best_key, best = scored[0]
    ckey, ctree = min(scored, key=lambda kt: (kt[0][0], kt[0][CONTENT:]))
    gap = best_key[CONTENT] - ckey[CONTENT]
    if ctree.parent != best.parent and gap >= CONTENT_MARGIN:
        msg = (f"the old descriptor, file names or dirty flags contradict the content: content "
               f"alone prefers another tree needing {gap} fewer written sectors")
        notes.append(msg)
        decisions.append(Decision("conflict", "content", "low", gap, msg))


def _guids(scan: Scan, t: Tree) -> tuple[list[str], list[str]]:
    """The top gets ploop's top GUID (format.md §5.4); others their GUID in what survives of the old
    descriptor, else the GUID in their file name (format.md §4.3: really the file GUID, the snapshot GUID
    is lost) or a stable uuid5 of the file name."""
    guids: list[str] = []
    sources: list[str] = []
    used = {TOP_GUID, NONE_GUID}
    for i, c in enumerate(scan.images):
        if i == t.top:
            guids.append(TOP_GUID)
            sources.append("top")
        elif c.old_guid and c.old_guid not in used:
            guids.append(c.old_guid)
            sources.append("old descriptor")
        elif c.file_guid and c.file_guid not in used:
            guids.append(c.file_guid)
            sources.append("file name")
        else:
            guids.append(generated_guid(c.name))
            sources.append("generated")
        used.add(guids[-1])
    return guids, sources


def raw_guid(scan: Scan, guids: list[str]) -> tuple[str, str]:
    """The raw base's GUID and where it came from (it is never the top when deltas exist)."""
    assert scan.raw is not None
    old = scan.raw.old_guid
    if old and old not in (*guids, TOP_GUID, NONE_GUID):
        return old, "old descriptor"
    return generated_guid(scan.raw.name), "generated"


def generated_guid(name: str) -> str:
    return "{" + str(uuid.uuid5(GUID_NAMESPACE, name)) + "}"


def _rel(path: str, target: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.dirname(os.path.abspath(target)))


def disk_size_of(scan: Scan, t: Tree) -> tuple[int, str | None]:
    """<Disk_size> in sectors, and why it is only a guess (None when it is not)."""
    top = scan.images[t.top]
    assert top.image.header is not None
    # ploop restore-descriptor: size = blocksize * l2_size (format.md §5.8), the top's (format.md §4.2).
    size = top.image.header.disk_bytes
    if top.size_exact:
        return size // SECTOR, None
    # The top is never smaller than the deltas below it (format.md §1.4): the largest size in
    # its chain is the best lower bound there is.
    below = [scan.images[a] for a in t.ancestors(t.top)] + ([scan.raw] if scan.raw else [])
    size = max([size, *(c.size for c in below if c.size_exact)])
    return size // SECTOR, (f"the disk size: the top {top.name}'s own size may be only a lower "
                            f"bound ({top.size_note}); <Disk_size> is {size} bytes, the largest "
                            "size in its chain. A larger disk would read zeros past it: compare "
                            "with what the guest's partition table or filesystem expects")


def build_descriptor(scan: Scan, t: Tree, guids: list[str], target: str) -> Descriptor:
    disk_size, _guess = disk_size_of(scan, t)
    d = _geometry(disk_size, scan.cluster_size)
    d.top_guid = TOP_GUID
    typ = "Plain" if scan.raw else "Compressed"  # ploop labels every image alike (format.md §3)
    order = _levels(t)
    if scan.raw:
        rg, _ = raw_guid(scan, guids)
        d.images.append(ImageEntry(rg, _rel(scan.raw.path, target), typ))
        d.shots.append(Shot(rg, NONE_GUID))
    for x in order:
        p = t.parent[x]
        parent = guids[p] if p >= 0 else (d.images[0].guid if scan.raw else NONE_GUID)
        d.images.append(ImageEntry(guids[x], _rel(scan.images[x].path, target), typ))
        d.shots.append(Shot(guids[x], parent))
    return d


def _geometry(disk_size: int, cluster: int) -> Descriptor:
    cyl, heads, _ = chs_geometry(disk_size)
    return Descriptor(disk_size=disk_size, cylinders=cyl, heads=heads,
                      sectors=disk_size // (cyl * heads) if cyl and heads else 0,
                      blocksize=cluster // SECTOR)


def _levels(t: Tree) -> list[int]:
    """Breadth-first from the base: parents before children."""
    out: list[int] = []
    frontier = [i for i, p in enumerate(t.parent) if p == -1]
    while frontier:
        out.extend(frontier)
        frontier = [c for x in frontier for c in t.children(x)]
    return out


def _raw_only(scan: Scan, target: str) -> Restored:
    raw = scan.raw
    assert raw is not None
    d = _geometry(-(-raw.image.file_size // SECTOR), scan.cluster_size)
    d.images.append(ImageEntry(TOP_GUID, _rel(raw.path, target), "Plain"))
    d.shots.append(Shot(TOP_GUID, NONE_GUID))
    notes = check_ploop_rules(d, target)
    dec = Decision(f"{raw.name} is the only image", "no alternative", "high", None,
                   f"{raw.name} is a raw disk, the only image; cluster size {scan.cluster_size}")
    facts = [raw.facts() | {"guid": TOP_GUID, "guid_source": "top", "parent": None}]
    return Restored(scan.folder, d, [], [], [], Tree((), -1), [dec],
                    [{"child": raw.name, "parent": None, "decided_by": "no alternative",
                      "confidence": "high", "text": dec.text}], facts, scan.ignored, notes,
                    {"shared_clusters": 0, "sampled_clusters": 0, "bytes_read": 0})


# -- ploop's acceptance rules and the exclusive write ----------------------------------------------
def check_ploop_rules(d: Descriptor, where: str) -> list[str]:
    """The rules ploop's parser applies (format.md §5.3), checked on what will be written; the XML is then
    parsed back by ploopfs' own parser. Returns warnings (e.g. a block size ploop refuses)."""
    warnings: list[str] = []
    bs = d.blocksize
    if not (bs & (bs - 1) == 0 and 64 <= bs <= 131072):
        warnings.append(f"<Blocksize> {bs} sectors: ploop only accepts powers of two from 64 to "
                        "131072; ploopfs and qemu read it")
    if len(d.images) != len(d.shots) or not d.images:
        raise AssertionError("one <Shot> per <Image>")
    back = parse_descriptor(render_descriptor(d), where)
    if [im.guid for im in back.chain()] != [im.guid for im in d.chain()]:
        raise AssertionError("the rendered descriptor does not parse back to the same chain")
    if back.shot(back.top_guid).temporary or back.top_guid != TOP_GUID:
        raise AssertionError("the top must be the non-temporary top GUID")
    return warnings


def check_args(sample: int) -> None:
    if sample < 0:
        raise UsageError("--sample must be 0 (all) or a positive number of clusters")
