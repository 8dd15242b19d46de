"""Fuzz target: `check` (services/check.py) on a fuzzed folder: DiskDescriptor.xml and image
files f0, f1, … (container format, common.pack). Input: the container.

`check` is documented never to raise on damaged input (docs/check.md): here *any* exception is a
finding, PloopfsError included. It is checked deep, on the folder and on the first image alone.
Beyond that: when check finds nothing worse than warnings, a strict open_source of the folder
and a read of the disk's first bytes must succeed (what check passes, the readers read)."""

from __future__ import annotations

import os

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.services.check import Severity, check
    from ploopfs.volume.source import open_source

WORK = common.workdir()
FOLDER = os.path.join(WORK, "disk")
os.makedirs(FOLDER)


def readable_if_clean(source: str, worst: int) -> None:
    if worst > Severity.WARNING:
        return
    with open_source(source) as disk:  # a PloopfsError here escapes: a finding
        vol = disk.volume()
        got = vol.read(0, 4096)
        if len(got) != min(4096, vol.size):
            raise common.Finding(f"read(0, 4096) returned {len(got)} bytes")


def test_one_input(data: bytes) -> None:
    n = common.write_folder(FOLDER, data)
    rep = check(FOLDER, deep=True)
    rep.to_json()
    readable_if_clean(FOLDER, rep.exit_code)
    if n:
        one = os.path.join(FOLDER, "f0")
        rep = check(one, deep=True)
        rep.to_json()
        readable_if_clean(one, rep.exit_code)


if __name__ == "__main__":
    common.main(test_one_input)
