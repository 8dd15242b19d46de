"""Fuzz target: patching with an rdiff delta (services/rdiff.py patch: the delta command parser
and applier in native/pf_patch.c). Input: the delta file, applied to the fixed 8 KiB basis of
common.basis_bytes() (seeds.py makes real `rdiff delta` outputs against it).

Beyond "only PloopfsError": a failed patch leaves no partial output behind."""

from __future__ import annotations

import io
import os

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import PloopfsError
    from ploopfs.services.rdiff import patch

WORK = common.workdir()
BASIS = common.write(os.path.join(WORK, "basis"), common.basis_bytes())
OUT = os.path.join(WORK, "out")


def test_one_input(data: bytes) -> None:
    try:
        patch(BASIS, io.BytesIO(data), OUT)
    except PloopfsError:
        if os.path.exists(OUT):
            raise common.Finding("a failed patch left its partial output") from None
        return
    os.unlink(OUT)


if __name__ == "__main__":
    common.main(test_one_input)
