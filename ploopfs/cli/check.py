"""`ploopfs check`: a read-only diagnosis of a (possibly damaged) disk, exit 0-3 by verdict.
Engine: ploopfs/services/check.py, whose report --json prints; the text lines are rendered
here (docs/check.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ploopfs.cli.common import add_source_args, print_json

if TYPE_CHECKING:
    from ploopfs.services.check import CheckReport, Finding


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
            print(finding_line(f))
        print(summary_line(report))
    return report.exit_code


# -- text -----------------------------------------------------------------------------------------
def location(f: Finding) -> str:
    """Where a finding is: file, byte offset, descriptor element, virtual and physical
    cluster, as far as known ('-' when nothing is)."""
    loc = f.file or ""
    if f.offset is not None:
        loc += f" at offset {f.offset}"
    if f.element is not None:
        loc += f" in <{f.element}>"
    extra = []
    if f.vcluster is not None:
        extra.append(f"virtual cluster {f.vcluster}")
    if f.pcluster is not None:
        extra.append(f"physical cluster {f.pcluster}")
    if extra:
        loc += f" ({', '.join(extra)})"
    return loc.strip() or "-"


def finding_line(f: Finding) -> str:
    """`SEVERITY CODE location: message`, one line per finding (docs/check.md)."""
    return f"{f.severity.name} {f.code} {location(f)}: {f.message}"


def summary_line(report: CheckReport) -> str:
    """The last line: how many findings of each severity, the verdict and the exit code."""
    c = report.counts()
    parts = ", ".join(f"{n} {k}" for k, n in c.items() if n)
    return (f"check: {len(report.findings)} finding(s){' (' + parts + ')' if parts else ''}: "
            f"{report.verdict} (exit {report.exit_code})")
