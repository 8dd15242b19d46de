"""`ploopfs export`: flatten a snapshot to a raw file (sparse) or to a new single-image v2 ploop
disk. Never writes to a source."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import BinaryIO

from ploopfs.errors import OutputError
from ploopfs.native import is_zero
from ploopfs.volume import fileio
from ploopfs.volume.source import Disk
from ploopfs.volume.volume import Volume
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

    def to_json(self) -> dict:
        d = asdict(self)
        if d["salvage"] is None:  # strict exports: the report is unchanged
            del d["salvage"]
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
