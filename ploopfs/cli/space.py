"""`ploopfs du` (with `--dedup`) and `ploopfs compact`: where a disk's space goes, what it
would take after dedup and compression, and a smaller copy. Engines: ploopfs/services/du.py,
compact.py, dedup.py (docs/space.md, docs/dedup.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ploopfs.cli.common import (
    add_allow_outside_paths,
    add_cluster_size,
    open_disk,
    parse_size,
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


def register(sub: Any) -> None:
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
    _dedup_args(p)
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
        return _run_dedup(args)
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


# -- du --dedup (docs/dedup.md) --------------------------------------------------------------
def _size_option(text: str, what: str) -> int:
    """parse_size for an option checked after parsing: its error as one UsageError line."""
    try:
        return parse_size(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{what}: {e}") from None


def _dedup_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--dedup (docs/dedup.md)")
    g.add_argument("--dedup", action="store_true",
                   help="estimate block-level deduplication and compression savings across the "
                        "SOURCEs (each read through its virtual disk; --snapshot applies to all)")
    g.add_argument("--block-sizes", default="4K,128K", metavar="SMALL,LARGE",
                   help="the two dedup block sizes (default 4K,128K); SMALL divides LARGE, "
                        "compression is measured on LARGE blocks")
    g.add_argument("--memory", default="1G", metavar="SIZE",
                   help="memory for the hash tables (default 1G); past it the tables switch to "
                        "consistent hash sampling, reported as such")
    g.add_argument("--sample", type=int, default=1024, metavar="N",
                   help="compression sample: 1 in N distinct LARGE blocks, chosen by content "
                        "hash, so always the same ones (default 1024, ~1 MiB per GiB; 1 = all; "
                        "0 = no compression)")
    g.add_argument("--sample-bits", type=int, default=0, metavar="K",
                   help="start in sampled mode, keeping 1/2^K of the distinct hashes (default "
                        "0: exact while the tables fit --memory)")


def _dedup_options(args: argparse.Namespace):
    from ploopfs.services.dedup import DedupOptions
    from ploopfs.volume.source import OpenOptions

    parts = args.block_sizes.split(",")
    if len(parts) != 2:
        raise UsageError(f"--block-sizes: {args.block_sizes!r} is not SMALL,LARGE")
    small, large = (_size_option(x, "--block-sizes") for x in parts)
    return DedupOptions(
        small=small, large=large, memory=_size_option(args.memory, "--memory"),
        shift=args.sample_bits, sample_every=args.sample, snapshot=args.snapshot,
        open_options=OpenOptions(cluster_size=getattr(args, "cluster_size", None),
                                 allow_outside_paths=getattr(args, "allow_outside_paths", False)))


def _run_dedup(args: argparse.Namespace) -> int:
    from ploopfs.services.dedup import Scanner, format_report, planned_bytes

    o = _dedup_options(args)
    show = sys.stderr.isatty() and not getattr(args, "no_progress", False)
    total = planned_bytes(args.sources, o) if show else 0
    with Scanner(o) as sc, progress_bar(total, "du --dedup", show) as prog:
        for src in args.sources:
            sc.add(src, prog)
        report = sc.report()
    for d in report["disks"]:
        warn(d["warnings"])
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0
