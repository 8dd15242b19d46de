"""`ploopfs du`: where the space of a ploop disk goes (format.md §7.9).

Per image: file size, bytes on disk, sparse holes, data cluster slots, referenced and leaked
clusters, preallocated tail; per chain level: clusters it serves and clusters shadowed by a
higher delta (kept only for snapshots); per ext2/3/4 filesystem inside: clusters it uses and
clusters allocated but holding no used block ("wasted"); and an estimate of what `compact`
would write. Metadata only, unless `zeros` asks to read the allocated data for all-zero
clusters.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ploopfs.content.usage import ClusterSet, DiskFs, analyse_disk, cluster_maps
from ploopfs.native import is_zero
from ploopfs.volume.image import Image, data_runs
from ploopfs.volume.source import Disk
from ploopfs.volume.volume import Volume

CHUNK = 8 << 20


def _bytes_in(extents: list[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(b, hi) - max(a, lo)) for a, b in extents)


def image_usage(im: Image, nclusters: int, served: int | None) -> dict[str, Any]:
    """The figures of one image file (served: clusters of the volume it serves, or None when
    it is not in the analysed chain). Work in proportion to the BAT's entries and the file's
    data extents, never to its slots (a sparse file may have billions)."""
    st = os.fstat(im.fd)
    ext = list(data_runs(im.fd, 0, im.file_size))
    data_bytes = _bytes_in(ext, 0, im.file_size)
    out: dict[str, Any] = {
        "path": im.path, "kind": im.kind.value, "file_size": im.file_size,
        "disk_bytes": st.st_blocks * 512, "hole_bytes": im.file_size - data_bytes,
    }
    if im.header is None:  # a raw base: every cluster is its own
        out["served_clusters"] = served
        return out
    c = im.cluster_size
    m = im.mapping()
    first = im.header.bat_clusters
    nslots = max(0, -(-im.file_size // c) - first)
    phys = (np.frombuffer(m.entries, np.uint32).astype(np.int64) * m.unit // c) - first
    refd = np.unique(phys[(phys >= 0) & (phys < nslots)])
    referenced = int(refd.size)
    last = int(refd[-1]) if referenced else -1
    # Slots holding data on the host (SEEK_DATA), as runs of slots.
    ea = np.array([a for a, _ in ext], np.int64)
    eb = np.array([b for _, b in ext], np.int64)
    has = ClusterSet.from_runs(ea // c - first, -(-eb // c) - first, nslots)
    leaked_with_data = has.clip(0, last + 1).sum() - int(has.contains(refd).sum())
    tail_lo = (first + last + 1) * c
    in_volume = bisect_left(m.vclusters, nclusters)
    out.update({
        "cluster_size": c,
        "header_bat_clusters": first,
        "data_slots": nslots,
        "mapped_entries": len(m),
        "referenced_clusters": referenced,
        "leaked_clusters": last + 1 - referenced,
        "leaked_clusters_with_data": leaked_with_data,
        "prealloc_tail_bytes": max(0, im.file_size - tail_lo),
        "prealloc_tail_data_bytes": _bytes_in(ext, tail_lo, im.file_size),
        "served_clusters": served,
        "shadowed_clusters": None if served is None else in_volume - served,
    })
    return out


@dataclass
class DuReport:
    source: str
    snapshot: str
    cluster_size: int
    disk_size: int
    images: list[dict[str, Any]]
    filesystems: list[dict[str, Any]]
    others: list[dict[str, Any]]
    partition_scheme: str
    clusters: dict[str, Any]
    total: dict[str, Any]
    findings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mapped_clusters(vol: Volume) -> ClusterSet:
    """The virtual clusters some image holds: the block map's extents, and over a raw base the
    clusters of its file (past its end a raw base reads as zeros and holds nothing)."""
    c = vol.cluster_size
    n = -(-vol.size // c)
    m = vol.map
    a = np.frombuffer(m.vstart, np.uint32).astype(np.int64)
    b = a + np.frombuffer(m.count, np.uint32)
    if vol.raw_base:
        a = np.concatenate((a, [0]))
        b = np.concatenate((b, [-(-vol.images[0].file_size // c)]))
    return ClusterSet.from_runs(a, b, n)


def zero_clusters(vol: Volume, sel: ClusterSet) -> ClusterSet:
    """Which selected clusters read as all zeros (reads them, in large runs)."""
    c = vol.cluster_size
    za: list[np.ndarray] = []
    zb: list[np.ndarray] = []
    buf = bytearray(CHUNK)
    for a, b in runs(sel, CHUNK // c):
        view = memoryview(buf)[: (b - a) * c]
        n = vol.zero_fill_readinto(view, a * c)
        view[n:] = bytes(len(view) - n)
        z = np.array([is_zero(view[i * c:(i + 1) * c]) for i in range(b - a)], bool)
        s = ClusterSet.from_bools(z)
        za.append(s.a + a)
        zb.append(s.b + a)
    if not za:
        return ClusterSet.empty(sel.n)
    return ClusterSet.from_runs(np.concatenate(za), np.concatenate(zb), sel.n)


def runs(sel: ClusterSet | np.ndarray, maxlen: int) -> Iterator[tuple[int, int]]:
    """[a, b) runs of the set (or of True in a boolean array), none longer than maxlen
    clusters, in order."""
    if not isinstance(sel, ClusterSet):
        sel = ClusterSet.from_bools(sel)
    for a, b in sel:
        for s in range(a, b, maxlen):
            yield s, min(s + maxlen, b)


def keep_map(vol: Volume, dfs: DiskFs) -> tuple[ClusterSet, ClusterSet, ClusterSet, ClusterSet]:
    """(mapped, analysed, used, keep) sets of virtual clusters: compact keeps every mapped
    cluster that is outside an analysed filesystem or holds a used block of one."""
    n = -(-vol.size // vol.cluster_size)
    mapped = mapped_clusters(vol)
    analysed, used = cluster_maps(dfs, n, vol.cluster_size)
    keep = mapped - (analysed - used)
    return mapped, analysed, used, keep


def disk_usage(disk: Disk, snapshot: str | None = None, *, zeros: bool = False) -> DuReport:
    vol = disk.volume(snapshot)
    chain = disk.chain(snapshot)
    c = vol.cluster_size
    n = -(-vol.size // c)
    per_level = vol.map.clusters_per_level(len(chain))
    levels = {e.guid: i for i, e in enumerate(chain)}
    images: list[dict[str, Any]] = []
    for i, e in enumerate(chain):
        im = vol.images[i]
        # A raw base serves whatever no delta above it maps.
        served = n - sum(per_level[1:]) if im.is_raw else per_level[i]
        images.append({"guid": e.guid, "level": levels[e.guid], **image_usage(im, n, served)})
    dfs = analyse_disk(vol.read, vol.size, bitmaps=True, cluster_size=c)
    mapped, analysed, used, keep = keep_map(vol, dfs)
    figures: dict[str, Any] = {
        "total": n,
        "mapped": mapped.sum(),
        "outside_filesystems_mapped": (mapped - analysed).sum(),
        "in_filesystems": analysed.sum(),
        "in_filesystems_mapped": (mapped & analysed).sum(),
        "fs_used": used.sum(),
        "fs_used_mapped": (used & mapped).sum(),
        "fs_used_unmapped": (used - mapped).sum(),
        "wasted": ((mapped & analysed) - used).sum(),
        "kept_by_compact": keep.sum(),
        "zero": None, "zero_kept": None,
    }
    if zeros:
        z = zero_clusters(vol, mapped)
        figures["zero"] = z.sum()
        figures["zero_kept"] = (z & keep).sum()
    report = DuReport(
        disk.source, chain[-1].guid, c, vol.size, images,
        [fs.to_json() | {"clusters": fs_c} for fs, fs_c in _per_fs_clusters(dfs, c, n, mapped, used)],
        [o.to_json() for o in dfs.others], dfs.table.scheme, figures,
        _total(images, figures, c, n), [f.line() for f in dfs.findings], list(disk.warnings))
    return report


def _per_fs_clusters(dfs: DiskFs, c: int, n: int, mapped: ClusterSet, used: ClusterSet
                     ) -> list[tuple[Any, dict[str, int] | None]]:
    out: list[tuple[Any, dict[str, int] | None]] = []
    for fs in dfs.filesystems:
        if not fs.analysed:
            out.append((fs, None))
            continue
        a, b = -(-fs.data_start // c), min((fs.start + fs.size_bytes) // c, n)
        mp, us = mapped.clip(a, b), used.clip(a, b)
        out.append((fs, {"clusters": max(0, b - a), "mapped": mp.sum(), "used": us.sum(),
                         "wasted": (mp - us).sum(), "used_unmapped": (us - mp).sum()}))
    return out


def _total(images: list[dict[str, Any]], fig: dict[str, Any], c: int, n: int) -> dict[str, Any]:
    """What the chain's files take on the host and what compact would write for this snapshot:
    a new header + BAT and the kept clusters (less the zero ones, when counted)."""
    from ploopfs.format.header import HEADER_SIZE

    on_disk = sum(im["disk_bytes"] for im in images)
    apparent = sum(im["file_size"] for im in images)
    kept = fig["kept_by_compact"] - (fig["zero_kept"] or 0)
    # Header + BAT of n slots, whole clusters (format.md §2.4); counted, not built: a disk of
    # more than 2^32-1 clusters has an estimate too, though no image can hold it (§2.6).
    bat_clusters = -(-(HEADER_SIZE + 4 * n) // c)
    compact = (bat_clusters + kept) * c
    wasted = max(0, on_disk - compact)
    return {"file_bytes": apparent, "disk_bytes": on_disk, "compact_estimate_bytes": compact,
            "wasted_bytes": wasted, "wasted_percent": 100.0 * wasted / on_disk if on_disk else 0.0}
