"""Fuzz target: what ploopfs finds inside a disk, on a fuzzed disk: the partition table (GPT,
MBR with logical partitions, content/partitions.py) and the filesystems in it (ext2/3/4 and XFS
analysers through the registry, content/usage.py analyse_disk with bitmaps, cluster_maps), then
the same disk read through ploopfs itself: a raw base under a descriptor, whose <Disk_size> may
claim far more than the file holds (du's disk_usage, info's disk_info, compact's plan).

Input: `[u32le size in 4 KiB units][disk head]`. The virtual disk is the head followed by zeros,
max(len(head), size) bytes, at most MAX_DISK: a superblock may then claim groups, and a GPT
entries, far past the bytes there are, as on a huge sparse disk.

Beyond "only PloopfsError": every read the analysers make lies within the disk and asks for at
most READ_MAX bytes, and all of them together for at most WORK_MAX (work bounded by what is
stored and by the analysers' documented caps, docs/space.md "Bounded work"); a partition is
flagged `outside` exactly when it does not fit the disk; the used clusters lie inside the
analysed ones."""

from __future__ import annotations

import os
import struct

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.content.partitions import inspect_disk
    from ploopfs.content.usage import analyse_disk, cluster_maps
    from ploopfs.errors import PloopfsError
    from ploopfs.services.compact import compact_plan
    from ploopfs.services.du import disk_usage
    from ploopfs.services.info import disk_info
    from ploopfs.volume.source import OpenOptions, open_source

WORK = common.workdir()
FOLDER = os.path.join(WORK, "disk")
os.makedirs(FOLDER)
UNIT = 4096
MAX_DISK = 1 << 44  # 16 TiB: ext4's 2^32 4 KiB blocks, a GPT far beyond the head
CLUSTER = 1 << 20  # of the ploop disk (<Blocksize> 2048): 2^24 clusters at most
READ_MAX = 64 << 20  # one read of the analysers (a descriptor table or bitmap run)
WORK_MAX = 1 << 30  # all of them, per analysis


class Reader:
    """read(offset, length) of the fuzzed disk (the head, then zeros), with the guards."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head, self.size, self.total = head, size, 0

    def __call__(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise common.Finding(f"read({offset}, {length})")
        if length > READ_MAX:
            raise common.Finding(f"read of {length} bytes at {offset} (disk of {self.size})")
        self.total += length
        if self.total > WORK_MAX:
            raise common.Finding(f"{self.total} bytes read in all from a disk of {self.size} "
                                 f"bytes with a head of {len(self.head)}")
        n = max(0, min(length, self.size - offset))
        out = self.head[offset:offset + n]
        return out + bytes(n - len(out))


def check_table(read: Reader) -> None:
    t = inspect_disk(read, read.size)
    for p in t.partitions:
        fits = p.start < read.size and p.start + p.size <= read.size
        if (p.outside is None) != fits and not p.outside == "last LBA before the first":
            raise common.Finding(f"partition {p.number} at {p.start}+{p.size} on a disk of "
                                 f"{read.size}: outside={p.outside!r}")


def check_usage(read: Reader) -> None:
    dfs = analyse_disk(read, read.size, bitmaps=True, cluster_size=CLUSTER)
    n = -(-read.size // CLUSTER)
    analysed, used = cluster_maps(dfs, n, CLUSTER)
    if (used - analysed).sum():
        raise common.Finding("used clusters outside the analysed ones")
    for fs in dfs.filesystems:
        fs.to_json()
        fs.to_json(df=True)


def descriptor(size: int) -> bytes:
    g = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
    sectors = size // 512
    return (f'<?xml version="1.0"?><Parallels_disk_image><Disk_Parameters><Disk_size>{sectors}'
            f"</Disk_size></Disk_Parameters><StorageData><Storage><Start>0</Start><End>{sectors}"
            f"</End><Blocksize>{CLUSTER // 512}</Blocksize><Image><GUID>{g}</GUID><Type>Plain"
            f"</Type><File>f0</File></Image></Storage></StorageData><Snapshots><TopGUID>{g}"
            f"</TopGUID><Shot><GUID>{g}</GUID><ParentGUID>{{00000000-0000-0000-0000-000000000000}}"
            f"</ParentGUID></Shot></Snapshots></Parallels_disk_image>").encode()


def through_ploopfs(head: bytes, size: int) -> None:
    common.clear(FOLDER)
    common.write(os.path.join(FOLDER, "DiskDescriptor.xml"), descriptor(size))
    common.write(os.path.join(FOLDER, "f0"), head)
    try:
        with open_source(FOLDER, OpenOptions()) as disk:
            disk_info(disk)
            disk_usage(disk)
            compact_plan(disk)
    except PloopfsError:
        pass


def test_one_input(data: bytes) -> None:
    if len(data) < 4:
        return
    (units,) = struct.unpack_from("<I", data)
    head = data[4:]
    size = min(MAX_DISK, max(len(head), units * UNIT))
    size -= size % 512
    if size < 512:
        return
    check_table(Reader(head, size))
    check_usage(Reader(head, size))
    through_ploopfs(head[:size], -(-size // CLUSTER) * CLUSTER)


if __name__ == "__main__":
    common.main(test_one_input)
