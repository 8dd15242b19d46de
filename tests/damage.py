"""Test-only helpers that damage *copies* of good ploop disks in controlled ways.

Every function edits the file it is given in place; callers copy a corpus case (or build an image
with ImageWriter) into a temporary folder first. Offsets follow format.md §1 (header) and format.md §2
(BAT); descriptor edits go through lxml so that only the named element changes.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from lxml import etree

from ploopfs.format.bat import bat_entry_off
from ploopfs.format.descriptor import Descriptor
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

DD = "DiskDescriptor.xml"

# Header field -> (byte offset, struct format), format.md §1 table.
FIELDS: dict[str, tuple[int, str]] = {
    "signature": (0x00, "16s"),
    "m_Type": (0x10, "<I"),
    "m_Heads": (0x14, "<I"),
    "m_Cylinders": (0x18, "<I"),
    "m_Sectors": (0x1C, "<I"),
    "m_Size": (0x20, "<I"),
    "m_SizeInSectors": (0x24, "<Q"),  # v2; v1 uses the low u32 here …
    "m_SizeHigh_v1": (0x28, "<I"),  # … and the "Unused" u32 at 40
    "m_DiskInUse": (0x2C, "<I"),
    "m_FirstBlockOffset": (0x30, "<I"),
    "m_Flags": (0x34, "<I"),
    "m_FormatExtensionOffset": (0x38, "<Q"),
}


# -- raw bytes -----------------------------------------------------------------------------------
def set_field(path: str | os.PathLike[str], offset: int, fmt: str, value: int | bytes) -> None:
    """Overwrite `struct.pack(fmt, value)` at `offset`, nothing else."""
    data = struct.pack(fmt, value)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def get_field(path: str | os.PathLike[str], offset: int, fmt: str) -> int | bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def header_field(path: str | os.PathLike[str], name: str, value: int | bytes) -> int:
    """Set a named header field; returns its offset (for the expected error message)."""
    off, fmt = FIELDS[name]
    set_field(path, off, fmt, value)
    return off


def foreign_signature(path: str | os.PathLike[str], sig: bytes = b"NotAPloopImage!!") -> int:
    return header_field(path, "signature", sig.ljust(16, b"\0")[:16])


def truncate_file(path: str | os.PathLike[str], size: int) -> None:
    os.truncate(path, size)


def truncate_header(path: str | os.PathLike[str], keep: int = 40) -> None:
    """Cut the file inside the 64-byte header (the signature survives if keep >= 16)."""
    truncate_file(path, keep)


def bat_entry(path: str | os.PathLike[str], index: int, value: int) -> int:
    """Set the BAT slot of virtual cluster `index`; returns its byte offset (format.md §2.1)."""
    off = bat_entry_off(index)
    set_field(path, off, "<I", value)
    return off


def bat_entries(path: str | os.PathLike[str]) -> dict[int, int]:
    """Non-zero BAT slots {virtual cluster: entry} of a ploop image."""
    n = int(get_field(path, *FIELDS["m_Size"]))  # type: ignore[arg-type]
    with open(path, "rb") as f:
        f.seek(bat_entry_off(0))
        raw = f.read(4 * n)
    vals = struct.unpack(f"<{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return {i: v for i, v in enumerate(vals) if v}


# -- DiskDescriptor.xml --------------------------------------------------------------------------
def load_xml(dd: str | os.PathLike[str]) -> etree._ElementTree:
    return etree.parse(os.fspath(dd), etree.XMLParser(resolve_entities=False, no_network=True))


def save_xml(dd: str | os.PathLike[str], tree: etree._ElementTree) -> None:
    tree.write(os.fspath(dd), xml_declaration=True, encoding="utf-8")


def edit_xml(dd: str | os.PathLike[str], fn: Callable[[etree._Element], None]) -> None:
    """Apply `fn(root)` to the descriptor and write it back."""
    tree = load_xml(dd)
    fn(tree.getroot())
    save_xml(dd, tree)


def set_text(dd: str | os.PathLike[str], xpath: str, text: str, index: int = 0) -> None:
    """Set the text of the `index`-th element matching `xpath` (relative to the root)."""
    def fn(root: etree._Element) -> None:
        root.xpath(xpath)[index].text = text
    edit_xml(dd, fn)


def remove(dd: str | os.PathLike[str], xpath: str, index: int = 0) -> None:
    def fn(root: etree._Element) -> None:
        el = root.xpath(xpath)[index]
        el.getparent().remove(el)
    edit_xml(dd, fn)


def duplicate(dd: str | os.PathLike[str], xpath: str, index: int = 0) -> None:
    """Insert a copy of an element right after it."""
    def fn(root: etree._Element) -> None:
        el = root.xpath(xpath)[index]
        el.addnext(etree.fromstring(etree.tostring(el)))
    edit_xml(dd, fn)


def guids(dd: str | os.PathLike[str]) -> list[str]:
    """<Image> GUIDs in document order."""
    return [str(t) for t in load_xml(dd).getroot().xpath("StorageData/Storage/Image/GUID/text()")]


def replace_bytes(dd: str | os.PathLike[str], old: bytes, new: bytes) -> None:
    p = Path(dd)
    data = p.read_bytes()
    assert old in data, f"{old!r} not in {p}"
    p.write_bytes(data.replace(old, new, 1))


def prepend_doctype(dd: str | os.PathLike[str], doctype: str, *, file_ref: str | None = None,
                    encoding: str = "utf-8") -> None:
    """Put a DOCTYPE (with entity declarations) before the root; optionally make <File> use the
    entity reference `file_ref` (e.g. "&xxe;"). Re-encodes the file in `encoding`."""
    text = Path(dd).read_text("utf-8")
    body = text.split("?>", 1)[1] if text.startswith("<?xml") else text
    if file_ref is not None:
        root = etree.fromstring(body.encode())
        first_file = root.xpath("StorageData/Storage/Image/File")[0].text
        body = body.replace(f"<File>{first_file}</File>", f"<File>{file_ref}</File>", 1)
    decl = f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
    rest = doctype + "\n" + body.lstrip()
    if encoding.lower() == "utf-7":
        # Python writes "<" and ">" directly; UTF-7 may also spell them base64-encoded (RFC 2152),
        # which hides "<!DOCTYPE" from a byte search. Only the declaration must stay ASCII.
        data = decl.encode() + rest.encode("utf-7").replace(b"<", b"+ADw-").replace(b">", b"+AD4-")
    else:
        data = (decl + rest).encode(encoding)
    Path(dd).write_bytes(data)


BILLION_LAUGHS = (
    '<!DOCTYPE Virtuozzo_disk_image [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
              for i in range(1, 10))
    + "]>"
)
XXE_PASSWD = '<!DOCTYPE Virtuozzo_disk_image [\n <!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>'


# -- building disks ------------------------------------------------------------------------------
def copy_case(corpus_root: Path, name: str, dest: Path) -> Path:
    """A writable copy of a corpus case (damage it, then guard it)."""
    dst = dest / name
    shutil.copytree(corpus_root / name, dst)
    return dst


def build_chain(folder: Path, specs: list[tuple[int, int]], size: int = 4 << 20,
                blocksize: int | None = None) -> Path:
    """A chain of ImageWriter images, one per (cluster_size, version), base first, each level
    writing its own pattern into cluster 0 and `level+1`. `blocksize` (sectors) goes into the
    descriptor: default the base's cluster size, 0 to leave <Blocksize> out. Returns the
    descriptor path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for level, (cluster, version) in enumerate(specs):
        name = "root.hdd" if level == 0 else f"root.hdd.{level}"
        with ImageWriter.create(folder / name, size, cluster, version) as w:
            w.write(0, bytes([0x40 + level]) * 4096)
            w.write((level + 1) * cluster, bytes([0x50 + level]) * cluster)
        files.append(name)
    d: Descriptor = chain_descriptor(files, size, specs[0][0])
    if blocksize is not None:
        d.blocksize = blocksize
    dd = folder / DD
    write_descriptor(dd, d)  # blocksize 0: rendered without <Blocksize>
    return dd
