"""content/registry.py: the probes recognise what partitions.detect_fs recognised before the
registry (same kinds, labels and precedence), and a filesystem is plugged in by registering an
Analyser: partitions, analyse_disk and the not-analysed note follow it with no other change."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from ploopfs.content import registry
from ploopfs.content.partitions import detect_fs, inspect_disk
from ploopfs.content.registry import Analyser, analyser_for, analysers, probe_fs, register
from ploopfs.content.usage import FsUsage, analyse_disk, usage_summary

PKG = Path(__file__).resolve().parents[2] / "ploopfs"


def _old_detect_fs(head: bytes, size: int) -> tuple[str | None, str | None]:
    """partitions.detect_fs as it was before the registry: the model."""
    if size <= 0:
        return None, None
    head = head[:min(size, 0x11000)]
    if head[:6] == b"LUKS\xba\xbe":
        return "luks", None
    if len(head) >= 0x478 and head[0x438:0x43A] == b"\x53\xef":
        compat, incompat = struct.unpack_from("<II", head, 0x45C)
        ro_compat = struct.unpack_from("<I", head, 0x464)[0]
        label = head[0x478:0x488].split(b"\0", 1)[0].decode("utf-8", "replace") or None
        if incompat & 0x2C0 or ro_compat & 0x78:
            return "ext4", label
        if compat & 0x4:
            return "ext3", label
        return "ext2", label
    if head[:4] == b"XFSB":
        return "xfs", head[108:120].split(b"\0", 1)[0].decode("utf-8", "replace") or None
    if len(head) >= 0x10048 and head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs", None
    if head[3:11] == b"NTFS    ":
        return "ntfs", None
    if head[0x52:0x5A] == b"FAT32   " or head[0x36:0x3B] == b"FAT16" or head[0x36:0x3B] == b"FAT12":
        return "vfat", None
    for ps in (4096, 8192, 16384, 65536):
        if len(head) >= ps and head[ps - 10: ps] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return "swap", None
    return None, None


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry as it was before any analyser but ext's: the plain signatures and ext
    (other analysers, such as xfs, are tested on their own); restored after the test."""
    ext = analyser_for("ext4")
    monkeypatch.setattr(registry, "_probes", sorted([*registry._SIGNATURES, ext],
                                                    key=lambda p: p.order))


_MAGICS = [
    (0, b"LUKS\xba\xbe"), (0x438, b"\x53\xef"), (0, b"XFSB"), (0x10040, b"_BHRfS_M"),
    (3, b"NTFS    "), (0x52, b"FAT32   "), (0x36, b"FAT16"), (0x36, b"FAT12"),
    (4086, b"SWAPSPACE2"), (8182, b"SWAP-SPACE"), (65526, b"SWAPSPACE2"),
]


def _head(rnd: random.Random) -> bytes:
    buf = bytearray(rnd.choice([0x11000, 0x12000]))
    for off, magic in rnd.sample(_MAGICS, rnd.randint(0, 3)):
        buf[off:off + len(magic)] = magic
    if rnd.random() < 0.7:  # ext feature flags and labels, xfs labels
        struct.pack_into("<III", buf, 0x45C, rnd.choice([0, 4]), rnd.choice([0, 0x40, 0x80]), 0)
        struct.pack_into("<I", buf, 0x464, rnd.choice([0, 8, 0x10]))
        buf[0x478:0x488] = rnd.choice([b"", b"root", b"x" * 16, b"\xff\xfebad"]).ljust(16, b"\0")
        buf[108:120] = rnd.choice([b"", b"xfsroot"]).ljust(12, b"\0")
    return bytes(buf)


def test_probes_equal_the_old_detect_fs(clean_registry: None) -> None:
    rnd = random.Random(7)
    seen = set()
    for _ in range(1500):
        start = rnd.choice([0, 0, 512])
        disk = bytes(start) + _head(rnd)
        size = rnd.choice([0, 100, 0x477, 0x478, 4096, 8191, 0x10047, 0x10048, 0x11000, 1 << 30])
        calls: list[tuple[int, int]] = []

        def read(off: int, n: int, disk: bytes = disk, calls: list = calls) -> bytes:
            calls.append((off, n))
            return disk[off:off + n]

        got = detect_fs(read, start, size)
        assert got == _old_detect_fs(disk[start:], size), (start, size)
        assert len(calls) <= 1, "the head is read once for every probe"
        assert all(start <= o and o + n <= start + size for o, n in calls)
        seen.add(got)
    kinds = {k for k, _ in seen}
    assert kinds == {None, "luks", "ext2", "ext3", "ext4", "xfs", "btrfs", "ntfs", "vfat", "swap"}
    assert {lbl for _, lbl in seen} >= {None, "root", "x" * 16, "xfsroot"}


def test_builtin_kinds() -> None:
    ext = analyser_for("ext4")
    assert ext is not None and ext is analyser_for("ext2") is analyser_for("ext3")
    assert ext.title == "ext2/3/4"
    assert "ext2/3/4" in [a.title for a in analysers()]
    for kind in ("btrfs", "ntfs", "vfat", "swap", "luks", None, "nope"):
        assert analyser_for(kind) is None  # recognised (or not) but not analysed
    assert [p.order for p in registry.probes()] == sorted(p.order for p in registry.probes())


# -- a filesystem plugged in ---------------------------------------------------------------------
class FakeFs(Analyser):
    """"FAKEFS" + u32 blocks of 512 bytes + u32 free blocks, at the start of the filesystem."""

    kinds = ("fakefs",)
    order = 15
    title = "fakefs"

    def probe(self, read, start, size):
        h = bytes(read(start, 14))
        return ("fakefs", "lbl") if h[:6] == b"FAKEFS" else None

    def analyse(self, read, where, start, limit, *, bitmaps, gran=512):
        blocks, free = struct.unpack("<II", bytes(read(start + 6, 8)))
        return FsUsage(where, start, "fakefs", block_size=512, blocks_count=blocks,
                       free_blocks=free, available_blocks=free, counted=True, analysed=bitmaps)


def _mbr_disk(*parts: tuple[int, int, bytes]) -> bytes:
    disk = bytearray(1 << 20)
    for i, (lba, count, content) in enumerate(parts):
        e = 446 + 16 * i
        disk[e + 4] = 0x83
        struct.pack_into("<II", disk, e + 8, lba, count)
        disk[lba * 512:lba * 512 + len(content)] = content
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def test_a_registered_analyser_is_probed_and_analysed(clean_registry: None) -> None:
    disk = _mbr_disk((8, 64, b"FAKEFS" + struct.pack("<II", 64, 10)),
                     (100, 64, b"XFSB"))

    def read(o: int, n: int) -> bytes:
        return disk[o:o + n]

    before = usage_summary(read, len(disk))
    assert [f["kind"] for f in before] == [None, "xfs"]
    assert before[0]["note"] == "not analysed (only ext2/3/4 is); kept whole by compact"
    fake = register(FakeFs())
    assert analyser_for("fakefs") is fake and probe_fs(read, 8 * 512, 64 * 512) == ("fakefs", "lbl")
    t = inspect_disk(read, len(disk))
    assert [(p.fs, p.fs_label) for p in t.partitions] == [("fakefs", "lbl"), ("xfs", None)]
    dfs = analyse_disk(read, len(disk), bitmaps=True)
    assert [(f.where, f.kind, f.blocks_count, f.analysed) for f in dfs.filesystems] == [
        ("part1", "fakefs", 64, True)]
    assert [(o.where, o.kind, o.note) for o in dfs.others] == [
        ("part2", "xfs", "not analysed (only ext2/3/4 and fakefs are); kept whole by compact")]


def test_an_analyser_takes_over_a_signature(clean_registry: None) -> None:
    class Xfs(FakeFs):
        kinds = ("xfs",)
        order = 20

        def probe(self, read, start, size):
            return ("xfs", None) if bytes(read(start, 4)) == b"XFSB" else None

    register(Xfs())
    assert [p for p in registry.probes() if "xfs" in p.kinds] == [analyser_for("xfs")]
    assert analyser_for("xfs") is not None


def test_no_filesystem_kinds_outside_content() -> None:
    """Which kinds are analysed or served is the registry's business: nothing outside
    content/ lists the ext kinds."""
    bad = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
           if "content" not in p.relative_to(PKG).parts
           and ('"ext2", "ext3"' in p.read_text() or "EXT_KINDS" in p.read_text())]
    assert not bad
