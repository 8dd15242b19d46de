"""The files inside, through a real mount: every snapshot's files/ of an ext4 + XFS disk with a
snapshot chain equal to the kernel's read-only `norecovery` loop mounts (manifests: kinds,
modes, owners, sizes, times in ns, links, blocks, device numbers, targets, SHA-256, xattrs,
hard-link groups), `--files` likewise, a damaged inode giving EIO with the rest readable, and
the first listing of a 100 GiB disk's files within a second. Mounts through tests/mounting.py's
Mounter."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import fsimages as F
import pytest
from mounting import Mounter, pid_alive

from ploopfs.format.descriptor import bare_guid

pytestmark = [
    pytest.mark.skipif(F.needs_root_tools() is not None, reason=F.needs_root_tools() or ""),
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
                       reason="needs /dev/fuse and fusermount3"),
]
MiB = F.MiB




@pytest.fixture(scope="module")
def chain_disk(tmp_path_factory: pytest.TempPathFactory) -> F.FsDisk:
    return F.build_disk(tmp_path_factory.mktemp("chain"),
                        [F.Part(1, "ext4", 64 * MiB), F.Part(2, "xfs", 320 * MiB)], snapshots=3)


def _fuse_manifest(root: Path) -> dict[str, dict]:
    return F.manifest(root, inodes=False)


def _kernel(disk: F.FsDisk, guid: str, part: F.Part, tmp: Path) -> dict[str, dict]:
    return F.kernel_manifest(disk, guid, part, tmp, inodes=False)


def test_every_snapshot_equals_the_kernel(chain_disk: F.FsDisk, mounter: Mounter,
                                          tmp_path: Path) -> None:
    m = mounter.mount(chain_disk.folder)
    names = sorted(os.listdir(m.mountpoint))
    assert {"files-part1", "files-part2"} <= set(names), names
    for guid in chain_disk.guids:
        for part in chain_disk.parts:
            got = _fuse_manifest(m / f"snapshots/{bare_guid(guid)}/files-part{part.number}")
            assert F.diff_manifests(got, _kernel(chain_disk, guid, part, tmp_path)) == [], \
                (guid, part.fstype)
    for part in chain_disk.parts:  # the top, at the mount's root
        got = _fuse_manifest(m / f"files-part{part.number}")
        assert F.diff_manifests(got, _kernel(chain_disk, chain_disk.top, part, tmp_path)) == []
    # hard links share a FUSE inode; the same inode of two snapshots does not
    a = os.stat(m / "files-part1/linked")
    assert a.st_ino == os.stat(m / "files-part1/dir/sub/linked-3").st_ino
    old = m / f"snapshots/{bare_guid(chain_disk.guids[0])}/files-part1/linked"
    assert os.stat(old).st_ino != a.st_ino
    # device nodes and FIFOs are nodes, never opened through the mount (nodev)
    with pytest.raises(OSError) as exc:
        os.open(m / "files-part1/chardev", os.O_RDONLY | os.O_NONBLOCK)
    assert exc.value.errno in (errno.EACCES, errno.EPERM)
    for attempt in (lambda: os.chmod(m / "files-part1/linked", 0o777),
                    lambda: (m / "files-part2/new").write_bytes(b"x"),
                    lambda: os.setxattr(m / "files-part2/xattrs", "user.x", b"1")):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS
    assert m.error_lines() == []


def test_files_option_every_snapshot(chain_disk: F.FsDisk, mounter: Mounter,
                                     tmp_path: Path) -> None:
    """--files (-s GUID) shows the first partition's filesystem (ext4 here) at the root."""
    part = chain_disk.parts[0]
    for guid in chain_disk.guids:
        m = mounter.mount(chain_disk.folder, "--files", "-s", guid, name=f"f{guid[1:9]}")
        assert F.diff_manifests(_fuse_manifest(m.mountpoint),
                                _kernel(chain_disk, guid, part, tmp_path)) == []
        assert mounter.umount(m).returncode == 0


def test_whole_disk_xfs_files_option(tmp_path: Path, mounter: Mounter) -> None:
    disk = F.build_disk(tmp_path / "b", [F.Part(0, "xfs", 320 * MiB)], snapshots=2)
    m = mounter.mount(disk.folder, "--files")
    assert F.diff_manifests(_fuse_manifest(m.mountpoint),
                            _kernel(disk, disk.top, disk.parts[0], tmp_path)) == []
    plain = mounter.mount(disk.folder, name="plain")
    assert "files" in os.listdir(plain.mountpoint)


def test_damaged_inode_is_eio_rest_readable(chain_disk: F.FsDisk, mounter: Mounter,
                                            tmp_path: Path) -> None:
    """XFS inode magic clobbered: stat of that file is EIO, one log line names the inode, the
    rest of the tree reads as the kernel shows it."""
    from ploopfs.content.files import open_filesystem
    from ploopfs.content.view import partition_view
    from ploopfs.volume.source import open_source
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    part = chain_disk.parts[1]
    vol = open_source(str(chain_disk.folder)).volume(chain_disk.top)
    fs = open_filesystem(partition_view(vol, part.start, part.size),
                         lambda o, n: vol.read(part.start + o, n),
                         lambda v, o: vol.readinto(v, part.start + o), part.size)
    victim = fs.lookup(fs.lookup(fs.root, b"dir"), b"size-4097")
    raw = tmp_path / "bad.raw"
    F.sh("cp", "--sparse=always", chain_disk.raws[chain_disk.top], raw)
    with open(raw, "r+b") as f:
        f.seek(part.start + fs.inode_offset(victim))
        f.write(b"XX")
    folder = tmp_path / "bad"
    folder.mkdir()
    F._write_image(folder / "root.hdd", raw, os.path.getsize(raw), None)
    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], os.path.getsize(raw), F.CLUSTER,
                                      F.GUIDS[:1]))
    m = mounter.mount(folder)
    m.errors_expected = True
    root = m / "files-part2"
    for _ in range(2):
        with pytest.raises(OSError) as exc:
            os.stat(root / "dir/size-4097")
        assert exc.value.errno == errno.EIO
    assert "size-4097" in os.listdir(root / "dir")  # listed; only its inode is unreadable
    lines = [ln for ln in m.error_lines() if f"inode {victim}" in ln]
    assert len(lines) == 1, m.error_lines()
    got = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if p.endswith("dir/size-4097"):
                continue
            got[os.path.relpath(p, root)] = os.lstat(p).st_size
    top = _kernel(chain_disk, chain_disk.top, part, tmp_path)
    assert got == {p: v["size"] for p, v in top.items() if p != "dir/size-4097"}


def test_first_listing_of_a_100_gib_disk_is_fast(tmp_path: Path, mounter: Mounter) -> None:
    """Only the superblock and the root inode are read when a snapshot's files are first
    listed: under a second on a 100 GiB disk."""
    raw = tmp_path / "big.raw"
    F.sh("truncate", "-s", "100G", raw)
    F.sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", raw)
    folder = tmp_path / "ct"
    folder.mkdir()
    F.sh("qemu-img", "convert", "-f", "raw", "-O", "parallels", raw, folder / "root.hdd")
    raw.unlink()
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(["root.hdd"], 100 << 30, MiB))
    m = mounter.mount(folder)
    t = time.perf_counter()
    names = os.listdir(m / "files")
    took = time.perf_counter() - t
    assert names == ["lost+found"]
    assert took < 1.0, took


def test_image_truncated_under_the_mount_is_eio(tmp_path: Path, mounter: Mounter) -> None:
    """An image truncated under the mount (by someone else: here the test's own disk): a read
    of the bytes gone is EIO with one log line each, and the server goes on serving."""
    disk = F.build_disk(tmp_path / "b", [F.Part(1, "ext4", 64 * MiB)], snapshots=1)
    m = mounter.mount(disk.folder, "--direct-io")  # each read one request, of its own size
    m.errors_expected = True
    big, small = m / "files/dir/size-5242881", m / "files/dir/size-4097"
    assert len(big.read_bytes()) == 5 * MiB + 1 and len(small.read_bytes()) == 4097
    fds = [os.open(path, os.O_RDONLY) for path in (big, small)]  # extent maps built now
    try:
        os.truncate(disk.folder / "root.hdd", F.CLUSTER)  # header and BAT only: no data left
        for fd in fds:
            with pytest.raises(OSError) as exc:
                os.pread(fd, MiB, 0)
            assert exc.value.errno == errno.EIO
    finally:
        for fd in fds:
            os.close(fd)
    failed = [ln for ln in m.error_lines() if "read failed" in ln]
    assert len(failed) == 2 and all("file shrank?" in ln for ln in failed), m.error_lines()
    assert pid_alive(m.pid)
    assert "dir" in os.listdir(m / "files")  # cached metadata still served
    assert (m / "info.json").read_bytes()
