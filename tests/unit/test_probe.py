"""The one probe (format/probe.py): every kind from its bytes, and the readers built on it."""

from __future__ import annotations

import pytest

from ploopfs.format.header import ImageKind, sniff
from ploopfs.format.probe import PROBE_BYTES, FileKind, probe, starts_like_xml


@pytest.mark.parametrize(("head", "kind"), [
    (b"WithoutFreeSpace" + bytes(48), FileKind.PLOOP_V1),
    (b"WithouFreSpacExt" + bytes(48), FileKind.PLOOP_V2),
    (b"QFI\xfb\x00\x00\x00\x03" + bytes(56), FileKind.QCOW2),
    (b'<?xml version="1.0"?>\n<Parallels_disk_image>', FileKind.XML),
    (b"  \n\t<Virtuozzo_disk_image>", FileKind.XML),
    (b"\xef\xbb\xbf<?xml", FileKind.XML),
    ("<?xml".encode("utf-16"), FileKind.XML),
    ("<?xml".encode("utf-16-le"), FileKind.XML),
    (b"", FileKind.EMPTY),
    (bytes(PROBE_BYTES), FileKind.OTHER),
    (b"WithoutFreeSpac", FileKind.OTHER),  # one byte short of a signature
    (b"withoutfreespace" + bytes(48), FileKind.OTHER),  # signatures are case-sensitive
    (b"LUKS\xba\xbe" + bytes(58), FileKind.OTHER),
])
def test_probe(head: bytes, kind: FileKind) -> None:
    assert probe(head) is kind
    assert kind.is_ploop == (kind in (FileKind.PLOOP_V1, FileKind.PLOOP_V2))


def test_sniff_is_the_probe_seen_by_the_image_reader() -> None:
    assert sniff(b"WithoutFreeSpace") is ImageKind.V1
    assert sniff(b"WithouFreSpacExt") is ImageKind.V2
    for other in (b"QFI\xfb", b"<?xml", b"", bytes(16)):
        assert sniff(other) is ImageKind.RAW


def test_starts_like_xml_needs_a_bracket() -> None:
    assert not starts_like_xml(b"  x<")
    assert not starts_like_xml(b"\xef\xbb\xbfx")
