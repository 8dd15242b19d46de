"""`ploopfs info` and `ploopfs snapshots`: what a ploop disk holds. Engine:
ploopfs/services/info.py (plain data; --json prints it as is)."""

from __future__ import annotations

import argparse
from typing import Any

from ploopfs.cli.common import add_source_args, open_disk, print_json, warn


def register(sub: Any) -> None:
    p = sub.add_parser("info", help="disk size, images, headers, snapshot tree, partitions",
                       description="Describe a ploop disk: every image and header field, the "
                                   "snapshot tree, the partition table and filesystems inside.")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("snapshots", help="the snapshot tree (like `ploop snapshot-list`)",
                       description="List the snapshots of a descriptor as a tree; * marks the top.")
    add_source_args(p, snapshot=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshots)


def cmd_info(args: argparse.Namespace) -> int:
    from ploopfs.services.info import disk_info, format_info

    with open_disk(args) as disk:
        info = disk_info(disk, args.snapshot)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from ploopfs.services.info import format_snapshot_list, snapshot_tree

    with open_disk(args) as disk:
        shots = snapshot_tree(disk)
        warn(disk.warnings)
    if args.json:
        print_json({"top_guid": disk.descriptor.top_guid, "snapshots": shots})
    else:
        print(format_snapshot_list(shots))
    return 0
