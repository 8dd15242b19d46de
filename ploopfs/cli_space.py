"""`ploopfs du` and `ploopfs compact` (issue #6: space), kept apart from cli.py so that file only
gains one call. `du --dedup` is delegated to ploopfs/cli_dedup.py."""

from __future__ import annotations

import argparse
from typing import Any

from ploopfs.errors import UnsupportedError, UsageError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "du", help="how much space a ploop disk uses and wastes",
        description="Per image and per snapshot: allocated, referenced, leaked and shadowed "
                    "clusters; for an ext4 filesystem inside, clusters it uses and clusters "
                    "allocated but holding no used block. With --dedup, estimate block-level "
                    "deduplication and compression across one or many disks.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="DiskDescriptor.xml, its folder, or an image file (several only with --dedup)")
    p.add_argument("-s", "--snapshot", metavar="GUID", help="snapshot to analyse (default: the top)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    from ploopfs.cli_dedup import add_dedup_args

    add_dedup_args(p)
    p.set_defaults(func=cmd_du)


def cmd_du(args: argparse.Namespace) -> int:
    if args.dedup:
        from ploopfs.cli_dedup import run_dedup

        return run_dedup(args)
    if len(args.sources) != 1:
        raise UsageError("du takes one SOURCE (several only with --dedup)")
    raise UnsupportedError("du is not implemented yet")
