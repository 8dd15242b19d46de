#!/usr/bin/env python3
"""Make damaged variants of a ploop disk, one per `ploopfs check` finding class (and a few
combinations), each in its own folder under OUTDIR. The input is only read (copied first).

Each variant knows the finding codes `check` must report on it and the exit code, derived from
what it did to this particular disk (e.g. a Disk_size mismatch is only expected when there is a
descriptor). Variants that do not apply to a disk (a v1-only damage on a v2 disk, a chain-only
damage on a single image) are skipped.

Usage: tools/corrupt.py SOURCE OUTDIR [--only NAME ...] [--list]
       SOURCE: a folder with DiskDescriptor.xml, or a single image file.
Importable: `make_variants(source, outdir, only=None) -> list[Made]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import damage as dm  # noqa: E402  (tests/damage.py: byte-level edit helpers)

from ploopfs.format.bat import bat_entry_off  # noqa: E402
from ploopfs.format.extension import EXT_MAGIC_DIRTY_BITMAP, FORMAT_EXTENSION_MAGIC  # noqa: E402
from ploopfs.format.header import (  # noqa: E402
    CIF_FMT_VERSION_CONVERT,
    DISK_CLOSED_V21,
    DISK_IN_USE,
    HEADER_SIZE,
    SECTOR,
    Header,
    decode_header_fields,
)
from ploopfs.volume.source import open_source  # noqa: E402

DD = "DiskDescriptor.xml"
UNKNOWN_GUID = "{11111111-2222-3333-4444-555555555555}"


class NotApplicable(Exception):
    """This variant makes no sense for this disk."""


@dataclass
class Target:
    """The copy being damaged: its folder, descriptor (None for a single image) and the image
    files of the top chain, base first."""

    folder: Path
    dd: Path | None
    chain: list[Path]  # files of the checked chain, base first
    guids: list[str]

    @property
    def top(self) -> Path:
        return self.chain[-1]

    def header(self, path: Path | None = None) -> Header:
        with open(path or self.top, "rb") as f:
            return decode_header_fields(f.read(64))

    def need_dd(self) -> Path:
        if self.dd is None:
            raise NotApplicable("needs a DiskDescriptor.xml")
        return self.dd


@dataclass
class Made:
    name: str
    path: Path  # what to give `ploopfs check`
    expect: set[str]  # finding codes
    exit_code: int
    qemu_image: Path | None  # the damaged single image, for qemu-img check comparisons


# -- helpers --------------------------------------------------------------------------------------
def _free_slot(t: Target) -> int:
    """The highest unmapped BAT slot of the top image (so reads are unaffected)."""
    h = t.header()
    used = dm.bat_entries(t.top)
    for i in range(h.bat_entries - 1, -1, -1):
        if i not in used:
            return i
    raise NotApplicable("no unmapped BAT slot")


def _mapped(t: Target) -> dict[int, int]:
    m = dm.bat_entries(t.top)
    if not m:
        raise NotApplicable("top image maps nothing")
    return m


def _field(t: Target, name: str, value: int | bytes) -> None:
    dm.header_field(t.top, name, value)


def _signature(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _disk_size_expect(t: Target) -> set[str]:
    return {"DESCRIPTOR_DISK_SIZE"} if t.dd is not None else set()


def _top_is_first_ploop(t: Target) -> bool:
    return len(t.chain) == 1


def _virtual_location(t: Target, voffset: int) -> tuple[Path, int]:
    """File and byte offset serving virtual byte `voffset` in the (clean) top chain."""
    with open_source(t.dd or t.top) as disk:
        vol = disk.volume()
        c = vol.cluster_size
        vc, within = divmod(voffset, c)
        for im in reversed(vol.images):
            if im.is_raw:
                return Path(im.path), voffset
            off = im.mapping().offset(vc)
            if off is not None:
                return Path(im.path), off + within
    raise NotApplicable(f"virtual byte {voffset} is not allocated in any level")


def _write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# -- header ---------------------------------------------------------------------------------------
def _header_loss(t: Target) -> set[str]:
    """What check reports once the top's header is unreadable: HEADER_SIGNATURE, and when the
    BAT maps at least one cluster check infers the header from it (format/infer.py) and
    reports HEADER_INFERRED too (damaged, not unreadable). Call before damaging."""
    return {"HEADER_SIGNATURE", "HEADER_INFERRED"} if dm.bat_entries(t.top) else {"HEADER_SIGNATURE"}


def v_header_signature(t: Target) -> set[str]:
    want = _header_loss(t)
    dm.foreign_signature(t.top)
    return want


def v_header_garbage(t: Target) -> set[str]:
    """All 64 header bytes overwritten (the BAT behind them intact): strict readers cannot read
    the image; `check` and `--salvage` readers infer the header from the BAT
    (ploopfs/format/infer.py)."""
    want = _header_loss(t)
    garbage = random.Random(0xBAD).randbytes(HEADER_SIZE)
    _write_at(t.top, 0, b"\x99" + garbage[1:])  # never "<" (a descriptor) nor a signature
    return want


def v_header_type(t: Target) -> set[str]:
    _field(t, "m_Type", 1)
    return {"HEADER_TYPE"}


def v_cluster_size(t: Target) -> set[str]:
    _field(t, "m_Sectors", 0)
    return {"CLUSTER_SIZE"}


def v_size_fields(t: Target) -> set[str]:
    h = t.header()
    dm.set_field(t.top, 0x24, "<I", (h.size_sectors - 1) & 0xFFFFFFFF)  # low word, v1 and v2
    if h.size_sectors - 1 > 0xFFFFFFFF:
        raise NotApplicable("size does not fit the low word")
    # The top now describes one cluster less (the whole clusters of m_SizeInSectors), so a
    # lower ploop delta of the old size is larger than it.
    lower = {"DESCRIPTOR_LOWER_LARGER"} if any(
        _signature(p) in (b"WithoutFreeSpace", b"WithouFreSpacExt") for p in t.chain[:-1]) \
        else set()
    return {"SIZE_FIELDS"} | _disk_size_expect(t) | lower


def v_first_block_offset(t: Target) -> set[str]:
    h = t.header()
    _field(t, "m_FirstBlockOffset", h.first_block_offset + h.cluster_sectors)
    return {"FIRST_BLOCK_OFFSET"}


def v_dirty(t: Target) -> set[str]:
    _field(t, "m_DiskInUse", DISK_IN_USE)
    return {"DIRTY"}


def v_version_convert(t: Target) -> set[str]:
    h = t.header()
    _field(t, "m_Flags", h.flags | CIF_FMT_VERSION_CONVERT)
    # ploop keeps the old BAT in <image>.idx while converting (format.md §1.5)
    with open(t.top, "rb") as f:
        bat = f.read(bat_entry_off(h.bat_entries))
    Path(str(t.top) + ".idx").write_bytes(bat)
    return {"VERSION_CONVERT"}


def v_file_unaligned(t: Target) -> set[str]:
    with open(t.top, "ab") as f:
        f.write(b"\xa5" * SECTOR)
    return {"FILE_NOT_CLUSTER_ALIGNED"}


# -- BAT ------------------------------------------------------------------------------------------
def v_bat_past_eof(t: Target) -> set[str]:
    h = t.header()
    size = t.top.stat().st_size
    dm.bat_entry(t.top, _free_slot(t), (size // h.cluster_size + 3) * (h.cluster_size // h.entry_unit))
    return {"BAT_PAST_EOF"}


def v_truncated(t: Target) -> set[str]:
    h = t.header()
    m = _mapped(t)
    last = max(m.values()) * h.entry_unit
    if last < h.bat_clusters * h.cluster_size:
        raise NotApplicable("no data cluster")
    os.truncate(t.top, last)  # the last referenced cluster is cut off
    return {"BAT_PAST_EOF"}


def v_bat_into_header(t: Target) -> set[str]:
    h = t.header()
    if h.version == 2 and h.bat_clusters < 2:
        raise NotApplicable("a v2 entry >= 1 cannot point into a one-cluster header/BAT")
    dm.bat_entry(t.top, _free_slot(t), 1)  # v1: sector 1; v2: cluster 1 (both header/BAT, format.md §2.3)
    return {"BAT_INTO_HEADER"}


def v_bat_duplicate(t: Target) -> set[str]:
    m = _mapped(t)
    dm.bat_entry(t.top, _free_slot(t), next(iter(m.values())))
    return {"BAT_DUPLICATE"}


def v_bat_v1_unaligned(t: Target) -> set[str]:
    h = t.header()
    if h.version != 1:
        raise NotApplicable("v1 only")
    m = _mapped(t)
    size = t.top.stat().st_size
    ok = [e for e in m.values() if (e + 1) * SECTOR + h.cluster_size <= size]
    if not ok:
        raise NotApplicable("no cluster with a successor")
    dm.bat_entry(t.top, _free_slot(t), ok[0] + 1)
    return {"BAT_V1_UNALIGNED"}


def v_bat_padding(t: Target) -> set[str]:
    h = t.header()
    if h.bat_slots <= h.bat_entries:
        raise NotApplicable("no padding slots")
    dm.bat_entry(t.top, h.bat_entries, next(iter(_mapped(t).values())))
    return {"BAT_PADDING_NONZERO"}


def v_bat_reserved(t: Target) -> set[str]:
    dm.bat_entry(t.top, _free_slot(t), 0xFFFFFFFF)
    return {"BAT_RESERVED"}


def v_leaked(t: Target) -> set[str]:
    with open(t.top, "ab") as f:
        f.write(b"\x5a" * t.header().cluster_size)
    return {"LEAKED_CLUSTERS"}


def v_prealloc_tail(t: Target) -> set[str]:
    size = t.top.stat().st_size
    os.truncate(t.top, size + 4 * t.header().cluster_size)  # sparse, like dm-ploop's PREALLOC
    return {"PREALLOCATED_TAIL"}


# -- format extension (format.md §6) ------------------------------------------------------------------------
def _add_extension(t: Target, *, break_md5: bool = False, past_eof: bool = False) -> None:
    """Append a CBT bitmap cluster and the extension cluster, as ploop's umount does (format.md §6.1)."""
    h = t.header()
    c = h.cluster_size
    size = t.top.stat().st_size
    if size % c:
        raise NotApplicable("file size not cluster-aligned")
    gran = 128
    bits = -(-h.size_sectors // gran)
    nbytes = -(-bits // 8)
    l1n = -(-nbytes // c)
    bitmap = bytearray(c)
    bitmap[0] = 0x81
    payload = struct.pack("<Q16sII", h.size_sectors, uuid.uuid4().bytes, gran, l1n)
    payload += struct.pack(f"<{l1n}Q", size // SECTOR, *([0] * (l1n - 1)))
    body = struct.pack("<QQII", EXT_MAGIC_DIRTY_BITMAP, 0, len(payload), 0) + payload
    ext = bytearray(c)
    ext[24:24 + len(body)] = body
    ext[0:24] = struct.pack("<Q16s", FORMAT_EXTENSION_MAGIC, hashlib.md5(ext[24:]).digest())
    if 24 + len(body) + 24 > c:
        raise NotApplicable("bitmap L1 does not fit one cluster")
    if break_md5:
        ext[c - 1] ^= 0xFF
    with open(t.top, "ab") as f:
        f.write(bytes(bitmap))
        f.write(bytes(ext))
    ext_sector = (size + c) // SECTOR
    _field(t, "m_FormatExtensionOffset", ext_sector + (size // SECTOR * 4 if past_eof else 0))
    _field(t, "m_DiskInUse", DISK_CLOSED_V21)


def v_extension_ok(t: Target) -> set[str]:
    _add_extension(t)
    return set()  # extension and bitmap clusters are not leaks (format.md §6.4)


def v_extension_checksum(t: Target) -> set[str]:
    _add_extension(t, break_md5=True)
    return {"EXTENSION_CHECKSUM"}


def v_extension_past_eof(t: Target) -> set[str]:
    _add_extension(t, past_eof=True)
    return {"EXTENSION_PAST_EOF", "LEAKED_CLUSTERS"}  # the appended clusters are now unclaimed


# -- descriptor (format.md §5) ------------------------------------------------------------------------------
def _shot_index(t: Target, guid: str) -> int:
    dd = t.need_dd()
    shots = dm.load_xml(dd).getroot().xpath("Snapshots/Shot/GUID/text()")
    return [str(s).strip().lower() for s in shots].index(guid)


def _file_index(t: Target, guid: str) -> int:
    return [g.strip().lower() for g in dm.guids(t.need_dd())].index(guid)


def v_dd_missing_file(t: Target) -> set[str]:
    dm.set_text(t.need_dd(), "StorageData/Storage/Image/File", "gone.hdd", _file_index(t, t.guids[-1]))
    return {"DESCRIPTOR_FILE_MISSING"}


def v_dd_unsafe_path(t: Target) -> set[str]:
    dm.set_text(t.need_dd(), "StorageData/Storage/Image/File", "../../etc/passwd",
                _file_index(t, t.guids[-1]))
    return {"DESCRIPTOR_UNSAFE_PATH"}


def v_dd_symlink(t: Target) -> set[str]:
    os.symlink("/etc/hostname", t.folder / "link.hdd")  # a link leading out of the folder
    dm.set_text(t.need_dd(), "StorageData/Storage/Image/File", "link.hdd", _file_index(t, t.guids[-1]))
    return {"DESCRIPTOR_UNSAFE_PATH"}


def v_dd_huge(t: Target) -> set[str]:
    dd = t.need_dd()
    data = dd.read_bytes()
    dd.write_bytes(data + b"<!--" + b" " * (5 << 20) + b"-->\n")  # > the 4 MiB cap
    return {"DESCRIPTOR_TOO_LARGE"}


def v_dd_fifo(t: Target) -> set[str]:
    os.mkfifo(t.folder / "fifo.hdd")
    dm.set_text(t.need_dd(), "StorageData/Storage/Image/File", "fifo.hdd", _file_index(t, t.guids[-1]))
    return {"IMAGE_NOT_REGULAR"}


def v_dd_cluster_mismatch(t: Target) -> set[str]:
    h = t.header()
    dm.set_text(t.need_dd(), "StorageData/Storage/Blocksize", str(h.cluster_sectors * 2))
    return {"DESCRIPTOR_CLUSTER_MISMATCH"}


def v_dd_parent(t: Target) -> set[str]:
    dm.set_text(t.need_dd(), "Snapshots/Shot/ParentGUID", UNKNOWN_GUID, _shot_index(t, t.guids[-1]))
    return {"DESCRIPTOR_PARENT"} | ({"DESCRIPTOR_ROOTS"} if len(t.guids) == 1 else set())


def v_dd_cycle(t: Target) -> set[str]:
    dm.set_text(t.need_dd(), "Snapshots/Shot/ParentGUID", t.guids[-1], _shot_index(t, t.guids[0]))
    return {"DESCRIPTOR_CYCLE", "DESCRIPTOR_ROOTS"}


def v_dd_roots(t: Target) -> set[str]:
    if len(t.guids) < 2:
        raise NotApplicable("needs a chain")
    dm.set_text(t.need_dd(), "Snapshots/Shot/ParentGUID", "{00000000-0000-0000-0000-000000000000}",
                _shot_index(t, t.guids[-1]))
    return {"DESCRIPTOR_ROOTS"}


def v_dd_topguid(t: Target) -> set[str]:
    dm.set_text(t.need_dd(), "Snapshots/TopGUID", UNKNOWN_GUID)
    return {"DESCRIPTOR_TOPGUID"}


def v_dd_disk_size(t: Target) -> set[str]:
    h = t.header()
    dm.set_text(t.need_dd(), "Disk_Parameters/Disk_size", str(h.size_sectors + h.cluster_sectors))
    return {"DESCRIPTOR_DISK_SIZE"}


def v_dd_entities(t: Target) -> set[str]:
    dm.prepend_doctype(t.need_dd(), dm.BILLION_LAUGHS)
    return {"DESCRIPTOR_ENTITIES"}


def v_dd_malformed(t: Target) -> set[str]:
    dd = t.need_dd()
    data = dd.read_bytes()
    dd.write_bytes(data[: len(data) // 2])
    return {"DESCRIPTOR_MALFORMED"}


# -- contents -------------------------------------------------------------------------------------
def v_gpt_crc(t: Target) -> set[str]:
    path, off = _virtual_location(t, 512)
    with open(path, "rb") as f:
        f.seek(off)
        if f.read(8) != b"EFI PART":
            raise NotApplicable("no GPT")
    _write_at(path, off + 56, b"\xee")  # disk GUID byte: the header CRC no longer matches
    return {"PARTITION_TABLE"}


def v_luks(t: Target) -> set[str]:
    path, off = _virtual_location(t, 0)
    _write_at(path, off, b"LUKS\xba\xbe\x00\x02")
    return {"LUKS"}


# -- registry -------------------------------------------------------------------------------------
Fn = Callable[[Target], set[str]]
# name -> (functions applied in order, exit code)
VARIANTS: dict[str, tuple[tuple[Fn, ...], int]] = {
    "header-signature": ((v_header_signature,), 3),
    "header-garbage": ((v_header_garbage,), 3),
    "header-type": ((v_header_type,), 2),
    "cluster-size": ((v_cluster_size,), 3),
    "size-fields": ((v_size_fields,), 1),
    "first-block-offset": ((v_first_block_offset,), 1),
    "dirty": ((v_dirty,), 1),
    "version-convert": ((v_version_convert,), 2),
    "file-unaligned": ((v_file_unaligned,), 1),
    "bat-past-eof": ((v_bat_past_eof,), 2),
    "truncated": ((v_truncated,), 2),
    "bat-into-header": ((v_bat_into_header,), 2),
    "bat-duplicate": ((v_bat_duplicate,), 2),
    "bat-v1-unaligned": ((v_bat_v1_unaligned,), 2),
    "bat-padding": ((v_bat_padding,), 1),
    "bat-reserved": ((v_bat_reserved,), 2),
    "leaked": ((v_leaked,), 1),
    "prealloc-tail": ((v_prealloc_tail,), 0),
    "extension-ok": ((v_extension_ok,), 0),
    "extension-checksum": ((v_extension_checksum,), 1),
    "extension-past-eof": ((v_extension_past_eof,), 1),
    "dd-missing-file": ((v_dd_missing_file,), 3),
    "dd-unsafe-path": ((v_dd_unsafe_path,), 3),
    "dd-fifo": ((v_dd_fifo,), 3),
    "dd-symlink": ((v_dd_symlink,), 3),
    "dd-huge": ((v_dd_huge,), 3),
    "dd-cluster-mismatch": ((v_dd_cluster_mismatch,), 2),
    "dd-parent": ((v_dd_parent,), 2),
    "dd-cycle": ((v_dd_cycle,), 2),
    "dd-roots": ((v_dd_roots,), 2),
    "dd-topguid": ((v_dd_topguid,), 2),
    "dd-disk-size": ((v_dd_disk_size,), 1),
    "dd-entities": ((v_dd_entities,), 3),
    "dd-malformed": ((v_dd_malformed,), 3),
    "gpt-crc": ((v_gpt_crc,), 1),
    "luks": ((v_luks,), 0),
    # combinations
    "dirty+leaked": ((v_dirty, v_leaked), 1),
    "past-eof+duplicate": ((v_bat_past_eof, v_bat_duplicate), 2),
    "type+reserved+padding": ((v_header_type, v_bat_reserved, v_bat_padding), 2),
    "unaligned+dirty+topguid": ((v_file_unaligned, v_dirty, v_dd_topguid), 2),
}


def _target(src: Path, dest: Path) -> Target:
    """Copy the source to `dest` and describe it (chain from the clean copy's descriptor)."""
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True)
        dd = dest / DD
        with open_source(dd) as disk:
            entries = disk.chain()
            files = [Path(disk.paths[e.guid]) for e in entries]
            files = [dest / f.relative_to(dest) if f.is_relative_to(dest) else f for f in files]
            return Target(dest, dd, files, [e.guid for e in entries])
    dest.mkdir(parents=True)
    shutil.copy2(src, dest / src.name)
    return Target(dest, None, [dest / src.name], ["{5fbaabe3-6958-40ff-92a7-860e329aab41}"])


def make_variants(source: str | os.PathLike[str], outdir: str | os.PathLike[str],
                  only: list[str] | None = None) -> list[Made]:
    src, out = Path(source), Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Made] = []
    for name, (fns, code) in VARIANTS.items():
        if only and name not in only:
            continue
        dest = out / name.replace("+", "_")
        t = _target(src, dest)
        expect: set[str] = set()
        try:
            for fn in fns:
                expect |= fn(t)
        except NotApplicable:
            shutil.rmtree(dest)
            continue
        path = t.folder if t.dd is not None else t.top
        if "HEADER_INFERRED" in expect and code == 3:
            code = 2  # the header is lost but inferable: damaged, not unreadable
        made.append(Made(name, path, expect, code, t.top if t.top.exists() else None))
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?")
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--only", nargs="*", help="variant names")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    a = ap.parse_args(argv)
    if a.list or not a.source or not a.outdir:
        for name, (_fns, code) in VARIANTS.items():
            print(f"{name}\texit {code}")
        return 0
    made = make_variants(a.source, a.outdir, a.only)
    json.dump([{"name": m.name, "path": str(m.path), "expect": sorted(m.expect),
                "exit_code": m.exit_code} for m in made], sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
