"""`ploopfs diff` as a command: open the two sides, scan them (engine.py) into the sink of the
chosen format (sinks.py) and write the outputs: a list of changed cluster ranges (json, streamed
to the output file), a librsync delta with its manifest (rdiff) or a ploop delta image stacked
on OLD (ploop); plus the report each returns."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import IO, Any

from ploopfs.errors import BadImageError, OutputError, UnsupportedError, UsageError
from ploopfs.format.header import TOP_GUID
from ploopfs.services.diff.engine import HASHES, DiffOptions, DiffStats, candidate_runs, scan
from ploopfs.services.diff.sinks import HashingFile, PloopSink, RangesSink, RdiffSink
from ploopfs.services.rdiff import DeltaWriter
from ploopfs.volume import fileio
from ploopfs.volume.source import RAW_NEEDS_CLUSTER_SIZE, Disk, OpenOptions, open_source
from ploopfs.volume.volume import Volume
from ploopfs.volume.writer import ImageWriter, chain_descriptor, new_guid, write_descriptor

FORMATS = ("rdiff", "ploop", "json")
MANIFEST_SUFFIX = ".json"  # rdiff: the manifest is written next to the delta, OUT + this
PLOOP_MANIFEST = "diff-manifest.json"
RAW_CLUSTER_SIZE = 1 << 20  # two raw sides without --cluster-size: ploop's default cluster size


# -- opening the two sides ----------------------------------------------------------------------
@dataclass
class Sides:
    old_disk: Disk
    new_disk: Disk
    old: Volume
    new: Volume
    old_snapshot: str
    new_snapshot: str
    disks: list[Disk] = field(default_factory=list)

    def close(self) -> None:
        for d in self.disks:
            d.close()


def open_sides(old_src: str, new_src: str, old_snapshot: str | None, new_snapshot: str | None,
               options: OpenOptions) -> Sides:
    """One Disk when OLD and NEW are the same source (two snapshots of one descriptor). A raw
    side given without --cluster-size takes the other side's cluster size; when both are raw
    (e.g. two exports) they are compared at ploop's default cluster size, 1 MiB, as rdiff needs
    no block size either."""
    same = os.path.exists(old_src) and os.path.exists(new_src) and \
        os.path.realpath(old_src) == os.path.realpath(new_src)
    disks: list[Disk] = []
    try:
        if same:
            try:
                d_old = d_new = open_source(old_src, options)
            except BadImageError as e:
                if not _wants_cluster_size(e, options):
                    raise
                d_old = d_new = open_source(old_src, replace(options,
                                                             cluster_size=RAW_CLUSTER_SIZE))
            disks.append(d_old)
        else:
            d_old, d_new = _open_pair(old_src, new_src, options, disks)
        old = d_old.volume(old_snapshot)
        new = d_new.volume(new_snapshot)
        g_old = d_old.chain(old_snapshot)[-1].guid
        g_new = d_new.chain(new_snapshot)[-1].guid
    except BaseException:
        for d in disks:
            d.close()
        raise
    return Sides(d_old, d_new, old, new, g_old, g_new, disks)


def _open_pair(old_src: str, new_src: str, options: OpenOptions,
               disks: list[Disk]) -> tuple[Disk, Disk]:
    opened: dict[str, Disk] = {}
    deferred: list[str] = []
    for name, src in (("old", old_src), ("new", new_src)):
        try:
            opened[name] = open_source(src, options)
            disks.append(opened[name])
        except BadImageError as e:
            if not _wants_cluster_size(e, options):
                raise
            deferred.append(name)
    for name in deferred:
        other = opened.get("new" if name == "old" else "old")
        # two raw files: ploop's default cluster size (a finer one only costs time, a coarser
        # one only makes the delta's ranges coarser; --cluster-size chooses)
        c = other.volume(None).cluster_size if other is not None else RAW_CLUSTER_SIZE
        src = old_src if name == "old" else new_src
        opened[name] = open_source(src, replace(options, cluster_size=c))
        disks.append(opened[name])
    return opened["old"], opened["new"]


def _wants_cluster_size(e: BadImageError, options: OpenOptions) -> bool:
    """The error of a raw file opened without a cluster size (not of a damaged ploop image)."""
    return not options.cluster_size and e.code == RAW_NEEDS_CLUSTER_SIZE


# -- the three outputs --------------------------------------------------------------------------
def _side_json(disk: Disk, vol: Volume, snapshot: str, digest: str | None,
               alg: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {"source": disk.source, "snapshot": snapshot, "size": vol.size}
    if alg:
        d[alg] = digest
    if in_use := in_use_images(vol):
        d["in_use"] = in_use
    return d


def in_use_images(vol: Volume) -> list[str]:
    """The image files of a side marked in use (m_DiskInUse "Ynot", format.md §1.3): open read-write by a
    ploop kernel when read, or left so by a crash. Such a side may be changing under the diff,
    which then holds the bytes as they were read; the report and the CLI say so."""
    return [im.path for im in vol.images if im.header is not None and im.header.dirty]


def _create(path: str, replace: bool = False) -> IO[bytes]:
    """An output file; with `replace` (--force) an existing one is replaced if fileio finds it
    is an earlier ploopfs output."""
    return os.fdopen(fileio.create(path, replace=replace, what="diff",
                                   hint="; pass --force to replace an earlier output"), "wb")


def _write_json(path: str, obj: dict[str, Any]) -> None:
    with _create(path) as f:
        f.write(json.dumps(obj, indent=2).encode() + b"\n")


def diff_json(sides: Sides, out: str, opts: DiffOptions, replace: bool = False) -> dict[str, Any]:
    """The changed ranges, streamed to `out` ('-' = stdout) as one JSON document."""
    import sys

    if out == "-":
        fileio.check_stdout()
    f = sys.stdout.buffer if out == "-" else _create(out, replace)
    first = [True]
    try:
        head = {"format": "ploopfs-diff", "version": 1, "cluster_size": sides.new.cluster_size,
                "hash": opts.hash}
        f.write(json.dumps(head)[:-1].encode() + b', "ranges": [')

        def emit(r: dict[str, Any]) -> None:
            f.write((b"" if first[0] else b",") + b"\n  " + json.dumps(r).encode())
            first[0] = False

        sink = RangesSink(sides.new.cluster_size, opts.hash, emit)
        stats = scan(sides.old, sides.new, sink, opts)
        sink.flush()
        tail = _summary(sides, stats, opts)
        f.write(b"\n], " + json.dumps(tail)[1:].encode() + b"\n")
        f.flush()
    except BaseException:
        if out != "-":
            f.close()
            fileio.remove(out)
        raise
    if out != "-":
        f.close()
    return {"format": "json", "output": out, **tail}


def _summary(sides: Sides, stats: DiffStats, opts: DiffOptions) -> dict[str, Any]:
    return {
        "old": _side_json(sides.old_disk, sides.old, sides.old_snapshot, stats.old_hash, opts.hash),
        "new": _side_json(sides.new_disk, sides.new, sides.new_snapshot, stats.new_hash, opts.hash),
        "stats": stats.to_json(),
    }


def diff_rdiff(sides: Sides, out: str, opts: DiffOptions, replace: bool = False) -> dict[str, Any]:
    """A librsync delta at `out` that `rdiff patch OLD DELTA` turns into NEW, and its manifest
    at `out` + .json (rdiff deltas carry no checksum: docs/rdiff.md). Both are opened before
    the scan, so a manifest that may not be written fails the command before any work."""
    manifest = out + MANIFEST_SUFFIX
    if not replace and os.path.lexists(manifest):
        raise OutputError("already exists; refusing to overwrite; pass --force to replace an "
                          "earlier output", manifest)
    f = _create(out, replace)
    mf: IO[bytes] | None = None
    try:
        mf = _create(manifest, replace)
        hf = HashingFile(f, opts.hash)
        sink = RdiffSink(DeltaWriter(hf), sides.new.cluster_size, sides.new.size)
        stats = scan(sides.old, sides.new, sink, opts)
        commands = sink.close()
        f.flush()
        os.fsync(f.fileno())
        f.close()
        delta: dict[str, Any] = {"path": out, "size": hf.size}
        if hf.h:
            delta[str(opts.hash)] = hf.h.hexdigest()
        report = {"format": "rdiff", "hash": opts.hash, "delta": delta, "commands": commands,
                  **_summary(sides, stats, opts)}
        mf.write(json.dumps(report, indent=2).encode() + b"\n")
        mf.close()
    except BaseException:
        f.close()
        fileio.remove(out)
        if mf is not None:
            mf.close()
            fileio.remove(manifest)
        raise
    return {**report, "manifest": manifest}


def _delta_name(sides: Sides) -> str:
    """ploop's name for a new delta: the base image's file name without any .{…} suffix, plus
    "." and a fresh GUID (format.md §4.3)."""
    base = os.path.basename(sides.old_disk.paths[sides.old_disk.chain(sides.old_snapshot)[0].guid])
    if base.endswith("}") and ".{" in base:
        base = base[: base.rindex(".{")]
    return f"{base}.{new_guid()}"


def diff_ploop(sides: Sides, outdir: str, opts: DiffOptions) -> dict[str, Any]:
    """A new folder with a v1/v2 delta (OLD's version) holding the changed clusters and a
    DiskDescriptor.xml stacking it on OLD's chain, whose images are referenced, not copied:
    by paths relative to `outdir` (format.md §5.6), so opening the result with ploopfs needs
    --allow-outside-paths. OLD's files are never written. On failure what was written is
    removed again."""
    made = fileio.create_folder(outdir)
    try:
        return _ploop_into(sides, outdir, opts)
    except BaseException:
        for name in os.listdir(outdir):  # the folder was empty: what we made in it goes
            fileio.remove(os.path.join(outdir, name))
        if made:
            os.rmdir(outdir)
        raise


def _ploop_into(sides: Sides, outdir: str, opts: DiffOptions) -> dict[str, Any]:
    old, new = sides.old, sides.new
    c = new.cluster_size
    versions = [im.header.version for im in old.images if im.header is not None]
    version = versions[0] if versions else 2
    name = _delta_name(sides)
    path = os.path.join(outdir, name)
    zero_hole_from = -(-max(max(im.virtual_size for im in old.images), old.size) // c)
    try:
        w = ImageWriter.create(path, new.size, c, version)
    except ValueError as e:  # e.g. a v1 chain grown past 2 TiB
        raise UnsupportedError(f"cannot make a v{version} delta: {e}", path) from None
    with w:
        sink = PloopSink(w, zero_hole_from)
        stats = scan(old, new, sink, opts)
    entries = sides.old_disk.chain(sides.old_snapshot)
    out_abs = os.path.abspath(outdir)
    files = [os.path.relpath(os.path.abspath(sides.old_disk.paths[e.guid]), out_abs)
             for e in entries] + [name]
    guids = [new_guid() if e.guid == TOP_GUID else e.guid for e in entries] + [TOP_GUID]
    d = chain_descriptor(files, new.size, c, guids, raw_base=old.images[0].is_raw)
    write_descriptor(os.path.join(outdir, "DiskDescriptor.xml"), d)
    report = {"format": "ploop", "hash": opts.hash,
              "descriptor": os.path.join(outdir, "DiskDescriptor.xml"), "image": path,
              "version": version, "clusters_written": sink.written,
              "zero_clusters_written": sink.zero_written, **_summary(sides, stats, opts)}
    _write_json(os.path.join(outdir, PLOOP_MANIFEST), report)
    return report


def work_bytes(sides: Sides, opts: DiffOptions) -> int:
    """Bytes of NEW the scan will read (for progress bars)."""
    if opts.full_compare or opts.hash:
        return sides.new.size
    c = sides.new.cluster_size
    runs = candidate_runs(sides.old, sides.new)
    if not runs:
        return 0
    f, n = runs[-1]  # only the last run can reach past NEW's end
    return runs.clusters() * c - max(0, (f + n) * c - sides.new.size)


def diff(sides: Sides, out: str, fmt: str, opts: DiffOptions | None = None, *,
         replace: bool = False) -> dict[str, Any]:
    """`replace` (--force): an existing output file (json, rdiff delta and manifest) is replaced
    if it is an earlier ploopfs output; a ploop output folder must always be new or empty."""
    o = opts or DiffOptions()
    if o.hash is not None and o.hash not in HASHES:
        raise UsageError(f"unknown hash {o.hash!r} (choose from {', '.join(HASHES)})")
    if fmt == "json":
        return diff_json(sides, out, o, replace)
    if out == "-":
        raise UsageError(f"--format {fmt} writes files; '-' is only for json output")
    if fmt == "rdiff":
        return diff_rdiff(sides, out, o, replace)
    if fmt == "ploop":
        return diff_ploop(sides, out, o)
    raise UsageError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")

