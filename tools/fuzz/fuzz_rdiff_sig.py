"""Fuzz target: rdiff signature parsing (services/rdiff.py read_signature) and the delta
written against a parsed signature (delta_from_signature: the C block index and matcher).
Input: the signature file.

Beyond "only PloopfsError": a delta made from any accepted signature is a well-formed librsync
delta that ploopfs's own patcher accepts against a basis of the signature's size."""

from __future__ import annotations

import io
import os

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import BadDeltaError, PloopfsError
    from ploopfs.services.rdiff import delta_from_signature, patch, read_signature

WORK = common.workdir()
NEW = common.basis_bytes()[1000:] + b"new tail"
BASIS = os.path.join(WORK, "basis")
OUT = os.path.join(WORK, "out")


def read_new(off: int, n: int) -> bytes:
    return NEW[off: off + n]


def test_one_input(data: bytes) -> None:
    try:
        sig = read_signature(io.BytesIO(data))
        delta = io.BytesIO()
        delta_from_signature(sig, read_new, len(NEW), delta, threads=1)
    except PloopfsError:
        return
    # Any basis of nblocks * block bytes: COPY commands only reach into it.
    nbytes = sig.nblocks * sig.params.block_size
    if nbytes > common.MAX_LEN * 64:
        return
    common.write(BASIS, bytes(nbytes))
    try:
        patch(BASIS, io.BytesIO(delta.getvalue()), OUT, replace=True)
    except BadDeltaError as e:
        raise common.Finding(f"our own delta does not apply: {e}") from None
    with open(OUT, "rb") as f:
        if len(f.read()) != len(NEW):
            raise common.Finding("patched output has the wrong size")


if __name__ == "__main__":
    common.main(test_one_input)
