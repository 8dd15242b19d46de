"""`ploopfs compact`: a new clean single-image v2 ploop disk holding only what the data needs
(format.md §7.8, §7.9).

Kept: every mapped cluster outside analysed ext2/3/4 filesystems (partition tables with the GPT
backup in the last cluster, format.md §8.1; other or unknown filesystems; gaps) and every cluster holding
at least one block the filesystem marks used. Dropped: clusters of an analysed filesystem
holding no used block, and all-zero clusters. Clusters are written in virtual order; the source
is only read, in runs of up to 8 MiB over the block map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from ploopfs.content.usage import DiskFs, analyse_disk
from ploopfs.native import is_zero
from ploopfs.services.du import CHUNK, keep_map, runs
from ploopfs.volume import fileio
from ploopfs.volume.readahead import read_ahead
from ploopfs.volume.source import Disk
from ploopfs.volume.volume import Volume
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

Progress = Callable[[int], None]
IMAGE_NAME = "root.hds"


@dataclass
class CompactReport:
    output: str
    snapshot: str
    size_bytes: int
    cluster_size: int
    source_file_bytes: int  # apparent sizes of the chain's image files
    source_disk_bytes: int  # what they take on the host (st_blocks)
    output_file_bytes: int
    clusters_mapped: int
    clusters_kept: int  # read: outside filesystems or used by one
    clusters_written: int
    clusters_unused_dropped: int  # mapped, inside a filesystem, no used block
    clusters_zero_dropped: int
    filesystems: list[str] = field(default_factory=list)  # "part1 ext4 analysed" …
    findings: list[str] = field(default_factory=list)

    @property
    def saved_bytes(self) -> int:
        return self.source_disk_bytes - self.output_file_bytes

    def to_json(self) -> dict:
        return asdict(self) | {"saved_bytes": self.saved_bytes}


@dataclass
class Plan:
    """What a compact of one snapshot reads: booleans per virtual cluster."""

    vol: Volume
    dfs: DiskFs
    mapped: np.ndarray
    keep: np.ndarray

    @property
    def work_bytes(self) -> int:
        return int(self.keep.sum()) * self.vol.cluster_size


def compact_plan(disk: Disk, snapshot: str | None = None) -> Plan:
    vol = disk.volume(snapshot)
    dfs = analyse_disk(vol.read, vol.size, bitmaps=True)
    mapped, _analysed, _used, keep = keep_map(vol, dfs)
    return Plan(vol, dfs, mapped, keep)


def _read_ahead(vol: Volume, work: Iterator[tuple[int, int]]
                ) -> Iterator[tuple[int, int, memoryview]]:
    """(first cluster, end cluster, bytes) of each run, the next run read by a helper thread
    (preadv releases the GIL) while the caller checks and writes the current one."""
    c = vol.cluster_size
    bufs = [bytearray(CHUNK), bytearray(CHUNK)]

    def read(item: tuple[int, tuple[int, int]]) -> tuple[int, int, memoryview]:
        i, (a, b) = item
        view = memoryview(bufs[i % 2])[: (b - a) * c]  # two buffers: read_ahead keeps two alive
        got = vol.zero_fill_readinto(view, a * c)
        if got < len(view):  # the last cluster of a disk that is not a whole number of them
            view[got:] = bytes(len(view) - got)
        return a, b, view

    return read_ahead(enumerate(work), read, "compact-read")


def compact(disk: Disk, outdir: str, snapshot: str | None = None,
            progress: Progress | None = None, plan: Plan | None = None) -> CompactReport:
    plan = plan or compact_plan(disk, snapshot)
    vol, dfs, keep, mapped = plan.vol, plan.dfs, plan.keep, plan.mapped
    fileio.create_folder(outdir)
    c = vol.cluster_size
    chain = disk.chain(snapshot)
    report = CompactReport(
        outdir, chain[-1].guid, vol.size, c,
        sum(im.file_size for im in vol.images),
        sum(os.fstat(im.fd).st_blocks * 512 for im in vol.images), 0,
        int(mapped.sum()), int(keep.sum()), 0, int((mapped & ~keep).sum()), 0,
        [f"{fs.where} {fs.kind} {'analysed' if fs.analysed else 'kept whole'}"
         for fs in dfs.filesystems] + [f"{o.where} {o.kind or 'unknown'} kept whole"
                                       for o in dfs.others],
        [f.line() for f in dfs.findings])
    img_path = os.path.join(outdir, IMAGE_NAME)
    done = 0
    with ImageWriter.create(img_path, vol.size, c, 2) as w:
        for a, b, view in _read_ahead(vol, runs(keep, CHUNK // c)):
            k = 0
            while k < b - a:  # runs of non-zero clusters, each written with one pwrite
                if is_zero(view[k * c:(k + 1) * c]):
                    report.clusters_zero_dropped += 1
                    k += 1
                    continue
                j = k + 1
                while j < b - a and not is_zero(view[j * c:(j + 1) * c]):
                    j += 1
                w.write_clusters(a + k, view[k * c:j * c])
                report.clusters_written += j - k
                if j < b - a:
                    report.clusters_zero_dropped += 1
                k = j + 1
            done += (b - a) * c
            if progress:
                progress(done)
    write_descriptor(os.path.join(outdir, "DiskDescriptor.xml"),
                     chain_descriptor([IMAGE_NAME], vol.size, c))
    report.output_file_bytes = os.path.getsize(img_path)
    return report
