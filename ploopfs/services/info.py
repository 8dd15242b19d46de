"""`ploopfs info` and `ploopfs snapshots`: what a ploop disk holds, as plain data."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from ploopfs.content.partitions import inspect_disk
from ploopfs.content.usage import usage_summary
from ploopfs.errors import PloopfsError
from ploopfs.format.header import DISK_CLOSED_V21, Header
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
