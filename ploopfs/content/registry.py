"""Which filesystems ploopfs knows, and what it can do with each: a registry from a filesystem
kind ("ext4", "xfs", ...) to a Probe that recognises it by its signature and, for the kinds
ploopfs analyses, an Analyser that reads its usage (df's figures, the used blocks du and compact
lay over the ploop clusters).

A new filesystem is one module in ploopfs/content/ that calls `register(SomeAnalyser())` at
import, named in BUILTIN below; it takes over the kinds of the plain probe listed here for it.
Kinds without an analyser are still recognised (partitions.py reports them) and listed as not
analysed, kept whole by compact.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ploopfs.content.view import Reader

if TYPE_CHECKING:
    from ploopfs.content.usage import Finding, FsUsage

# Modules registering the built-in analysers, imported on the first lookup (so that importing
# the registry costs nothing, and an analyser's own imports are paid only when a disk is read).
BUILTIN = ("ploopfs.content.ext", "ploopfs.content.xfs")
PROBE_BYTES = 0x11000  # the head of a filesystem read once and shared by every probe
LUKS_MAGIC = b"LUKS\xba\xbe"

Label = str | None


class Probe:
    """Recognises `kinds` of filesystem. `probe(read, start, size)` looks at the `size` bytes
    from `start` (reads are clipped to them) and returns (kind, label), or None. Probes run in
    increasing `order`; the first match wins (a disk may carry several magics)."""

    kinds: tuple[str, ...] = ()
    order: int = 100

    def probe(self, read: Reader, start: int, size: int) -> tuple[str, Label] | None:
        raise NotImplementedError


class Analyser(Probe):
    """A Probe that can also analyse what it recognises.

    `analyse(read, where, start, limit, *, bitmaps, gran)` reads the filesystem at byte `start`
    of the disk (`limit`: the bytes its partition, or the disk, holds from there) and returns an
    FsUsage (content/usage.py): df's figures, findings, and with `bitmaps` the used map in
    clusters of `gran` bytes of the disk (`analysed` set when compact may trust it). It never
    raises on damage: what it cannot trust becomes a finding and counts as used.

    `title`: how messages name its kinds ("ext2/3/4"). Which kinds have their files served is
    content/files.py's to say (FILE_KINDS): it reads them."""

    title: str = ""

    def analyse(self, read: Reader, where: str, start: int, limit: int, *, bitmaps: bool,
                gran: int) -> FsUsage:
        raise NotImplementedError

    def unreadable(self, fs: FsUsage, limit: int) -> list[Finding]:
        return []


class Signature(Probe):
    """A kind told by bytes at fixed offsets: `test(read, start)` returns the label (or "") when
    they match, None otherwise."""

    def __init__(self, kind: str, order: int, test: Callable[[Reader, int], str | None]) -> None:
        self.kinds, self.order, self._test = (kind,), order, test

    def probe(self, read: Reader, start: int, size: int) -> tuple[str, Label] | None:
        label = self._test(read, start)
        return None if label is None else (self.kinds[0], label or None)


def _text(b: bytes | bytearray) -> str:
    return bytes(b).split(b"\0", 1)[0].decode("utf-8", "replace")


def _swap(read: Reader, start: int) -> str | None:
    for ps in (4096, 8192, 16384, 65536):
        if bytes(read(start + ps - 10, 10)) in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return ""
    return None


def _vfat(read: Reader, start: int) -> str | None:
    h = bytes(read(start, 0x5A))
    return "" if h[0x52:0x5A] == b"FAT32   " or h[0x36:0x3B] in (b"FAT16", b"FAT12") else None


# The kinds recognised without an analyser (format.md §8, §9), in the order they are tried;
# ext2/3/4 (order 10, content/ext.py) comes right after LUKS.
_SIGNATURES = (
    Signature("luks", 0, lambda r, s: "" if bytes(r(s, 6)) == LUKS_MAGIC else None),
    Signature("xfs", 20, lambda r, s: _text(r(s + 108, 12)) if bytes(r(s, 4)) == b"XFSB" else None),
    Signature("btrfs", 30, lambda r, s: "" if bytes(r(s + 0x10040, 8)) == b"_BHRfS_M" else None),
    Signature("ntfs", 40, lambda r, s: "" if bytes(r(s + 3, 8)) == b"NTFS    " else None),
    Signature("vfat", 50, _vfat),
    Signature("swap", 60, _swap),
)

_probes: list[Probe] = list(_SIGNATURES)
_loaded = False


def register(probe: Probe) -> Probe:
    """Add a probe or analyser; it replaces whatever was registered for any of its kinds."""
    global _probes
    kept = [p for p in _probes if not set(p.kinds) & set(probe.kinds)]
    _probes = sorted([*kept, probe], key=lambda p: p.order)  # stable: ties keep their order
    return probe


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in BUILTIN:
            importlib.import_module(name)


def probes() -> list[Probe]:
    """Everything registered, in the order the probes run."""
    _load()
    return list(_probes)


def analysers() -> list[Analyser]:
    return [p for p in probes() if isinstance(p, Analyser)]


def analyser_for(kind: str | None) -> Analyser | None:
    """The analyser of `kind`, or None (unknown kind, or one that is only recognised)."""
    if kind is None:
        return None
    for p in probes():
        if kind in p.kinds:
            return p if isinstance(p, Analyser) else None
    return None


def probe_fs(read: Reader, start: int, size: int) -> tuple[str, Label] | None:
    """(kind, label) of the filesystem in the `size` bytes at `start`, from the first probe
    that recognises it; None when none does. The first PROBE_BYTES are read once for all."""
    if size <= 0:
        return None
    head = bytes(read(start, min(size, PROBE_BYTES)))

    def window(offset: int, length: int) -> bytes | bytearray:
        lo = max(0, offset - start)
        hi = min(lo + max(0, length), size)
        if hi <= PROBE_BYTES:
            return head[lo:hi]
        return read(start + lo, hi - lo) if hi > lo else b""

    for p in probes():
        found = p.probe(window, start, size)
        if found is not None:
            return found
    return None
