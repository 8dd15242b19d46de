"""Builders of hostile inputs for tests/test_hostile_all.py: every shape a damaged disk, an
untrusted backup or a malicious descriptor can take, each made at test time in its own small
folder (sparse where a file must look big).

`INPUTS` lists them. Each `Hostile.build(folder)` fills the (new, empty) `folder` and returns
the SOURCE path to hand to the commands: the folder itself, its DiskDescriptor.xml, or one file
in it. `kind` says what the input is meant to be: a ploop source ("disk"), an rdiff signature
("sig") or an rdiff delta ("delta"); every input is given to every command anyway.

`good_disk(folder)`, `good_raw(path)` and friends make the well-formed counterparts the suite
diffs and patches against. The layouts follow docs/format.md (§1 header, §2 BAT, §5 descriptor)
and docs/rdiff.md (signature and delta files).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ploopfs.volume.writer import ImageWriter

KiB, MiB = 1 << 10, 1 << 20
SECTOR = 512
NONE_GUID = "{00000000-0000-0000-0000-000000000000}"
TOP_GUID = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
DD = "DiskDescriptor.xml"

# The small image most shapes start from: v2, 32 KiB clusters (ploop's smallest), 512 KiB (16
# clusters), clusters 0, 3 and 7 written. Header + BAT (64 + 16 x 4 bytes) fill cluster 0; data
# clusters 1..3: a 128 KiB file.
CLUSTER = 32 * KiB
SIZE = 512 * KiB
WRITTEN = (0, 3, 7)

# Header fields (format.md §1): offset, struct format.
F_SECTORS, F_SIZE, F_SIZE_IN_SECTORS, F_SIZE_HIGH_V1 = 0x1C, 0x20, 0x24, 0x28
F_FIRST_BLOCK, F_EXT_OFF = 0x30, 0x38


def guid(n: int) -> str:
    """A fixed, readable GUID per number (uuid5: stable across runs)."""
    return "{" + str(uuid.uuid5(uuid.NAMESPACE_OID, f"ploopfs-hostile-{n}")) + "}"


def pattern(n: int, size: int) -> bytes:
    """`size` bytes no two clusters share (so dedup and diff see real data)."""
    out = b"".join(hashlib.sha256(b"%d-%d" % (n, i)).digest() for i in range(-(-size // 32)))
    return out[:size]


def image(path: Path, *, size: int = SIZE, cluster: int = CLUSTER, version: int = 2,
          written: tuple[int, ...] = WRITTEN, seed: int = 0) -> Path:
    with ImageWriter.create(path, size, cluster, version) as w:
        for v in written:
            w.write_cluster(v, pattern(seed * 1000 + v, cluster))
    return path


def poke(path: Path, offset: int, fmt: str, value: int | bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def bat_off(index: int) -> int:
    return 64 + 4 * index  # format.md §2.1: the BAT follows the 64-byte header


def descriptor(images: list[tuple[str, str]], shots: list[tuple[str, str]], top: str | None,
               *, disk_size: int = SIZE // SECTOR, blocksize: str | int = CLUSTER // SECTOR,
               types: dict[str, str] | None = None, extra: str = "") -> bytes:
    """DiskDescriptor.xml text as ploop writes it (format.md §5.1), any content allowed:
    `images` (GUID, File), `shots` (GUID, ParentGUID), `top` the TopGUID text (None: no
    element)."""
    types = types or {}
    imgs = "".join(
        f"      <Image>\n        <GUID>{g}</GUID>\n        <Type>{types.get(g, 'Compressed')}"
        f"</Type>\n        <File>{f}</File>\n      </Image>\n" for g, f in images)
    snaps = "".join(f"    <Shot>\n      <GUID>{g}</GUID>\n      <ParentGUID>{p}</ParentGUID>\n"
                    f"    </Shot>\n" for g, p in shots)
    top_el = f"    <TopGUID>{top}</TopGUID>\n" if top is not None else ""
    return (f'<?xml version="1.0"?>\n<Parallels_disk_image>\n  <Disk_Parameters>\n'
            f"    <Disk_size>{disk_size}</Disk_size>\n    <Cylinders>0</Cylinders>\n"
            f"    <Heads>16</Heads>\n    <Sectors>63</Sectors>\n    <Padding>0</Padding>\n"
            f"  </Disk_Parameters>\n  <StorageData>\n    <Storage>\n      <Start>0</Start>\n"
            f"      <End>{disk_size}</End>\n      <Blocksize>{blocksize}</Blocksize>\n"
            f"{imgs}    </Storage>\n  </StorageData>\n  <Snapshots>\n{top_el}{snaps}"
            f"  </Snapshots>\n{extra}</Parallels_disk_image>\n").encode()


def chain_xml(files: list[str], **kw: object) -> bytes:
    """A linear chain files[0] (base) … files[-1] (top), GUIDs guid(0), guid(1), …"""
    gs = [guid(i) for i in range(len(files))]
    return descriptor(list(zip(gs, files, strict=True)),
                      [(g, gs[i - 1] if i else NONE_GUID) for i, g in enumerate(gs)], gs[-1],
                      **kw)  # type: ignore[arg-type]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the good counterparts ------------------------------------------------------------------------
def good_disk(folder: Path) -> Path:
    """A clean two-level chain (v2, 32 KiB clusters, 512 KiB) in `folder`."""
    folder.mkdir()
    image(folder / "root.hds", seed=1)
    image(folder / "top.hds", written=(1, 3), seed=2)
    write(folder / DD, chain_xml(["root.hds", "top.hds"]))
    return folder


def good_raw(path: Path, size: int = SIZE) -> Path:
    return write(path, pattern(99, size))


def sig_header(magic: int = 0x72730147, block: int = 2048, strong: int = 32) -> bytes:
    """An rdiff signature header (rdiff.md): magic, block length, strong-sum length (BE)."""
    return struct.pack(">III", magic, block, strong)


def rdiff_sig(data: bytes, block: int = 2048, strong: int = 8) -> bytes:
    """A well-formed blake2/rabinkarp signature of `data` as ploopfs writes it."""
    import io

    from ploopfs.services.rdiff import SigParams, write_signature

    out = io.BytesIO()
    write_signature(lambda off, n: data[off:off + n], len(data), out,
                    SigParams("blake2", "rabinkarp", block, strong))
    return out.getvalue()


DELTA_MAGIC = struct.pack(">I", 0x72730236)


def rdiff_delta(basis_len: int) -> bytes:
    """A delta (rdiff.md): COPY the first half of the basis, a LITERAL, END."""
    half = basis_len // 2
    return (DELTA_MAGIC + bytes([0x54]) + struct.pack(">QQ", 0, half)  # COPY_N8_N8
            + bytes([0x41, 5]) + b"hello" + b"\0")  # LITERAL_N1, END


# -- the hostile shapes ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[Path], Path]
    kind: str = "disk"  # "disk", "sig" or "delta"
    note: str = ""


INPUTS: list[Hostile] = []


def hostile(name: str, kind: str = "disk", note: str = "") -> Callable[[Callable[[Path], Path]],
                                                                      Callable[[Path], Path]]:
    def reg(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        INPUTS.append(Hostile(name, fn, kind, note or (fn.__doc__ or "").strip()))
        return fn
    return reg


def _truncated(at: int | str) -> Callable[[Path], Path]:
    def build(f: Path) -> Path:
        img = image(f / "root.hds")
        size = img.stat().st_size
        cut = {"mid-data": CLUSTER * 2 + 1000, "last-byte": size - 1}.get(at, at)  # type: ignore[call-overload]
        os.truncate(img, cut)
        return img
    return build


for _at in (15, 40, 64, 100, "mid-data", "last-byte"):
    INPUTS.append(Hostile(f"truncated-{_at}", _truncated(_at), note=f"image cut at byte {_at}"))


def _header(offset: int, fmt: str, value: int, *, version: int = 2,
            in_descriptor: bool = False) -> Callable[[Path], Path]:
    def build(f: Path) -> Path:
        img = image(f / "root.hds", version=version)
        poke(img, offset, fmt, value)
        if in_descriptor:
            write(f / DD, chain_xml(["root.hds"]))
            return f
        return img
    return build


for _name, _args in {
    "m_sectors-0": (F_SECTORS, "<I", 0),
    "m_sectors-1": (F_SECTORS, "<I", 1),
    "m_sectors-odd": (F_SECTORS, "<I", 7),
    "m_sectors-huge": (F_SECTORS, "<I", 0xFFFFFFFF),
    "m_size-0": (F_SIZE, "<I", 0),
    "m_size-max": (F_SIZE, "<I", 0xFFFFFFFF),
    "size_in_sectors-0": (F_SIZE_IN_SECTORS, "<Q", 0),
    "size_in_sectors-huge": (F_SIZE_IN_SECTORS, "<Q", (1 << 64) - 1),
    "first_block-past-eof": (F_FIRST_BLOCK, "<I", 0xFFFFFFF0),
    "ext-offset-garbage": (F_EXT_OFF, "<Q", 0x7FFFFFFFFFFFFFFF),
}.items():
    INPUTS.append(Hostile(_name, _header(*_args), note=f"header field at {_args[0]:#x} = {_args[2]}"))

INPUTS.append(Hostile("v1-high-word", _header(F_SIZE_HIGH_V1, "<I", 0xFFFFFFFF, version=1,
                                              in_descriptor=True),
                      note="v1 image with the unused upper size word set, in a descriptor"))
INPUTS.append(Hostile("ext-offset-mid-file", _header(F_EXT_OFF, "<Q", 9, in_descriptor=True),
                      note="format extension offset (sectors) inside a data cluster"))


def _bat(entries: dict[int, int], *, version: int = 2, cluster: int = CLUSTER,
         size: int = SIZE) -> Callable[[Path], Path]:
    def build(f: Path) -> Path:
        img = image(f / "root.hds", version=version, cluster=cluster, size=size)
        for i, v in entries.items():
            poke(img, bat_off(i), "<I", v)
        write(f / DD, chain_xml(["root.hds"], blocksize=cluster // SECTOR,
                                disk_size=size // SECTOR))
        return f
    return build


# 8192 slots of 32 KiB (256 MiB): header + BAT take clusters 0 and 1, so entry 1 is inside.
INPUTS += [
    Hostile("bat-into-header", _bat({5: 1}, size=8192 * CLUSTER),
            note="v2 entry pointing at the second cluster of the BAT"),
    Hostile("bat-past-eof", _bat({5: 100000}), note="entry far past the end of the file"),
    Hostile("bat-duplicated", _bat({1: 1, 2: 1, 9: 1}), note="three slots, one cluster"),
    Hostile("bat-ffffffff", _bat({4: 0xFFFFFFFF}), note="reserved entry value"),
    Hostile("bat-v1-unaligned", _bat({3: CLUSTER // SECTOR + 3}, version=1),
            note="v1 entry (sectors) not on a cluster boundary"),
]


# -- descriptors --------------------------------------------------------------------------------
def _with_image(f: Path, xml: bytes, *names: str) -> Path:
    for n in names or ("root.hds",):
        image(f / n)
    write(f / DD, xml)
    return f


@hostile("dd-billion-laughs")
def _laughs(f: Path) -> Path:
    """entities (billion laughs) and an external entity (XXE) in the descriptor"""
    ents = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    xml = chain_xml(["root.hds"]).replace(
        b"<Parallels_disk_image>",
        f'<!DOCTYPE Parallels_disk_image [{ents}<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        f"<Parallels_disk_image>".encode(), 1).replace(b"<Padding>0", b"<Padding>&i;&x;")
    return _with_image(f, xml)


@hostile("dd-over-4mib")
def _huge_dd(f: Path) -> Path:
    """a 5 MiB descriptor (sparse: the tail is a hole of NUL bytes)"""
    _with_image(f, chain_xml(["root.hds"]))
    os.truncate(f / DD, 5 * MiB)
    return f


@hostile("dd-deep-nesting")
def _deep_xml(f: Path) -> Path:
    """100,000 nested elements inside <Disk_Parameters>"""
    n = 100_000
    xml = chain_xml(["root.hds"]).replace(b"<Padding>0</Padding>",
                                          b"<x>" * n + b"</x>" * n, 1)
    return _with_image(f, xml)


@hostile("dd-missing-elements")
def _missing(f: Path) -> Path:
    """no <StorageData> at all, <Snapshots> without shots"""
    xml = (b'<?xml version="1.0"?>\n<Parallels_disk_image><Disk_Parameters><Disk_size>128'
           b"</Disk_size></Disk_Parameters><Snapshots/></Parallels_disk_image>\n")
    return _with_image(f, xml)


@hostile("dd-huge-disk-size-raw-base")
def _huge_raw(f: Path) -> Path:
    """<Disk_size> 2^38 sectors (128 TiB) of 4 KiB clusters (2^35: more than a BAT holds) over
    a 512 KiB raw (Plain) base"""
    good_raw(f / "root.raw")
    g = guid(0)
    xml = descriptor([(g, "root.raw")], [(g, NONE_GUID)], g, disk_size=1 << 38,
                     blocksize=8, types={g: "Plain"})
    return write(f / DD, xml).parent


@hostile("dd-huge-disk-size-1m-clusters")
def _huge_raw_1m(f: Path) -> Path:
    """<Disk_size> 2^38 sectors (128 TiB, 2^27 clusters of <Blocksize> 2048) over a 512 KiB
    raw base: within what a ploop image addresses"""
    good_raw(f / "root.raw")
    g = guid(0)
    xml = descriptor([(g, "root.raw")], [(g, NONE_GUID)], g, disk_size=1 << 38,
                     blocksize=2048, types={g: "Plain"})
    return write(f / DD, xml).parent


@hostile("dd-disk-size-2e32-plus-8")
def _chs_overflow(f: Path) -> Path:
    """<Disk_size> 2^32 + 8 sectors of 4 KiB clusters over a 512 KiB raw base: a size whose
    CHS geometry has one head, 8 sectors per track and more than 2^32 cylinders"""
    good_raw(f / "root.raw")
    g = guid(0)
    xml = descriptor([(g, "root.raw")], [(g, NONE_GUID)], g, disk_size=(1 << 32) + 8,
                     blocksize=8, types={g: "Plain"})
    return write(f / DD, xml).parent


@hostile("sparse-4pib-image")
def _sparse_huge(f: Path) -> Path:
    """a v2 image of (2^32-1) 1 MiB clusters (4 PiB): a 16 GiB BAT, sparse, one cluster
    written near the end"""
    size = 0xFFFFFF00 * MiB  # whole heads and sectors per track: cylinders fit 32 bits
    with ImageWriter.create(f / "root.hds", size, MiB, 2) as w:
        w.write_cluster(0xFFFFFEF0, pattern(4, 4096))
    write(f / DD, chain_xml(["root.hds"], disk_size=size // SECTOR, blocksize=MiB // SECTOR))
    return f


@hostile("dd-blocksize-0")
def _bs0(f: Path) -> Path:
    """<Blocksize>0</Blocksize>"""
    return _with_image(f, chain_xml(["root.hds"], blocksize=0))


@hostile("dd-blocksize-3")
def _bs3(f: Path) -> Path:
    """<Blocksize>3</Blocksize>: 1.5 KiB clusters, no power of two"""
    return _with_image(f, chain_xml(["root.hds"], blocksize=3))


@hostile("dd-cycle")
def _cycle(f: Path) -> Path:
    """two shots each the other's parent, a third the root"""
    a, b, c = guid(0), guid(1), guid(2)
    xml = descriptor([(a, "a.hds"), (b, "b.hds"), (c, "c.hds")],
                     [(a, b), (b, a), (c, NONE_GUID)], b)
    return _with_image(f, xml, "a.hds", "b.hds", "c.hds")


@hostile("dd-two-roots")
def _two_roots(f: Path) -> Path:
    """two base images"""
    a, b = guid(0), guid(1)
    xml = descriptor([(a, "a.hds"), (b, "b.hds")], [(a, NONE_GUID), (b, NONE_GUID)], b)
    return _with_image(f, xml, "a.hds", "b.hds")


def deep_chain(f: Path, n: int) -> Path:
    """A chain of `n` levels: one real base, every delta a symlink to it."""
    image(f / "base.hds")
    files = ["base.hds"]
    for i in range(1, n):
        os.symlink("base.hds", f / f"d{i}.hds")
        files.append(f"d{i}.hds")
    write(f / DD, chain_xml(files))
    return f


INPUTS += [Hostile("chain-300", lambda f: deep_chain(f, 300), note="300 levels (symlinks)"),
           Hostile("chain-2000", lambda f: deep_chain(f, 2000), note="2000 levels (symlinks)")]


@hostile("tree-1100-wide")
def wide_tree(f: Path, n: int = 1100) -> Path:
    """a base with 1,100 child snapshots (symlinks to the base)"""
    image(f / "base.hds")
    base = guid(0)
    imgs, shots = [(base, "base.hds")], [(base, NONE_GUID)]
    for i in range(1, n + 1):
        os.symlink("base.hds", f / f"w{i}.hds")
        imgs.append((guid(i), f"w{i}.hds"))
        shots.append((guid(i), base))
    write(f / DD, descriptor(imgs, shots, guid(n)))
    return f


@hostile("dd-unknown-top")
def _unknown_top(f: Path) -> Path:
    """a TopGUID that names no image"""
    xml = chain_xml(["root.hds"]).replace(f"<TopGUID>{guid(0)}".encode(),
                                          b"<TopGUID>{11111111-2222-3333-4444-555555555555}")
    return _with_image(f, xml)


def _file_is(target: Callable[[Path], str]) -> Callable[[Path], Path]:
    def build(f: Path) -> Path:
        write(f / DD, chain_xml([target(f)]))
        return f
    return build


def _fifo(f: Path) -> str:
    os.mkfifo(f / "root.hds")
    return "root.hds"


def _folder(f: Path) -> str:
    (f / "root.hds").mkdir()
    return "root.hds"


def _dev_zero(f: Path) -> str:
    return "/dev/zero"


def _symlink_loop(f: Path) -> str:
    os.symlink("root.hds", f / "root.hds")
    return "root.hds"


def _symlink_out(f: Path) -> str:
    os.symlink("/etc/passwd", f / "root.hds")
    return "root.hds"


INPUTS += [
    Hostile("file-etc-passwd", _file_is(lambda f: "/etc/passwd"), note="<File> /etc/passwd"),
    Hostile("file-dotdot", _file_is(lambda f: "../../../../../../../../etc/passwd"),
            note="<File> ../…/etc/passwd"),
    Hostile("file-symlink-out", _file_is(_symlink_out), note="<File> a symlink to /etc/passwd"),
    Hostile("file-fifo", _file_is(_fifo), note="<File> a FIFO (nobody writes to it)"),
    Hostile("file-folder", _file_is(_folder), note="<File> a folder"),
    Hostile("file-dev-zero", _file_is(_dev_zero), note="<File> /dev/zero"),
    Hostile("file-symlink-loop", _file_is(_symlink_loop), note="<File> a symlink to itself"),
]


@hostile("dd-is-fifo")
def _dd_fifo(f: Path) -> Path:
    """DiskDescriptor.xml is a FIFO nobody writes to"""
    image(f / "root.hds")
    os.mkfifo(f / DD)
    return f


# -- what is inside the disk: ext4, GPT, MBR ------------------------------------------------------
FS_SIZE = 4 * MiB
FS_CLUSTER = 64 * KiB


def mkfs(path: Path, size: int = FS_SIZE, *args: str) -> bytearray:
    """An ext4 filesystem of `size` bytes (1 KiB blocks), as bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-E", "nodiscard,lazy_itable_init=1",
                    *args, str(path)], check=True, capture_output=True, timeout=60)
    data = bytearray(path.read_bytes())
    path.unlink()
    return data


def raw_to_image(f: Path, data: bytes | bytearray, size: int | None = None) -> Path:
    """A folder with one v2 image (64 KiB clusters) holding `data`'s non-zero clusters."""
    size = size or len(data)
    c = FS_CLUSTER
    with ImageWriter.create(f / "root.hds", size, c, 2) as w:
        for off in range(0, len(data), c):
            chunk = bytes(data[off:off + c])
            if chunk.strip(b"\0"):
                w.write_cluster(off // c, chunk)
    write(f / DD, chain_xml(["root.hds"], disk_size=size // SECTOR, blocksize=c // SECTOR))
    return f


SB = 1024  # the ext4 superblock, from the start of the filesystem


def gpt(entries: list[tuple[int, int]], *, entries_lba: int = 2, n: int = 128,
        disk_sectors: int = FS_SIZE // SECTOR) -> bytes:
    """A protective MBR, a GPT header at LBA 1 saying its entry array is at `entries_lba`, and
    that array at LBA 2 (valid CRCs) with partitions (first LBA, last LBA)."""
    ents = bytearray(n * 128)
    for i, (first, last) in enumerate(entries):
        e = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4").bytes_le + uuid.uuid5(
            uuid.NAMESPACE_OID, f"part{i}").bytes_le + struct.pack("<QQQ", first, last, 0)
        ents[i * 128:i * 128 + len(e)] = e
    hdr = bytearray(struct.pack("<8sIII4sQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, b"\0" * 4,
                                1, disk_sectors - 1, 34, disk_sectors - 34,
                                uuid.uuid5(uuid.NAMESPACE_OID, "disk").bytes,
                                entries_lba, n, 128, zlib.crc32(ents)))
    struct.pack_into("<I", hdr, 16, zlib.crc32(hdr))
    mbr = bytearray(SECTOR)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0xEE, b"\xff" * 3, 1,
                               min(disk_sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr) + bytes(hdr).ljust(SECTOR, b"\0") + bytes(ents)


# Raw disk contents (bytes), shared with tools/fuzz/seeds.py (fuzz target `fs`); `tmp` is a
# folder mkfs may use for a moment.
def ext4_many_groups(tmp: Path, groups: int = 1 << 29) -> bytearray:
    """An ext4 superblock claiming `groups` block groups, consistent enough to pass its
    checks (one 1 KiB inode a group, 7 blocks a group: every count fits its 32-bit field)."""
    fs = mkfs(tmp / "fs.img")
    struct.pack_into("<I", fs, SB + 0x00, groups)  # s_inodes_count = groups x 1
    struct.pack_into("<I", fs, SB + 0x04, 1 + 7 * groups)  # s_blocks_count
    struct.pack_into("<I", fs, SB + 0x0C, 0)  # s_free_blocks_count
    struct.pack_into("<I", fs, SB + 0x20, 7)  # s_blocks_per_group
    struct.pack_into("<I", fs, SB + 0x24, 7)  # s_clusters_per_group
    struct.pack_into("<I", fs, SB + 0x28, 1)  # s_inodes_per_group
    struct.pack_into("<H", fs, SB + 0x58, 1024)  # s_inode_size: one inode a block
    return fs


def ext4_garbage_gdt(tmp: Path) -> bytearray:
    """A valid ext4 superblock over a group descriptor table of random bytes."""
    fs = mkfs(tmp / "fs.img")
    fs[2048:2048 + 4096] = pattern(7, 4096)  # block 2 on: the GDT with 1 KiB blocks
    return fs


def gpt_far_disk(size: int = FS_SIZE) -> bytearray:
    """A GPT whose entry array is at LBA 2^63."""
    disk = bytearray(size)
    t = gpt([(34, 100)], entries_lba=1 << 63, disk_sectors=size // SECTOR)
    disk[:len(t)] = t
    return disk


def gpt_huge_entries_disk(size: int = FS_SIZE) -> bytearray:
    """A GPT of 4096 entries of 2^27 bytes each: a 512 GiB entry array."""
    disk = bytearray(size)
    t = bytearray(gpt([(34, 100)], disk_sectors=size // SECTOR))
    struct.pack_into("<II", t, SECTOR + 80, 4096, 1 << 27)  # number and size of entries
    struct.pack_into("<I", t, SECTOR + 16, 0)
    struct.pack_into("<I", t, SECTOR + 16, zlib.crc32(t[SECTOR:SECTOR + 92]))
    disk[:len(t)] = t
    return disk


def gpt_overlap_disk(tmp: Path, size: int = FS_SIZE, fs_lba: int = 2048) -> bytearray:
    """Two GPT partitions over the same ext4 filesystem (at `fs_lba`), a third reaching 2^63."""
    disk = bytearray(size)
    fs = mkfs(tmp / "fs.img", 2 * MiB)
    at = fs_lba * SECTOR
    disk[at:at + len(fs)] = fs[:size - at]
    t = gpt([(fs_lba, fs_lba + 4095), (fs_lba, fs_lba + 2047), (fs_lba + 1952, (1 << 63) - 1)],
            disk_sectors=size // SECTOR)
    disk[:len(t)] = t
    return disk


def mbr_loop_disk(size: int = FS_SIZE, base: int = 2048) -> bytearray:
    """An MBR extended partition at sector `base` whose EBRs link back to each other
    (base+200 -> base+100 -> base+200)."""
    disk = bytearray(size)
    disk[446:462] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x05, b"\0" * 3, base, 4096)
    disk[510:512] = b"\x55\xaa"
    for at, nxt in ((0, 200), (100, 200), (200, 100)):
        ebr = bytearray(SECTOR)
        ebr[446:462] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x83, b"\0" * 3, 1, 50)
        ebr[462:478] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x05, b"\0" * 3, nxt, 50)
        ebr[510:512] = b"\x55\xaa"
        disk[(base + at) * SECTOR:(base + at + 1) * SECTOR] = ebr
    return disk


INPUTS += [
    Hostile("ext4-2e29-groups", lambda f: raw_to_image(f, ext4_many_groups(f)),
            note="an ext4 superblock claiming 2^29 block groups, consistent enough to pass "
                 "its checks"),
    Hostile("ext4-garbage-gdt", lambda f: raw_to_image(f, ext4_garbage_gdt(f)),
            note="a valid ext4 superblock over a group descriptor table of random bytes"),
    Hostile("gpt-entries-at-2e63", lambda f: raw_to_image(f, gpt_far_disk()),
            note="a GPT whose entry array is at LBA 2^63"),
    Hostile("gpt-huge-entries", lambda f: raw_to_image(f, gpt_huge_entries_disk(), 1 << 40),
            note="4096 GPT entries of 2^27 bytes on a 1 TiB disk: a 512 GiB entry array"),
    Hostile("gpt-overlapping", lambda f: raw_to_image(f, gpt_overlap_disk(f)),
            note="two GPT partitions over the same ext4 filesystem, a third reaching 2^63"),
    Hostile("mbr-extended-loop", lambda f: raw_to_image(f, mbr_loop_disk()),
            note="an MBR extended partition whose EBRs link back to each other"),
]


# -- not a ploop disk at all ----------------------------------------------------------------------
@hostile("qcow2")
def _qcow2(f: Path) -> Path:
    """a qcow2 image"""
    p = f / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "1M"], check=True,
                   capture_output=True, timeout=60)
    return p


@hostile("random-bytes")
def _random(f: Path) -> Path:
    """64 KiB of random bytes"""
    return write(f / "root.hds", pattern(5, 64 * KiB))


@hostile("empty-file")
def _empty(f: Path) -> Path:
    """an empty file"""
    return write(f / "root.hds", b"")


@hostile("folder-without-descriptor")
def _no_dd(f: Path) -> Path:
    """a folder with a stray file and no DiskDescriptor.xml"""
    write(f / "notes.txt", b"nothing here\n")
    return f


# -- rdiff signatures and deltas ------------------------------------------------------------------
@hostile("sig-truncated", kind="sig")
def _sig_trunc(f: Path) -> Path:
    """a signature cut inside its last record"""
    sig = rdiff_sig(pattern(99, SIZE))
    return write(f / "x.sig", sig[:-5])


@hostile("sig-bogus-magic", kind="sig")
def _sig_magic(f: Path) -> Path:
    """a signature with an unknown magic"""
    sig = rdiff_sig(pattern(99, SIZE))
    return write(f / "x.sig", b"rs\x09\x99" + sig[4:])


@hostile("sig-huge-block", kind="sig")
def _sig_block(f: Path) -> Path:
    """a signature with a block length of 2^32-1 and records for 3 blocks"""
    return write(f / "x.sig", sig_header(block=0xFFFFFFFF, strong=8) + pattern(3, 36))


@hostile("delta-truncated", kind="delta")
def _delta_trunc(f: Path) -> Path:
    """a delta cut inside a LITERAL command"""
    return write(f / "x.delta", DELTA_MAGIC + bytes([0x43]) + struct.pack(">I", 1000) + b"abc")


@hostile("delta-bogus-magic", kind="delta")
def _delta_magic(f: Path) -> Path:
    """a delta with a wrong magic"""
    return write(f / "x.delta", b"rs\x02\x99" + rdiff_delta(SIZE)[4:])


@hostile("delta-huge-lengths", kind="delta")
def _delta_huge(f: Path) -> Path:
    """LITERAL of 2^62 bytes, COPY of 2^63 bytes at 2^63"""
    return write(f / "x.delta", DELTA_MAGIC
                 + bytes([0x54]) + struct.pack(">QQ", 1 << 63, 1 << 63)
                 + bytes([0x44]) + struct.pack(">Q", 1 << 62) + b"abcd")


# -- what the suite needs to know about an input's files -----------------------------------------
def sparse_sha256(path: str, size: int) -> str:
    """sha256 of the data extents (SEEK_DATA/SEEK_HOLE) with their offsets, and the size: as
    good as a hash of the bytes for telling a change, without reading gigabytes of holes."""
    h = hashlib.sha256(b"%d;" % size)
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            h.update(b"@%d;" % start)
            while start < end:
                chunk = os.pread(fd, min(1 << 20, end - start), start)
                if not chunk:
                    break
                h.update(chunk)
                start += len(chunk)
            pos = end
    finally:
        os.close(fd)
    return h.hexdigest()


def snapshot_files(root: Path) -> dict[str, str]:
    """What is in `root`, without following symlinks or opening FIFOs: sha256 of each regular
    file, the target of each symlink, the type of anything else."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = sparse_sha256(p, st.st_size)
            else:
                out[rel] = f"mode {stat.S_IFMT(st.st_mode):o}"
    return out


def build(h: Hostile, root: Path) -> tuple[Path, Path]:
    """Build `h` in a new folder under `root`; returns (folder, SOURCE)."""
    folder = root / h.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder, h.build(folder)
