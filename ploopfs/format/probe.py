"""What a file is, from its first bytes: the one place that knows the magic numbers of the
files ploopfs meets (format.md §1.1, §3, §11 trap 18).

Pure: bytes in, a kind out. Each reader decides what to do with a kind (a SOURCE takes an
XML-like file for a descriptor; an rdiff input needs the .xml name as well), but no other
module tests a signature itself.
"""

from __future__ import annotations

from enum import Enum

SIG_V1 = b"WithoutFreeSpace"
SIG_V2 = b"WithouFreSpacExt"  # abbreviated on purpose to fit 16 bytes (format.md §1.1)
QCOW2_MAGIC = b"QFI\xfb"
PROBE_BYTES = 64  # enough for every rule below (a ploop header is 64 bytes)

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class FileKind(Enum):
    PLOOP_V1 = "ploop-v1"
    PLOOP_V2 = "ploop-v2"
    QCOW2 = "qcow2"  # VZ9's qcow2 mode: no ploop image (format.md §11 trap 18)
    XML = "xml"  # starts like an XML document: a DiskDescriptor.xml, or a damaged one
    EMPTY = "empty"
    OTHER = "other"  # no known signature: a raw disk, a damaged image, anything else

    @property
    def is_ploop(self) -> bool:
        return self in (FileKind.PLOOP_V1, FileKind.PLOOP_V2)


def starts_like_xml(head: bytes) -> bool:
    """`<` after optional white space and a byte-order mark (UTF-8 or UTF-16)."""
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom):]
            break
    if head[:2] in (b"<\x00", b"\x00<"):  # UTF-16 without (or after) its mark
        return True
    return head.lstrip()[:1] == b"<"


def probe(head: bytes) -> FileKind:
    """The kind of a file whose first bytes (at least PROBE_BYTES when it is that long) are
    `head`."""
    if not head:
        return FileKind.EMPTY
    sig = head[:16]
    if sig == SIG_V1:
        return FileKind.PLOOP_V1
    if sig == SIG_V2:
        return FileKind.PLOOP_V2
    if head[:4] == QCOW2_MAGIC:
        return FileKind.QCOW2
    if starts_like_xml(head):
        return FileKind.XML
    return FileKind.OTHER
