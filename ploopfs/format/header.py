"""The 64-byte ploop image header (`struct ploop_pvd_header`), format.md §1.

Pure: bytes in, objects out. Nothing here opens files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import Enum

from ploopfs.errors import BadImageError
from ploopfs.format.findings import Anomaly, Severity, worst
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


MAX_CLUSTER_SECTORS = 1 << 20  # 512 MiB: no producer writes larger clusters (ploop's max is 64 MiB)


def header_anomalies(h: Header, file_size: int | None = None) -> list[Anomaly]:
    """Every rule about the header's fields (format.md §1.2–§1.5, §1.8), lenient: what is wrong
    and how badly. A FATAL one means the BAT cannot be interpreted; nothing after it is checked.
    `file_size` adds the rule that the file holds whole clusters."""
    out: list[Anomaly] = []

    def add(code: str, sev: Severity, msg: str, off: int) -> None:
        out.append(Anomaly(code, sev, msg, offset=off))

    if h.type != PRL_IMAGE_COMPRESSED:
        add("HEADER_TYPE", Severity.DAMAGED, f"m_Type is {h.type}, expected 2", 0x10)
    cs = h.cluster_sectors
    if cs == 0:
        add("CLUSTER_SIZE", Severity.FATAL, "m_Sectors is 0: no usable cluster size", 0x1C)
        return out
    if cs > MAX_CLUSTER_SECTORS:
        add("CLUSTER_SIZE", Severity.FATAL, f"m_Sectors is {cs}: absurd cluster size "
            f"({cs * SECTOR} bytes), no usable cluster size", 0x1C)
        return out
    if cs & (cs - 1) or not 64 <= cs <= 131072:
        # Readable (format.md §11 trap 16), but not what ploop makes.
        add("CLUSTER_SIZE", Severity.WARNING, f"cluster size {cs} sectors is not a power of 2 in "
            "64..131072: readable, but ploop refuses it", 0x1C)
    needed = -(-h.size_sectors // cs)
    if h.bat_entries < needed:
        add("SIZE_FIELDS", Severity.DAMAGED, f"m_Size {h.bat_entries} BAT entries cannot cover "
            f"m_SizeInSectors {h.size_sectors} (need {needed}): the disk past cluster "
            f"{h.bat_entries} has no mapping", 0x20)
    elif h.bat_entries * cs != h.size_sectors:
        add("SIZE_FIELDS", Severity.WARNING, f"m_Size {h.bat_entries} x {cs} sectors != "
            f"m_SizeInSectors {h.size_sectors}: ploop always writes whole clusters", 0x24)
    if h.size_high_v1:
        add("SIZE_FIELDS", Severity.WARNING,
            f"v1 high size word is {h.size_high_v1:#x}, should be 0 (ignored, as qemu does)", 0x28)
    expect_fbo = h.bat_clusters * cs
    if h.first_block_offset != expect_fbo:
        add("FIRST_BLOCK_OFFSET", Severity.WARNING, f"m_FirstBlockOffset is "
            f"{h.first_block_offset} sectors, expected {expect_fbo} (header + BAT = "
            f"{h.bat_clusters} cluster(s)); not used for addressing", 0x30)
    if h.in_use == DISK_IN_USE:
        add("DIRTY", Severity.WARNING, "marked in use (m_DiskInUse): a running container may be "
            "writing it, or it was not closed cleanly; unreferenced clusters are possible", 0x2C)
    elif h.in_use not in (DISK_CLOSED_V20, DISK_CLOSED_V21):
        add("IN_USE_TAG", Severity.INFO, f"m_DiskInUse is {h.in_use:#010x} "
            f"({h.in_use.to_bytes(4, 'little')!r}): unknown tag, treated as closed", 0x2C)
    if h.flags & CIF_FMT_VERSION_CONVERT:
        add("VERSION_CONVERT", Severity.DAMAGED, "CIF_FmtVersionConvert set: `ploop convert -v` "
            "was interrupted, the BAT may be half converted", 0x34)
    if h.flags & ~(CIF_EMPTY | CIF_FMT_VERSION_CONVERT) & 0xFFFFFFFF:
        add("FLAGS_UNKNOWN", Severity.INFO, f"m_Flags {h.flags:#x} has unknown bits", 0x34)
    if file_size is not None and file_size % h.cluster_size:
        add("FILE_NOT_CLUSTER_ALIGNED", Severity.WARNING, f"file size {file_size} is not a "
            f"multiple of the cluster size {h.cluster_size}: an extension was interrupted",
            file_size)
    return out


def decode_header(data: bytes, where: str = "",
                  file_size: int | None = None) -> tuple[Header, list[Anomaly]]:
    """The header and what is wrong with it. Raises BadImageError only when there is no ploop
    header to decode (too short, or no ploop signature)."""
    if len(data) < HEADER_SIZE:
        raise BadImageError(
            f"truncated ploop header: {len(data)} bytes, need {HEADER_SIZE}", where, offset=0)
    if not probe(data).is_ploop:
        raise BadImageError(f"not a ploop image (signature {data[:16]!r})", where, offset=0)
    h = decode_header_fields(data)
    return h, header_anomalies(h, file_size)


def parse_header(data: bytes, where: str = "", *, file_size: int | None = None,
                 accept: Severity = Severity.WARNING) -> Header:
    """Decode and validate: the first anomaly above `accept` (by default anything DAMAGED or
    worse) raises BadImageError naming the field's offset. `accept=Severity.DAMAGED` is the
    salvage policy: only a header whose BAT cannot be interpreted is refused."""
    h, anomalies = decode_header(data, where, file_size)
    bad = worst(anomalies, Severity(accept + 1))
    if bad is not None:
        raise BadImageError(bad.message, where, offset=bad.offset)
    return h


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
    # m_Cylinders is 32 bits; a disk past 2^32 x heads x sectors per track has more cylinders
    # (one head and one sector per track when nothing divides the size, format.md §1.7).
    # Nothing reads the geometry: the field saturates.
    cyl = min(cyl, 0xFFFFFFFF)
    bat_clusters = -(-(HEADER_SIZE + 4 * clusters) // cluster_size)
    return Header(
        signature=SIG_V1 if version == 1 else SIG_V2, type=PRL_IMAGE_COMPRESSED, heads=heads,
        cylinders=cyl, cluster_sectors=csec, bat_entries=clusters, size_sectors=size_sectors,
        size_high_v1=0, in_use=DISK_CLOSED_V20, first_block_offset=bat_clusters * csec,
        flags=CIF_EMPTY, ext_offset=0,
    )
