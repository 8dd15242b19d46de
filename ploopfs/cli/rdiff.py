"""`ploopfs signature|delta|patch`: the rdiff drop-in commands, on plain files and on the
virtual disk of any ploop SOURCE. Engine: ploopfs/services/rdiff.py (docs/rdiff.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from ploopfs.cli.common import add_force, print_json, progress_bar, warn
from ploopfs.errors import NotFoundError, OutputError

ReadAt = Callable[[int, int], Any]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "signature", help="rdiff signature of a file or ploop disk (byte-identical to rdiff)",
        description="Write the librsync signature of BASIS to SIG ('-' = stdout), byte-identical "
                    "to `rdiff signature` with the same options. BASIS is a plain file or any "
                    "ploopfs SOURCE (its virtual disk).")
    p.add_argument("basis", metavar="BASIS")
    p.add_argument("sig", metavar="SIG")
    p.add_argument("-H", "--hash", choices=("md4", "blake2"), default="blake2",
                   help="strong hash (default: blake2)")
    p.add_argument("-R", "--rollsum", choices=("rollsum", "rabinkarp"), default="rabinkarp",
                   help="weak sum (default: rabinkarp)")
    p.add_argument("-b", "--block-size", type=int, default=0, metavar="N",
                   help="block size in bytes; 0 (default) = rdiff's sqrt(size) rule")
    p.add_argument("-S", "--sum-size", type=int, default=0, metavar="N",
                   help="strong sum bytes kept; 0 (default) = all, -1 = rdiff's minimum")
    _common(p, snapshot=True)
    p.set_defaults(func=cmd_signature)

    p = sub.add_parser(
        "delta", help="rdiff delta from a signature (aligned blocks, fast-rdiff mode)",
        description="Write the librsync delta that turns the basis of SIG into NEW, matching "
                    "whole aligned blocks (as in disk images) instead of rolling byte by byte. "
                    "Accepts every signature rdiff writes. `rdiff patch` applies the result.")
    p.add_argument("sig", metavar="SIG", help="rdiff signature ('-' = stdin)")
    p.add_argument("new", metavar="NEW", help="plain file or any ploopfs SOURCE")
    p.add_argument("delta", metavar="DELTA", help="output file ('-' = stdout)")
    _common(p, snapshot=True)
    p.set_defaults(func=cmd_delta)

    p = sub.add_parser(
        "patch", help="apply an rdiff delta (like rdiff patch)",
        description="Apply the librsync delta DELTA ('-' = stdin) to the plain file BASIS, "
                    "writing OUT (zero runs become holes). Deltas carry no checksum: the result "
                    "is only right with the right basis.")
    p.add_argument("basis", metavar="BASIS")
    p.add_argument("delta", metavar="DELTA")
    p.add_argument("out", metavar="OUT", help="output file ('-' = stdout)")
    _common(p, snapshot=False)
    p.set_defaults(func=cmd_patch)


def _common(p: argparse.ArgumentParser, snapshot: bool) -> None:
    if snapshot:
        p.add_argument("-s", "--snapshot", metavar="GUID",
                       help="for a ploop SOURCE: snapshot to read (default: the top)")
    add_force(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- inputs and outputs ------------------------------------------------------------------------
def _is_ploop_source(path: str) -> bool:
    """A folder, DiskDescriptor.xml or ploop image; anything else is read as a plain file."""
    if os.path.isdir(path):
        return True
    from ploopfs.format.probe import FileKind, probe

    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise NotFoundError("no such file or folder", path) from None
    # Only an *.xml file that starts like XML is taken for a descriptor: a plain file may begin
    # with any bytes, '<' included.
    kind = probe(head)
    return kind.is_ploop or (kind is FileKind.XML and path.lower().endswith(".xml"))


@contextmanager
def open_input(path: str, snapshot: str | None) -> Iterator[tuple[ReadAt, int]]:
    """(read_at, size) of a plain file, or of the virtual disk of a ploop SOURCE."""
    if not _is_ploop_source(path):
        if snapshot:
            from ploopfs.errors import UsageError

            raise UsageError(f"--snapshot needs a ploop source; {path} is a plain file")
        from ploopfs.services.rdiff import FileReader

        with FileReader(path) as fr:
            yield fr, fr.size
        return
    from ploopfs.volume.source import open_source

    with open_source(path) as disk:
        vol = disk.volume(snapshot)
        warn(disk.warnings)
        yield vol.read, vol.size


@contextmanager
def open_output(path: str, force: bool) -> Iterator[BinaryIO]:
    """A buffered binary output ('-' = standard output); a partial file of ours is removed if
    writing fails. Opened after the inputs, so that fileio knows every source."""
    from ploopfs.volume import fileio

    if path == "-":
        fileio.check_stdout()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    fd = fileio.create(path, replace=force, what="rdiff",
                       hint="; pass --force to replace an earlier output")
    f = os.fdopen(fd, "wb", buffering=1 << 20)
    ok = False
    try:
        yield f
        f.close()
        ok = True
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise OutputError(f"write failed: {e.strerror}", path) from None
    finally:
        if not ok:
            f.close()
            fileio.remove(path)


def _summary(args: argparse.Namespace, obj: dict[str, Any], to_stdout: bool) -> None:
    if args.json:
        print_json(obj, sys.stdout if to_stdout else sys.stderr)


# -- commands -----------------------------------------------------------------------------------
def cmd_signature(args: argparse.Namespace) -> int:
    from ploopfs.services.rdiff import SigParams, write_signature

    params = SigParams(args.hash, args.rollsum, args.block_size, args.sum_size)
    t0 = time.monotonic()
    with open_input(args.basis, args.snapshot) as (read_at, size), \
            open_output(args.sig, args.force) as out, \
            progress_bar(size, "signature", not args.no_progress) as prog:
        p = write_signature(read_at, size, out, params, progress=prog, where=args.basis)
    nblocks = -(-size // p.block_size)
    _summary(args, {
        "basis": args.basis, "basis_size": size, "signature": args.sig,
        "magic": f"0x{p.magic:08x}", "hash": p.hash, "rollsum": p.rollsum,
        "block_size": p.block_size, "sum_size": p.sum_size, "blocks": nblocks,
        "signature_bytes": 12 + nblocks * (4 + p.sum_size),
        "seconds": round(time.monotonic() - t0, 3)}, args.sig != "-")
    return 0


def cmd_delta(args: argparse.Namespace) -> int:
    from ploopfs.services.rdiff import delta_from_signature, read_signature

    t0 = time.monotonic()
    try:
        sig = read_signature(sys.stdin.buffer if args.sig == "-" else args.sig)
    except FileNotFoundError:
        raise NotFoundError("no such file", args.sig) from None
    with open_input(args.new, args.snapshot) as (read_at, size), \
            open_output(args.delta, args.force) as out, \
            progress_bar(size, "delta", not args.no_progress) as prog:
        stats = delta_from_signature(sig, read_at, size, out, progress=prog, where=args.new)
    p = sig.params
    _summary(args, {
        "signature": args.sig, "magic": f"0x{p.magic:08x}", "hash": p.hash,
        "rollsum": p.rollsum, "block_size": p.block_size, "sum_size": p.sum_size,
        "basis_blocks": sig.nblocks, "new": args.new, "new_size": size, "delta": args.delta,
        **stats.to_json(), "seconds": round(time.monotonic() - t0, 3)}, args.delta != "-")
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    from ploopfs.services.rdiff import patch

    t0 = time.monotonic()
    if not os.path.exists(args.basis):
        raise NotFoundError("no such file", args.basis)
    if args.delta != "-" and not os.path.exists(args.delta):
        raise NotFoundError("no such file", args.delta)
    delta = sys.stdin.buffer if args.delta == "-" else args.delta
    total = os.path.getsize(args.basis)
    with progress_bar(total, "patch", not args.no_progress) as prog:
        stats = patch(args.basis, delta, args.out, replace=args.force, progress=prog)
    _summary(args, {"basis": args.basis, "delta": args.delta, "output": args.out,
                    **stats.to_json(), "seconds": round(time.monotonic() - t0, 3)},
             args.out != "-")
    return 0
