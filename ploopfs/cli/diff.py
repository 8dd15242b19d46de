"""`ploopfs diff`: the clusters that changed between two disks, as an rdiff delta, a stackable
ploop delta or JSON ranges. Engine: ploopfs/services/diff/ (docs/diff.md)."""

from __future__ import annotations

import argparse
from typing import Any

from ploopfs.cli.common import (
    add_allow_outside_paths,
    add_cluster_size,
    add_force,
    print_json,
    progress_bar,
    warn,
)
from ploopfs.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff", help="changed clusters between two disks: rdiff delta, ploop delta or json",
        description="Compare OLD and NEW (any SOURCE, e.g. two snapshots of one descriptor) cluster "
                    "by cluster. rdiff: a librsync delta OUT that `rdiff patch OLD.raw OUT NEW.raw` "
                    "applies, plus the manifest OUT.json; ploop: a folder OUT with a delta image of "
                    "the changed clusters and a DiskDescriptor.xml stacking it on OLD (open it with "
                    "--allow-outside-paths); json: the changed cluster ranges ('-' = stdout).")
    p.add_argument("old", metavar="OLD", help="the earlier disk (SOURCE)")
    p.add_argument("new", metavar="NEW", help="the later disk (SOURCE)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="delta file (rdiff), new folder (ploop) or JSON file (json, '-' = stdout)")
    p.add_argument("--old-snapshot", metavar="GUID", help="snapshot of OLD (default: its top)")
    p.add_argument("--new-snapshot", metavar="GUID", help="snapshot of NEW (default: its top)")
    p.add_argument("-f", "--format", choices=("rdiff", "ploop", "json"), default="rdiff",
                   help="output format (default: rdiff)")
    p.add_argument("--hash", choices=("blake3", "sha256", "blake2b", "none"), default="blake3",
                   help="hash of the whole OLD and NEW disks, the delta and each range (default "
                        "blake3); 'none' reads only clusters the block maps cannot prove unchanged")
    p.add_argument("--full-compare", action="store_true",
                   help="ignore the block maps: read and compare every cluster")
    p.add_argument("--no-mmap", action="store_true",
                   help="copy with preadv instead of mapping the image files (slower; a source "
                        "truncated during the diff then gives an error, not SIGBUS)")
    add_cluster_size(p, "cluster size of raw sources (default: the other side's; 1M when both "
                        "are raw)")
    add_allow_outside_paths(p, "let <File> paths of the descriptors lead outside their folders")
    add_force(p, "OUT (rdiff: and OUT.json; json) (a ploop OUT folder must be new or empty)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from ploopfs.services.diff import DiffOptions, diff, open_sides, work_bytes
    from ploopfs.volume.source import OpenOptions

    if args.json and args.format == "json" and args.output == "-":
        raise UsageError("--json and '-o -' both write to stdout; choose one")
    if args.force and args.format == "ploop":
        raise UsageError("--force replaces an output file; a ploop folder must be new or empty")
    opts = DiffOptions(hash=None if args.hash == "none" else args.hash,
                       full_compare=args.full_compare, mmap=not args.no_mmap)
    sides = open_sides(args.old, args.new, args.old_snapshot, args.new_snapshot,
                       OpenOptions(cluster_size=args.cluster_size,
                                   allow_outside_paths=args.allow_outside_paths))
    try:
        with progress_bar(lambda: work_bytes(sides, opts), "diff", not args.no_progress) as prog:
            opts.progress = prog
            report = diff(sides, args.output, args.format, opts, replace=args.force)
        warn(sides.old_disk.warnings + [w for w in sides.new_disk.warnings
                                        if w not in sides.old_disk.warnings])
    finally:
        sides.close()
    if args.json:
        print_json(report)
    return 0
