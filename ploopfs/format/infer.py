"""Inferring a damaged image header from its BAT and data (docs/salvage.md).

When the 64-byte header is unreadable (foreign signature, garbage fields) but the BAT behind it
survives, the cluster size, the format version and the BAT length can be told from the entries
(format.md §2): with the right cluster size C and version, every non-zero entry names a
distinct cluster after the header/BAT clusters and inside the file (v1: a sector offset that is a
multiple of C, §2.2; v2: a cluster number), the padding slots are zero (§2.1), and the entries
cover the data area of the file (new clusters are appended, §2.5). A wrong C either leaves
entries past the end of the file or unaligned (too large) or references only a fraction of the
data area (too small). The descriptor's <Blocksize>/<Disk_size> and the readable headers of the
other images of the chain (same cluster size and version, §4.2) are used as hints and reported.

Pure: a read callable in, an Inference out; nothing here opens files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ploopfs.format.header import HEADER_SIZE, SECTOR, Header, new_header

if TYPE_CHECKING:
    import numpy as np

MAX_BAT_BYTES = 256 << 20  # candidates needing a larger BAT are not tried
CANDIDATE_SECTORS = [1 << k for k in range(3, 18)]  # 4 KiB .. 64 MiB clusters


@dataclass(frozen=True)
class Hints:
    cluster_sectors: int = 0  # descriptor <Blocksize>
    size_sectors: int = 0  # descriptor <Disk_size>
    # (cluster sectors, version, m_Size) of the readable headers of the other images
    siblings: tuple[tuple[int, int, int], ...] = ()

    @staticmethod
    def sibling(h: Header) -> tuple[int, int, int]:
        """What another image's readable header tells the inference (one of `siblings`)."""
        return (h.cluster_sectors, h.version, h.bat_entries)


@dataclass
class _Candidate:
    sectors: int
    version: int
    entries: int  # m_Size
    source: str  # where m_Size came from
    valid: int = 0
    nonzero: int = 0
    bad: int = 0
    coverage: float = 0.0
    agreement: int = 0

    @property
    def key(self) -> tuple:
        ok = self.bad <= self.nonzero // 100  # a few damaged entries do not hide the layout
        return (ok, round(self.coverage, 2), self.agreement, -self.bad, -self.entries)


@dataclass
class Inference:
    header: Header
    evidence: list[str] = field(default_factory=list)

    def line(self) -> str:
        h = self.header
        return (f"header inferred: cluster size {h.cluster_size} bytes, v{h.version}, "
                f"m_Size {h.bat_entries} ({'; '.join(self.evidence)})")


Read = Callable[[int, int], bytes]


def infer_header(read: Read, file_size: int, hints: Hints) -> tuple[Inference | None, str]:
    """The best consistent header, or None and why not."""
    cands: list[_Candidate] = []
    for cs in _sector_candidates(hints):
        for version in (2, 1):
            for n, src in _size_candidates(read, file_size, cs, version, hints):
                cand = _Candidate(cs, version, n, src)
                if _score(cand, read, file_size, hints):
                    cands.append(cand)
    if not cands:
        return None, "no cluster size and version fit the BAT"
    cands.sort(key=lambda c: c.key, reverse=True)
    best = cands[0]
    if not best.key[0]:
        return None, (f"no layout without unreadable entries (best: cluster {best.sectors * SECTOR}"
                      f" v{best.version}, {best.bad} of {best.nonzero} entries unreadable)")
    if best.valid == 0 and best.agreement < 2:
        return None, "the BAT maps nothing, and no other image tells the cluster size and version"
    hdr = new_header(best.entries * best.sectors * SECTOR, best.sectors * SECTOR, best.version)
    hdr = hdr.with_(flags=0)
    ev = [f"{best.valid} of {best.nonzero} non-zero BAT entries are distinct "
          f"{'cluster numbers' if best.version == 2 else 'cluster-aligned sector offsets'} inside "
          f"the {file_size} byte file, covering {best.coverage:.0%} of its data clusters",
          f"m_Size from {best.source}"]
    ev += _hint_notes(best, hints)
    other = next((c for c in cands[1:] if (c.sectors, c.version) != (best.sectors, best.version)),
                 None)
    if other is not None:
        ev.append(f"next best: cluster {other.sectors * SECTOR} v{other.version} with "
                  f"{other.bad} unreadable entries, {other.coverage:.0%} coverage")
    return Inference(hdr, ev), ""


def _sector_candidates(hints: Hints) -> list[int]:
    out = set(CANDIDATE_SECTORS)
    if hints.cluster_sectors:
        out.add(hints.cluster_sectors)
    out.update(s for s, _v, _n in hints.siblings if s)
    return sorted(out)


def _size_candidates(read: Read, file_size: int, cs: int, version: int, hints: Hints
                     ) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    if hints.size_sectors:
        out.append((-(-hints.size_sectors // cs), f"<Disk_size> {hints.size_sectors}"))
    for s, v, n in hints.siblings:
        if (s, v) == (cs, version) and all(n != o for o, _ in out):
            out.append((n, "another image of the chain"))
    est = _estimate_entries(read, file_size, cs, version)
    if est and all(est != o for o, _ in out):
        out.append((est, "the last mapped BAT slot (a lower bound: a larger disk reads zeros after it)"))
    return out


def _estimate_entries(read: Read, file_size: int, cs: int, version: int) -> int:
    """The last slot mapping a cluster inside the file, + 1: a lower bound of m_Size (the clusters
    of a larger disk after it would be unmapped and read as zeros). Slots are read up to the
    lowest referenced cluster, where the data area begins."""
    import numpy as np  # salvage only: opening an intact image stays free of numpy
    c = cs * SECTOR
    if file_size < c:
        return 0

    def valid(e: np.ndarray) -> np.ndarray:
        v = e.astype(np.int64)
        cl = v if version == 2 else np.where(v % cs == 0, v // cs, -1)
        return (cl >= 1) & ((cl + 1) * c <= file_size)

    e = np.frombuffer(read(HEADER_SIZE, c - HEADER_SIZE)[: (c - HEADER_SIZE) // 4 * 4], "<u4")
    ok = valid(e)
    if not ok.any():
        return 0
    cl = e[ok].astype(np.int64) // (cs if version == 1 else 1)
    first = min(int(cl.min()), max(1, MAX_BAT_BYTES // c))
    if first > 1:
        raw = read(HEADER_SIZE, first * c - HEADER_SIZE)
        e = np.frombuffer(raw[: len(raw) // 4 * 4], "<u4")
        ok = valid(e)
    return int(np.flatnonzero(ok)[-1]) + 1


def _score(cand: _Candidate, read: Read, file_size: int, hints: Hints) -> bool:
    import numpy as np  # salvage only: opening an intact image stays free of numpy

    c = cand.sectors * SECTOR
    n = cand.entries
    if n <= 0 or 4 * n > MAX_BAT_BYTES or HEADER_SIZE + 4 * n > file_size:
        return False
    nbat = -(-(HEADER_SIZE + 4 * n) // c)
    # Never more than the file holds: a candidate cluster size (e.g. a <Blocksize> hint) may be
    # far larger than a small damaged file; a short read gives the same slots.
    raw = read(HEADER_SIZE, min(nbat * c, file_size) - HEADER_SIZE)
    slots = np.frombuffer(raw[: len(raw) // 4 * 4], "<u4")
    ent, pad = slots[:n], slots[n:]
    nz = ent[ent != 0].astype(np.int64)
    if cand.version == 2:
        aligned = np.ones(nz.size, bool)
        clusters = nz
    else:
        aligned = nz % cand.sectors == 0
        clusters = nz // cand.sectors
    ok = aligned & (clusters >= nbat) & ((clusters + 1) * c <= file_size)
    distinct = int(np.unique(clusters[ok]).size)
    cand.nonzero = int(nz.size)
    cand.valid = distinct
    cand.bad = int(nz.size) - distinct + int(np.count_nonzero(pad))
    data = file_size // c - nbat
    cand.coverage = distinct / data if data > 0 else 1.0
    cand.agreement = (int(cand.sectors == hints.cluster_sectors)
                      + int(any((s, v) == (cand.sectors, cand.version) for s, v, _ in hints.siblings))
                      + int(not cand.source.startswith("the last mapped")))
    return True


def _hint_notes(best: _Candidate, hints: Hints) -> list[str]:
    out = []
    if hints.cluster_sectors:
        agree = "agrees" if hints.cluster_sectors == best.sectors else "DISAGREES"
        out.append(f"<Blocksize> {hints.cluster_sectors} {agree}")
    sib = [(s, v) for s, v, _ in hints.siblings]
    if sib:
        same = sum(x == (best.sectors, best.version) for x in sib)
        out.append(f"{same} of {len(sib)} other image header(s) have the same cluster size and "
                   "version")
    return out
