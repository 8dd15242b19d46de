"""`ploopfs recover`: a clean ploop disk from a damaged one, read with a salvage policy, plus
recovery.json. Engine: ploopfs/services/recover.py (docs/salvage.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ploopfs.cli.common import add_source_args, data_replaced, open_disk, print_json, progress_bar, warn
from ploopfs.errors import ExitCode


def register(sub: Any) -> None:
    p = sub.add_parser("recover", help="a clean ploop disk from a damaged one, plus recovery.json",
                       description="Read SOURCE with a salvage policy and write a new, clean ploop "
                                   "disk into the folder OUTDIR: one v2 delta per readable image, "
                                   "same GUIDs and snapshot tree (or, with --flatten, one image of "
                                   "the chosen snapshot), with recovery.json listing every lost or "
                                   "substituted range (docs/salvage.md). Exit 0, or 15 when data "
                                   "was replaced or lost: see recovery.json.")
    add_source_args(p)
    p.add_argument("outdir", metavar="OUTDIR",
                   help="a new or empty folder (never replaced: there is no --force)")
    p.add_argument("--salvage", choices=("zeros", "older"), default="older",
                   help="serve damaged ranges from the next lower delta (older, default) or as "
                        "zeros")
    p.add_argument("--flatten", action="store_true",
                   help="write the snapshot (-s, default the top) as one image instead of keeping "
                        "the snapshot tree")
    p.add_argument("--json", action="store_true", help="print recovery.json on stdout too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_recover)


def cmd_recover(args: argparse.Namespace) -> int:
    from ploopfs.services.recover import REPORT_NAME, Recovery

    with open_disk(args) as disk:
        rec = Recovery(disk, args.outdir, args.snapshot, flatten=args.flatten)
        with progress_bar(rec.work, "recover", not args.no_progress) as prog:
            out = rec.run(prog)
        warn(disk.warnings)
        warn([f"recover: {len(out.get('dropped_levels', []))} unreadable image(s) left out "
              f"(their data is lost); see {os.path.join(args.outdir, REPORT_NAME)}"]
             if out.get("dropped_levels") else [])
        warn([f"salvage ({out['policy']}): {out['substituted_ranges']} damaged range(s), "
              f"{out['substituted_bytes']} bytes served as "
              f"{'zeros' if out['policy'] == 'zeros' else 'older data or zeros'} "
              f"({out['bat_entries']} bad BAT entries, {out['read_errors']} read errors); see "
              f"{os.path.join(args.outdir, REPORT_NAME)}"])
    if args.json:
        print_json(out)
    return ExitCode.DATA_REPLACED if data_replaced(out) else ExitCode.OK
