"""Block allocation table arithmetic and validation, format.md §2.

Pure helpers in the spirit of qemu's `bat_entry_off`/`bat2sect`: they take numbers or arrays and
return numbers or arrays; the volume layer does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ploopfs.errors import CorruptImageError
from ploopfs.format.header import HEADER_SIZE, Header

if TYPE_CHECKING:
    import numpy as np

ENTRY_SIZE = 4
BAT_RESERVED = 0xFFFFFFFF  # never valid on disk (format.md §2.3)


def bat_entry_off(index: int) -> int:
    """File byte offset of the BAT slot of virtual cluster `index` (format.md §2.1)."""
    return HEADER_SIZE + ENTRY_SIZE * index


def entry_to_offset(entry: int, header: Header) -> int:
    """File byte offset of a non-zero entry: sectors in v1, clusters in v2 (format.md §2.2, §11 trap 1)."""
    return entry * header.entry_unit


def offset_to_entry(offset: int, header: Header) -> int:
    return offset // header.entry_unit


def decode_entries(raw: bytes | bytearray | memoryview) -> np.ndarray:
    """Little-endian u32 BAT slots as a numpy array (a view, no copy)."""
    import numpy as np  # here only: reading an image never imports numpy

    return np.frombuffer(raw, dtype="<u4")


def readable_entries(header: Header, file_size: int) -> tuple[int, int]:
    """The one rule of which entries can be read (format.md §2.3, §2.8): entry e is readable iff
    lowest <= e <= highest, i.e. its cluster starts after the header/BAT clusters and ends within
    the file; never the reserved value. In entry units; `highest` is negative when no cluster fits."""
    unit, c = header.entry_unit, header.cluster_size
    return -(-header.bat_clusters * c // unit), min((file_size - c) // unit, BAT_RESERVED - 1)


@dataclass(frozen=True)
class BadEntry:
    index: int  # virtual cluster (slot index)
    entry: int
    reason: str


def find_bad_entries(index: np.ndarray, entries: np.ndarray, header: Header,
                     file_size: int, limit: int = 1) -> list[BadEntry]:
    """Entries that cannot be read: reserved value, pointing into header/BAT clusters, or whose
    cluster ends past EOF (format.md §2.3, §2.8). `index`/`entries` hold only non-zero slots.

    v1 entries that are not cluster-aligned are readable (qemu reads them) and are left to
    `check` (format.md §2.2, §11 trap 21)."""
    import numpy as np  # here only: reading an image never imports numpy

    if entries.size == 0:
        return []
    p = classify_entries(entries, header, file_size)
    data_start = header.bat_clusters * header.cluster_size
    out = []
    for i in np.flatnonzero(p.unreadable)[:limit].tolist():
        e = int(entries[i])
        off = e * header.entry_unit
        if p.reserved[i]:
            reason = "reserved value 0xffffffff"
        elif p.into_header[i]:
            reason = (f"points into the header/BAT area (cluster at byte {off}, data starts at "
                      f"{data_start})")
        else:
            reason = (f"points past end of file (cluster at byte {off}..{off + header.cluster_size}"
                      f", file is {file_size} bytes)")
        out.append(BadEntry(int(index[i]), e, reason))
    return out


def raise_bad_entry(bad: BadEntry, where: str) -> None:
    raise CorruptImageError(
        f"BAT entry for virtual cluster {bad.index} = {bad.entry}: {bad.reason}",
        where, offset=bat_entry_off(bad.index))


@dataclass(frozen=True)
class EntryProblems:
    """Boolean masks over non-zero BAT entries, one per kind of problem (format.md §2.2, §2.3, §2.8)."""

    reserved: np.ndarray  # 0xffffffff
    into_header: np.ndarray  # cluster starts inside the header/BAT clusters
    past_eof: np.ndarray  # cluster ends past the end of the file
    v1_unaligned: np.ndarray  # v1 sector entry not a multiple of the cluster size

    @property
    def unreadable(self) -> np.ndarray:
        return self.reserved | self.into_header | self.past_eof


def classify_entries(entries: np.ndarray, header: Header, file_size: int) -> EntryProblems:
    """Every problem of every non-zero entry at once, by `readable_entries` (find_bad_entries
    words the first ones); pure arithmetic on u32 arrays, for `check` and salvage."""
    import numpy as np  # here only: reading an image never imports numpy

    lowest, highest = readable_entries(header, file_size)
    e = entries.astype(np.int64)
    reserved = entries == BAT_RESERVED
    into = (e < lowest) & ~reserved
    past = (e > highest) & ~reserved & ~into
    if header.version == 1 and header.cluster_sectors > 1:
        unaligned = (entries % np.uint32(header.cluster_sectors) != 0) & ~reserved & ~into & ~past
    else:
        unaligned = np.zeros(entries.shape, bool)
    return EntryProblems(reserved, into, past, unaligned)


def duplicate_slots(vclusters: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """Slots that share a physical cluster with another (format.md §2.3): (virtual cluster, the
    lowest virtual cluster sharing it, the shared offset or entry), one per extra slot. `offsets`
    may be file offsets or raw entries (one unit per image); equal values are what counts. The
    lowest virtual cluster is the one that keeps the cluster (salvage) and the one named (check)."""
    import numpy as np

    if offsets.size < 2:
        return []
    order = np.argsort(offsets, kind="stable")  # virtual clusters ascending within one value
    so = offsets[order]
    dup = np.flatnonzero(so[1:] == so[:-1]) + 1
    out = []
    owner = -1
    for j in dup.tolist():
        if so[j] != so[j - 1] or owner < 0 or so[owner] != so[j]:
            owner = j - 1
            while owner > 0 and so[owner - 1] == so[j]:
                owner -= 1
        out.append((int(vclusters[order[j]]), int(vclusters[order[owner]]), int(so[j])))
    return out
