"""Seed corpora for the fuzz targets, made from real inputs (docs/fuzzing.md).

    .venv/bin/python tools/fuzz/seeds.py OUTDIR [TARGET ...]

writes OUTDIR/<target>/seed-* for each target (all by default):

* images made by qemu-img/qemu-io (`-f parallels`, clusters of 512 B to 4 KiB) and v1 images
  made by ploopfs's writer (qemu only writes v2), each under 64 KiB;
* headers and BAT prefixes of the sample corpus images (tests/data/sample-corpus.tar.zst,
  unpacked into a temporary folder: the corpus itself is only read);
* the corpus descriptors, and for `check`/`read` the same descriptors pointed at small qemu
  images (container format of common.pack: descriptor, then files f0, f1, …);
* signatures and deltas written by `rdiff` (librsync) for every hash/rollsum pair;
* the hostile shapes of tests/hostile.py (tests/system/test_hostile_all.py): their image files
  and descriptors, a chain deeper than ploopfs reads (256 levels) and a 256-wide snapshot tree
  over one small image, and for `fs` disk heads made by mkfs (ext2/3/4, XFS) plus an ext4
  superblock claiming 2^29 groups, a garbage group descriptor table, a GPT whose entries lie
  at LBA 2^63, overlapping GPT partitions and an MBR whose extended partitions form a loop;
* for `files`, ext2/3/4 (`mke2fs -d`) and XFS (`mkfs.xfs -p`, v5 with 4 and 1 KiB blocks, v4)
  filesystems holding a small tree with every kind of node: files, a sparse file, a hard
  link, symlinks (inline and not), a FIFO, a directory past one block, an xattr.

Needs qemu-img, qemu-io, rdiff, zstd and mkfs.ext4 on PATH (mkfs.xfs if there).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.environ.get("PLOOPFS_CORPUS",
                        os.path.join(ROOT, "tests", "data", "sample-corpus.tar.zst"))
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # hostile.py: the shapes of the hostile suite

TOP_GUID = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- sources ------------------------------------------------------------------------------------
def unpack_corpus(tmp: str) -> str:
    dest = os.path.join(tmp, "corpus")
    os.makedirs(dest)
    zst = subprocess.run(["zstd", "-dc", CORPUS], check=True, capture_output=True).stdout
    tar = os.path.join(tmp, "corpus.tar")
    common.write(tar, zst)
    with tarfile.open(tar) as t:
        # The "data" filter (no links out, no devices) exists from Python 3.11.4 on; Debian 12's
        # 3.11.2 lacks it, and the archive is our own committed corpus.
        if hasattr(tarfile, "data_filter"):
            t.extractall(dest, filter="data")
        else:
            t.extractall(dest)
    os.unlink(tar)
    return dest


def qemu_image(path: str, size: int, cluster: int, writes: list[tuple[int, int, int]]) -> bytes:
    """A v2 image by qemu: `writes` are (pattern byte, offset, length)."""
    run("qemu-img", "create", "-q", "-f", "parallels", "-o", f"cluster_size={cluster}", path,
        str(size))
    if writes:
        cmds = [a for p, off, n in writes for a in ("-c", f"write -P {p:#x} {off} {n}")]
        run("qemu-io", "-f", "parallels", *cmds, path)
    return read(path)


def v1_image(path: str, size: int, cluster: int, writes: list[tuple[int, int, int]]) -> bytes:
    """A v1 image (BAT entries in sectors, format.md §2.2), by ploopfs's writer: qemu writes only v2."""
    from ploopfs.volume.writer import ImageWriter

    with ImageWriter.create(path, size, cluster, version=1) as w:
        for p, off, n in writes:
            w.write(off, bytes([p]) * n)
    return read(path)


WRITES = [
    [],
    [(0x41, 0, 1024)],
    [(0x42, 0, 512), (0x43, 5120, 3072)],
    [(0x44, 2048, 2048), (0x45, 12288, 4096)],
]


def small_images(tmp: str) -> list[bytes]:
    out = []
    for cluster in (512, 1024, 2048, 4096):
        for i, w in enumerate(WRITES):
            out.append(qemu_image(os.path.join(tmp, f"q{cluster}-{i}.hdd"), 16384, cluster, w))
            out.append(v1_image(os.path.join(tmp, f"v1-{cluster}-{i}.hdd"), 16384, cluster, w))
    return out


def corpus_descriptors(corpus: str) -> dict[str, bytes]:
    return {os.path.basename(os.path.dirname(p)): read(p)
            for p in sorted(glob.glob(os.path.join(corpus, "*", "DiskDescriptor.xml")))}


def corpus_images(corpus: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(corpus, "*", "root.hdd*")))


def retarget(xml: bytes, cluster: int, size: int) -> bytes:
    """A corpus descriptor pointed at files f0, f1, … (in <Image> order) of a small disk."""
    n = iter(range(100))
    xml = re.sub(rb"<File>[^<]*</File>", lambda m: b"<File>f%d</File>" % next(n), xml)
    xml = re.sub(rb"<Blocksize>\d+</Blocksize>", b"<Blocksize>%d</Blocksize>" % (cluster // 512),
                 xml)
    xml = re.sub(rb"<Disk_size>\d+</Disk_size>", b"<Disk_size>%d</Disk_size>" % (size // 512), xml)
    return re.sub(rb"<End>\d+</End>", b"<End>%d</End>" % (size // 512), xml)


def image_guids(xml: bytes) -> int:
    return len(re.findall(rb"<Image>", xml))


def folders(tmp: str, corpus: str) -> list[bytes]:
    """Containers: each corpus descriptor with as many small images as it lists."""
    out = []
    size = 16384
    for name, xml in corpus_descriptors(corpus).items():
        levels = image_guids(xml)
        for cluster in (512, 2048):
            make = v1_image if name.startswith("v1") else qemu_image
            files = []
            for lv in range(levels):
                w = [(0x50 + lv, lv * cluster, cluster), (0x60 + lv, 8192, 1024 * (lv + 1))]
                path = os.path.join(tmp, f"{name}-{cluster}-{lv}")
                if lv == 0 and name.startswith("plain"):
                    data = bytearray(size)  # a raw base (format.md §3)
                    data[0:cluster] = b"\x70" * cluster
                    files.append(bytes(data))
                else:
                    files.append(make(path, size, cluster, w))
            out.append(common.pack([retarget(xml, cluster, size), *files]))
    return out


# -- rdiff --------------------------------------------------------------------------------------
RDIFF_OPTS = [("blake2", "rabinkarp"), ("md4", "rollsum"), ("blake2", "rollsum"), ("md4", "rabinkarp")]


def new_files() -> list[bytes]:
    b = common.basis_bytes()
    moved = b[4096:] + b[:4096]
    edited = bytearray(b)
    edited[1000:1100] = b"\x00" * 100
    return [b, moved, bytes(edited) + b"tail", b[:3000], b"", b"\x00" * 5000]


def rdiff_seeds(tmp: str) -> tuple[list[bytes], list[bytes]]:
    basis = common.write(os.path.join(tmp, "basis"), common.basis_bytes())
    sigs, deltas = [], []
    for k, (h, r) in enumerate(RDIFF_OPTS):
        for block in (64, 512, 2048):
            sig = os.path.join(tmp, f"sig-{k}-{block}")
            extra = ["-S", "8"] if block == 512 else []
            run("rdiff", "-H", h, "-R", r, "-b", str(block), *extra, "signature", basis, sig)
            sigs.append(read(sig))
            if k:
                continue
            for i, new in enumerate(new_files()):
                nf = common.write(os.path.join(tmp, f"new-{block}-{i}"), new)
                delta = os.path.join(tmp, f"delta-{block}-{i}")
                run("rdiff", "delta", sig, nf, delta)
                deltas.append(read(delta))
    return sigs, deltas


# -- hostile shapes (tests/hostile.py) ----------------------------------------------------------
NONE_GUID = "{00000000-0000-0000-0000-000000000000}"
WIDE = 256  # levels / children: past ploopfs's 254-level cap, and the XML fits MAX_LEN


def _guid(i: int) -> str:
    return f"{{{i:08x}-0000-4000-8000-{i:012x}}}"


def compact_descriptor(parents: list[int | None], files: list[str], size: int,
                       cluster: int) -> bytes:
    """A descriptor without indentation or <Type> (every byte counts under MAX_LEN): image i
    has GUID _guid(i), file files[i] and parent parents[i] (None: the base); the last is
    the top."""
    sec = size // 512
    imgs = "".join(f"<Image><GUID>{_guid(i)}</GUID><File>{f}</File></Image>"
                   for i, f in enumerate(files))
    shots = "".join(f"<Shot><GUID>{_guid(i)}</GUID><ParentGUID>"
                    f"{NONE_GUID if p is None else _guid(p)}</ParentGUID></Shot>"
                    for i, p in enumerate(parents))
    return (f"<Parallels_disk_image><Disk_Parameters><Disk_size>{sec}</Disk_size>"
            f"</Disk_Parameters><StorageData><Storage><Blocksize>{cluster // 512}</Blocksize>"
            f"{imgs}</Storage></StorageData><Snapshots><TopGUID>{_guid(len(files) - 1)}"
            f"</TopGUID>{shots}</Snapshots></Parallels_disk_image>").encode()


def deep_and_wide(tmp: str) -> list[bytes]:
    """Containers: a chain of WIDE levels and a base with WIDE - 1 children, every level the
    same 1 KiB image f0 (the symlinked deltas of the hostile suite, in container form)."""
    size, cluster = 8192, 512
    img = v1_image(os.path.join(tmp, "dw-v1"), size, cluster, [(0x51, 0, 512)])
    img2 = qemu_image(os.path.join(tmp, "dw-v2"), size, cluster, [(0x52, 512, 512)])
    chain = compact_descriptor([None, *range(WIDE - 1)], ["f0"] * WIDE, size, cluster)
    tree = compact_descriptor([None] + [0] * (WIDE - 1), ["f0"] * WIDE, size, cluster)
    return [common.pack([xml, im]) for xml in (chain, tree) for im in (img, img2)]


def hostile_files(tmp: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(image files, descriptors, containers) of the hostile suite's inputs. Image files
    longer than fits MAX_LEN are cut (the header and BAT come first, and a cut image is one
    more hostile shape); a container's files share what its descriptor leaves."""
    import hostile

    images: list[bytes] = []
    descriptors: list[bytes] = []
    containers: list[bytes] = []
    root = Path(tmp) / "hostile"
    for h in hostile.INPUTS:
        if h.kind != "disk":
            continue
        try:
            folder, _src = hostile.build(h, root)
        except (OSError, subprocess.SubprocessError):
            continue
        files = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as f:
                    files[p.name] = f.read(common.MAX_LEN - 1)
        images += [b for n, b in files.items() if n.endswith((".hds", ".raw")) and b]
        xml = files.get(hostile.DD)
        if xml is not None and len(xml) < common.MAX_LEN - 1:
            descriptors.append(xml)
            names = list(dict.fromkeys(re.findall(rb"<File>([^<]*)</File>", xml)))[:common.MAX_FILES]
            for i, n in enumerate(names):
                xml = xml.replace(b"<File>%s</File>" % n, b"<File>f%d</File>" % i)
            room = (common.MAX_LEN - 1 - len(xml) - 2 * (len(names) + 1)) // max(1, len(names))
            if room > 0:
                containers.append(common.pack(
                    [xml, *(files.get(n.decode(errors="replace"), b"")[:room] for n in names)]))
        shutil.rmtree(folder, ignore_errors=True)
    return images, descriptors, containers


def fs_heads(tmp: str) -> list[bytes]:
    """Inputs of `fs` ([u32le disk size in 4 KiB units][disk head]): filesystems by mkfs and
    the hostile partition tables and superblocks, cut to what fits MAX_LEN."""
    import hostile

    t = Path(tmp)
    disks: list[tuple[int, bytes]] = []

    def made(cmd: list[str], size: int) -> None:
        p = t / "fs.img"
        with open(p, "wb") as f:
            f.truncate(size)
        try:
            subprocess.run([*cmd, str(p)], check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return
        with open(p, "rb") as f:
            disks.append((size, f.read(common.MAX_LEN)))
        p.unlink()

    for cmd in (["mkfs.ext4", "-q", "-F", "-b", "1024"], ["mkfs.ext3", "-q", "-F", "-b", "1024"],
                ["mkfs.ext2", "-q", "-F", "-b", "1024"]):
        made(cmd, 4 << 20)
    made(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "64bit,bigalloc", "-C", "16384"], 64 << 20)
    if shutil.which("mkfs.xfs"):
        made(["mkfs.xfs", "-q", "-f"], 300 << 20)
    for fn in (hostile.ext4_many_groups, hostile.ext4_garbage_gdt):
        d = fn(t)
        disks.append((len(d), bytes(d[:common.MAX_LEN])))
    small = 1 << 20
    for d in (hostile.gpt_far_disk(small), hostile.gpt_overlap_disk(t, small, fs_lba=40),
              hostile.mbr_loop_disk(small, base=16)):
        disks.append((len(d), bytes(d[:common.MAX_LEN])))
    return [struct.pack("<I", size // 4096) + head[:common.MAX_LEN - 5] for size, head in disks]


def _tree(root: Path) -> None:
    """A small tree with every kind of node the files layer serves."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "small").write_bytes(b"hello\n")
    (root / "d" / "mid").write_bytes(bytes(range(256)) * 40)
    (root / "d" / "e" / "sparse").write_bytes(b"")
    with open(root / "d" / "e" / "sparse", "r+b") as f:
        f.seek(200_000)
        f.write(b"tail")
    (root / "link").symlink_to("d/mid")
    (root / "long-link").symlink_to("x" * 200)
    os.link(root / "small", root / "d" / "hard")
    os.mkfifo(root / "fifo")
    for i in range(40):  # a directory past one block of entries
        (root / "d" / f"entry-with-a-long-name-{i:03d}").write_bytes(b"%d" % i)
    with contextlib.suppress(OSError):  # a filesystem without user xattrs
        os.setxattr(root / "small", "user.note", b"value")


def _protofile(root: Path, out: Path) -> None:
    """mkfs.xfs -p: the same tree in xfsprogs' prototype format (xfsprogs 6.1 has no -p DIR)."""
    lines = ["/", "0 0", "d--755 0 0"]

    def walk(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir()):
            pad = " " * depth
            if p.is_symlink():
                lines.append(f"{pad}{p.name} l--777 0 0 {os.readlink(p)}")
            elif p.is_dir():
                lines.append(f"{pad}{p.name} d--755 0 0")
                walk(p, depth + 1)
                lines.append(f"{pad}$")
            elif p.is_fifo():
                lines.append(f"{pad}{p.name} p--644 0 0")
            else:
                lines.append(f"{pad}{p.name} ---644 0 0 {p}")
    walk(root, 1)
    lines.append("$")
    out.write_text("\n".join(lines) + "\n")


def pieces(img: Path, size: int) -> bytes:
    """An input of `files`: the size, then the image's non-zero sectors as pieces, in offset
    order, as many as fit MAX_LEN."""
    out = bytearray(struct.pack("<I", size // 4096))
    with open(img, "rb") as f:
        data = f.read()
    sec, n = 0, len(data) // 512
    while sec < n:
        if not any(data[sec * 512:(sec + 1) * 512]):
            sec += 1
            continue
        end = sec
        while end < n and end - sec < 120 and any(data[end * 512:(end + 1) * 512]):
            end += 1
        chunk = data[sec * 512:end * 512]
        if len(out) + 6 + len(chunk) > common.MAX_LEN - 1:
            break
        out += struct.pack("<IH", sec, len(chunk)) + chunk
        sec = end
    return bytes(out)


def files_images(tmp: str) -> list[bytes]:
    """Inputs of `files`: ext2/3/4 (mke2fs -d) and XFS (mkfs.xfs -p) holding _tree."""
    t = Path(tmp)
    t.mkdir(parents=True, exist_ok=True)
    root = t / "tree"
    _tree(root)
    proto = t / "proto"
    _protofile(root, proto)
    small = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}  # mkfs.xfs under 300 MiB
    out = []
    for cmd, size in ((["mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "64", "-d", str(root)], 4 << 20),
                      (["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", "64", "-O", "inline_data",
                        "-d", str(root)], 8 << 20),
                      (["mkfs.ext3", "-q", "-F", "-b", "1024", "-N", "64", "-d", str(root)], 4 << 20),
                      (["mkfs.ext2", "-q", "-F", "-b", "1024", "-N", "64", "-d", str(root)], 4 << 20),
                      (["mkfs.xfs", "-q", "-f", "-d", "agcount=1", "-p", str(proto)], 32 << 20),
                      (["mkfs.xfs", "-q", "-f", "-b", "size=1024", "-d", "agcount=1", "-p", str(proto)],
                       32 << 20),
                      (["mkfs.xfs", "-q", "-f", "-m", "crc=0", "-d", "agcount=1", "-p", str(proto)],
                       32 << 20)):
        img = t / "fs.img"
        with open(img, "wb") as f:
            f.truncate(size)
        try:
            subprocess.run([*cmd, str(img)], check=True, capture_output=True, timeout=120,
                           env={**os.environ, **small})
        except (OSError, subprocess.SubprocessError):
            continue
        out.append(pieces(img, size))
        img.unlink()
    return out


# -- overlay deltas -----------------------------------------------------------------------------
def overlay_deltas(tmp: str) -> list[bytes]:
    """Inputs of `overlay`: delta files of real overlays of the target's own source
    (common.overlay_source), in the states a DIR is found in: new and closed, after one write,
    after writes where the target writes, after many writes, dirty (copied while open: before
    any write, and after a flush with clusters appended since), dirty with a BAT entry lost (a
    BAT update cut short), continued and closed again; and a v1 delta over a v1 source."""
    from ploopfs.volume.overlay import Overlay
    from ploopfs.volume.source import Disk, open_source

    c, size = common.OVERLAY_CLUSTER, common.OVERLAY_SIZE
    fill = common.basis_bytes()
    src = common.overlay_source(os.path.join(tmp, "src"))
    out: list[bytes] = []
    n = iter(range(100))
    disks: list[Disk] = []

    def opened(source: str) -> Disk:
        disks.append(open_source(source))
        return disks[-1]

    def overlay(source: str = src) -> tuple[Overlay, str]:
        ov = Overlay.open(opened(source), None, os.path.join(tmp, f"ov{next(n)}"))
        return ov, ov.delta_path

    def write(ov: Overlay, off: int, length: int) -> None:
        ov.write(off, fill[off % 4096:][:length].ljust(length, b"\x33"))

    ov, p = overlay()
    out.append(read(p))  # dirty, nothing written
    ov.close()
    out.append(read(p))  # new and closed
    ov, p = overlay()
    write(ov, 10, 100)
    ov.close()
    out.append(read(p))  # one write
    ov, p = overlay()
    for off, length in ((0, 200), (size - 6000, 5000), (512 * c, c), (511 * c + 4000, 200)):
        write(ov, off, length)
    ov.close()
    out.append(read(p))  # where the target writes
    ov, p = overlay()
    for off, length in ((700 * c + 5, 10), (3 * c, 2 * c), (size - 1, 1)):
        write(ov, off, length)
    ov.close()
    ov = Overlay.open(opened(src), None, os.path.dirname(p))
    write(ov, 100 * c + 7, 3000)
    ov.close()
    out.append(read(p))  # continued
    ov, p = overlay()
    for v in (0, 2, 5, 9, 40, 255, 300, 512, 700, 901, 1022, 1023):
        write(ov, v * c + v, c // 2 + v)
    ov.close()
    out.append(read(p))  # many writes (12 clusters)
    ov, p = overlay()
    for v in (1, 6, 256):
        write(ov, v * c + 100, 300)
    ov.flush()
    for v in (30, 31, 1000):
        write(ov, v * c, c)
    dirty = read(p)
    out.append(dirty)  # dirty: three clusters appended after the last flush
    ov.close()
    torn = bytearray(dirty)
    struct.pack_into("<I", torn, 64 + 4 * 6, 0)  # cluster 6's entry never reached the BAT
    out.append(bytes(torn))
    v1 = common.overlay_source(os.path.join(tmp, "src1"), version=1)
    ov, p = overlay(v1)
    write(ov, 0, 100)
    ov.close()
    out.append(read(p))
    for d in disks:
        d.close()
    return out


# -- per target ---------------------------------------------------------------------------------
def seeds_for(tmp: str, corpus: str) -> dict[str, Callable[[], list[bytes]]]:
    hostile_made: dict[str, tuple[list[bytes], list[bytes], list[bytes]]] = {}

    def hostile_seeds(i: int) -> list[bytes]:
        if not hostile_made:
            hostile_made["x"] = hostile_files(tmp)
        return hostile_made["x"][i]

    def header() -> list[bytes]:
        heads = [read(p)[:4096] for p in corpus_images(corpus)]
        return (heads + [img[:4096] for img in small_images(os.path.join(tmp, "h"))]
                + [img[:4096] for img in hostile_seeds(0)])

    def image() -> list[bytes]:
        prefixes = [read(p)[: common.MAX_LEN - 1] for p in corpus_images(corpus)]
        return small_images(os.path.join(tmp, "i")) + prefixes + hostile_seeds(0)

    def descriptor() -> list[bytes]:
        return list(corpus_descriptors(corpus).values()) + hostile_seeds(1) + [
            common.unpack(c)[0] for c in deep_and_wide(os.path.join(tmp, "d"))]

    made: dict[str, list[bytes]] = {}

    def folder() -> list[bytes]:
        if "f" not in made:
            made["f"] = (folders(os.path.join(tmp, "f"), corpus) + hostile_seeds(2)
                         + deep_and_wide(os.path.join(tmp, "w")))
        return made["f"]

    sig_delta: dict[str, tuple[list[bytes], list[bytes]]] = {}

    def rdiff(i: int) -> list[bytes]:
        if not sig_delta:
            os.makedirs(os.path.join(tmp, "r"), exist_ok=True)
            sig_delta["x"] = rdiff_seeds(os.path.join(tmp, "r"))
        return sig_delta["x"][i]

    return {"header": header, "image": image, "descriptor": descriptor, "check": folder,
            "read": folder, "rdiff_sig": lambda: rdiff(0), "rdiff_delta": lambda: rdiff(1),
            "fs": lambda: fs_heads(os.path.join(tmp, "s")),
            "files": lambda: files_images(os.path.join(tmp, "t")),
            "overlay": lambda: overlay_deltas(os.path.join(tmp, "o"))}


TARGETS = ["header", "image", "descriptor", "check", "read", "rdiff_sig", "rdiff_delta", "fs",
           "files", "overlay"]


def generate(outdir: str, targets: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="ploopfs-seeds-") as tmp:
        for sub in ("h", "i", "f", "d", "w", "s"):
            os.makedirs(os.path.join(tmp, sub))
        corpus = unpack_corpus(tmp)
        makers = seeds_for(tmp, corpus)
        for t in targets:
            d = os.path.join(outdir, t)
            os.makedirs(d, exist_ok=True)
            for i, data in enumerate(makers[t]()):
                if len(data) < common.MAX_LEN:
                    common.write(os.path.join(d, f"seed-{i:03d}"), data)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    bad = [t for t in sys.argv[2:] if t not in TARGETS]
    if bad:
        sys.exit(f"unknown target(s) {bad}; known: {TARGETS}")
    generate(sys.argv[1], sys.argv[2:] or TARGETS)
