"""DiskDescriptor.xml: parse (safely) and write, format.md §5.

Pure: bytes in, a Descriptor out; a Descriptor in, bytes out. Paths in <File> are returned as
written; resolving them against the filesystem is the volume layer's job (format.md §5.6).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ploopfs.errors import BadChainError, BadDescriptorError, NotFoundError
from ploopfs.format.header import NONE_GUID, TOP_GUID

if TYPE_CHECKING:
    from lxml import etree

MAX_DESCRIPTOR_BYTES = 4 << 20  # real descriptors are a few KiB; a cap stops memory attacks
TEMPORARY_MARKERS = ("Temporary", "TemporaryZero", "TemporaryZeroSwap")
_GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def norm_guid(text: str | None, where: str = "", element: str = "GUID") -> str:
    """Canonical form `{lowercase}`; GUIDs compare case-insensitively, braces optional
    (format.md §11 trap 11)."""
    s = (text or "").strip().lower()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    if not _GUID_RE.match(s):
        raise BadDescriptorError(f"invalid GUID {text!r}", where, element=element)
    return "{" + s + "}"


def bare_guid(guid: str) -> str:
    """Lowercase, no braces: the form used in mount paths."""
    return guid.strip("{}").lower()


def parse_number(text: str | None, where: str, element: str) -> int:
    """Numbers as ploop reads them, strtoul(…, 0): 0x… hex, a leading 0 octal (format.md §5.3)."""
    s = (text or "").strip()
    try:
        if s.lower().startswith("0x"):
            v = int(s[2:], 16)
        elif len(s) > 1 and s.startswith("0"):
            v = int(s[1:], 8)
        else:
            v = int(s, 10)
    except ValueError:
        raise BadDescriptorError(f"not a number: {text!r}", where, element=element) from None
    if v < 0:
        raise BadDescriptorError(f"negative number {text!r}", where, element=element)
    return v


@dataclass
class ImageEntry:
    guid: str
    file: str  # as written in <File>
    type: str  # as written in <Type>; informational only (format.md §3, §11 trap 10)

    @property
    def plain(self) -> bool:
        """<Type> says Plain: the one condition, with being a base, for a raw file (format.md §0)."""
        return self.type.strip().lower() == "plain"


@dataclass
class Shot:
    guid: str
    parent: str
    temporary: str | None = None  # marker element name, if any


@dataclass
class Descriptor:
    root_name: str = "Virtuozzo_disk_image"
    disk_size: int = 0  # sectors
    cylinders: int = 0
    heads: int = 0
    sectors: int = 0  # CHS sectors per track (NOT the cluster size, format.md §11 trap 2)
    blocksize: int = 0  # cluster size in sectors
    preallocated: bool = False
    max_delta_size: int = 0
    encryption_keyid: str | None = None
    volume_parent: str | None = None  # <StorageData><Volume><Parent> (format.md §5.7)
    images: list[ImageEntry] = field(default_factory=list)
    shots: list[Shot] = field(default_factory=list)
    top_guid: str = TOP_GUID
    warnings: list[str] = field(default_factory=list)

    # ---- tree queries -----------------------------------------------------------------------
    def image(self, guid: str) -> ImageEntry:
        g = norm_guid(guid, element="--snapshot")
        for im in self.images:
            if im.guid == g:
                return im
        raise KeyError(g)

    def shot(self, guid: str) -> Shot:
        for s in self.shots:
            if s.guid == guid:
                return s
        raise KeyError(guid)

    def children(self, guid: str) -> list[str]:
        return [s.guid for s in self.shots if s.parent == guid]

    def roots(self) -> list[str]:
        return [s.guid for s in self.shots if s.parent == NONE_GUID]

    def chain(self, guid: str | None = None) -> list[ImageEntry]:
        """Images from the base (level 0) up to `guid` (default: the top), following ParentGUID
        (format.md §5.3: XML order means nothing)."""
        g = self.top_guid if guid is None else norm_guid(guid, element="--snapshot")
        images = {im.guid: im for im in self.images}
        parents = {s.guid: s.parent for s in self.shots}
        out: list[ImageEntry] = []
        seen: set[str] = set()
        while g != NONE_GUID:
            if g in seen:
                raise BadChainError(f"cycle in the snapshot tree at {g}", element="ParentGUID")
            seen.add(g)
            if g not in images:
                raise KeyError(g)
            out.append(images[g])
            if g not in parents:
                raise KeyError(g)
            g = parents[g]
        out.reverse()
        return out

    def snapshot_guid(self, text: str, where: str = "") -> str:
        """The snapshot GUID `text` names: a GUID (braces and case do not matter), a unique
        prefix of one, or an index: N counts the rows of `ploopfs snapshots` from 0, -N counts
        the top's chain down from the top (-1 = the top). A decimal number is an index while it
        is below the number of snapshots; write braces (`{12`) to mean a prefix."""
        d = self
        order = [g for g, _ in d.tree_order()]
        t = text.strip().lower()
        if re.fullmatch(r"-?\d{1,9}", t):
            n = int(t)
            if n < 0 and -n <= len(chain := d.chain()):
                return chain[n].guid
            if 0 <= n < len(order):
                return order[n]
        bare = t.strip("{}")
        if not t.startswith("-"):  # not an index here: a GUID or a prefix of one
            hits = [g for g in order if g.strip("{}").startswith(bare)] if bare else []
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1 and bare and len(bare) < 36:
                raise NotFoundError(f"snapshot {text!r} is ambiguous: it starts "
                                    f"{', '.join(hits[:5])}{' …' if len(hits) > 5 else ''}",
                                    where)
        for im in self.images:
            name = im.file.replace("\\", "/").rsplit("/", 1)[-1]
            g = im.guid
            if bare and name.lower().endswith("{" + bare + "}") and len(bare) >= 8:
                raise NotFoundError(
                    f"{text!r} is the GUID in the file name of {name}, which "
                    f"holds snapshot {g} (index {order.index(g) if g in order else '?'}); "
                    f"use -s {g}", where)
        shown = ", ".join(f"{i}={g}" for i, g in enumerate(order[:8]))
        more = f" … ({len(order)} in all; see ploopfs snapshots)" if len(order) > 8 else ""
        try:
            g = norm_guid(text)
        except BadDescriptorError:
            raise NotFoundError(f"{text!r} is not a snapshot GUID, prefix or index; snapshots "
                                f"are {shown}{more}", where) from None
        raise NotFoundError(f"unknown snapshot {g}; snapshots are {shown}{more}", where,
                            element="Snapshots")

    def tree_order(self) -> list[tuple[str, int]]:
        """(GUID, depth) of every snapshot, depth first from each root, children in XML order:
        the order `ploopfs snapshots` lists them in, and what a snapshot index counts."""
        kids: dict[str, list[str]] = {}
        for s in self.shots:
            kids.setdefault(s.parent, []).append(s.guid)
        out: list[tuple[str, int]] = []
        stack = [(g, 0) for g in reversed(kids.get(NONE_GUID, []))]
        seen: set[str] = set()
        while stack:
            g, depth = stack.pop()
            if g in seen:
                continue
            seen.add(g)
            out.append((g, depth))
            stack.extend((c, depth + 1) for c in reversed(kids.get(g, [])))
        return out


_XML_ENCODING = re.compile(rb"""^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["']([\w.:-]+)["']""")


def _declares_dtd(data: bytes) -> bool:
    """A DOCTYPE/ENTITY anywhere, looked for in the bytes with NULs dropped (UTF-16/32 put NULs
    between ASCII characters) and in the text decoded with the declared encoding (UTF-7 can
    spell "<" as "+ADw-"). Refused before libxml2 sees it, so no entity is ever expanded."""
    flat = data.replace(b"\0", b"")
    texts = [flat]
    m = _XML_ENCODING.match(flat)
    # An encoding Python does not know is skipped here; the check after parsing still applies.
    with contextlib.suppress(LookupError, UnicodeError):
        if m:
            texts.append(data.decode(m.group(1).decode("ascii"), "replace").encode("utf-8"))
    return any(b"<!DOCTYPE" in t.upper() or b"<!ENTITY" in t.upper() for t in texts)


class XmlRefused(Exception):
    """Why load_root refused a document. kind: "size" (over MAX_DESCRIPTOR_BYTES), "dtd" (a
    DOCTYPE/ENTITY; message empty, each caller words it) or "malformed" (message says why)."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind
        self.message = message


def load_root(data: bytes, *, recover: bool = False) -> etree._Element:
    """The root element of a descriptor document, parsed safely: entities, DTDs and network
    access are refused (the file may come from an untrusted backup), and so is anything larger
    than MAX_DESCRIPTOR_BYTES. Serves descriptor_scan. Raises XmlRefused;
    a ValueError/LookupError lxml may raise (an unusable declared encoding) passes through.

    `recover`: for a document that is no longer well-formed (truncated, partly overwritten),
    what libxml2's recovering parser can still read, with the same refusals (size, DTD, no
    entity loaded), rebuilt in the canonical shape (`_reshape`): every element of the parts
    found, wherever the damage left it. Characters XML does not allow (NULs of a zeroed
    block, bytes invalid in the encoding) are replaced by U+FFFD first, so that libxml2 does
    not drop the rest of their element."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise XmlRefused(
            "size", f"descriptor is {len(data)} bytes, larger than the {MAX_DESCRIPTOR_BYTES} byte cap")
    if _declares_dtd(data):
        raise XmlRefused("dtd")
    from lxml import etree  # here, not at the top: a disk given as an image file needs no XML

    options = {"resolve_entities": False, "no_network": True, "load_dtd": False,
               "dtd_validation": False, "huge_tree": False, "remove_pis": True}
    try:
        if recover:
            root = etree.fromstring(_cleaned(data), etree.XMLParser(
                recover=True, encoding="utf-8", **options))
        else:
            root = etree.fromstring(data, etree.XMLParser(**options))
    except etree.XMLSyntaxError as e:
        line = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
        raise XmlRefused("malformed", f"malformed XML{line}: {e.msg}") from None
    if root is None:
        raise XmlRefused("malformed", "empty document")
    # Other encodings libxml2 reads (UTF-7, EBCDIC, …) can hide a DOCTYPE from the byte check;
    # nothing was loaded or expanded (see the parser options), but the document is refused.
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise XmlRefused("dtd")
    return _reshape(root) if recover else root


_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_WRAPPER = "recovered"
# libxml2's recovery closes the current element at an end tag whose start tag was lost, and the
# document at the last one: wrappers this deep absorb the stray end tags of a lost beginning
# (a descriptor nests 5 deep, format.md §5.1).
_WRAP_DEPTH = 16


def _cleaned(data: bytes) -> bytes:
    """The document as UTF-8 for the recovering parser: decoded with its declared encoding
    (UTF-8 if none or unknown), bad bytes and characters XML forbids replaced by U+FFFD, the
    declaration dropped, and the whole wrapped in nested elements, so that a lost beginning
    (the root's start tag, stray end tags, text) still leaves the elements after it readable."""
    m = _XML_ENCODING.match(data.replace(b"\0", b""))
    encoding = m.group(1).decode("ascii") if m else "utf-8"
    try:
        text = data.decode(encoding, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    text = _NOT_XML_CHAR.sub("\ufffd", _DECLARATION.sub("", text.lstrip("\ufeff")))
    return (f"<{_WRAPPER}>" * _WRAP_DEPTH + text + f"</{_WRAPPER}>" * _WRAP_DEPTH).encode()


def _reshape(wrapper: etree._Element) -> etree._Element:
    """A recovered tree in the shape descriptor_scan reads (format.md §5.1): the document's root
    (named after its first element), its Disk_Parameters, one StorageData/Storage holding its
    Blocksize, Preallocated and every <Image>, and Snapshots holding TopGUID and every <Shot>,
    each taken wherever it lies (first one found, or all of them in document order)."""
    from lxml import etree

    def first(tag: str) -> etree._Element | None:
        return next(wrapper.iter(tag), None)

    top = next((el.tag for el in wrapper.iter() if el.tag != _WRAPPER and isinstance(el.tag, str)),
               _WRAPPER)
    root = etree.Element(top)
    params, volume = first("Disk_Parameters"), first("Volume")
    scalars = [first(tag) for tag in ("Blocksize", "Preallocated", "TopGUID")]
    images, shots = list(wrapper.iter("Image")), list(wrapper.iter("Shot"))
    if params is not None:
        root.append(params)
    sdata = etree.SubElement(root, "StorageData")
    if volume is not None:
        sdata.append(volume)
    storage = etree.SubElement(sdata, "Storage")
    snaps = etree.SubElement(root, "Snapshots")
    for el, parent in zip(scalars, (storage, storage, snaps), strict=True):
        if el is not None:
            parent.append(el)
    storage.extend(images)
    snaps.extend(shots)
    return root


def render_descriptor(d: Descriptor) -> bytes:
    """XML as ploop's store_diskdescriptor writes it, obeying its parser's quirks (format.md §5.1, §5.3):
    Images and Shots last in their parents, TopGUID first, numbers never zero-padded, one Storage,
    no attributes."""
    from lxml import etree

    root = etree.Element(d.root_name)
    params = etree.SubElement(root, "Disk_Parameters")

    def add(parent: etree._Element, name: str, value: object) -> etree._Element:
        el = etree.SubElement(parent, name)
        el.text = str(value)
        return el

    add(params, "Disk_size", d.disk_size)
    if d.max_delta_size:
        add(params, "Max_delta_size", d.max_delta_size)
    add(params, "Cylinders", d.cylinders)
    add(params, "Heads", d.heads)
    add(params, "Sectors", d.sectors)
    add(params, "Padding", 0)
    if d.encryption_keyid:
        add(etree.SubElement(params, "Encryption"), "KeyId", d.encryption_keyid)
    sdata = etree.SubElement(root, "StorageData")
    storage = etree.SubElement(sdata, "Storage")
    add(storage, "Start", 0)
    add(storage, "End", d.disk_size)
    if d.blocksize:  # 0: the descriptor had none (the images' own cluster size applies)
        add(storage, "Blocksize", d.blocksize)
    if d.preallocated:
        add(storage, "Preallocated", 1)
    for im in d.images:
        el = etree.SubElement(storage, "Image")
        add(el, "GUID", im.guid)
        add(el, "Type", im.type)
        add(el, "File", im.file)
    snaps = etree.SubElement(root, "Snapshots")
    add(snaps, "TopGUID", d.top_guid)
    for s in d.shots:
        el = etree.SubElement(snaps, "Shot")
        add(el, "GUID", s.guid)
        add(el, "ParentGUID", s.parent)
        if s.temporary:
            etree.SubElement(el, s.temporary)
    body = etree.tostring(root, pretty_print=True, encoding="utf-8")
    return b'<?xml version="1.0"?>\n' + body
