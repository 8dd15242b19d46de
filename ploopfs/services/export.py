"""`ploopfs export`: flatten a snapshot to a raw file (sparse), a new single-image v2 ploop disk
or a qcow2 image (optionally one per image of the chain, each backed by its parent). Never
writes to a source."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import BinaryIO

from ploopfs.errors import OutputError
from ploopfs.format import qcow2
from ploopfs.native import is_zero
from ploopfs.volume import fileio
from ploopfs.volume.qcow2writer import Qcow2Writer
from ploopfs.volume.source import Disk
from ploopfs.volume.volume import Volume, zero_fill
from ploopfs.volume.writer import (
    ImageWriter,
    chain_descriptor,
    write_descriptor,
)

Progress = Callable[[int], None]  # called with bytes done so far
CHUNK = 4 << 20
# off_t: a salvage read keeps the size a header claims (m_SizeInSectors up to 2^64-1 sectors),
# which no file can be; os.ftruncate would raise OverflowError.
MAX_FILE_SIZE = (1 << 63) - 1


@dataclass
class ExportReport:
    output: str
    format: str
    snapshot: str
    size_bytes: int
    data_bytes_written: int
    zero_bytes_skipped: int
    salvage: dict | None = None  # SalvageLog.summary() of a salvage export (docs/salvage.md)
    files: list[str] | None = None  # qcow2 --keep-snapshots: every file written, base first

    def to_json(self) -> dict:
        d = asdict(self)
        for key in ("salvage", "files"):  # absent where they do not apply
            if d[key] is None:
                del d[key]
        return d


def _chunks(vol: Volume) -> list[tuple[int, int]]:
    """Ranges worth reading: data of the merged map, and over a raw base what its file holds
    (not the whole disk: a <Disk_size> of 2^38 sectors over a 64 KiB raw base is 128 TiB of
    zeros past the file)."""
    return vol.stored_ranges()


def export_work(vol: Volume) -> int:
    """Bytes an export will read (for progress bars)."""
    return sum(length for _, length in _chunks(vol))


def export_raw(disk: Disk, out: str, snapshot: str | None = None,
               progress: Progress | None = None, *, replace: bool = False) -> ExportReport:
    """A sparse raw file `out` ('-': a stream on stdout). With `replace` (--force) an existing
    `out` is replaced if fileio.create finds it is an earlier ploopfs output."""
    vol = disk.volume(snapshot)
    guid = disk.chain(snapshot)[-1].guid
    report = ExportReport(out, "raw", guid, vol.size, 0, 0)
    if out == "-":
        fileio.check_stdout()
        _stream(vol, sys.stdout.buffer, report, progress)
        return _with_salvage(disk, report)
    if vol.size > MAX_FILE_SIZE:
        raise OutputError(f"the disk is {vol.size} bytes, more than a file can hold "
                          f"({MAX_FILE_SIZE})", out)
    fd = fileio.create(out, replace=replace, what="raw export",
                       hint="; pass --force to replace an earlier output")
    buf = bytearray(CHUNK)
    done = 0
    try:
        for start, length in _chunks(vol):
            pos = start
            while pos < start + length:
                n = min(CHUNK, start + length - pos)
                view = memoryview(buf)[:n]
                vol.zero_fill_readinto(view, pos)
                if is_zero(view):  # keep the output sparse
                    report.zero_bytes_skipped += n
                else:
                    _pwrite_all(fd, view, pos, out)
                    report.data_bytes_written += n
                pos += n
                done += n
                if progress:
                    progress(done)
        os.ftruncate(fd, vol.size)
        os.fsync(fd)
    except OSError as e:
        raise OutputError(f"write failed: {e.strerror}", out) from None
    finally:
        os.close(fd)
    return _with_salvage(disk, report)


def _with_salvage(disk: Disk, report: ExportReport) -> ExportReport:
    if disk.salvage_log is not None:
        report.salvage = disk.salvage_log.summary()
    return report


def _pwrite_all(fd: int, view: memoryview, off: int, out: str) -> None:
    while view:
        n = os.pwrite(fd, view, off)
        if n <= 0:
            raise OutputError("short write", out, offset=off)
        view, off = view[n:], off + n


def _stream(vol: Volume, f: BinaryIO, report: ExportReport, progress: Progress | None) -> None:
    """A closed pipe (`| head -c`) raises BrokenPipeError, which the CLI ends quietly."""
    buf = bytearray(CHUNK)
    pos = 0
    while pos < vol.size:
        n = min(CHUNK, vol.size - pos)
        view = memoryview(buf)[:n]
        vol.zero_fill_readinto(view, pos)
        f.write(view)
        report.data_bytes_written += n
        pos += n
        if progress:
            progress(pos)
    f.flush()


def export_ploop(disk: Disk, outdir: str, snapshot: str | None = None,
                 progress: Progress | None = None, image_name: str = "root.hds") -> ExportReport:
    """A new ploop disk in `outdir`: one v2 image holding every non-zero cluster, in virtual
    order, and its DiskDescriptor.xml."""
    vol = disk.volume(snapshot)
    guid = disk.chain(snapshot)[-1].guid
    fileio.create_folder(outdir)
    c = vol.cluster_size
    report = ExportReport(outdir, "ploop", guid, vol.size, 0, 0)
    img_path = os.path.join(outdir, image_name)
    buf = bytearray(c)
    done = 0
    with ImageWriter.create(img_path, vol.size, c, 2) as w:
        for start, length in _chunks(vol):
            for vc in range(start // c, -(-(start + length) // c)):
                view = memoryview(buf)
                n = vol.zero_fill_readinto(view, vc * c)
                if n < c:
                    view[n:] = bytes(c - n)
                if is_zero(view):
                    report.zero_bytes_skipped += c
                else:
                    w.write_cluster(vc, view)
                    report.data_bytes_written += c
                done += c
                if progress:
                    progress(min(done, vol.size))
    write_descriptor(os.path.join(outdir, "DiskDescriptor.xml"),
                     chain_descriptor([image_name], vol.size, c))
    return _with_salvage(disk, report)


# -- qcow2 ----------------------------------------------------------------------------------------
QCOW2_CLUSTER = qcow2.DEFAULT_CLUSTER_SIZE


def _qcow2_runs(pieces: list[tuple[int, int]], c: int) -> list[tuple[int, int]]:
    """Byte ranges as sorted, disjoint runs (first, count) of qcow2 clusters of `c` bytes."""
    runs: list[list[int]] = []
    for start, length in sorted(pieces):
        if length <= 0:
            continue
        a, b = start // c, -(-(start + length) // c)
        if runs and a <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], b)
        else:
            runs.append([a, b])
    return [(a, b - a) for a, b in runs]


def _level_pieces(vol: Volume, level: int) -> list[tuple[int, int]]:
    """Byte ranges the image at `level` (the top of `vol`) stores: its mapped clusters, or
    for a raw base what its file covers."""
    if level == 0 and vol.raw_base:
        return [(0, vol.raw_end())]
    c = vol.cluster_size
    return [(e.vstart * c, min((e.vstart + e.count) * c, vol.size) - e.vstart * c)
            for e in vol.map.extents() if e.level == level]


def _qcow2_levels(disk: Disk, snapshot: str | None,
                  keep: bool) -> list[tuple[str, Volume, list[tuple[int, int]], bool]]:
    """(guid, volume, cluster runs, zero clusters marked) of each file to write: the snapshot
    alone, or with `keep` every level of its chain, base first."""
    chain = disk.chain(snapshot)
    if not keep:
        vol = disk.volume(snapshot)
        return [(chain[-1].guid, vol, _qcow2_runs(vol.stored_ranges(), QCOW2_CLUSTER), True)]
    out = []
    for k, e in enumerate(chain):
        vol = disk.volume(e.guid)
        raw = k == 0 and vol.raw_base
        out.append((e.guid, vol, _qcow2_runs(_level_pieces(vol, k), QCOW2_CLUSTER), not raw))
    return out


def export_qcow2_work(disk: Disk, snapshot: str | None = None, keep_snapshots: bool = False) -> int:
    """Bytes a qcow2 export will read (for progress bars)."""
    return sum(n * QCOW2_CLUSTER for _, _, runs, _ in _qcow2_levels(disk, snapshot, keep_snapshots)
               for _, n in runs)


def qcow2_name(guid: str) -> str:
    return guid.strip("{}") + ".qcow2"


def export_qcow2(disk: Disk, out: str, snapshot: str | None = None,
                 progress: Progress | None = None, *, keep_snapshots: bool = False,
                 replace: bool = False) -> ExportReport:
    """The snapshot as one qcow2 v3 file `out`; with `keep_snapshots`, `out` is a new or empty
    folder that receives one qcow2 per image of the chain up to the snapshot,
    `<guid>.qcow2`, each backed by its parent's file (relative name, backing format qcow2)
    and holding only that image's clusters. `report.output` is the top's file. A failure
    removes every file written (and the folder, if made here)."""
    levels = _qcow2_levels(disk, snapshot, keep_snapshots)
    top_guid, top_vol = levels[-1][0], levels[-1][1]
    report = ExportReport(out, "qcow2", top_guid, top_vol.size, 0, 0)
    made = False
    if keep_snapshots:
        made = fileio.create_folder(out)
    written: list[str] = []
    done = [0]
    try:
        parent: str | None = None
        for guid, vol, runs, zero_flag in levels:
            path = os.path.join(out, qcow2_name(guid)) if keep_snapshots else out
            w = Qcow2Writer.create(path, vol.size, QCOW2_CLUSTER, backing_file=parent,
                                   replace=replace and not keep_snapshots)
            written.append(path)
            try:
                _fill_qcow2(vol, runs, w, zero_flag, report, progress, done)
                w.close()
            except BaseException:
                w.abort()
                raise
            parent = os.path.basename(path)
    except BaseException:
        for p in written:
            fileio.remove(p)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out)
        raise
    report.output = written[-1]
    if keep_snapshots:
        report.files = written
    return _with_salvage(disk, report)


def _fill_qcow2(vol: Volume, runs: list[tuple[int, int]], w: Qcow2Writer, zero_flag: bool,
                report: ExportReport, progress: Progress | None, done: list[int]) -> None:
    c = w.cluster_size
    per = max(1, CHUNK // c)
    for first, count in runs:
        vc = first
        while vc < first + count:
            k = min(per, first + count - vc)
            # page-aligned (O_DIRECT without a copy), written on the writer's thread while the
            # next chunk is read into its other buffer
            view = w.next_buffer(per * c)[:k * c]
            n = vol.zero_fill_readinto(view, vc * c)
            if n < len(view):
                zero_fill(view[n:])
            if is_zero(view):
                _zero_run(w, vc, k, zero_flag, report)
            else:
                zero = [is_zero(view[i * c:(i + 1) * c]) for i in range(k)]
                i = 0
                while i < k:
                    j = i
                    while j < k and zero[j] == zero[i]:
                        j += 1
                    if zero[i]:
                        _zero_run(w, vc + i, j - i, zero_flag, report)
                    else:
                        w.write_data(vc + i, view[i * c:j * c])
                        report.data_bytes_written += (j - i) * c
                    i = j
            vc += k
            done[0] += k * c
            if progress:
                progress(done[0])


def _zero_run(w: Qcow2Writer, vc: int, k: int, zero_flag: bool, report: ExportReport) -> None:
    if zero_flag:
        w.write_zero(vc, k)
    report.zero_bytes_skipped += k * w.cluster_size
