"""DiskDescriptor.xml: one lenient scan, the strict and salvage policies on top, and the
snapshot names the command line accepts."""

from __future__ import annotations

import pytest

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
