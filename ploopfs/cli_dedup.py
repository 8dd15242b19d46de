"""`ploopfs du --dedup DISK...` (issue #6): block-level deduplication and compression estimate
across disks. Engine: ploopfs/services/dedup.py; docs/dedup.md."""

from __future__ import annotations

import argparse
import sys

from ploopfs.cli_common import parse_size, print_json, progress_bar, warn
from ploopfs.errors import UsageError


def _size(text: str, what: str) -> int:
    """parse_size for an option checked after parsing: its error as one UsageError line."""
    try:
        return parse_size(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{what}: {e}") from None


def add_dedup_args(p: argparse.ArgumentParser) -> None:
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


def _options(args: argparse.Namespace):
    from ploopfs.services.dedup import DedupOptions
    from ploopfs.volume.source import OpenOptions

    parts = args.block_sizes.split(",")
    if len(parts) != 2:
        raise UsageError(f"--block-sizes: {args.block_sizes!r} is not SMALL,LARGE")
    small, large = (_size(x, "--block-sizes") for x in parts)
    return DedupOptions(
        small=small, large=large, memory=_size(args.memory, "--memory"),
        shift=args.sample_bits, sample_every=args.sample, snapshot=args.snapshot,
        open_options=OpenOptions(cluster_size=getattr(args, "cluster_size", None),
                                 allow_outside_paths=getattr(args, "allow_outside_paths", False)))


def run_dedup(args: argparse.Namespace) -> int:
    from ploopfs.services.dedup import Scanner, format_report, planned_bytes

    o = _options(args)
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
