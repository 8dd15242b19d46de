"""`ploopfs export`: a snapshot as a sparse raw file, a raw stream, a new ploop disk or qcow2 (one
file, or with --keep-snapshots one per image of the chain). Engine:
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
    p = sub.add_parser("export", help="flatten a snapshot to a raw file, a new ploop disk or qcow2",
                       description="Write the virtual disk of a snapshot as a sparse raw file "
                                   "(OUTPUT '-' streams to stdout), as a new single-image v2 "
                                   "ploop disk in the folder OUTPUT, or as a qcow2 v3 file "
                                   "(64 KiB clusters; with --keep-snapshots one qcow2 per image "
                                   "of the chain in the folder OUTPUT, each backed by its "
                                   "parent; the top's path is printed). Exit 0, or with "
                                   "--salvage 15 "
                                   "when damaged data was served as zeros or older data (listed "
                                   "in the report; docs/salvage.md).")
    add_source_args(p)
    p.add_argument("output", metavar="OUTPUT",
                   help="file (raw, qcow2), '-' (raw to stdout) or folder (ploop, "
                        "qcow2 --keep-snapshots)")
    p.add_argument("-f", "--format", choices=("raw", "ploop", "qcow2"), default="raw",
                   help="output format (default: raw)")
    p.add_argument("--keep-snapshots", action="store_true",
                   help="qcow2: one file per image of the chain up to the snapshot, "
                        "OUTPUT/<guid>.qcow2, each backed by its parent")
    add_force(p, "the raw or qcow2 OUTPUT file (an OUTPUT folder must be new or empty)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_salvage(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ploopfs.services.export import (
        export_ploop,
        export_qcow2,
        export_qcow2_work,
        export_raw,
        export_work,
    )

    if args.format != "raw" and args.output == "-":
        raise UsageError(f"--format {args.format} cannot stream; '-' is only for raw output")
    if args.keep_snapshots and args.format != "qcow2":
        raise UsageError("--keep-snapshots is for --format qcow2")
    folder = args.format == "ploop" or args.keep_snapshots
    if args.force and (folder or args.output == "-"):
        raise UsageError("--force replaces a raw or qcow2 output file; an output folder must "
                         "be new or empty")
    with open_disk(args) as disk:
        if args.format == "qcow2":
            total = export_qcow2_work(disk, args.snapshot, args.keep_snapshots)
        else:
            vol = disk.volume(args.snapshot)
            total = vol.size if args.output == "-" else export_work(vol)
        with progress_bar(total, "export", not args.no_progress) as prog:
            if args.format == "raw":
                report = export_raw(disk, args.output, args.snapshot, prog, replace=args.force)
            elif args.format == "qcow2":
                report = export_qcow2(disk, args.output, args.snapshot, prog,
                                      keep_snapshots=args.keep_snapshots, replace=args.force)
            else:
                report = export_ploop(disk, args.output, args.snapshot, prog)
        warn(disk.warnings)
        if disk.salvage_log is not None:
            warn([disk.salvage_log.summary_line()])
    if args.json:
        print_json(report.to_json())
    elif args.keep_snapshots:
        print(report.output)
    return ExitCode.DATA_REPLACED if data_replaced(report.salvage) else ExitCode.OK
