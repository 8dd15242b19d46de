"""The file layer (content/files.py) against the kernel, without FUSE: ext2/3/4 and XFS disks
made by mkfs and filled through a kernel loop mount with files of every kind, turned into ploop
snapshot chains; every snapshot's manifest (each entry's kind, mode, owner, size, times in ns,
links, blocks, device numbers, symlink target, data SHA-256, xattrs, inode numbers) must equal
the kernel's read-only `norecovery` mount of the raw copy. Damaged inodes fail alone."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import fsimages as F
import pytest

from ploopfs.content.files import FsError, open_filesystem
from ploopfs.content.view import partition_view
from ploopfs.volume.source import open_source

pytestmark = pytest.mark.skipif(F.needs_root_tools() is not None,
                                reason=F.needs_root_tools() or "")
MiB = F.MiB

LAYOUTS = {
    # two partitions: ext4 (1 KiB blocks, the small-filesystem default) and XFS v5
    "gpt-ext4-xfs": [F.Part(1, "ext4", 64 * MiB), F.Part(2, "xfs", 320 * MiB)],
    "ext2-indirect": [F.Part(0, "ext2", 96 * MiB, ["-b", "1024"])],
    "ext3-4k": [F.Part(0, "ext3", 96 * MiB, ["-b", "4096"])],
    "ext4-inline-data": [F.Part(0, "ext4", 96 * MiB, ["-O", "inline_data", "-b", "4096",
                                                      "-I", "512"])],
    "xfs-bigdirblocks": [F.Part(0, "xfs", 320 * MiB, ["-n", "size=16384", "-i", "size=1024"])],
}


def open_fs(disk: F.FsDisk, guid: str, part: F.Part):
    src = open_source(str(disk.folder))
    vol = src.volume(guid)
    view = partition_view(vol, part.start, part.size)
    fs = open_filesystem(view, lambda o, n: vol.read(part.start + o, n),
                         lambda v, o: vol.readinto(v, part.start + o), part.size,
                         f"{guid}/part{part.number}")
    assert fs is not None
    return fs


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def fsdisk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> F.FsDisk:
    parts = [F.Part(p.number, p.fstype, p.size, list(p.mkfs)) for p in LAYOUTS[request.param]]
    return F.build_disk(tmp_path_factory.mktemp(request.param), parts)


def test_every_snapshot_equals_the_kernel(fsdisk: F.FsDisk, tmp_path: Path) -> None:
    for guid in fsdisk.guids:
        for part in fsdisk.parts:
            fs = open_fs(fsdisk, guid, part)
            assert fs.kind == part.fstype
            got = F.fs_manifest(fs)
            want = F.kernel_manifest(fsdisk, guid, part, tmp_path)
            assert len(want) > 1000
            assert F.diff_manifests(got, want) == [], (guid, part)


def test_reads_at_any_offset(fsdisk: F.FsDisk) -> None:
    """Reads across extent edges, into holes, past the end: the same bytes as one whole read."""
    part = fsdisk.parts[0]
    fs = open_fs(fsdisk, fsdisk.top, part)
    for name in (b"sparse", b"fragmented", b"prealloc"):
        f = fs.open(fs.lookup(fs.root, name))
        whole = bytes(f.read(0, f.size))
        assert len(whole) == f.size
        for off, n in ((0, 1), (4095, 2), (8191, 8194), (3 * MiB - 1, 8193), (f.size - 3, 10),
                       (f.size, 5), (f.size + 100, 5), (10 * MiB, MiB)):
            assert bytes(f.read(off, n)) == whole[off:off + n], (name, off, n)
    sparse = fs.open(fs.lookup(fs.root, b"sparse"))
    assert bytes(sparse.read(20 * MiB, MiB)) == bytes(MiB)  # a hole
    assert fs.attr(sparse.ino).blocks * 512 < 1 * MiB


def test_holes_read_no_disk(fsdisk: F.FsDisk) -> None:
    """Holes and unwritten extents are zeros made in memory: no volume read."""
    part = fsdisk.parts[0]
    fs = open_fs(fsdisk, fsdisk.top, part)
    f = fs.open(fs.lookup(fs.root, b"sparse"))
    calls = []
    f._read = lambda o, n: calls.append((o, n)) or b""  # type: ignore[assignment]
    f._into = lambda v, o: calls.append((o, len(v))) or 0  # type: ignore[assignment]
    assert bytes(f.read(20 * MiB, 2 * MiB)) == bytes(2 * MiB)
    if fs.kind in ("ext4", "xfs"):  # unwritten extents (ext2/3 fallocate writes zeros)
        p = fs.open(fs.lookup(fs.root, b"prealloc"))
        p._read = f._read  # type: ignore[assignment]
        p._into = f._into  # type: ignore[assignment]
        assert bytes(p.read(5 * MiB, MiB)) == bytes(MiB)
    assert calls == []


def test_opening_reads_superblock_and_root_only(fsdisk: F.FsDisk) -> None:
    part = fsdisk.parts[-1]
    src = open_source(str(fsdisk.folder))
    vol = src.volume(fsdisk.top)
    reads: list[tuple[int, int]] = []

    def read(o: int, n: int) -> bytes | bytearray:
        reads.append((o, n))
        return vol.read(part.start + o, n)

    view = partition_view(vol, part.start, part.size)
    orig = view._read
    view._read = lambda o, n: (reads.append((o - part.start, n)), orig(o, n))[1]
    view._into = None
    open_filesystem(view, read, lambda v, o: vol.readinto(v, part.start + o), part.size)
    assert sum(n for _, n in reads) < 256 * 1024, reads
    assert len(reads) < 40, reads


def _damage(disk: F.FsDisk, tmp: Path, part: F.Part, offset: int, data: bytes) -> F.FsDisk:
    """A one-image copy of the top snapshot with `data` written at `offset` of the partition."""
    raw = tmp / "damaged.raw"
    F.sh("cp", "--sparse=always", disk.raws[disk.top], raw)
    with open(raw, "r+b") as f:
        f.seek(part.start + offset)
        f.write(data)
    folder = tmp / "damaged"
    folder.mkdir()
    size = os.path.getsize(raw)
    F._write_image(folder / "root.hdd", raw, size, None)
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], size, F.CLUSTER, F.GUIDS[:1]))
    return F.FsDisk(folder, F.GUIDS[:1], {F.GUIDS[0]: raw}, disk.parts)


def test_damaged_inode_fails_alone(fsdisk: F.FsDisk, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A clobbered file inode and a clobbered directory inode: FsError (EIO) for those alone,
    one log line naming each inode, everything else as before."""
    part = fsdisk.parts[0]
    fs = open_fs(fsdisk, fsdisk.top, part)
    dir_ino = fs.lookup(fs.root, b"dir")
    victim = fs.lookup(dir_ino, b"size-4097")
    big_dir = fs.lookup(fs.root, b"many")  # large enough never to be inline
    # XFS: the inode magic; ext4: the extent header's; ext2/3: the first block pointer, past the
    # end of the filesystem
    at, junk = {"xfs": (0, b"XX"), "ext4": (40, b"\0\0")}.get(fs.kind, (40, b"\xf0\xff\xff\xff"))
    before = F.fs_manifest(fs)
    raw = tmp_path / "damaged.raw"
    F.sh("cp", "--sparse=always", fsdisk.raws[fsdisk.top], raw)
    with open(raw, "r+b") as f:
        for ino in (victim, big_dir):
            f.seek(part.start + fs.inode_offset(ino) + at)
            f.write(junk)
    folder = tmp_path / "damaged"
    folder.mkdir()
    size = os.path.getsize(raw)
    F._write_image(folder / "root.hdd", raw, size, None)
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], size, F.CLUSTER, F.GUIDS[:1]))
    bad = F.FsDisk(folder, F.GUIDS[:1], {F.GUIDS[0]: raw}, fsdisk.parts)
    fs2 = open_fs(bad, bad.top, part)
    caplog.set_level(logging.ERROR, "ploopfs.files")

    def use(ino: int) -> None:
        if stat.S_ISDIR(fs.attr(ino).mode):
            fs2.entries(ino)
        else:
            fs2.open(ino).read(0, 5000)

    for ino in (victim, big_dir, victim, big_dir):  # twice: the same error, no second log line
        with pytest.raises(FsError) as e:
            use(ino)
        assert e.value.ino == ino
    lines = [r.getMessage() for r in caplog.records if r.name == "ploopfs.files"]
    assert len(lines) == 2, lines
    assert f"inode {victim}:" in lines[0] and f"inode {big_dir}:" in lines[1], lines
    # the rest is readable and unchanged
    assert sorted(fs2.entries(dir_ino)) == sorted(fs.entries(dir_ino))
    after = F.fs_manifest_tolerant(fs2)
    for path, m in before.items():
        if path in ("dir/size-4097", "many") or path.startswith("many/"):
            continue
        assert after[path] == m, path
