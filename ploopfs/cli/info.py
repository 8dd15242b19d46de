"""`ploopfs info` and `ploopfs snapshots`: what a ploop disk holds. Engine:
ploopfs/services/info.py, whose plain data --json prints as is; the text reports are rendered
here."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ploopfs.cli.common import add_source_args, open_disk, print_json, size_str, warn


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
    from ploopfs.services.info import disk_info

    with open_disk(args) as disk:
        info = disk_info(disk, args.snapshot)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from ploopfs.services.info import snapshot_tree

    with open_disk(args) as disk:
        shots = snapshot_tree(disk)
        warn(disk.warnings)
    if args.json:
        print_json({"top_guid": disk.descriptor.top_guid, "snapshots": shots})
    else:
        print(format_snapshot_list(shots))
    return 0


# -- text -----------------------------------------------------------------------------------------
def format_info(info: dict[str, Any]) -> str:
    d = info["disk"]
    lines = [
        f"source:        {info['source']}",
        f"snapshot:      {info['snapshot']}" + (" (top)" if info["snapshot"] == info["top_guid"]
                                                else ""),
        f"disk size:     {size_str(d['size_bytes'])} ({d['size_bytes']} bytes, "
        f"{d['size_sectors']} sectors)",
        f"cluster size:  {size_str(d['cluster_size'])} ({d['cluster_size'] // 512} sectors)",
        "format:        " + (f"ploop v{d['version']}" if d["version"] else "raw")
        + (" on a raw base" if d["raw_base"] and d["version"] else ""),
        f"chain depth:   {d['chain_depth']}, {d['mapped_clusters']} clusters mapped in "
        f"{d['extents']} extents" + (", DIRTY (in use)" if d["dirty"] else ""),
        "",
        "images:",
    ]
    for im in info["images"]:
        lvl = "-" if im["level"] is None else str(im["level"])
        if "error" in im:
            lines.append(f"  [{lvl}] {im['guid']}  {im['file']}  ERROR: {im['error']}")
            continue
        extra = ""
        if "header" in im:
            h = im["header"]
            extra = (f"v{h['version']}, {im['allocated_clusters']} clusters allocated, "
                     f"in-use {h['m_DiskInUse']} ({h['m_DiskInUse_meaning']}), flags "
                     f"{h['m_Flags']:#x}")
            if "format_extension" in im:
                fe = im["format_extension"]
                extra += (f", format extension ({len(fe['dirty_bitmaps'])} CBT bitmaps, md5 "
                          f"{'ok' if fe['md5_ok'] else 'BAD'})")
        lines.append(f"  [{lvl}] {im['guid']}  {im['file']}  {im['kind']}  "
                     f"{size_str(im['file_size'])}  {extra}")
    lines += ["", "snapshots:"]
    lines += format_tree(info["snapshots"], details=True)
    pt = info["partitions"]
    lines += ["", f"partition table: {pt['scheme']}"
              + (f" ({pt['sector_size']}-byte sectors)" if pt["scheme"] == "gpt" else "")]
    for p in pt["partitions"]:
        lines.append(f"  part{p['number']}: start {p['start']}, size {size_str(p['size'])}, "
                     f"fs {p['fs'] or 'unknown'}" + (f" label {p['fs_label']!r}"
                                                     if p["fs_label"] else ""))
    if pt["whole_disk_fs"]:
        lines.append(f"  whole disk: fs {pt['whole_disk_fs']}")
    for prob in pt["problems"]:
        lines.append(f"  problem: {prob}")
    lines += format_fs_usage(info.get("filesystems", []))
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def format_fs_usage(filesystems: list[dict[str, Any]]) -> list[str]:
    """Blocks and inodes, used and free, per filesystem (like `ploop info`)."""
    if not filesystems:
        return []
    lines = ["", "filesystem usage:",
             f"  {'':8} {'kind':5} {'1K-blocks':>12} {'used':>12} {'free':>12} {'avail':>12} "
             f"{'inodes':>10} {'iused':>10} {'ifree':>10}"]
    for fs in filesystems:
        if "blocks" not in fs:
            lines.append(f"  {fs['where']:8} {fs['kind'] or '?':5} {fs['note']}")
            continue
        b, i, bs = fs["blocks"], fs["inodes"], fs["block_size"]

        def kib(n: int, bs: int = bs) -> int:  # df -k rounds up (512-byte blocks exist)
            return -(-n * bs // 1024)

        lines.append(f"  {fs['where']:8} {fs['kind']:5} {kib(b['total']):>12} "
                     f"{kib(b['used']):>12} {kib(b['free']):>12} {kib(b['available']):>12} "
                     f"{i['total']:>10} {i['used']:>10} {i['free']:>10}")
        lines += [f"  {fs['where']}: finding: {f}" for f in fs["findings"]]
    return lines


def _mtime_str(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t is not None else "-"


def format_tree(shots: list[dict[str, Any]], details: bool = False) -> list[str]:
    """One line per snapshot: current mark, index, GUID indented by depth, file name; with
    `details` also the file's size, mapped clusters and mtime."""
    lines = []
    for s in shots:
        mark = "*" if s["current"] else " "
        temp = f" <{s['temporary']}>" if s["temporary"] else ""
        extra = ""
        if details and s["file_size"] is not None:
            clusters = "raw" if s["clusters"] is None else f"{s['clusters']} clusters"
            extra = f"  {size_str(s['file_size'])}, {clusters}, {_mtime_str(s['mtime'])}"
        lines.append(f"  {mark} {s['index']:>2} {'    ' * s['depth']}{s['guid']}  "
                     f"{s['file']}{temp}{extra}")
    return lines


def format_snapshot_list(shots: list[dict[str, Any]]) -> str:
    """Columns like `ploop snapshot-list` (PARENT_UUID, C for current, UUID, FNAME), after the
    index that `-s N` takes, and the image file's size, mapped clusters and mtime."""
    lines = [f"{'#':>3} {'PARENT_UUID':<38} C {'UUID':<38} {'SIZE':>9} {'CLUSTERS':>8} "
             f"{'MTIME':<19} FNAME"]
    for s in shots:
        size = size_str(s["file_size"]) if s["file_size"] is not None else "-"
        clusters = "raw" if s["clusters"] is None and s["file_size"] is not None else (
            str(s["clusters"]) if s["clusters"] is not None else "-")
        mtime = _mtime_str(s["mtime"])
        lines.append(f"{s['index']:>3} {s['parent']:<38} {'*' if s['current'] else ' '} "
                     f"{s['guid']:<38} {size:>9} {clusters:>8} {mtime:<19} "
                     f"{s['path'] or s['file']}")
    return "\n".join([*lines, "", "tree:", *format_tree(shots)])
