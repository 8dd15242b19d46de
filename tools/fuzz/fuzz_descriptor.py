"""Fuzz target: DiskDescriptor.xml parsing, strict (format/descriptor.py parse_descriptor) and
diagnostic (format/descriptor_scan.py scan_descriptor, used by `check`), and recovering
(`scan_descriptor(recover=True)`, restore-descriptor's reading of an old damaged descriptor).
Input: the XML bytes.

Beyond "only PloopfsError": scan_descriptor never raises (it reports problems), in either mode; a
descriptor
parse_descriptor accepts is also usable for scan_descriptor, its chain() walks from the top to a
root without a cycle, and render_descriptor's output parses back to the same tree."""

from __future__ import annotations

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import PloopfsError
    from ploopfs.format.descriptor import render_descriptor
    from ploopfs.format.descriptor_scan import parse_descriptor, scan_descriptor


def check_recovered(data: bytes) -> None:
    """Recovery joins the text pieces the parser keeps (a GUID split by a stray `<?` comes
    back whole), so the only oracle here is the common one: it returns or raises a
    PloopfsError, in bounded time and memory."""
    scan_descriptor(data, recover=True)


def test_one_input(data: bytes) -> None:
    check_recovered(data)
    scanned, _problems = scan_descriptor(data)
    try:
        d = parse_descriptor(data, "fuzz.xml")
    except PloopfsError:
        return
    if scanned is None:
        raise common.Finding("parse_descriptor accepts what scan_descriptor cannot use")
    chain = d.chain()
    if len({e.guid for e in chain}) != len(chain):
        raise common.Finding("chain() repeats an image")
    again = parse_descriptor(render_descriptor(d), "rendered.xml")
    if [(i.guid, i.file) for i in again.images] != [(i.guid, i.file) for i in d.images] or \
            [(s.guid, s.parent) for s in again.shots] != [(s.guid, s.parent) for s in d.shots] or \
            again.top_guid != d.top_guid:
        raise common.Finding("render_descriptor does not round-trip")


if __name__ == "__main__":
    common.main(test_one_input)
