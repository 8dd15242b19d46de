"""The 64-byte ploop image header (`struct ploop_pvd_header`), format.md §1.

Pure: bytes in, objects out. Nothing here opens files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import Enum

from ploopfs.errors import BadImageError
from ploopfs.format.probe import SIG_V1, SIG_V2, FileKind, probe

SECTOR = 512
HEADER_SIZE = 64
# ploop treats header + BAT as u32 slots; the first 16 slots are the header (format.md §2.1,
# PLOOP_MAP_OFFSET).
HEADER_SLOTS = HEADER_SIZE // 4

PRL_IMAGE_COMPRESSED = 2

DISK_IN_USE = 0x746F6E59  # "Ynot": open read-write / dirty (format.md §1.3)
DISK_CLOSED_V20 = 0
DISK_CLOSED_V21 = 0x312E3276  # "v2.1": closed, format extension valid (format.md §6.1)

CIF_EMPTY = 0x1
CIF_FMT_VERSION_CONVERT = 0x2

TOP_GUID = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
NONE_GUID = "{00000000-0000-0000-0000-000000000000}"

# <0: 16s signature, u32 type, heads, cylinders, sectors (cluster size), size (BAT entries),
# u64 size in sectors (v1: only the low u32 counts), u32 in-use, first block offset, flags,
# u64 format extension offset (in sectors, format.md §1.6)
_HEADER = struct.Struct("<16sIIIIIQIIIQ")
assert _HEADER.size == HEADER_SIZE


class ImageKind(Enum):
    V1 = "ploop-v1"
    V2 = "ploop-v2"
    RAW = "raw"


def sniff(first16: bytes) -> ImageKind:
    """An image's kind from its signature (probe.py), never from <Type> (format.md §3,
    §11 trap 10): anything without a ploop signature is raw to the image reader."""
    kind = probe(first16)
    return ImageKind.V1 if kind is FileKind.PLOOP_V1 else (
        ImageKind.V2 if kind is FileKind.PLOOP_V2 else ImageKind.RAW)


@dataclass(frozen=True)
class Header:
    """Every field of the header, decoded; units are given per field."""

    signature: bytes
    type: int  # m_Type, must be 2
    heads: int  # CHS, informational (format.md §1.7)
    cylinders: int  # CHS, informational
    cluster_sectors: int  # m_Sectors: the cluster size in 512-byte sectors (format.md §11 trap 2)
    bat_entries: int  # m_Size: number of BAT entries = clusters of the disk (format.md §11 trap 3)
    size_sectors: int  # m_SizeInSectors: v1 low u32 only, v2 full u64 (format.md §1.4)
    size_high_v1: int  # v1 only: the "Unused" u32 at offset 40; must be 0
    in_use: int  # m_DiskInUse (format.md §1.3)
    first_block_offset: int  # m_FirstBlockOffset, in sectors (format.md §2.4); used for validation only
    flags: int  # m_Flags (format.md §1.5)
    ext_offset: int  # m_FormatExtensionOffset, in sectors (format.md §1.6)

    @property
    def version(self) -> int:
        return 1 if self.signature == SIG_V1 else 2

    @property
    def kind(self) -> ImageKind:
        return ImageKind.V1 if self.version == 1 else ImageKind.V2

    @property
    def cluster_size(self) -> int:
        return self.cluster_sectors * SECTOR

    @property
    def disk_bytes(self) -> int:
        """The disk size ploop reads from this header alone: the whole clusters of
        m_SizeInSectors (format.md §1.4); a trailing partial cluster is not part of it."""
        return self.size_sectors // self.cluster_sectors * self.cluster_size if \
            self.cluster_sectors else 0

    @property
    def size_bytes(self) -> int:
        return self.size_sectors * SECTOR

    @property
    def dirty(self) -> bool:
        # Only "Ynot" means in use; 0, "v2.1" and Parallels tags ("pd17") mean closed (format.md §11 trap 14).
        return self.in_use == DISK_IN_USE

    @property
    def entry_unit(self) -> int:
        """Bytes per BAT entry unit: sectors in v1, clusters in v2 (format.md §2.2)."""
        return SECTOR if self.version == 1 else self.cluster_size

    @property
    def bat_clusters(self) -> int:
        """Clusters taken by header + BAT: ceil((64 + 4*m_Size) / C) (format.md §2.4)."""
        return -(-(HEADER_SIZE + 4 * self.bat_entries) // self.cluster_size)

    @property
    def bat_slots(self) -> int:
        """u32 slots after the header in the header/BAT clusters, padding included (format.md §2.1)."""
        return self.bat_clusters * self.cluster_size // 4 - HEADER_SLOTS

    def in_use_name(self) -> str:
        return {
            DISK_IN_USE: "in-use (dirty)",
            DISK_CLOSED_V20: "closed",
            DISK_CLOSED_V21: "closed (v2.1, extension valid)",
        }.get(self.in_use, f"closed (unknown tag {self.in_use:#010x})")

    def pack(self) -> bytes:
        size_field = self.size_sectors | (self.size_high_v1 << 32 if self.version == 1 else 0)
        return _HEADER.pack(
            self.signature, self.type, self.heads, self.cylinders, self.cluster_sectors,
            self.bat_entries, size_field, self.in_use, self.first_block_offset, self.flags,
            self.ext_offset,
        )

    def with_(self, **changes: int) -> Header:
        return replace(self, **changes)


def decode_header_fields(data: bytes) -> Header:
    """Decode all 64 bytes without any validation (for `check`, which reports every anomaly
    itself). A foreign signature decodes as v2 (`version` is 1 only for SIG_V1). Needs >= 64
    bytes (ValueError otherwise)."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"header needs {HEADER_SIZE} bytes, got {len(data)}")
    (sig, typ, heads, cyl, sectors, size, size64, in_use, fbo, flags, ext) = _HEADER.unpack_from(data)
    if sig == SIG_V1:
        size_sectors, high = size64 & 0xFFFFFFFF, size64 >> 32
    else:
        size_sectors, high = size64, 0
    return Header(sig, typ, heads, cyl, sectors, size, size_sectors, high, in_use, fbo, flags, ext)


def parse_header(data: bytes, where: str = "") -> Header:
    """Decode and validate the header. Raises BadImageError naming the field and its offset."""
    if len(data) < HEADER_SIZE:
        raise BadImageError(
            f"truncated ploop header: {len(data)} bytes, need {HEADER_SIZE}", where, offset=0)
    (sig, typ, heads, cyl, sectors, size, size64, in_use, fbo, flags, ext) = _HEADER.unpack_from(data)
    if sig not in (SIG_V1, SIG_V2):
        raise BadImageError(f"not a ploop image (signature {sig!r})", where, offset=0)
    if typ != PRL_IMAGE_COMPRESSED:
        raise BadImageError(f"m_Type is {typ}, expected 2", where, offset=0x10)
    if sectors == 0:
        raise BadImageError("cluster size (m_Sectors) is 0", where, offset=0x1C)
    # Reading accepts any m_Sectors >= 1 (format.md §11 trap 16); the cap only rejects nonsense that would
    # make one cluster larger than any real producer writes (ploop's maximum is 64 MiB).
    if sectors > (1 << 20):
        raise BadImageError(
            f"absurd cluster size (m_Sectors) {sectors} sectors ({sectors * SECTOR} bytes)",
            where, offset=0x1C)
    if sig == SIG_V1:
        size_sectors, high = size64 & 0xFFFFFFFF, size64 >> 32
    else:
        size_sectors, high = size64, 0
    hdr = Header(sig, typ, heads, cyl, sectors, size, size_sectors, high, in_use, fbo, flags, ext)
    needed = -(-size_sectors // sectors)
    if size < needed:
        raise BadImageError(
            f"m_Size {size} BAT entries cannot cover m_SizeInSectors {size_sectors} "
            f"at {sectors} sectors per cluster (need {needed})", where, offset=0x20)
    return hdr


def chs_geometry(size_sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors-per-track) as ploop's generate_pvd_header computes them (format.md §1.7)."""
    s = size_sectors
    if 1032192 < s < 16777216:
        return s // 1008, 16, 63
    for spt in (63, 32, 16, 8):
        if s % spt == 0:
            for heads in (16, 8, 4, 2):
                if (s // spt) % heads == 0:
                    return s // spt // heads, heads, spt
            break
    return s, 1, 1


def new_header(size_bytes: int, cluster_size: int, version: int = 2) -> Header:
    """Header of a new empty image as ploop writes it (format.md §2.4): the size is rounded up to whole
    clusters, header + BAT padded to whole clusters, CIF_Empty set."""
    if cluster_size <= 0 or cluster_size % SECTOR:
        raise ValueError(f"cluster size {cluster_size} is not a positive multiple of {SECTOR}")
    if version not in (1, 2):
        raise ValueError(f"unknown ploop format version {version}")
    csec = cluster_size // SECTOR
    clusters = -(-size_bytes // cluster_size)
    size_sectors = clusters * csec
    if version == 1 and size_sectors > 0xFFFFFFFF:
        raise ValueError("a v1 image cannot exceed 2^32-1 sectors; use version 2")
    if clusters > 0xFFFFFFFF:
        raise ValueError("too many clusters for a 32-bit BAT")
    cyl, heads, _spt = chs_geometry(size_sectors)
    bat_clusters = -(-(HEADER_SIZE + 4 * clusters) // cluster_size)
    return Header(
        signature=SIG_V1 if version == 1 else SIG_V2, type=PRL_IMAGE_COMPRESSED, heads=heads,
        cylinders=cyl, cluster_sectors=csec, bat_entries=clusters, size_sectors=size_sectors,
        size_high_v1=0, in_use=DISK_CLOSED_V20, first_block_offset=bat_clusters * csec,
        flags=CIF_EMPTY, ext_offset=0,
    )
