"""Fuzz target: the 64-byte header (format/header.py) and the format extension cluster
(format/extension.py). Input: header bytes, then (optionally) an extension cluster.

Beyond "only PloopfsError": a header parse_header accepts packs back to the same 64 bytes, its
derived sizes are consistent, and decode_header_fields agrees with it."""

from __future__ import annotations

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import PloopfsError
    from ploopfs.format.extension import parse_extension
    from ploopfs.format.header import (
        HEADER_SIZE,
        SIG_V1,
        chs_geometry,
        decode_header_fields,
        parse_header,
        sniff,
    )


def check_header(data: bytes) -> None:
    sniff(data[:16])
    if len(data) >= HEADER_SIZE:
        raw = decode_header_fields(data)
        if raw.pack() != data[:HEADER_SIZE]:
            raise common.Finding("decode_header_fields does not round-trip through pack()")
    try:
        h = parse_header(data, "fuzz.hdd")
    except PloopfsError:
        return
    if h != decode_header_fields(data):
        raise common.Finding("parse_header and decode_header_fields disagree")
    if h.pack() != data[:HEADER_SIZE]:
        raise common.Finding("parse_header does not round-trip through pack()")
    if h.cluster_size <= 0 or h.bat_clusters * h.cluster_size < HEADER_SIZE + 4 * h.bat_entries:
        raise common.Finding(f"header/BAT area {h.bat_clusters} clusters cannot hold the BAT")
    if h.bat_slots < h.bat_entries:
        raise common.Finding(f"bat_slots {h.bat_slots} < m_Size {h.bat_entries}")
    if h.entry_unit != (512 if h.signature == SIG_V1 else h.cluster_size):
        raise common.Finding("entry unit does not follow the version")
    h.in_use_name()
    if h.size_sectors < (1 << 40):
        cyl, heads, spt = chs_geometry(h.size_sectors)
        if h.size_sectors and cyl * heads * spt > h.size_sectors:
            raise common.Finding(f"CHS {cyl}/{heads}/{spt} larger than {h.size_sectors} sectors")


def check_extension(data: bytes) -> None:
    cluster = data[HEADER_SIZE:]
    try:
        ext = parse_extension(cluster, len(cluster), "fuzz.hdd", 4096)
    except PloopfsError:
        return
    for bm in ext.bitmaps:
        if bm.granularity == 0 and bm.bits:
            raise common.Finding("a bitmap of granularity 0 has bits")


def test_one_input(data: bytes) -> None:
    check_header(data)
    check_extension(data)


if __name__ == "__main__":
    common.main(test_one_input)
