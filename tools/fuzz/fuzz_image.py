"""Fuzz target: one image file through open_source (volume/source.py), its BAT classification
(volume/image.py, format/bat.py) and the block map built from it (volume/blockmap.py), strict and
salvage. Input: the whole image file.

Beyond "only PloopfsError": every extent of a strictly opened map lies inside the data area of
its file (format.md §2.3, §2.8), extents are sorted and disjoint, and reading (the first MiB
of) a mapped cluster returns exactly that much."""

from __future__ import annotations

import os

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import PloopfsError
    from ploopfs.volume.source import OpenOptions, open_source
    from ploopfs.volume.volume import Volume

WORK = common.workdir()
PATH = os.path.join(WORK, "root.hdd")
MAX_CHECKED_EXTENTS = 16
READ_PIECE = 1 << 20


def check_map(vol: Volume, strict: bool) -> None:
    m, c = vol.map, vol.cluster_size
    prev_end = 0
    for i, ext in enumerate(m.extents()):
        if ext.count <= 0 or ext.vstart < prev_end:
            raise common.Finding(f"extent {i} {ext} overlaps or is out of order")
        prev_end = ext.vstart + ext.count
        if prev_end * c > -(-vol.size // c) * c:
            raise common.Finding(f"extent {i} {ext} ends past the disk ({vol.size} bytes)")
        im = vol.images[ext.level] if ext.level < len(vol.images) else None
        if strict and im is not None and not im.is_raw:
            assert im.header is not None
            if ext.offset < im.header.bat_clusters * c or ext.offset + ext.count * c > im.file_size:
                raise common.Finding(f"strict map extent {i} {ext} outside the data area of "
                                     f"{im.file_size} bytes")
        if i < MAX_CHECKED_EXTENTS:
            # At most what one FUSE read asks for: a header may claim 512 MiB clusters, and a
            # buffer the caller sizes is the caller's memory, not a finding.
            want = min(c, READ_PIECE)
            got = vol.read(ext.vstart * c, want)
            if len(got) != min(want, vol.size - ext.vstart * c):
                raise common.Finding(f"read of mapped cluster {ext.vstart} returned {len(got)} bytes")


def open_and_map(opts: OpenOptions) -> None:
    try:
        with open_source(PATH, opts) as disk:
            vol = disk.volume()
            check_map(vol, opts.salvage is None)
            got = vol.read(0, 4096)
            if len(got) != min(4096, vol.size):
                raise common.Finding(f"read(0, 4096) returned {len(got)} bytes")
    except PloopfsError:
        pass


def test_one_input(data: bytes) -> None:
    if not data:
        return
    common.write(PATH, data)
    open_and_map(OpenOptions())
    open_and_map(OpenOptions(salvage="zeros"))


if __name__ == "__main__":
    common.main(test_one_input)
