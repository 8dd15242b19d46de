"""Salvage reads of damaged disks (docs/salvage.md): a Volume that does not fail on unreadable
BAT entries or read errors but serves the damaged ranges by a policy and records each one.

Policies: "older" serves a damaged cluster from the next lower level that maps it (a raw base,
or zeros when none does); "zeros" serves zeros even when a lower level maps it. The strict
Volume is untouched: this is a subclass, chosen by Disk.volume only when OpenOptions.salvage is
set.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

from ploopfs.errors import CorruptImageError, SourceIOError
from ploopfs.format.bat import bat_entry_off
from ploopfs.format.header import SECTOR
from ploopfs.volume.blockmap import ZERO_LEVEL
from ploopfs.volume.image import Image
from ploopfs.volume.volume import Segment, Volume

POLICIES = ("zeros", "older")
RETRY_PIECE = 64 << 10  # a failed read is retried in pieces of this size, then per sector


class SalvageLog:
    """Every damaged range met so far, deduplicated; shared by the volumes of one Disk (a mount
    opens several snapshots) and safe to append to from several threads."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._records: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        with self._lock:
            self._records.setdefault(key, record)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            recs = list(self._records.values())
        return sorted(recs, key=lambda r: (r["snapshot"], r["voffset"], r["level"], r["kind"]))

    def summary(self, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The counts and ranges of `records` (default: every one met so far)."""
        recs = self.records() if records is None else records
        subst = [r for r in recs if r["substitution"] != "shadowed"]
        return {
            "policy": self.policy,
            "damaged_ranges": len(recs),
            "substituted_ranges": len(subst),
            "substituted_bytes": sum(r["length"] for r in subst),
            "bat_entries": sum(r["kind"] == "bat" for r in recs),
            "read_errors": sum(r["kind"] == "read" for r in recs),
            "ranges": recs,
        }

    def summary_line(self) -> str:
        s = self.summary()
        return (f"salvage ({self.policy}): {s['substituted_ranges']} damaged range(s), "
                f"{s['substituted_bytes']} bytes served as "
                f"{'zeros' if self.policy == 'zeros' else 'older data or zeros'} "
                f"({s['bat_entries']} bad BAT entries, {s['read_errors']} read errors)")


class SalvageVolume(Volume):
    def __init__(self, images: Sequence[Image], size: int, cluster_size: int, policy: str,
                 log: SalvageLog, snapshot: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown salvage policy {policy!r}")
        self.policy = policy
        self.log = log
        self.snapshot = snapshot
        nclusters = -(-size // cluster_size)
        mappings = [im.mapping() for im in images]  # lenient: Image.salvage is set
        zero = None
        if policy == "zeros":
            zero = [array("I", sorted({b.vcluster for b in im.bad_slots})) for im in images]
        super().__init__(images, size, cluster_size, zero)
        self._mappings = mappings
        self._record_bat_damage(nclusters)

    # -- BAT-level damage ---------------------------------------------------------------------
    def _record_bat_damage(self, nclusters: int) -> None:
        c = self.cluster_size
        for lv, im in enumerate(self.images):
            for b in im.bad_slots:
                if b.vcluster >= nclusters:
                    continue
                voff = b.vcluster * c
                subst, served = self._served_by(b.vcluster, lv)
                self.log.add(("bat", self.snapshot, im.path, b.vcluster), {
                    "kind": "bat", "code": b.code, "snapshot": self.snapshot,
                    "vcluster": b.vcluster, "voffset": voff, "length": min(c, self.size - voff),
                    "level": lv, "file": im.path, "offset": bat_entry_off(b.vcluster),
                    "entry": b.entry, "reason": b.reason, "substitution": subst,
                    "served_from_level": served})

    def _served_by(self, vcluster: int, level: int) -> tuple[str, int | None]:
        """What the merged map serves for a cluster whose entry at `level` was dropped."""
        m = self.map
        i = m.find(vcluster)
        if i >= 0:
            lv = m.a_level[i]
            if lv == ZERO_LEVEL:
                return "zeros", None
            if lv > level:
                return "shadowed", lv
            return "older", lv
        if self.raw_base:
            return "older", 0
        return "zeros", None  # no lower level maps it

    # -- planning -----------------------------------------------------------------------------
    def segments(self, offset: int, length: int) -> Iterator[Segment]:
        for seg in super().segments(offset, length):
            if seg.level == ZERO_LEVEL:
                yield Segment(seg.voffset, seg.length, None, 0)
            else:
                yield seg

    # -- reading ------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes | bytearray:
        n = min(offset + length, self.size) - offset
        if n <= 0:
            return bytearray()
        buf = bytearray(n)
        self.readinto(memoryview(buf), offset)
        return buf

    def readinto(self, view: memoryview, offset: int) -> int:
        return self.zero_fill_readinto(view, offset)

    def _fill(self, seg: Segment, dst: memoryview) -> None:
        assert seg.level is not None
        self._salvage_pread(seg.level, dst, seg.offset, seg.voffset, seg.raw_fill)

    def _salvage_pread(self, level: int, dst: memoryview, offset: int, voffset: int,
                       raw_fill: bool) -> None:
        if self._try_read(level, dst, offset, raw_fill) is None:
            return
        # Retry in 64 KiB pieces aligned in the file, then failing pieces per 512-byte sector,
        # so a partly readable cluster keeps every readable sector.
        for p0, p1 in _pieces(offset, len(dst), RETRY_PIECE):
            piece = dst[p0 - offset: p1 - offset]
            if self._try_read(level, piece, p0, raw_fill) is None:
                continue
            bad_start: int | None = None
            bad_err = ""
            for s0, s1 in _pieces(p0, p1 - p0, SECTOR):
                err = self._try_read(level, dst[s0 - offset: s1 - offset], s0, raw_fill)
                if err is None:
                    if bad_start is not None:
                        self._bad_run(level, dst, offset, voffset, bad_start, s0, bad_err)
                        bad_start = None
                elif bad_start is None:
                    bad_start, bad_err = s0, err
            if bad_start is not None:
                self._bad_run(level, dst, offset, voffset, bad_start, p1, bad_err)

    def _try_read(self, level: int, dst: memoryview, offset: int, raw_fill: bool) -> str | None:
        """None when read (Volume's one read loop); else the reason (the caller substitutes)."""
        try:
            self._pread_into(level, dst, offset, allow_short=raw_fill, zero_rest=True)
        except (SourceIOError, CorruptImageError) as e:
            return e.what
        return None

    def _bad_run(self, level: int, dst: memoryview, offset: int, voffset: int, f0: int, f1: int,
                 reason: str) -> None:
        """File bytes [f0, f1) of `level` (dst starts at file `offset`, virtual `voffset`) could
        not be read: substitute them and record the run."""
        v0 = voffset + f0 - offset
        part = dst[f0 - offset: f1 - offset]
        served = self._substitute(level, part, v0)
        subst = "zeros" if self.policy == "zeros" or served == -1 else "older"
        im = self.images[level]
        self.log.add(("read", self.snapshot, im.path, f0, f1), {
            "kind": "read", "code": "READ_ERROR", "snapshot": self.snapshot,
            "vcluster": v0 // self.cluster_size, "voffset": v0, "length": f1 - f0,
            "level": level, "file": im.path, "offset": f0, "reason": reason,
            "substitution": subst, "served_from_level": None if served == -1 else served})

    def _substitute(self, level: int, dst: memoryview, voffset: int) -> int | None:
        """Fill `dst` (virtual `voffset`) per the policy; returns the level that served it when
        it is one level for the whole run, -1 when all of it is zeros, None when mixed."""
        if self.policy == "zeros":
            dst[:] = bytes(len(dst))
            return -1
        c = self.cluster_size
        served: set[int | None] = set()
        pos = 0
        while pos < len(dst):
            v = voffset + pos
            n = min(len(dst) - pos, c - v % c)
            served.add(self._read_older(level, dst[pos:pos + n], v))
            pos += n
        if served == {None}:
            return -1
        return served.pop() if len(served) == 1 else None

    def _read_older(self, level: int, dst: memoryview, voffset: int) -> int | None:
        """`dst` (inside one cluster) from the highest level below `level` that maps it."""
        c = self.cluster_size
        vc = voffset // c
        for lv in range(level - 1, -1, -1):
            im = self.images[lv]
            if im.is_raw:
                self._salvage_pread(lv, dst, voffset, voffset, True)
                return lv
            off = self._mappings[lv].offset(vc)
            if off is not None:
                self._salvage_pread(lv, dst, off + voffset % c, voffset, False)
                return lv
        dst[:] = bytes(len(dst))
        return None


def _pieces(offset: int, length: int, size: int) -> Iterator[tuple[int, int]]:
    """[offset, offset+length) cut at multiples of `size` (file-aligned pieces)."""
    pos, end = offset, offset + length
    while pos < end:
        nxt = min(end, (pos // size + 1) * size)
        yield pos, nxt
        pos = nxt
