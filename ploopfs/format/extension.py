"""Format Extension (v2.1) and CBT dirty bitmaps, format.md §6.

Pure parsing of the extension cluster and of bitmap data handed in by the caller."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ploopfs.errors import CorruptImageError
from ploopfs.format.header import SECTOR

FORMAT_EXTENSION_MAGIC = 0xAB234CEF23DCEA87
EXT_MAGIC_DIRTY_BITMAP = 0x20385FAE252CB34A
EXT_FLAGS_NECESSARY = 0x1
EXT_FLAGS_TRANSIT = 0x2
_CHECK = struct.Struct("<Q16s")
_ELEM = struct.Struct("<QQII")
_BITMAP = struct.Struct("<Q16sII")


@dataclass
class DirtyBitmap:
    size_sectors: int  # m_Size
    id: str  # CBT UUID (RFC-4122 byte order, format.md §6.2)
    granularity: int  # sectors per bit
    l1: list[int]  # 0 = all zero, 1 = all one, else sector offset of a bitmap cluster (format.md §6.3)

    @property
    def bits(self) -> int:
        return -(-self.size_sectors // self.granularity) if self.granularity else 0

    def assemble(self, cluster_size: int,
                 read_cluster: Callable[[int], bytes]) -> bytes:
        """The whole bitmap, LSB-first bit order; `read_cluster(byte_offset)` reads one cluster
        of the image file."""
        nbytes = -(-self.bits // 8)
        out = bytearray()
        for e in self.l1:
            if e == 0:
                out += bytes(cluster_size)
            elif e == 1:
                out += b"\xff" * cluster_size
            else:
                out += read_cluster(e * SECTOR)
        return bytes(out[:nbytes])

    def dirty_ranges(self, bitmap: bytes) -> list[tuple[int, int]]:
        """Dirty byte ranges [start, end) of the virtual disk (bit n -> sectors [n*g, (n+1)*g))."""
        g = self.granularity * SECTOR
        out: list[tuple[int, int]] = []
        for n in range(self.bits):
            if bitmap[n >> 3] >> (n & 7) & 1:
                s = n * g
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], s + g)
                else:
                    out.append((s, s + g))
        return out


@dataclass
class FormatExtension:
    md5_ok: bool
    bitmaps: list[DirtyBitmap] = field(default_factory=list)
    unknown: list[tuple[int, int]] = field(default_factory=list)  # (magic, flags)


def parse_extension(cluster: bytes, cluster_size: int, where: str = "",
                    offset: int = 0) -> FormatExtension:
    if len(cluster) < cluster_size or cluster_size < _CHECK.size:
        raise CorruptImageError(f"format extension cluster truncated ({len(cluster)} bytes)",
                                where, offset=offset)
    magic, md5 = _CHECK.unpack_from(cluster, 0)
    if magic != FORMAT_EXTENSION_MAGIC:
        raise CorruptImageError(f"format extension magic is {magic:#018x}", where, offset=offset,
                                code="EXTENSION_MAGIC")
    import hashlib  # here, not at the top: most images have no extension (start time)
    import uuid

    ext = FormatExtension(md5_ok=hashlib.md5(cluster[24:cluster_size]).digest() == md5)
    pos = _CHECK.size
    while pos + _ELEM.size <= cluster_size:
        emagic, flags, size, _ = _ELEM.unpack_from(cluster, pos)
        pos += _ELEM.size
        if emagic == 0:
            break
        if pos + size > cluster_size:
            raise CorruptImageError(f"format extension element of {size} bytes overruns the "
                                    "cluster", where, offset=offset + pos)
        if emagic == EXT_MAGIC_DIRTY_BITMAP and size >= _BITMAP.size:
            msize, mid, gran, l1n = _BITMAP.unpack_from(cluster, pos)
            if _BITMAP.size + 8 * l1n > size:
                raise CorruptImageError(f"dirty bitmap L1 of {l1n} entries overruns its element",
                                        where, offset=offset + pos)
            l1 = list(struct.unpack_from(f"<{l1n}Q", cluster, pos + _BITMAP.size))
            ext.bitmaps.append(DirtyBitmap(msize, str(uuid.UUID(bytes=mid)), gran, l1))
        else:
            ext.unknown.append((emagic, flags))
        # ploop advances by `size`, qemu by `size` rounded up to 8; equal for real payloads (format.md §6.2).
        pos += -(-size // 8) * 8
    return ext
