"""`ploopfs du` (with `--dedup`) and `ploopfs compact`: where a disk's space goes, what it
would take after dedup and compression, and a smaller copy. Engines: ploopfs/services/du.py,
compact.py, dedup.py (docs/space.md, docs/dedup.md)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ploopfs.cli.common import (
    add_open_options,
    open_disk,
    parse_size,
    print_json,
    progress_bar,
    size_str,
    warn,
)
from ploopfs.errors import UsageError

if TYPE_CHECKING:
    from ploopfs.services.du import DuReport

# Exit code of du/compact when the filesystem analysis has findings (docs/space.md): the
# figures are complete, damaged groups were counted as used (compact kept them whole).
EXIT_FINDINGS = 1


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
    add_open_options(p)
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
    add_open_options(p)
    p.set_defaults(func=cmd_compact)


def cmd_du(args: argparse.Namespace) -> int:
    if args.dedup:
        return _run_dedup(args)
    if len(args.sources) != 1:
        raise UsageError("du takes one SOURCE (several only with --dedup)")
    from ploopfs.services.du import disk_usage

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


def format_du(r: DuReport) -> str:
    """The text report of `ploopfs du` (its --json is r.to_json())."""
    c = r.cluster_size
    cl = r.clusters

    def cs(k: int | None) -> str:
        return "-" if k is None else f"{k} ({size_str(k * c)})"

    lines = [f"source:    {r.source}", f"snapshot:  {r.snapshot}",
             f"disk:      {size_str(r.disk_size)}, clusters of {size_str(c)}, "
             f"{cl['mapped']} of {cl['total']} mapped", "", "images (base first):"]
    for im in r.images:
        lines.append(f"  [{im['level']}] {im['path']}  {im['kind']}")
        lines.append(f"      file {size_str(im['file_size'])}, on disk {size_str(im['disk_bytes'])}"
                     f", sparse holes {size_str(im['hole_bytes'])}")
        if "referenced_clusters" in im:
            lines.append(
                f"      clusters: {im['data_slots']} allocated, {im['referenced_clusters']} "
                f"referenced, {im['leaked_clusters']} leaked, served {im['served_clusters']}, "
                f"shadowed above {im['shadowed_clusters']} (kept only for snapshots)")
            lines.append(f"      preallocated tail {size_str(im['prealloc_tail_bytes'])} "
                         f"({size_str(im['prealloc_tail_data_bytes'])} on disk)")
        else:
            lines.append(f"      raw base, serves {im['served_clusters']} clusters")
    lines += ["", f"partition table: {r.partition_scheme}"]
    for fs in r.filesystems:
        lines.append(f"  {fs['where']}: {fs['kind']}" + (f" {fs['label']!r}" if fs["label"] else "")
                     + f", {size_str(fs['size_bytes'])}, {fs['block_size']}-byte blocks")
        if "blocks" not in fs:  # the superblock alone: not analysed, and why
            lines.append(f"      {fs['note']}")
            continue
        b, i = fs["blocks"], fs["inodes"]
        lines.append(f"      blocks: {b['used']} used, {b['free']} free, {b['available']} "
                     f"available of {b['total']}; inodes: {i['used']} used, {i['free']} free of "
                     f"{i['total']}")
        fc = fs["clusters"]
        if fc is None:
            lines.append("      clusters: not analysed (see findings); kept whole by compact")
            continue
        lines.append(f"      clusters: {cs(fc['mapped'])} allocated, {cs(fc['used'])} used by "
                     f"the fs, {cs(fc['wasted'])} wasted (allocated, no used block)")
        if fc["used_unmapped"]:
            lines.append(
                f"      ({cs(fc['used_unmapped'])} of the used are holes in the image: the fs "
                "counts their blocks as used (its metadata, e.g. inode tables and journal, or "
                "preallocated blocks) but they were never written, so they read as zeros and "
                "take no space; this is why used can exceed allocated)")
    for o in r.others:
        lines.append(f"  {o['where']}: {o['kind'] or 'unknown'}, {size_str(o['size_bytes'])}: "
                     f"{o['note']}")
    lines.append(f"  outside filesystems: {cs(cl['outside_filesystems_mapped'])} allocated")
    if cl["zero"] is not None:
        lines.append(f"  all-zero clusters: {cs(cl['zero'])} ({cs(cl['zero_kept'])} of them "
                     "otherwise kept)")
    t = r.total
    lines += ["", f"compact would write about {size_str(t['compact_estimate_bytes'])} "
                  f"({cl['kept_by_compact']} clusters kept)",
              f"wasted {size_str(t['wasted_bytes'])} of {size_str(t['disk_bytes'])} "
              f"({t['wasted_percent']:.1f} %)"]
    lines += [f"finding: {f}" for f in r.findings]
    return "\n".join(lines)


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
    from ploopfs.services.dedup import Scanner, planned_bytes

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
        print(format_dedup(report))
    return 0


def _ratio(x: float | None) -> str:
    """A ratio as text: 'n/a' when nothing was measured (never a made-up 1.00x)."""
    return "n/a" if x is None else f"{x:.2f}x"


def format_dedup(r: dict[str, Any]) -> str:
    """The text report of `ploopfs du --dedup` (its --json is `r` itself)."""
    from ploopfs.services.dedup import ASHIFT, COMPRESSORS, size_text

    t = r["totals"]
    lines = [f"du --dedup: {len(r['disks'])} disk(s), {size_text(t['virtual_bytes'])} virtual, "
             f"{size_text(t['read_bytes'])} allocated and read, {size_text(t['unallocated_bytes'])} "
             f"unallocated (skipped); image files {size_text(t['image_bytes'])}"]
    for tb in r["block_sizes"]:
        lines += _dedup_table_lines(tb)
    c = r["compression"]
    if c:
        lines.append(f"compression of a sample: 1 in {c['sample_every']} distinct "
                     f"{size_text(c['block_size'])} blocks by content hash: "
                     f"{c['distinct_blocks']} blocks, {size_text(c['distinct_bytes'])}")
        lines.append("  " + "   ".join(f"{n} {_ratio(c[n]['ratio'])}" for n in COMPRESSORS)
                     + "  (referenced; after dedup: "
                     + ", ".join(f"{n} {_ratio(c[n]['ratio_distinct'])}" for n in COMPRESSORS)
                     + ")")
        if not c["distinct_blocks"]:
            lines.append("  (no block was sampled: use a smaller --sample)")
    cb = r["combined"]
    if c and c["distinct_blocks"]:
        lines.append(f"dedup x compress at {size_text(cb['block_size'])} (ZFS allocation, ashift "
                     f"{ASHIFT}): {size_text(cb['referenced_bytes'])} referenced -> "
                     + ", ".join(f"{n} {size_text(cb[n]['stored_bytes'])} ({_ratio(cb[n]['ratio'])})"
                                 for n in COMPRESSORS))
    return "\n".join(lines)


def _dedup_table_lines(tb: dict[str, Any]) -> list[str]:
    from ploopfs.services.dedup import size_text

    bs = tb["block_size"]
    approx = "" if tb["mode"] == "exact" else "~"
    mode = ("exact" if tb["mode"] == "exact" else
            f"sampled: 1/{round(1 / tb['sample_fraction'])} of distinct hashes kept "
            f"({tb['kept_entries']} entries), an unbiased estimate of the dedup ratio")
    lines = [
        f"{size_text(bs)} blocks ({mode}):",
        f"  referenced {tb['referenced_blocks']} ({size_text(tb['referenced_bytes'])}), "
        f"allocated after dedup {approx}{tb['allocated_blocks']} "
        f"({size_text(tb['allocated_bytes'])}); all-zero {tb['zero_blocks']}, "
        f"unallocated {tb['unallocated_blocks']} (neither stored)",
        f"  entries: unique (refcnt 1) {approx}{tb['unique_entries']}, duplicate "
        f"{approx}{tb['duplicate_entries']} holding {approx}{tb['duplicate_refs']} references;"
        f" dedup ratio {_ratio(tb['dedup_ratio'])}",
        f"  {'refcnt':>8} {'entries':>12} {'LSIZE':>10} {'refs':>12} {'ref LSIZE':>10}",
    ]
    for h in tb["histogram"]:
        lines.append(f"  {h['refcnt']:>8} {h['entries']:>12} {size_text(h['entries'] * bs):>10} "
                     f"{h['refs']:>12} {size_text(h['refs'] * bs):>10}")
    return lines
