"""Reading DiskDescriptor.xml (format.md §5): one lenient decoder, policies on top.

`scan_descriptor` collects every problem it can find, each with a code of docs/check.md and a
severity, and still returns as much of the snapshot tree as it could read: `check` reports
them all; with `recover` (restore-descriptor's damaged old descriptor) it also reads what is
left of a document that is no longer well-formed. `parse_descriptor` is the reading policy
of every other command: the first problem at or above DAMAGED (or, when salvaging, at
FATAL) is raised as the error of its kind, the others become warnings. Pure: bytes in, a
Descriptor out. No DTD or entity is ever loaded, the size is capped.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from ploopfs.errors import BadChainError, BadDescriptorError, PloopfsError, UnsupportedError
from ploopfs.format.descriptor import (
    TEMPORARY_MARKERS,
    Descriptor,
    ImageEntry,
    Shot,
    XmlRefused,
    load_root,
    norm_guid,
    parse_number,
)
from ploopfs.format.findings import Severity
from ploopfs.format.header import NONE_GUID, TOP_GUID

ZERO_BLOCKSIZE = "<Blocksize> is 0, which is no cluster size (sectors per cluster)"

# Every descriptor problem: its severity, and the error a strict reader raises for it.
PROBLEMS: dict[str, tuple[Severity, type[PloopfsError]]] = {
    "DESCRIPTOR_TOO_LARGE": (Severity.FATAL, BadDescriptorError),
    "DESCRIPTOR_ENTITIES": (Severity.FATAL, BadDescriptorError),
    "DESCRIPTOR_MALFORMED": (Severity.FATAL, BadDescriptorError),
    "DESCRIPTOR_ELEMENT": (Severity.FATAL, BadDescriptorError),
    "DESCRIPTOR_UNSUPPORTED": (Severity.FATAL, UnsupportedError),
    "DESCRIPTOR_ROOT": (Severity.INFO, BadDescriptorError),
    "DESCRIPTOR_COMPAT": (Severity.INFO, BadChainError),
    "DESCRIPTOR_NUMBER": (Severity.DAMAGED, BadDescriptorError),
    "DESCRIPTOR_BLOCKSIZE": (Severity.DAMAGED, BadDescriptorError),
    "DESCRIPTOR_GUID": (Severity.DAMAGED, BadDescriptorError),
    "DESCRIPTOR_DUPLICATE_GUID": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_SHOT": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_PARENT": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_ROOTS": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_CYCLE": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_TOPGUID": (Severity.DAMAGED, BadChainError),
    "DESCRIPTOR_TEMPORARY": (Severity.WARNING, BadChainError),
}


@dataclass(frozen=True)
class DescriptorProblem:
    code: str  # a DESCRIPTOR_* code of docs/check.md
    element: str | None
    message: str

    @property
    def severity(self) -> Severity:
        return PROBLEMS[self.code][0]


def parse_descriptor(data: bytes, where: str = "DiskDescriptor.xml", *,
                     salvage: bool = False) -> Descriptor:
    """The descriptor as every command but `check` reads it: the first problem at or above
    DAMAGED (with `salvage`, only a FATAL one) raises its error, naming the element; the
    others become `warnings`. A DAMAGED problem suggests --salvage, which reads the tree as far
    as it is readable (bad images and shots left out)."""
    d, problems = scan_descriptor(data)
    limit = Severity.FATAL if salvage else Severity.DAMAGED
    for p in problems:
        if p.severity >= limit or (d is None and p.severity >= Severity.DAMAGED):
            hint = "; try --salvage" if p.severity < Severity.FATAL and not salvage else ""
            raise PROBLEMS[p.code][1](p.message + hint, where, element=p.element)
    if d is None:  # unusable without a problem at DAMAGED or worse cannot happen
        raise BadDescriptorError("not a usable descriptor", where)
    d.warnings.extend(p.message for p in problems)
    return d


class _Scan:
    def __init__(self, recover: bool) -> None:
        self.problems: list[DescriptorProblem] = []
        self.recover = recover  # read what is left of a damaged document
        self.recovered = False  # it was not well-formed: the tree is what libxml2 recovered

    def add(self, code: str, element: str | None, message: str) -> None:
        self.problems.append(DescriptorProblem(code, element, message))

    def guid(self, el: etree._Element | None, path: str) -> str | None:
        if el is None:
            self.add("DESCRIPTOR_ELEMENT", path, "required element missing")
            return None
        try:
            return norm_guid(el.text, element=path)
        except BadDescriptorError:
            self.add("DESCRIPTOR_GUID", path, f"invalid GUID {el.text!r}")
            return None

    def number(self, parent: etree._Element, name: str, path: str) -> int:
        el = parent.find(name)
        if el is None:
            return 0
        try:
            return parse_number(el.text, "", f"{path}/{name}")
        except BadDescriptorError as e:
            self.add("DESCRIPTOR_NUMBER", f"{path}/{name}", e.what)
            return 0


def _parse_xml(data: bytes, scan: _Scan) -> etree._Element | None:
    """descriptor.load_root, its refusals recorded as problems; a malformed document is read
    again by the recovering parser when `scan.recover` is set (it says nothing new)."""
    try:
        return load_root(data)
    except XmlRefused as e:
        if e.kind == "dtd":
            scan.add("DESCRIPTOR_ENTITIES", "!DOCTYPE", "DTD or entity declarations (refused, not loaded)")
            return None
        scan.add("DESCRIPTOR_TOO_LARGE" if e.kind == "size" else "DESCRIPTOR_MALFORMED", None,
                 e.message)
        if e.kind == "size":
            return None
    except (ValueError, LookupError) as e:  # e.g. an unknown declared encoding
        scan.add("DESCRIPTOR_MALFORMED", None, f"malformed XML: {e}")
    if not scan.recover:
        return None
    try:
        root = load_root(data, recover=True)
    except (XmlRefused, ValueError, LookupError):
        return None
    scan.recovered = True
    return root


def scan_descriptor(data: bytes, *, recover: bool = False
                    ) -> tuple[Descriptor | None, list[DescriptorProblem]]:
    """Every problem of the descriptor (format.md §5.2–§5.4), plus the tree as far as it is readable.
    None when the document itself cannot be used (unsafe, malformed, required parts missing).

    `recover`: a malformed document is still reported DESCRIPTOR_MALFORMED, but what the
    recovering parser reads of it (descriptor.load_root) is scanned by the same rules, and
    the tree is returned while it has one usable <Image>, whatever parts are missing; ploop's
    compatibility rule (an unlisted top image is a base) is not applied to a recovered tree,
    whose <Shot> for it may simply be lost. Never for reading a disk: restore-descriptor's
    old descriptor only."""
    scan = _Scan(recover)
    root = _parse_xml(data, scan)
    if root is None:
        return None, scan.problems
    d = Descriptor(root_name=str(root.tag))
    if d.root_name not in ("Virtuozzo_disk_image", "Parallels_disk_image"):
        scan.add("DESCRIPTOR_ROOT", d.root_name, f"unexpected root element <{d.root_name}>")
    parts = {n: root.find(n) for n in ("Disk_Parameters", "StorageData", "Snapshots")}
    for name, el in parts.items():
        if el is None:
            scan.add("DESCRIPTOR_ELEMENT", f"{d.root_name}/{name}", "required element missing")
    params, sdata, snaps = parts["Disk_Parameters"], parts["StorageData"], parts["Snapshots"]
    if params is not None:
        d.disk_size = scan.number(params, "Disk_size", "Disk_Parameters")
        d.max_delta_size = scan.number(params, "Max_delta_size", "Disk_Parameters")
        d.cylinders = scan.number(params, "Cylinders", "Disk_Parameters")
        d.heads = scan.number(params, "Heads", "Disk_Parameters")
        d.sectors = scan.number(params, "Sectors", "Disk_Parameters")
        keyid = params.find("Encryption/KeyId")
        if keyid is not None and (keyid.text or "").strip():
            d.encryption_keyid = keyid.text.strip()
    if sdata is not None:
        _scan_storage(sdata, d, scan)
    if snaps is not None:
        _scan_shots(snaps, d, scan)
    if not d.images or (not recover and (sdata is None or snaps is None)):
        return None, scan.problems
    _scan_tree(d, snaps if snaps is not None else etree.Element("Snapshots"), scan)
    return d, scan.problems


def _scan_storage(sdata: etree._Element, d: Descriptor, scan: _Scan) -> None:
    vol = sdata.find("Volume/Parent")
    if vol is not None:
        d.volume_parent = (vol.text or "").strip()
        scan.add("DESCRIPTOR_UNSUPPORTED", "StorageData/Volume",
                 "descriptors with a <Volume> parent are not supported yet")
    storages = sdata.findall("Storage")
    if not storages:
        scan.add("DESCRIPTOR_ELEMENT", "StorageData/Storage", "required element missing")
        return
    if len(storages) > 1:
        scan.add("DESCRIPTOR_UNSUPPORTED", "StorageData/Storage",
                 f"{len(storages)} <Storage> elements (split disks) are not supported")
    st = storages[0]
    d.blocksize = scan.number(st, "Blocksize", "Storage")
    if st.find("Blocksize") is not None and not d.blocksize:
        scan.add("DESCRIPTOR_BLOCKSIZE", "Storage/Blocksize", ZERO_BLOCKSIZE)
    d.preallocated = scan.number(st, "Preallocated", "Storage") == 1
    seen: set[str] = set()
    for i, im in enumerate(st.findall("Image")):
        path = f"Storage/Image[{i + 1}]"
        guid = scan.guid(im.find("GUID"), f"{path}/GUID")
        f = (im.findtext("File") or "").strip()
        if not f:
            scan.add("DESCRIPTOR_ELEMENT", f"{path}/File", "missing or empty file name")
        if guid is None or not f:
            continue
        if guid in seen:
            scan.add("DESCRIPTOR_DUPLICATE_GUID", f"{path}/GUID", f"GUID {guid} is used by two images")
            continue
        seen.add(guid)
        d.images.append(ImageEntry(guid, f, (im.findtext("Type") or "Compressed").strip()))
    if not d.images:
        scan.add("DESCRIPTOR_ELEMENT", "Storage/Image", "no usable <Image>")


def _scan_shots(snaps: etree._Element, d: Descriptor, scan: _Scan) -> None:
    seen: set[str] = set()
    for i, sh in enumerate(snaps.findall("Shot")):
        path = f"Snapshots/Shot[{i + 1}]"
        guid = scan.guid(sh.find("GUID"), f"{path}/GUID")
        parent = scan.guid(sh.find("ParentGUID"), f"{path}/ParentGUID")
        if guid is None or parent is None:
            continue
        if guid in seen:
            scan.add("DESCRIPTOR_DUPLICATE_GUID", f"{path}/GUID", f"GUID {guid} has two <Shot> elements")
            continue
        seen.add(guid)
        marker = next((m for m in TEMPORARY_MARKERS if sh.find(m) is not None), None)
        d.shots.append(Shot(guid, parent, marker))


def _scan_tree(d: Descriptor, snaps: etree._Element, scan: _Scan) -> None:
    """Tree rules of ploop's validate_disk_descriptor (format.md §5.3, §5.4), every violation reported."""
    images = {im.guid for im in d.images}
    # ploop's compatibility rule: an unlisted magic-GUID image is a base.
    if (not scan.recovered and len(d.images) != len(d.shots) and TOP_GUID in images
            and all(s.guid != TOP_GUID for s in d.shots)):
        d.shots.append(Shot(TOP_GUID, NONE_GUID))
        scan.add("DESCRIPTOR_COMPAT", "Snapshots/Shot", "no <Shot> for the top image; assumed a "
                 "base (ploop compatibility rule)")
    shots = {s.guid: s for s in d.shots}
    for s in list(d.shots):
        if s.guid not in images:
            scan.add("DESCRIPTOR_SHOT", "Snapshots/Shot/GUID", f"<Shot> {s.guid} has no <Image>")
            d.shots.remove(s)
            del shots[s.guid]
    for im in d.images:
        if im.guid not in shots:
            scan.add("DESCRIPTOR_SHOT", "Snapshots/Shot", f"image {im.guid} has no <Shot>")
    for s in d.shots:
        if s.parent != NONE_GUID and s.parent not in shots:
            scan.add("DESCRIPTOR_PARENT", "Snapshots/Shot/ParentGUID",
                     f"<Shot> {s.guid} has unknown parent {s.parent}")
    roots = d.roots()
    if len(roots) > 1:
        scan.add("DESCRIPTOR_ROOTS", "Snapshots/Shot/ParentGUID", f"several base images: {', '.join(roots)}")
    elif not roots:
        scan.add("DESCRIPTOR_ROOTS", "Snapshots/Shot/ParentGUID", "no base image (no <Shot> with "
                 f"parent {NONE_GUID})")
    cyclic = _cycles(shots)
    if cyclic:
        scan.add("DESCRIPTOR_CYCLE", "Snapshots/Shot/ParentGUID",
                 f"cycle in the snapshot tree through {', '.join(sorted(cyclic))}")
    top_el = snaps.find("TopGUID")
    top_text = None if top_el is None else (top_el.text or "").strip() or None
    if top_text is None:
        d.top_guid = TOP_GUID
        if TOP_GUID not in shots:
            scan.add("DESCRIPTOR_TOPGUID", "Snapshots/TopGUID",
                     f"no <TopGUID> and no image with the top GUID {TOP_GUID}")
        return
    try:
        d.top_guid = norm_guid(top_text)
    except BadDescriptorError:
        scan.add("DESCRIPTOR_TOPGUID", "Snapshots/TopGUID", f"invalid GUID {top_text!r}")
        d.top_guid = TOP_GUID
        return
    if d.top_guid not in shots:
        scan.add("DESCRIPTOR_TOPGUID", "Snapshots/TopGUID",
                 f"TopGUID {d.top_guid} is not an image of this disk")
    elif shots[d.top_guid].temporary:
        scan.add("DESCRIPTOR_TEMPORARY", "Snapshots/Shot",
                 f"top snapshot {d.top_guid} is marked <{shots[d.top_guid].temporary}> (ploop "
                 "refuses it until merged)")


def _cycles(shots: dict[str, Shot]) -> set[str]:
    """GUIDs on a parent cycle. Each shot is walked once: a walk stops at a shot an earlier walk
    already settled, so the work is linear in the number of shots."""
    on_cycle: set[str] = set()
    done: set[str] = set()
    for start in shots:
        path: list[str] = []
        index: dict[str, int] = {}
        g = start
        while g in shots and g not in done and g not in index:
            index[g] = len(path)
            path.append(g)
            g = shots[g].parent
        if g in index:
            on_cycle.update(path[index[g]:])
        done.update(path)
    return on_cycle
