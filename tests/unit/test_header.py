"""The header as the format layer reads it: one set of rules, a strict and a lenient policy."""

from __future__ import annotations

import pytest

from ploopfs.errors import BadImageError
from ploopfs.format.findings import Severity
from ploopfs.format.header import (
    CIF_FMT_VERSION_CONVERT,
    DISK_IN_USE,
    HEADER_SIZE,
    decode_header,
    header_anomalies,
    new_header,
    parse_header,
)

MiB = 1 << 20


@pytest.mark.parametrize("version", [1, 2])
def test_new_header_packs_and_parses_back_clean(version: int) -> None:
    h = new_header(10 * MiB + 1, MiB, version)
    assert h.bat_entries == 11 and h.disk_bytes == 11 * MiB and h.version == version
    data = h.pack()
    assert len(data) == HEADER_SIZE
    assert parse_header(data) == h
    assert header_anomalies(h, file_size=h.bat_clusters * h.cluster_size) == []


def test_size_is_the_whole_clusters_of_m_size_in_sectors() -> None:
    h = new_header(10 * MiB, MiB).with_(size_sectors=19532)  # a qemu image: 9.54 clusters
    assert h.disk_bytes == 9 * MiB
    [a] = header_anomalies(h)
    assert a.code == "SIZE_FIELDS" and a.severity is Severity.WARNING


@pytest.mark.parametrize(("change", "code", "severity"), [
    ({"type": 3}, "HEADER_TYPE", Severity.DAMAGED),
    ({"cluster_sectors": 0}, "CLUSTER_SIZE", Severity.FATAL),
    ({"cluster_sectors": 1 << 24}, "CLUSTER_SIZE", Severity.FATAL),
    ({"cluster_sectors": 3, "size_sectors": 12}, "CLUSTER_SIZE", Severity.WARNING),
    ({"bat_entries": 1}, "SIZE_FIELDS", Severity.DAMAGED),
    ({"first_block_offset": 7}, "FIRST_BLOCK_OFFSET", Severity.WARNING),
    ({"in_use": DISK_IN_USE}, "DIRTY", Severity.WARNING),
    ({"in_use": 0x12345678}, "IN_USE_TAG", Severity.INFO),
    ({"flags": CIF_FMT_VERSION_CONVERT}, "VERSION_CONVERT", Severity.DAMAGED),
    ({"flags": 0x100}, "FLAGS_UNKNOWN", Severity.INFO),
])
def test_each_rule_once_with_its_severity(change: dict[str, int], code: str,
                                          severity: Severity) -> None:
    h = new_header(4 * MiB, MiB, 2).with_(**change)
    found = [a for a in header_anomalies(h) if a.code == code]
    assert [a.severity for a in found] == [severity]
    data = h.pack()
    _decoded, anomalies = decode_header(data)  # lenient: never raises for a field
    assert code in {a.code for a in anomalies}
    if severity >= Severity.DAMAGED:  # the strict policy refuses exactly these
        with pytest.raises(BadImageError) as e:
            parse_header(data, "x.hds")
        assert e.value.offset == found[0].offset
    if severity is Severity.DAMAGED:  # salvage's policy reads past them
        assert parse_header(data, accept=Severity.DAMAGED).cluster_sectors == h.cluster_sectors
    if severity < Severity.DAMAGED:
        parse_header(data)


def test_no_header_to_decode() -> None:
    with pytest.raises(BadImageError, match="truncated"):
        decode_header(b"WithouFreSpacExt")
    with pytest.raises(BadImageError, match="not a ploop image"):
        decode_header(bytes(64))


def test_file_not_cluster_aligned() -> None:
    h = new_header(4 * MiB, MiB)
    assert [a.code for a in header_anomalies(h, file_size=MiB + 5)] == ["FILE_NOT_CLUSTER_ALIGNED"]
