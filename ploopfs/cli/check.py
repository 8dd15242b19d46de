"""`ploopfs check`: a read-only diagnosis of a (possibly damaged) disk, exit 0-3 by verdict.
Engine: ploopfs/services/check.py (docs/check.md)."""

from __future__ import annotations

import argparse
from typing import Any

from ploopfs.cli.common import add_source_args, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="read-only diagnosis of a (possibly damaged) disk",
                       description="Check headers, BATs, the descriptor, the chain and the "
                                   "partition table without writing anything. Exit: 0 clean, "
                                   "1 warnings, 2 damaged but salvageable, 3 unreadable "
                                   "(docs/check.md).")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--deep", action="store_true",
                   help="also read every referenced cluster (I/O errors, holes, shadowed copies)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ploopfs.services.check import check

    report = check(args.source, args.snapshot, args.deep,
                   allow_outside_paths=args.allow_outside_paths, raw_cluster_size=args.cluster_size)
    if args.json:
        print_json(report.to_json())
    else:
        for f in report.findings:
            print(f.line())
        print(report.summary_line())
    return report.exit_code
