"""DiskDescriptor.xml: one lenient scan, the strict and salvage policies on top, and the
snapshot names the command line accepts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploopfs.errors import BadChainError, BadDescriptorError, NotFoundError, UnsupportedError
from ploopfs.format.descriptor import render_descriptor
from ploopfs.format.descriptor_scan import PROBLEMS, parse_descriptor, scan_descriptor
from ploopfs.format.findings import Severity
from ploopfs.format.header import TOP_GUID
from ploopfs.volume.writer import chain_descriptor

G = ["{11111111-0000-0000-0000-000000000001}", "{22222222-0000-0000-0000-000000000002}", TOP_GUID]


def three() -> bytes:
    return render_descriptor(chain_descriptor(["root.hds", "root.hds.1", "root.hds.2"], 1 << 30,
                                              1 << 20, guids=G))


def test_round_trip_and_chain() -> None:
    d = parse_descriptor(three())
    assert [im.guid for im in d.chain()] == G
    assert d.disk_size == (1 << 30) // 512 and d.blocksize == 2048
    assert parse_descriptor(render_descriptor(d)).chain() == d.chain()
    assert scan_descriptor(three())[1] == []


def test_round_trip_without_blocksize() -> None:
    """No <Blocksize> (the images' cluster size applies) renders as none, not as 0, which a
    strict open refuses (found by the descriptor fuzz target)."""
    text = re.sub(rb"\s*<Blocksize>2048</Blocksize>", b"", three())
    d = parse_descriptor(text)
    assert d.blocksize == 0
    again = render_descriptor(d)
    assert b"<Blocksize>" not in again
    assert parse_descriptor(again).chain() == d.chain()


@pytest.mark.parametrize(("edit", "code", "error"), [
    (lambda x: x.replace(b"<Blocksize>2048", b"<Blocksize>2K"), "DESCRIPTOR_NUMBER",
     BadDescriptorError),
    (lambda x: x.replace(b"<Blocksize>2048", b"<Blocksize>0"), "DESCRIPTOR_BLOCKSIZE",
     BadDescriptorError),
    (lambda x: x.replace(G[1].encode(), G[0].encode()), "DESCRIPTOR_DUPLICATE_GUID",
     BadChainError),
    (lambda x: x.replace(b"<Storage>", b"<Storage></Storage><Storage>", 1),
     "DESCRIPTOR_UNSUPPORTED", UnsupportedError),
    (lambda x: x.replace(b"<Disk_Parameters>", b"<Disk_Parametrs>").replace(
        b"</Disk_Parameters>", b"</Disk_Parametrs>"), "DESCRIPTOR_ELEMENT", BadDescriptorError),
    (lambda x: b"<!DOCTYPE x [<!ENTITY a 'b'>]>" + x, "DESCRIPTOR_ENTITIES", BadDescriptorError),
])
def test_one_rule_three_policies(edit, code: str, error: type) -> None:
    data = edit(three())
    _d, problems = scan_descriptor(data)  # check: reports it
    assert code in [p.code for p in problems]
    severity, kind = PROBLEMS[code]
    assert kind is error
    with pytest.raises(error) as e:  # strict: refuses it
        parse_descriptor(data, "DiskDescriptor.xml")
    assert ("--salvage" in e.value.what) == (severity is Severity.DAMAGED)
    if severity is Severity.DAMAGED:  # salvage: reads past it, with a warning
        assert parse_descriptor(data, salvage=True).warnings
    else:
        with pytest.raises(error):
            parse_descriptor(data, salvage=True)


def test_snapshot_names() -> None:
    d = parse_descriptor(three())
    assert d.snapshot_guid("0") == G[0] and d.snapshot_guid("-1") == G[2]
    assert d.snapshot_guid("-2") == G[1] and d.snapshot_guid("2222") == G[1]
    assert d.snapshot_guid(G[0].upper().strip("{}")) == G[0]
    with pytest.raises(NotFoundError, match="not a snapshot GUID, prefix or index"):
        d.snapshot_guid("latest")
    assert [g for g, _ in d.tree_order()] == G
    twins = ["{abcd0000-0000-0000-0000-000000000001}", "{abcd0000-0000-0000-0000-000000000002}",
             TOP_GUID]
    d = parse_descriptor(render_descriptor(chain_descriptor(["a", "b", "c"], 1 << 20, 1 << 20,
                                                            guids=twins)))
    with pytest.raises(NotFoundError, match="ambiguous"):
        d.snapshot_guid("abcd")
    assert d.snapshot_guid("{abcd0000-0000-0000-0000-000000000002") == twins[1]


def test_deep_chain_is_linear() -> None:
    n = 5000
    guids = [f"{{{i:08x}-0000-0000-0000-000000000000}}" for i in range(1, n)] + [TOP_GUID]
    d = parse_descriptor(render_descriptor(chain_descriptor(
        [f"f{i}" for i in range(n)], 1 << 20, 1 << 20, guids=guids)))
    assert len(d.chain()) == n and len(d.tree_order()) == n


def _links(data: bytes) -> tuple[list[tuple[str, str]], dict[str, str], str] | None:
    d, problems = scan_descriptor(data, recover=True)
    if d is None:
        return None
    assert "DESCRIPTOR_MALFORMED" in [p.code for p in problems]
    return [(im.guid, im.file) for im in d.images], {s.guid: s.parent for s in d.shots}, d.top_guid


def _cut_after(data: bytes, marker: bytes, nth: int = 1) -> bytes:
    pos = -1
    for _ in range(nth):
        pos = data.index(marker, pos + 1)
    return data[:pos + len(marker)]


def test_recover_reads_what_is_left_of_a_damaged_descriptor() -> None:
    """restore-descriptor's old descriptor: the one decoder, with libxml2's recovering parser,
    reads a document that is no longer XML (truncated, an element garbled, a zeroed block, its
    beginning lost); the same rules then apply. Strictly, and for `check`, it stays unusable."""
    x = three()
    images = [(G[0], "root.hds"), (G[1], "root.hds.1"), (TOP_GUID, "root.hds.2")]
    every = {G[0]: "{00000000-0000-0000-0000-000000000000}", G[1]: G[0], TOP_GUID: G[1]}
    # Truncated after the second <Shot>: every image, two links; <TopGUID> came before the cut.
    assert _links(_cut_after(x, b"</Shot>", 2)) == (
        images, {G[0]: every[G[0]], G[1]: G[0]}, TOP_GUID)
    # Truncated inside the second <Image>: one image, and its <GUID> cut short is left out.
    assert _links(_cut_after(x, b"<GUID>{2222")) == (images[:1], {}, TOP_GUID)
    # An element garbled (NUL and invalid UTF-8 in a tag, an end tag that does not match): the
    # rest of its <Image> and everything after it are still read.
    assert _links(x.replace(b"<Type>Compressed</Type>\n        <File>root.hds.1",
                            b"<Ty\x00\xffpe>Compressed</Tpe>\n        <File>root.hds.1")) == (
        images, every, TOP_GUID)
    # The beginning zeroed up to the first </Image> (root, parameters and the first image lost,
    # stray end tags after it): the images and shots after it.
    zeroed = bytes(x.index(b"</Image>")) + x[x.index(b"</Image>"):]
    assert _links(zeroed) == (images[1:], {G[1]: G[0], TOP_GUID: G[1]}, TOP_GUID)
    for damaged in (_cut_after(x, b"</Shot>", 2), zeroed):
        assert scan_descriptor(damaged)[0] is None  # check: DESCRIPTOR_MALFORMED, fatal
        with pytest.raises(BadDescriptorError, match="malformed XML"):
            parse_descriptor(damaged, salvage=True)


def test_recover_keeps_the_refusals_and_invents_nothing() -> None:
    x = three()
    # No DTD or entity is loaded in recovery either, and nothing is read past the size cap.
    hostile = b"<!DOCTYPE x [<!ENTITY a 'b'>]>" + _cut_after(x, b"</Image>")
    d, problems = scan_descriptor(hostile, recover=True)
    assert d is None and [p.code for p in problems] == ["DESCRIPTOR_ENTITIES"]
    d, problems = scan_descriptor(x + b" " * (4 << 20), recover=True)
    assert d is None and [p.code for p in problems] == ["DESCRIPTOR_TOO_LARGE"]
    # Nothing readable: no tree, and no exception.
    for junk in (b"", bytes(4096), b"\xff" * 100, b"</a></b>"):
        d, problems = scan_descriptor(junk, recover=True)
        assert d is None and problems[0].code == "DESCRIPTOR_MALFORMED"
    # ploop's compatibility rule (an image of the magic top GUID without a <Shot> is a base) is
    # for whole descriptors: in a truncated one its <Shot> is merely lost, it is no base.
    cut = _cut_after(x, b"</Shot>", 1)
    d, _problems = scan_descriptor(cut, recover=True)
    assert d is not None and {s.guid for s in d.shots} == {G[0]}
    whole = x.replace(x[x.index(b"<Shot>", x.index(b"<Shot>") + 1):x.index(b"</Snapshots>")],
                      b"").replace(b"<Image>\n        <GUID>{2222", b"<Image><GUID>{2222")
    d, problems = scan_descriptor(whole, recover=True)
    assert d is not None and "DESCRIPTOR_COMPAT" in [p.code for p in problems]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(cut=st.integers(0, 2000), edits=st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=40)),
                                                 max_size=4))
def test_recover_never_raises_nor_invents(cut: int, edits: list[tuple[int, bytes]]) -> None:
    """Any truncation and overwrites of a descriptor: recovery never raises, and every GUID it
    returns was in the document (random bytes never spell a GUID here: no hex braces)."""
    data = bytearray(three())
    for off, b in edits:
        data[off:off + len(b)] = b.replace(b"{", b"(")
    d, problems = scan_descriptor(bytes(data[:cut]), recover=True)
    assert all(p.code in PROBLEMS for p in problems)
    if d is not None:
        assert {im.guid for im in d.images} <= set(G)
        assert all(s.guid in G for s in d.shots)
