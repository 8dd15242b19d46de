"""`ploopfs du` and `ploopfs compact` (issue #6: space), kept apart from cli.py so that file only
gains one call. `du --dedup` is delegated to ploopfs/cli_dedup.py. Engines:
ploopfs/services/du.py, compact.py and fsusage.py (docs/space.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ploopfs.cli_common import (
    add_allow_outside_paths,
    add_cluster_size,
    open_disk,
    print_json,
    progress_bar,
    warn,
)
from ploopfs.errors import UsageError

# Exit code of du/compact when the filesystem analysis has findings (docs/space.md): the
# figures are complete, damaged groups were counted as used (compact kept them whole).
EXIT_FINDINGS = 1


def _common_args(p: argparse.ArgumentParser) -> None:
    add_cluster_size(p)
    add_allow_outside_paths(p)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "du", help="how much space a ploop disk uses and wastes",
        description="Per image and per snapshot: allocated, referenced, leaked and shadowed "
                    "clusters; for an ext4 filesystem inside, clusters it uses and clusters "
                    "allocated but holding no used block. With --dedup, estimate block-level "
                    "deduplication and compression across one or many disks. Exit 0, or 1 when "
                    "the filesystem metadata has findings (docs/space.md).")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="DiskDescriptor.xml, its folder, or an image file (several only with --dedup)")
    p.add_argument("-s", "--snapshot", metavar="GUID", help="snapshot to analyse (default: the top)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--zeros", action="store_true",
                   help="also read every allocated cluster to count all-zero ones (reads all data)")
    _common_args(p)
    from ploopfs.cli_dedup import add_dedup_args

    add_dedup_args(p)
    p.set_defaults(func=cmd_du)

    p = sub.add_parser(
        "compact", help="a new, smaller ploop disk without unused and zero clusters",
        description="Write a new single-image v2 ploop disk into OUTDIR holding the clusters "
                    "the ext2/3/4 filesystems inside use, everything outside them (partition "
                    "tables, other filesystems), no all-zero clusters, in virtual order. The "
                    "source is only read. Exit 0, or 1 when the filesystem metadata has "
                    "findings (damaged groups kept whole; docs/space.md).")
    p.add_argument("source", metavar="SOURCE",
                   help="DiskDescriptor.xml, the folder holding it, or a ploop image file")
    p.add_argument("outdir", metavar="OUTDIR",
                   help="a new or empty folder (never replaced: there is no --force)")
    p.add_argument("-s", "--snapshot", metavar="GUID", help="snapshot to compact (default: the top)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common_args(p)
    p.set_defaults(func=cmd_compact)


def cmd_du(args: argparse.Namespace) -> int:
    if args.dedup:
        from ploopfs.cli_dedup import run_dedup

        return run_dedup(args)
    if len(args.sources) != 1:
        raise UsageError("du takes one SOURCE (several only with --dedup)")
    from ploopfs.services.du import disk_usage, format_du

    with open_disk(args, args.sources[0]) as disk:
        report = disk_usage(disk, args.snapshot, zeros=args.zeros)
    if args.json:
        print_json(report.to_json())
    else:
        print(format_du(report))
        warn(report.warnings)
    return EXIT_FINDINGS if report.findings else 0


def cmd_compact(args: argparse.Namespace) -> int:
    from ploopfs.services.compact import compact, compact_plan
    from ploopfs.services.du import size_str

    with open_disk(args) as disk:
        plan = compact_plan(disk, args.snapshot)
        with progress_bar(plan.work_bytes, "compact", not args.no_progress) as prog:
            report = compact(disk, args.outdir, args.snapshot, prog, plan)
        warn(disk.warnings)
    warn(report.findings)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.output}: {size_str(report.output_file_bytes)} written "
              f"(source {size_str(report.source_disk_bytes)} on disk, "
              f"{size_str(report.source_file_bytes)} files); {report.clusters_written} clusters, "
              f"{report.clusters_unused_dropped} unused and {report.clusters_zero_dropped} zero "
              "clusters dropped", file=sys.stderr)
    return EXIT_FINDINGS if report.findings else 0
