"""ext2/3/4 and XFS disks made by the real tools for the file-layer tests: mkfs, a kernel loop
mount to write files of every kind, then the raw disk turned into a ploop chain (one image per
snapshot, a delta holding only the clusters that changed), and a manifest of each snapshot's
files taken from the kernel's own read-only `norecovery` mount of a raw copy.

Needs root (loop devices, mount(8)); callers skip otherwise."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

KiB, MiB = 1 << 10, 1 << 20
CLUSTER = 1 * MiB
PART_START = 1 * MiB  # first partition at 1 MiB, as sgdisk and ploop lay it out
GUIDS = ["{11111111-2222-3333-4444-555555555555}", "{5fbaabe3-6958-40ff-92a7-860e329aab41}",
         "{0d2a3f0c-4e8b-4c6b-9a57-3c0ffee00003}"]

# Timestamps the kernel stores exactly: nanoseconds, before 1970, after 2038.
TIMES_NS = [1_234_567_890_123_456_789, 1_700_000_000_000_000_001, -86_400_123_456_789,
            (1 << 32) * 1_000_000_000 + 5_000_000_007]


def sh(*args: str | os.PathLike[str], **kw: Any) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          timeout=300, **kw).stdout


def needs_root_tools() -> str | None:
    """Why these disks cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mount(8))"
    for tool in ("mkfs.ext4", "mkfs.xfs", "losetup", "sgdisk"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@contextlib.contextmanager
def loop(raw: Path, offset: int, size: int, ro: bool = False) -> Iterator[str]:
    args = ["losetup", "-f", "--show", "-o", str(offset), "--sizelimit", str(size)]
    dev = sh(*args, *(["-r"] if ro else []), raw).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60, check=False)


@contextlib.contextmanager
def mounted(dev: str, mnt: Path, fstype: str, ro: bool) -> Iterator[Path]:
    mnt.mkdir(parents=True, exist_ok=True)
    if ro:  # the committed state, no journal replay: what ploopfs's file layer shows
        opts = {"ext2": "ro", "ext3": "ro,noload", "ext4": "ro,noload"}.get(fstype, "ro,norecovery")
    else:
        opts = "rw"
    sh("mount", "-t", fstype, "-o", opts, dev, mnt)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60,
                           check=False)


# -- files of every kind ------------------------------------------------------------------------
def acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """A POSIX ACL in the VFS xattr format (version 2): (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


ACL = acl_xattr([(0x01, 6, 0xFFFFFFFF), (0x02, 4, 1234), (0x04, 4, 0xFFFFFFFF),
                 (0x08, 5, 77), (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)])


def populate(root: Path, seed: int, many: int = 2000) -> None:
    """Directories, files of many sizes, hard links, symlinks (fast and slow), a sparse file, a
    preallocated (unwritten) range, a fragmented file, FIFO, devices, a socket, xattrs (inline,
    large, ACLs, trusted, security), owners, set-id bits, a root-only 0600 file, odd names and
    times with nanoseconds, before 1970 and after 2038."""
    rnd = Random(seed)
    (root / "dir" / "sub" / "deep").mkdir(parents=True)
    for size in (0, 1, 100, 4095, 4096, 4097, 65539, MiB + 7, 5 * MiB + 1):
        (root / "dir" / f"size-{size}").write_bytes(rnd.randbytes(size))
    (root / "dir" / "sub" / "deep" / "leaf.txt").write_text("deep\n")
    many_dir = root / "many"
    many_dir.mkdir()
    for i in range(many):
        (many_dir / f"entry-{i:05d}-{'x' * (i % 40)}").write_bytes(b"%d\n" % i)
    # hard links
    (root / "linked").write_bytes(rnd.randbytes(10000))
    os.link(root / "linked", root / "dir" / "linked-2")
    os.link(root / "linked", root / "dir" / "sub" / "linked-3")
    # symlinks: fast (in the inode), slow (a block), dangling, absolute, to a directory
    os.symlink("linked", root / "sym-short")
    os.symlink("../" * 30 + "dir/" + "long-" * 30 + "target", root / "sym-long")
    os.symlink("/nowhere/at/all", root / "sym-dangling")
    os.symlink("dir/sub", root / "sym-dir")
    # sparse: holes between written pieces, and a hole at the end
    with open(root / "sparse", "wb") as f:
        for off in (0, 10 * MiB + 123, 40 * MiB - 5000):
            f.seek(off)
            f.write(rnd.randbytes(5000))
        f.truncate(64 * MiB)
    # preallocated: unwritten extents read as zeros, with data written in the middle
    fd = os.open(root / "prealloc", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 8 * MiB)
        os.pwrite(fd, rnd.randbytes(8192), 3 * MiB)
    finally:
        os.close(fd)
    # fragmented: every other block written, so hundreds of extents (an extent tree with index
    # blocks in ext4, a B+tree data fork in XFS)
    with open(root / "fragmented", "wb") as f:
        for i in range(600):
            f.seek(i * 8192)
            f.write(rnd.randbytes(4096))
    # special files: never opened by the file layer
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "chardev", stat.S_IFCHR | 0o620, os.makedev(4, 64))
    os.mknod(root / "blockdev", stat.S_IFBLK | 0o660, os.makedev(259, 70000))
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(root / "socket"))
    finally:
        s.close()
    # xattrs
    x = root / "xattrs"
    x.write_bytes(b"has xattrs\n")
    os.setxattr(x, "user.small", b"v")
    os.setxattr(x, "user.empty", b"")
    os.setxattr(x, "user.big", rnd.randbytes(700))
    with contextlib.suppress(OSError):  # a remote value in XFS; ext4 without ea_inode refuses
        os.setxattr(x, "user.huge", rnd.randbytes(20000))
    os.setxattr(x, "trusted.t", b"trusted value")
    os.setxattr(x, "security.s", b"security value")
    os.setxattr(x, "system.posix_acl_access", ACL)
    y = root / "many-xattrs"
    y.write_bytes(b"")
    with contextlib.suppress(OSError):  # as many as fit (one block in ext4)
        for i in range(40):
            os.setxattr(y, f"user.attr-{i:03d}", rnd.randbytes(rnd.randrange(0, 200)))
    d = root / "dir" / "sub"
    os.setxattr(d, "user.on-a-dir", b"dir value")
    os.setxattr(d, "system.posix_acl_default", ACL)
    # owners, modes, set-id bits
    secret = root / "secret"
    secret.write_bytes(b"root only\n")
    os.chmod(secret, 0o600)
    owned = root / "owned"
    owned.write_bytes(rnd.randbytes(3000))
    os.chown(owned, 1234, 5678)
    os.chmod(owned, 0o4755)
    sticky = root / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.chown(sticky, 70000, 80000)  # ids above 16 bits
    os.chmod(root / "dir" / "size-100", 0o2640)
    os.lchown(root / "sym-short", 1234, 5678)
    (root / os.fsdecode(b"caf\xe9 \xff name")).write_bytes(b"not utf-8\n")
    # times
    for i, p in enumerate(["linked", "owned", "secret", "dir/size-0", "sparse", "dir/sub"]):
        t = TIMES_NS[i % len(TIMES_NS)]
        os.utime(root / p, ns=(t + 17, t))
    os.utime(root / "sym-long", ns=(TIMES_NS[0], TIMES_NS[1]), follow_symlinks=False)


def change(root: Path, seed: int) -> None:
    """What a later snapshot changes: removed, rewritten, added, re-linked, re-attributed (each
    round its own changes; what an earlier round already did is left alone)."""
    rnd = Random(seed)
    gone = (FileNotFoundError, FileExistsError, OSError)
    with contextlib.suppress(*gone):
        os.unlink(root / "dir" / "size-65539")
    shutil.rmtree(root / "dir" / "sub" / "deep", ignore_errors=True)
    (root / "dir" / "size-4096").write_bytes(rnd.randbytes(4096))
    (root / f"added-{seed}").write_bytes(rnd.randbytes(300000))
    with contextlib.suppress(*gone):
        os.unlink(root / "dir" / "linked-2")
    with contextlib.suppress(*gone):
        os.link(root / "owned", root / "owned-link")
    os.chmod(root / "secret", 0o640 if seed % 2 else 0o600)
    os.setxattr(root / "xattrs", "user.small", b"changed %d" % seed)
    with contextlib.suppress(*gone):
        os.removexattr(root / "xattrs", "user.big")
    for p in sorted((root / "many").iterdir())[seed % 3::17]:
        p.unlink()
    os.utime(root / "linked", ns=(TIMES_NS[3] + seed, TIMES_NS[2] + seed))


# -- disks -----------------------------------------------------------------------------------
@dataclass
class Part:
    number: int  # 0: the whole disk holds the filesystem
    fstype: str  # "ext2", "ext3", "ext4", "xfs"
    size: int
    mkfs: list[str] = field(default_factory=list)
    start: int = 0


@dataclass
class FsDisk:
    folder: Path  # DiskDescriptor.xml and the images
    guids: list[str]  # base .. top
    raws: dict[str, Path]  # guid -> raw copy of that snapshot's disk
    parts: list[Part]

    @property
    def top(self) -> str:
        return self.guids[-1]


def _gpt(raw: Path, parts: list[Part]) -> None:
    args = []
    for p in parts:
        args += ["-n", f"{p.number}:{p.start // 512}:{(p.start + p.size) // 512 - 1}"]
    sh("sgdisk", "-o", *args, raw)  # (-q on an empty disk writes nothing)


def _mkfs(dev: str, p: Part) -> None:
    if p.fstype == "xfs":
        sh("mkfs.xfs", "-q", "-f", *p.mkfs, dev)
    else:
        sh(f"mkfs.{p.fstype}", "-q", "-F", *p.mkfs, dev)


def _write_image(path: Path, raw: Path, size: int, base: Path | None) -> None:
    """A ploop image of `raw`: every non-zero cluster (base None), or only the clusters that
    differ from `base` (a delta)."""
    from ploopfs.volume.writer import ImageWriter

    zero = bytes(CLUSTER)
    with open(raw, "rb") as new, contextlib.ExitStack() as es, \
            ImageWriter.create(path, size, CLUSTER) as w:
        old = es.enter_context(open(base, "rb")) if base is not None else None
        for v in range(-(-size // CLUSTER)):
            data = new.read(CLUSTER)
            if old is not None:
                if data != old.read(CLUSTER):
                    w.write_cluster(v, data.ljust(CLUSTER, b"\0"))
            elif data != zero[:len(data)]:
                w.write_cluster(v, data.ljust(CLUSTER, b"\0"))


def build_disk(tmp: Path, parts: list[Part], snapshots: int = 2,
               fill: Callable[[Path, int], None] = populate,
               changes: Callable[[Path, int], None] = change) -> FsDisk:
    """A disk with `parts` (GPT unless one part numbered 0), each filesystem filled by `fill`,
    then `snapshots - 1` rounds of `changes`, each a ploop delta over the last."""
    tmp.mkdir(parents=True, exist_ok=True)
    raw = tmp / "work.raw"
    whole = len(parts) == 1 and parts[0].number == 0
    pos = 0 if whole else PART_START
    for p in parts:
        p.start = pos
        pos += p.size
    size = pos + (0 if whole else MiB)
    sh("truncate", "-s", str(size), raw)
    if not whole:
        _gpt(raw, parts)
    mnt = tmp / "mnt-build"
    for p in parts:
        with loop(raw, p.start, p.size) as dev:
            _mkfs(dev, p)
            with mounted(dev, mnt, p.fstype, ro=False):
                fill(mnt, p.number + 1)
    folder = tmp / "disk"
    folder.mkdir()
    names = ["root.hdd"] + [f"root.hdd.{i}" for i in range(1, snapshots)]
    raws: dict[str, Path] = {}
    prev: Path | None = None
    for i in range(snapshots):
        if i:
            for p in parts:
                with loop(raw, p.start, p.size) as dev, mounted(dev, mnt, p.fstype, ro=False):
                    changes(mnt, 100 * i + p.number)
        copy = tmp / f"snap{i}.raw"
        sh("cp", "--sparse=always", raw, copy)
        _write_image(folder / names[i], copy, size, prev)
        raws[GUIDS[i]] = copy
        prev = copy
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml",
                     chain_descriptor(names, size, CLUSTER, GUIDS[:snapshots]))
    raw.unlink()
    return FsDisk(folder, GUIDS[:snapshots], raws, parts)


# -- manifests -------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk",
            stat.S_IFSOCK: "sock"}[stat.S_IFMT(mode)]


def manifest(root: Path, *, inodes: bool = True, blocks: bool = True) -> dict[str, dict]:
    """Every entry under `root` (lstat, never following links): kind, mode, owner, size, times
    in ns, link count, device numbers, symlink target, SHA-256 of file data, xattrs, and
    hard-link groups (the paths sharing an inode; `inodes`: the inode number itself too)."""
    out: dict[str, dict] = {}
    by_ino: dict[int, list[str]] = {}

    def walk(d: bytes, rel: bytes) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            path = os.path.join(d, e.name)
            r = os.path.join(rel, e.name) if rel else e.name
            st = os.lstat(path)
            m: dict[str, Any] = {
                "kind": _kind(st.st_mode), "mode": oct(st.st_mode), "uid": st.st_uid,
                "gid": st.st_gid, "size": st.st_size, "nlink": st.st_nlink,
                "mtime": st.st_mtime_ns, "ctime": st.st_ctime_ns, "atime": st.st_atime_ns}
            if blocks:
                m["blocks"] = st.st_blocks
            if inodes:
                m["ino"] = st.st_ino
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                m["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if stat.S_ISLNK(st.st_mode):
                m["target"] = os.fsdecode(os.readlink(path))
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(MiB):
                        h.update(chunk)
                m["sha256"] = h.hexdigest()
            if not stat.S_ISLNK(st.st_mode):
                names = sorted(os.listxattr(path, follow_symlinks=False))
                m["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False).hex()
                               for n in names}
            key = os.fsdecode(r)
            out[key] = m
            by_ino.setdefault(st.st_ino, []).append(key)
            if stat.S_ISDIR(st.st_mode):
                walk(path, r)

    walk(os.fsencode(root), b"")
    for paths in by_ino.values():
        for p in paths:
            out[p]["links"] = sorted(paths)
    return out


def kernel_manifest(disk: FsDisk, guid: str, part: Part, tmp: Path, **kw: Any) -> dict[str, dict]:
    """The manifest of one snapshot's filesystem as the kernel shows it read-only, without
    replaying the journal."""
    mnt = tmp / f"mnt-{guid.strip('{}')[:8]}-{part.number}"
    with loop(disk.raws[guid], part.start, part.size, ro=True) as dev, \
            mounted(dev, mnt, part.fstype, ro=True):
        return manifest(mnt, **kw)


def diff_manifests(got: dict[str, dict], want: dict[str, dict]) -> list[str]:
    """Human-readable differences, empty when equal."""
    out = [f"missing: {p}" for p in sorted(want.keys() - got.keys())]
    out += [f"extra: {p}" for p in sorted(got.keys() - want.keys())]
    for p in sorted(want.keys() & got.keys()):
        for k in sorted(want[p].keys() | got[p].keys()):
            if want[p].get(k) != got[p].get(k):
                out.append(f"{p}: {k}: got {got[p].get(k)!r}, want {want[p].get(k)!r}")
    return out


def fs_manifest_tolerant(fs: Any) -> dict[str, dict]:
    """fs_manifest, leaving out what raises FsError (damaged inodes)."""
    return fs_manifest(fs, tolerant=True)


def fs_manifest(fs: Any, tolerant: bool = False) -> dict[str, dict]:
    """The same manifest from ploopfs's file layer (content/files.py), without FUSE."""
    from ploopfs.content.files import FsError

    out: dict[str, dict] = {}
    by_ino: dict[int, list[str]] = {}

    def walk(ino: int, rel: bytes) -> None:
        try:
            entries = sorted(fs.entries(ino).items())
        except FsError:
            if not tolerant:
                raise
            return
        for name, child in entries:
            try:
                one(child, os.path.join(rel, name) if rel else name)
            except FsError:
                if not tolerant:
                    raise

    def one(child: int, r: bytes) -> None:
        a = fs.attr(child)
        m: dict[str, Any] = {
            "kind": _kind(a.mode), "mode": oct(a.mode), "uid": a.uid, "gid": a.gid,
            "size": a.size, "nlink": a.nlink, "mtime": a.mtime_ns, "ctime": a.ctime_ns,
            "atime": a.atime_ns, "blocks": a.blocks, "ino": a.ino}
        if stat.S_ISCHR(a.mode) or stat.S_ISBLK(a.mode):
            m["rdev"] = (os.major(a.rdev), os.minor(a.rdev))
        if stat.S_ISLNK(a.mode):
            m["target"] = os.fsdecode(fs.readlink(child))
        if stat.S_ISREG(a.mode):
            f, h, pos = fs.open(child), hashlib.sha256(), 0
            while pos < f.size:
                data = f.read(pos, 3 * MiB + 5)  # across extent boundaries
                assert data, (r, pos)
                h.update(data)
                pos += len(data)
            m["sha256"] = h.hexdigest()
        if not stat.S_ISLNK(a.mode):
            m["xattrs"] = {os.fsdecode(k): v.hex() for k, v in sorted(fs.xattrs(child).items())}
        key = os.fsdecode(r)
        out[key] = m
        by_ino.setdefault(a.ino, []).append(key)
        if stat.S_ISDIR(a.mode):
            walk(child, r)

    walk(fs.root, b"")
    for paths in by_ino.values():
        for p in paths:
            out[p]["links"] = sorted(paths)
    return out
