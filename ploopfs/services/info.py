"""`ploopfs info` and `ploopfs snapshots`: what a ploop disk holds, as plain data."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ploopfs.content.partitions import inspect_disk
from ploopfs.content.usage import usage_summary
from ploopfs.errors import PloopfsError
from ploopfs.format.header import DISK_CLOSED_V21, Header
from ploopfs.services.du import size_str
from ploopfs.volume.source import Disk


def header_json(h: Header) -> dict[str, Any]:
    return {
        "signature": h.signature.decode("ascii"),
        "version": h.version,
        "m_Type": h.type,
        "m_Heads": h.heads,
        "m_Cylinders": h.cylinders,
        "m_Sectors": h.cluster_sectors,
        "m_Size": h.bat_entries,
        "m_SizeInSectors": h.size_sectors,
        "m_DiskInUse": f"{h.in_use:#010x}",
        "m_DiskInUse_meaning": h.in_use_name(),
        "m_FirstBlockOffset": h.first_block_offset,
        "m_Flags": h.flags,
        "m_FormatExtensionOffset": h.ext_offset,
    }


def snapshot_tree(disk: Disk) -> list[dict[str, Any]]:
    """Shots in tree order (depth first from the root), each with its index (what `-s N`
    selects), depth, children and its image file: size, allocated bytes, the clusters its BAT
    maps (None for a raw base or an unreadable image) and modification time."""
    d = disk.descriptor
    by_guid = {s.guid: s for s in d.shots}
    files = {im.guid: im.file for im in d.images}
    active = {e.guid for e in d.chain()}
    kids: dict[str, list[str]] = {}
    for s in d.shots:
        kids.setdefault(s.parent, []).append(s.guid)
    out = []
    for i, (g, depth) in enumerate(d.tree_order()):
        path = disk.paths.get(g)
        row: dict[str, Any] = {
            "index": i, "guid": g, "parent": by_guid[g].parent, "file": files[g], "path": path,
            "current": g == d.top_guid, "in_top_chain": g in active, "depth": depth,
            "temporary": by_guid[g].temporary, "children": kids.get(g, []),
            "file_size": None, "allocated_bytes": None, "clusters": None, "mtime": None}
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        if st is not None:
            row.update(file_size=st.st_size, allocated_bytes=st.st_blocks * 512,
                       mtime=st.st_mtime)
            with contextlib.suppress(PloopfsError):
                im = disk.image(g, level=depth)
                if not im.is_raw:
                    row["clusters"] = len(im.mapping())
        out.append(row)
    return out


def disk_info(disk: Disk, snapshot: str | None = None) -> dict[str, Any]:
    d = disk.descriptor
    vol = disk.volume(snapshot)
    chain = disk.chain(snapshot)
    levels = {e.guid: i for i, e in enumerate(chain)}
    per_level = vol.map.clusters_per_level(len(chain))
    images: list[dict[str, Any]] = []
    for im_entry in d.images:
        path = disk.paths[im_entry.guid]
        entry: dict[str, Any] = {"guid": im_entry.guid, "file": im_entry.file, "path": path,
                                 "xml_type": im_entry.type, "level": levels.get(im_entry.guid)}
        try:
            level = levels.get(im_entry.guid, 1)
            im = disk.image(im_entry.guid, level=level)
            entry["kind"] = im.kind.value
            entry["file_size"] = im.file_size
            entry["mtime"] = os.fstat(im.fd).st_mtime
            if im.header is not None:
                h = im.header
                entry["header"] = header_json(h)
                entry["cluster_size"] = h.cluster_size
                entry["virtual_size"] = im.virtual_size
                entry["dirty"] = h.dirty
                entry["allocated_clusters"] = len(im.mapping())
                entry["bat_clusters"] = h.bat_clusters
                ext = im.extension()
                if ext is not None:
                    entry["format_extension"] = {
                        "trusted": h.in_use == DISK_CLOSED_V21, "md5_ok": ext.md5_ok,
                        "dirty_bitmaps": [
                            {"id": b.id, "size_sectors": b.size_sectors,
                             "granularity_sectors": b.granularity, "l1_entries": len(b.l1)}
                            for b in ext.bitmaps],
                        "unknown_elements": [f"{m:#018x}" for m, _ in ext.unknown],
                    }
            else:
                entry["cluster_size"] = im.cluster_size
                entry["virtual_size"] = im.virtual_size
                entry["dirty"] = False
            if im_entry.guid in levels:
                entry["clusters_served"] = per_level[levels[im_entry.guid]]
        except PloopfsError as e:  # images off the selected chain are reported, not fatal
            entry["error"] = e.message()
        images.append(entry)

    table = inspect_disk(vol.read, vol.size)
    top_hdr = vol.images[-1].header
    info: dict[str, Any] = {
        "source": disk.source,
        "descriptor": disk.descriptor_path,
        "snapshot": chain[-1].guid,
        "disk": {
            "size_bytes": vol.size,
            "size_sectors": vol.size // 512,
            "descriptor_disk_size_sectors": d.disk_size,
            "cluster_size": vol.cluster_size,
            "version": top_hdr.version if top_hdr else None,
            "raw_base": vol.raw_base,
            "chain_depth": len(chain),
            "mapped_clusters": vol.map.mapped_clusters,
            "extents": len(vol.map),
            "dirty": any(im.header is not None and im.header.dirty for im in vol.images),
            "encryption_keyid": d.encryption_keyid,
        },
        "images": images,
        "snapshots": snapshot_tree(disk),
        "top_guid": d.top_guid,
        "partitions": table.to_json(),
        # df-like figures from the ext2/3/4 superblock and group descriptors (like `ploop info`,
        # format.md §7.2, without mounting); other filesystems are listed as not analysed.
        "filesystems": usage_summary(vol.read, vol.size),
        "warnings": list(disk.warnings),
    }
    if d.encryption_keyid or table.luks:
        where = f"LUKS {table.luks}" if table.luks else "descriptor <KeyId>"
        info["warnings"].append(
            f"LUKS-encrypted ploop disk ({where}, KeyId={d.encryption_keyid or '?'}); the key is "
            "required to read the filesystem")
    return info


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def format_info(info: dict[str, Any]) -> str:
    d = info["disk"]
    lines = [
        f"source:        {info['source']}",
        f"snapshot:      {info['snapshot']}" + (" (top)" if info["snapshot"] == info["top_guid"]
                                                else ""),
        f"disk size:     {_size(d['size_bytes'])} ({d['size_bytes']} bytes, "
        f"{d['size_sectors']} sectors)",
        f"cluster size:  {_size(d['cluster_size'])} ({d['cluster_size'] // 512} sectors)",
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
                     f"{_size(im['file_size'])}  {extra}")
    lines += ["", "snapshots:"]
    lines += format_tree(info["snapshots"], details=True)
    pt = info["partitions"]
    lines += ["", f"partition table: {pt['scheme']}"
              + (f" ({pt['sector_size']}-byte sectors)" if pt["scheme"] == "gpt" else "")]
    for p in pt["partitions"]:
        lines.append(f"  part{p['number']}: start {p['start']}, size {_size(p['size'])}, "
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
        b, i, k = fs["blocks"], fs["inodes"], fs["block_size"] // 1024 or 1
        lines.append(f"  {fs['where']:8} {fs['kind']:5} {b['total'] * k:>12} {b['used'] * k:>12} "
                     f"{b['free'] * k:>12} {b['available'] * k:>12} {i['total']:>10} "
                     f"{i['used']:>10} {i['free']:>10}")
        lines += [f"  {fs['where']}: finding: {f}" for f in fs["findings"]]
    return lines


def _mtime_str(t: float | None) -> str:
    import time

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
