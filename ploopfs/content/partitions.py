"""What is inside a virtual disk: partition table (GPT or MBR), a filesystem guess per
partition from the registry's probes, LUKS (format.md §8, §9). Reads through any
`read(offset, length)` callable."""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import asdict, dataclass, field

from ploopfs.content.registry import LUKS_MAGIC, probe_fs
from ploopfs.content.view import Reader

__all__ = ["LUKS_MAGIC", "Partition", "PartitionTable", "Reader", "detect_fs", "inspect_disk"]

GPT_SIG = b"EFI PART"


@dataclass
class Partition:
    number: int  # 1-based, as the kernel numbers them (partN)
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID or MBR type byte as hex
    name: str = ""
    uuid: str = ""
    fs: str | None = None
    fs_label: str | None = None
    # Why the entry does not fit the disk ("starts past the end of the disk", ...), or None. Such
    # a partition is listed, never read past the disk: no filesystem is looked for beyond it.
    outside: str | None = None


@dataclass
class PartitionTable:
    scheme: str  # "gpt", "mbr" or "none"
    sector_size: int = 512
    partitions: list[Partition] = field(default_factory=list)
    whole_disk_fs: str | None = None  # a filesystem at offset 0 (ploop init -P, format.md §8.1)
    luks: str | None = None  # "whole-disk" (layout V2) or "partition 1" (layout V1) (format.md §9)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _guid_le(b: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(b)))


def detect_fs(read: Reader, start: int, size: int) -> tuple[str | None, str | None]:
    """(type, label) of the filesystem in the `size` bytes at `start`, as the first of the
    registry's probes to recognise it says (content/registry.py); (None, None) when unknown."""
    return probe_fs(read, start, size) or (None, None)


def _outside(start: int, size: int, disk_size: int) -> str | None:
    """Why a partition of `size` bytes at `start` does not fit a disk of `disk_size` bytes."""
    if start >= disk_size:
        return f"outside the disk: starts at byte {start}, past its end ({disk_size} bytes)"
    if start + size > disk_size:
        return (f"outside the disk: ends at byte {start + size}, {start + size - disk_size} "
                f"bytes past its end ({disk_size} bytes)")
    return None


def _parse_gpt(read: Reader, disk_size: int, sector: int, table: PartitionTable) -> bool:
    hdr = bytes(read(sector, 92))
    if hdr[:8] != GPT_SIG:
        return False
    hsize = struct.unpack_from("<I", hdr, 12)[0]
    crc = struct.unpack_from("<I", hdr, 16)[0]
    full = bytearray(read(sector, max(92, min(hsize, sector))))
    full[16:20] = b"\0\0\0\0"
    if 92 <= hsize <= sector and zlib.crc32(full[:hsize]) != crc:
        table.problems.append(f"GPT header CRC mismatch at byte {sector}")
    entries_lba, n, esize = struct.unpack_from("<QII", hdr, 72)
    # UEFI: entries of 128 x 2^k bytes (Linux takes 128 only). Capped at 4 KiB, so the array
    # read is at most 16 MiB: 2^27-byte entries asked for 512 GiB of a large disk in one read.
    if esize < 128 or esize > 4096 or esize & (esize - 1) or n > 4096:
        table.problems.append(f"GPT header at byte {sector}: implausible entry table ({n} x {esize})")
        return True
    raw = bytes(read(entries_lba * sector, n * esize))
    table.scheme, table.sector_size = "gpt", sector
    for i in range(min(n, len(raw) // esize)):
        e = raw[i * esize:(i + 1) * esize]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        start, size = first * sector, (last - first + 1) * sector
        p = Partition(i + 1, start, max(0, size), _guid_le(e[:16]), name, _guid_le(e[16:32]))
        p.outside = ("last LBA before the first" if last < first
                     else _outside(start, size, disk_size))
        if p.outside:
            table.problems.append(f"GPT entry {i + 1} (LBA {first}..{last}): {p.outside}")
        table.partitions.append(p)
    return True


def _parse_mbr(read: Reader, mbr: bytes, disk_size: int, table: PartitionTable) -> None:
    table.scheme = "mbr"
    for i in range(4):
        e = mbr[446 + 16 * i: 446 + 16 * (i + 1)]
        ptype = e[4]
        lba, count = struct.unpack_from("<II", e, 8)
        if ptype == 0 or count == 0:
            continue
        start, size = lba * 512, count * 512
        p = Partition(i + 1, start, size, f"0x{ptype:02x}")
        p.outside = _outside(start, size, disk_size)
        if p.outside:
            table.problems.append(f"MBR entry {i + 1} (LBA {lba}, {count} sectors): {p.outside}")
        table.partitions.append(p)
    # Logical partitions inside an extended one are numbered from 5 (kernel convention).
    for p in list(table.partitions):
        if p.type in ("0x05", "0x0f", "0x85"):
            ebr_base, cur, num, seen = p.start, p.start, 5, set()
            while cur not in seen and len(seen) < 128 and cur + 512 <= disk_size:
                seen.add(cur)
                ebr = bytes(read(cur, 512))
                if ebr[510:512] != b"\x55\xaa":
                    break
                lba, count = struct.unpack_from("<II", ebr, 446 + 8)
                if count:
                    q = Partition(num, cur + lba * 512, count * 512, f"0x{ebr[446 + 4]:02x}")
                    q.outside = _outside(q.start, q.size, disk_size)
                    if q.outside:
                        table.problems.append(f"logical partition {num}: {q.outside}")
                    table.partitions.append(q)
                    num += 1
                nlba = struct.unpack_from("<I", ebr, 462 + 8)[0]
                if ebr[462 + 4] == 0 or nlba == 0:
                    break
                cur = ebr_base + nlba * 512


def inspect_disk(read: Reader, disk_size: int) -> PartitionTable:
    table = PartitionTable("none")
    if disk_size < 512:
        return table
    first = bytes(read(0, 4096))
    if first[:6] == LUKS_MAGIC:
        table.luks = "whole-disk"
        table.whole_disk_fs = "luks"
        return table
    found = False
    for sector in (512, 4096):  # GPT at LBA 1 of either logical sector size (format.md §11 trap 19)
        if sector < disk_size and _parse_gpt(read, disk_size, sector, table):
            found = True
            break
    if not found and first[510:512] == b"\x55\xaa" and any(first[446 + 16 * i + 4] for i in range(4)):
        _parse_mbr(read, first, disk_size, table)
        found = True
    for p in table.partitions:
        if p.start < disk_size:  # a partition past the end holds nothing to look at
            p.fs, p.fs_label = detect_fs(read, p.start, min(p.size, disk_size - p.start))
    if table.partitions and table.partitions[0].fs == "luks":
        table.luks = "partition 1"
    if not found or not table.partitions:
        table.whole_disk_fs, _ = detect_fs(read, 0, disk_size)
    return table
