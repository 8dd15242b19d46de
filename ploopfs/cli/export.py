"""`ploopfs export`: a snapshot as a sparse raw file, a raw stream or a new ploop disk. Engine:
ploopfs/services/export.py."""

from __future__ import annotations

import argparse
from typing import Any

from ploopfs.cli.common import (
    add_force,
    add_salvage,
    add_source_args,
    data_replaced,
    open_disk,
    print_json,
    progress_bar,
    warn,
)
from ploopfs.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="flatten a snapshot to a raw file or a new ploop disk",
                       description="Write the virtual disk of a snapshot as a sparse raw file "
                                   "(OUTPUT '-' streams to stdout) or as a new single-image v2 "
                                   "ploop disk in the folder OUTPUT. Exit 0, or with --salvage 15 "
                                   "when damaged data was served as zeros or older data (listed "
                                   "in the report; docs/salvage.md).")
    add_source_args(p)
    p.add_argument("output", metavar="OUTPUT", help="file (raw), '-' (raw to stdout) or folder")
    p.add_argument("-f", "--format", choices=("raw", "ploop"), default="raw",
                   help="output format (default: raw)")
    add_force(p, "the raw OUTPUT file (a ploop OUTPUT folder must be new or empty)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_salvage(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ploopfs.services.export import export_ploop, export_raw, export_work

    if args.format == "ploop" and args.output == "-":
        raise UsageError("--format ploop writes a folder; '-' is only for raw output")
    if args.force and (args.format == "ploop" or args.output == "-"):
        raise UsageError("--force replaces a raw output file; a ploop folder must be new or empty")
    with open_disk(args) as disk:
        vol = disk.volume(args.snapshot)
        total = vol.size if args.output == "-" else export_work(vol)
        with progress_bar(total, "export", not args.no_progress) as prog:
            if args.format == "raw":
                report = export_raw(disk, args.output, args.snapshot, prog, replace=args.force)
            else:
                report = export_ploop(disk, args.output, args.snapshot, prog)
        warn(disk.warnings)
        if disk.salvage_log is not None:
            warn([disk.salvage_log.summary_line()])
    if args.json:
        print_json(report.to_json())
    return ExitCode.DATA_REPLACED if data_replaced(report.salvage) else ExitCode.OK
