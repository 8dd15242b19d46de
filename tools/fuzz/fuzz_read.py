"""Fuzz target: reads through a fuzzed chain (volume/volume.py Volume.read, via open_source on
a folder of DiskDescriptor.xml + images f0, f1, …, container format common.pack), for the top
and every snapshot, plus what `info` derives from the disk's bytes (partition table, ext4
usage: services/info.py, partitions.py, fsusage.py). Input: the container.

Beyond "only PloopfsError": every read returns exactly the bytes asked for (short only at the
end of the disk), and the one-pread fast path returns the same bytes as the general path
(zero_fill_readinto)."""

from __future__ import annotations

import os

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.cli.info import format_info
    from ploopfs.errors import PloopfsError
    from ploopfs.services.info import disk_info
    from ploopfs.volume.source import Disk, OpenOptions, open_source
    from ploopfs.volume.volume import Volume

WORK = common.workdir()
FOLDER = os.path.join(WORK, "disk")
os.makedirs(FOLDER)
READ = 8192  # bytes per read: reads stay bounded whatever size the header claims
MAX_EXTENTS = 8


def ranges(vol: Volume) -> list[tuple[int, int]]:
    c = vol.cluster_size
    out = [(0, READ), (max(0, vol.size - READ // 2), READ), (c // 2, c), (vol.size, 1)]
    for ext in list(vol.map.extents())[:MAX_EXTENTS]:
        out.append((ext.vstart * c, min(ext.count * c, READ)))
        out.append((ext.vstart * c + c - 100, 200))
    return out


def check_reads(vol: Volume) -> None:
    for off, n in ranges(vol):
        got = vol.read(off, n)
        want = max(0, min(n, vol.size - off))
        if len(got) != want:
            raise common.Finding(f"read({off}, {n}) returned {len(got)} bytes, want {want}")
        buf = bytearray(b"\xa5" * want)
        vol.zero_fill_readinto(memoryview(buf), off)
        if bytes(got) != bytes(buf):
            raise common.Finding(f"read({off}, {n}) and zero_fill_readinto disagree")


def read_all_snapshots(disk: Disk) -> None:
    for snap in [None, *(im.guid for im in disk.descriptor.images)]:
        try:
            vol = disk.volume(snap)
        except PloopfsError:
            continue
        check_reads(vol)


def test_one_input(data: bytes) -> None:
    common.write_folder(FOLDER, data)
    for opts in (OpenOptions(), OpenOptions(salvage="older")):
        try:
            with open_source(FOLDER, opts) as disk:
                read_all_snapshots(disk)
                format_info(disk_info(disk))
        except PloopfsError:
            pass


if __name__ == "__main__":
    common.main(test_one_input)
