"""ploopfs against qemu's `parallels` driver (qemu 7.2) and dissect.hypervisor, byte for byte.

Images and chains are produced by qemu-img/qemu-io (random, seeded, partly unaligned writes),
then the whole virtual disk read by ploopfs must equal `qemu-img convert -O raw` of the same
image or `json:` chain, dissect's reader, and an in-test model of the writes. The other way
round, images made by ploopfs's ImageWriter must pass `qemu-img check` and read back identically
through qemu.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_json, qemu_json_chain, qemu_to_raw, run_cli
from readers import dissect_read_disk, dissect_read_image

from ploopfs.format.header import SIG_V1, SIG_V2
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

KiB, MiB = 1 << 10, 1 << 20
Guard = Callable[..., None]


# -- helpers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Write:
    offset: int
    length: int
    pattern: int | None  # a byte value, or None: the first `length` bytes of the source file


def random_writes(rng: random.Random, size: int, cluster: int, n: int,
                  lo: int = 0) -> list[Write]:
    """Writes inside [lo, size): tiny unaligned ones, ones straddling cluster boundaries,
    whole aligned clusters and multi-cluster runs; patterns and random data mixed."""
    out = []
    first, last = -(-lo // cluster), size // cluster  # whole clusters inside [lo, size)
    for _ in range(n):
        kind = rng.randrange(4) if last - first >= 2 else 0
        if kind == 0:
            length = rng.randrange(1, min(5000, size - lo) + 1)
            off = rng.randrange(lo, size - length + 1)
        elif kind == 1:
            b = rng.randrange(first + 1, last) * cluster
            off = b - rng.randrange(1, min(3000, b - lo) + 1)
            length = min(size - off, rng.randrange(2, 6000))
        elif kind == 2:
            off, length = rng.randrange(first, last) * cluster, cluster
        else:
            length = min(rng.randrange(cluster, 3 * cluster), size - lo)
            off = rng.randrange(lo, size - length + 1)
        pattern = None if rng.random() < 0.3 else rng.randrange(1, 256)
        out.append(Write(off, length, pattern))
    return out


def apply_writes(model: bytearray, writes: list[Write], src: bytes) -> None:
    for w in writes:
        data = bytes([w.pattern]) * w.length if w.pattern is not None else src[:w.length]
        model[w.offset:w.offset + w.length] = data


def qemu_io(target: str | os.PathLike[str], writes: list[Write], src: Path,
            fmt: str | None = "parallels") -> None:
    """One qemu-io run doing all `writes` on an image (with `fmt`) or a json: chain."""
    cmds: list[str] = []
    for w in writes:
        fill = f"-P {w.pattern:#x}" if w.pattern is not None else f"-s {src}"
        cmds += ["-c", f"write -q {fill} {w.offset} {w.length}"]
    target = os.fspath(target)
    args = ["qemu-io", *cmds, target]
    if fmt and not target.startswith("json:"):
        args[1:1] = ["-f", fmt]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and "error" not in r.stdout.lower() + r.stderr.lower(), (
        f"qemu-io failed: {r.stdout}{r.stderr}")


def qemu_create(path: Path, size: int, cluster: int | None = None, fmt: str = "parallels") -> None:
    args = ["qemu-img", "create", "-q", "-f", fmt]
    if cluster:
        args += ["-o", f"cluster_size={cluster}"]
    subprocess.run([*args, str(path), str(size)], check=True, capture_output=True, timeout=60)


def qemu_check(image: Path) -> None:
    r = subprocess.run(["qemu-img", "check", "-f", "parallels", str(image)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0 and "No errors were found" in r.stdout, (
        f"qemu-img check {image}: {r.stdout}{r.stderr}")


def qemu_read(src: str | Path, tmp: Path, fmt: str = "parallels") -> bytes:
    out = tmp / "qemu-read.raw"
    if out.exists():
        out.unlink()
    qemu_to_raw(str(src), out, fmt)
    data = out.read_bytes()
    out.unlink()
    return data


def ploopfs_read(source: Path, snapshot: str | None = None) -> bytes:
    with open_source(source) as disk:
        vol = disk.volume(snapshot)
        return bytes(vol.read(0, vol.size))


def cluster_of(image: Path) -> int:
    with open(image, "rb") as f:
        return struct.unpack_from("<I", f.read(64), 28)[0] * 512


def to_v1(path: Path) -> None:
    """Turn a qemu v2 image into v1 the way format.md §12.2 did: signature, high size word
    zeroed, every BAT entry multiplied by the cluster size in sectors (clusters -> sectors)."""
    with open(path, "r+b") as f:
        hdr = bytearray(f.read(64))
        assert hdr[:16] == SIG_V2
        csec, nent = struct.unpack_from("<II", hdr, 28)
        (size_sectors,) = struct.unpack_from("<Q", hdr, 36)
        assert size_sectors < 1 << 32
        hdr[:16] = SIG_V1
        struct.pack_into("<I", hdr, 40, 0)
        f.seek(64)
        bat = np.frombuffer(f.read(4 * nent), "<u4").astype(np.uint64) * csec
        assert int(bat.max(initial=0)) < 1 << 32
        f.seek(0)
        f.write(hdr)
        f.write(bat.astype("<u4").tobytes())


def random_source(tmp: Path, rng: random.Random, n: int = 4 * MiB) -> tuple[Path, bytes]:
    data = rng.randbytes(n)
    p = tmp / "random.src"
    p.write_bytes(data)
    return p, data


def file_hashes(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def assert_same(got: bytes, want: bytes, what: str) -> None:
    """Equality with a useful message: the first differing offset instead of two huge blobs."""
    __tracebackhide__ = True
    if got == want:
        return
    n = min(len(got), len(want))
    a, b = np.frombuffer(got[:n], np.uint8), np.frombuffer(want[:n], np.uint8)
    diff = np.flatnonzero(a != b)
    first = int(diff[0]) if diff.size else n
    pytest.fail(f"{what}: lengths {len(got)} vs {len(want)}, first difference at byte {first}")


# -- single images made by qemu -----------------------------------------------------------------
@pytest.mark.parametrize("cluster", [4 * KiB, 64 * KiB, 256 * KiB, 1 * MiB])
def test_qemu_single_image(tmp_path: Path, guard_sources: Guard, cluster: int) -> None:
    rng = random.Random(f"single-{cluster}")
    size = max(24, 4 * MiB // cluster) * cluster
    src, src_data = random_source(tmp_path, rng)
    disk = tmp_path / "disk"
    disk.mkdir()
    img = disk / "root.hds"
    qemu_create(img, size, cluster)
    writes = random_writes(rng, size, cluster, 40)
    qemu_io(img, writes, src)
    model = bytearray(size)
    apply_writes(model, writes, src_data)
    write_descriptor(disk / "DiskDescriptor.xml", chain_descriptor(["root.hds"], size, cluster))
    guard_sources(disk)

    want = qemu_read(img, tmp_path)
    assert_same(want, bytes(model), "qemu vs model (test harness)")
    assert_same(ploopfs_read(img), want, "ploopfs (image file) vs qemu")
    assert_same(ploopfs_read(disk), want, "ploopfs (descriptor) vs qemu")
    assert_same(dissect_read_image(img), want, "dissect vs qemu")
    info = cli_json("info", "--json", img)
    assert info["disk"]["size_bytes"] == size
    assert info["disk"]["cluster_size"] == cluster
    assert info["images"][0]["allocated_clusters"] == info["disk"]["mapped_clusters"] > 0


@pytest.mark.parametrize("cluster", [512, 64 * KiB])
def test_qemu_single_image_v1(tmp_path: Path, guard_sources: Guard, cluster: int) -> None:
    rng = random.Random(f"single-v1-{cluster}")
    size = 2 * MiB if cluster == 512 else 8 * MiB
    src, src_data = random_source(tmp_path, rng)
    img = tmp_path / "root.hdd"
    qemu_create(img, size, cluster)
    writes = random_writes(rng, size, cluster, 30)
    qemu_io(img, writes, src)
    model = bytearray(size)
    apply_writes(model, writes, src_data)
    to_v1(img)
    guard_sources(img)
    assert img.read_bytes()[:16] == SIG_V1
    qemu_check(img)
    want = qemu_read(img, tmp_path)
    assert_same(want, bytes(model), "qemu (v1) vs model")
    assert_same(ploopfs_read(img), want, "ploopfs (v1) vs qemu")
    assert_same(dissect_read_image(img), want, "dissect (v1) vs qemu")
    assert cli_json("info", "--json", img)["disk"]["version"] == 1


# -- chains made by qemu ------------------------------------------------------------------------
def build_qemu_chain(tmp: Path, rng: random.Random, sizes: list[int], cluster: int,
                     raw_base: bool = False,
                     writes_per_level: int = 25) -> tuple[Path, list[Path], list[bytearray]]:
    """A base + deltas in `tmp/disk`, each level written through qemu-io on the json: chain
    ending at it. Returns the folder, files (base first) and the model of every level."""
    disk = tmp / "disk"
    disk.mkdir()
    src, src_data = random_source(tmp, rng)
    files: list[Path] = []
    models: list[bytearray] = []
    for level, size in enumerate(sizes):
        if level == 0:
            f = disk / ("root.hdd" if raw_base else "root.hds")
            qemu_create(f, size, None if raw_base else cluster, "raw" if raw_base else "parallels")
        else:
            f = disk / f"root.hds.{level}"
            qemu_create(f, size, cluster)
        files.append(f)
        model = bytearray(size)
        if models:
            prev = models[-1][:size]
            model[:len(prev)] = prev
        writes = random_writes(rng, size, cluster, writes_per_level)
        if level and size > sizes[level - 1]:  # make sure the grown part is written too
            writes += random_writes(rng, size, cluster, 5, lo=sizes[level - 1])
        if level == 0:
            qemu_io(f, writes, src, "raw" if raw_base else "parallels")
        else:
            qemu_io(qemu_json_chain(files, raw_base), writes, src)
        apply_writes(model, writes, src_data)
        models.append(model)
    return disk, files, models


def descriptor_for(disk: Path, files: list[Path], size: int, cluster: int,
                   raw_base: bool = False) -> list[str]:
    d = chain_descriptor([f.name for f in files], size, cluster, raw_base=raw_base)
    write_descriptor(disk / "DiskDescriptor.xml", d)
    return [im.guid for im in d.images]


def check_chain(tmp: Path, disk: Path, files: list[Path], guids: list[str],
                models: list[bytearray], raw_base: bool = False, dissect: bool = True) -> None:
    """Every snapshot: ploopfs == qemu-img convert of its json: chain == model; dissect too."""
    for level, guid in enumerate(guids):
        want = qemu_read(qemu_json_chain(files[:level + 1], raw_base), tmp)
        assert_same(want, bytes(models[level]), f"qemu vs model, level {level} (test harness)")
        assert_same(ploopfs_read(disk, guid), want, f"ploopfs vs qemu, level {level}")
        if dissect:
            got = dissect_read_disk(disk, guid, cluster_of(files[level]))
            assert_same(got, want, f"dissect vs qemu, level {level}")
    top = ploopfs_read(disk)
    assert_same(top, bytes(models[-1]), "ploopfs top (no --snapshot)")
    r = run_cli("export", disk, "-")
    assert r.returncode == 0, r.stderr.decode()
    assert_same(r.stdout, top, "ploopfs export - of the top")


@pytest.mark.parametrize(("cluster", "levels"), [(64 * KiB, 4), (1 * MiB, 3), (4 * KiB, 3)])
def test_qemu_chain_v2(tmp_path: Path, guard_sources: Guard, cluster: int, levels: int) -> None:
    rng = random.Random(f"chain-{cluster}-{levels}")
    size = max(16, 2 * MiB // cluster) * cluster
    disk, files, models = build_qemu_chain(tmp_path, rng, [size] * levels, cluster)
    guids = descriptor_for(disk, files, size, cluster)
    guard_sources(disk)
    check_chain(tmp_path, disk, files, guids, models)
    info = cli_json("info", "--json", disk)
    assert info["disk"]["chain_depth"] == levels
    served = sum(im["clusters_served"] for im in info["images"])
    assert served == info["disk"]["mapped_clusters"]


def test_qemu_chain_v1(tmp_path: Path, guard_sources) -> None:
    """qemu writes a v2 chain; every image is converted to v1 (format.md §12.2); qemu and ploopfs must
    still agree, and both must match what the v2 chain held."""
    cluster = 64 * KiB
    rng = random.Random("chain-v1")
    size = 8 * MiB
    disk, files, models = build_qemu_chain(tmp_path, rng, [size] * 3, cluster)
    for f in files:
        to_v1(f)
        qemu_check(f)
    guids = descriptor_for(disk, files, size, cluster)
    guard_sources(disk)
    check_chain(tmp_path, disk, files, guids, models)
    assert cli_json("info", "--json", disk)["disk"]["version"] == 1


def test_qemu_chain_raw_base(tmp_path: Path, guard_sources) -> None:
    """A raw base written by qemu (`-f raw`) under two parallels deltas (json backing driver
    raw). ploop labels every image Plain (format.md §3); ploopfs sniffs each file."""
    cluster = 1 * MiB
    rng = random.Random("chain-raw-base")
    size = 12 * MiB
    disk, files, models = build_qemu_chain(tmp_path, rng, [size] * 3, cluster, raw_base=True)
    guids = descriptor_for(disk, files, size, cluster, raw_base=True)
    assert "Plain" in (disk / "DiskDescriptor.xml").read_text()
    guard_sources(disk)
    # dissect maps <Type> Plain to raw for every level, so it cannot read these chains.
    check_chain(tmp_path, disk, files, guids, models, raw_base=True, dissect=False)
    info = cli_json("info", "--json", disk)
    assert info["disk"]["raw_base"] is True
    assert [im["kind"] for im in info["images"]] == ["raw", "ploop-v2", "ploop-v2"]


def test_qemu_chain_smaller_lower_deltas(tmp_path: Path, guard_sources) -> None:
    """Growing a disk grows only the top (format.md §1.4): lower deltas are smaller. The part of the
    disk past a lower delta's end reads through to zeros (or to nothing below it)."""
    cluster = 64 * KiB
    rng = random.Random("chain-grow")
    sizes = [3 * MiB, 5 * MiB, 5 * MiB, 9 * MiB]
    disk, files, models = build_qemu_chain(tmp_path, rng, sizes, cluster)
    guids = descriptor_for(disk, files, sizes[-1], cluster)
    guard_sources(disk)
    # dissect returns short reads from a smaller parent (format.md §11 trap 7), so it is left out here.
    check_chain(tmp_path, disk, files, guids, models, dissect=False)
    for level, guid in enumerate(guids):
        info = cli_json("info", "--json", disk, "--snapshot", guid)
        assert info["disk"]["size_bytes"] == sizes[level]
        assert not any("larger" in w for w in info["warnings"])


def test_qemu_raw_base_shorter_than_disk(tmp_path: Path, guard_sources) -> None:
    """A raw base whose file ends before the disk does (and not on a sector boundary): past its
    end the base reads as zeros (format.md §4.1 rule 3), as qemu's raw driver does."""
    cluster = 64 * KiB
    rng = random.Random("raw-short")
    disk = tmp_path / "disk"
    disk.mkdir()
    size = 4 * MiB
    base = disk / "root.hdd"
    base_data = rng.randbytes(size // 2 + 777)
    base.write_bytes(base_data)
    top = disk / "root.hds.1"
    qemu_create(top, size, cluster)
    src, src_data = random_source(tmp_path, rng)
    writes = random_writes(rng, size, cluster, 20)
    qemu_io(qemu_json_chain([base, top], raw_base=True), writes, src)
    model = bytearray(size)
    model[:len(base_data)] = base_data
    apply_writes(model, writes, src_data)
    guids = descriptor_for(disk, [base, top], size, cluster, raw_base=True)
    guard_sources(disk)
    want = qemu_read(qemu_json_chain([base, top], raw_base=True), tmp_path)
    assert_same(want, bytes(model), "qemu vs model")
    assert_same(ploopfs_read(disk), want, "ploopfs vs qemu")
    base_view = ploopfs_read(disk, guids[0])
    assert_same(base_view[:len(base_data)], base_data, "raw base snapshot")
    assert base_view[len(base_data):] == bytes(len(base_view) - len(base_data))


def test_qemu_size_not_whole_clusters(tmp_path: Path, guard_sources) -> None:
    """How ploopfs treats a qemu image whose size is not a whole number of clusters.

    qemu 7.2 `qemu-img create -f parallels IMG 10000001` (1 MiB clusters) writes
    m_SizeInSectors = 19532 (10000384 bytes) but m_Size = 10 BAT entries. ploop itself never
    makes such images (format.md §1.4: it rounds the size up to whole clusters); where ploop
    reads a size from an image alone it counts the whole clusters of m_SizeInSectors,
    floor(19532 / 2048) = 9 (lib/delta_read.c open_delta, read_size_from_image). ploopfs follows
    ploop: the disk is 9 MiB, exactly the first 9 MiB of qemu's disk.
    """
    cluster = 1 * MiB
    rng = random.Random("unaligned-size")
    img = tmp_path / "odd.hds"
    qemu_create(img, 10_000_001, cluster)
    raw = img.read_bytes()
    csec, nent = struct.unpack_from("<II", raw, 28)
    (size_sectors,) = struct.unpack_from("<Q", raw, 36)
    assert (csec, nent, size_sectors) == (2048, 10, 19532)
    qemu_size = size_sectors * 512
    src, _ = random_source(tmp_path, rng)
    writes = [Write(qemu_size - 3000, 3000, 0x5A), Write(0, 4096, None),
              *random_writes(rng, qemu_size, cluster, 10)]
    qemu_io(img, writes, src)
    guard_sources(img)

    want = qemu_read(img, tmp_path)
    assert len(want) == qemu_size
    got = ploopfs_read(img)
    assert len(got) == size_sectors // csec * cluster == 9 * MiB
    assert_same(got, want[:9 * MiB], "the whole clusters of qemu's disk")
    info = cli_json("info", "--json", img)
    assert info["disk"]["size_bytes"] == 9 * MiB
    assert info["images"][0]["header"]["m_SizeInSectors"] == 19532


# -- ploopfs's writer read by qemu --------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cluster", [512, 4 * KiB, 64 * KiB, 1 * MiB])
def test_writer_images_read_by_qemu(tmp_path: Path, version: int, cluster: int) -> None:
    rng = random.Random(f"writer-{version}-{cluster}")
    nclusters = {512: 3000, 4 * KiB: 700, 64 * KiB: 100, 1 * MiB: 20}[cluster]
    size = nclusters * cluster
    model = bytearray(size)
    img = tmp_path / "w.hds"
    with ImageWriter.create(img, size, cluster, version) as w:
        for _ in range(60):
            if rng.random() < 0.3:  # a whole cluster
                v = rng.randrange(nclusters)
                data = rng.randbytes(cluster)
                w.write_cluster(v, data)
                model[v * cluster:(v + 1) * cluster] = data
            else:  # anywhere, any length
                length = rng.randrange(1, 3 * cluster + 2)
                off = rng.randrange(size - length)
                data = rng.randbytes(length)
                w.write(off, data)
                model[off:off + length] = data
        w.write(size - 1, b"\xee")  # the very last byte
        model[-1] = 0xEE
    assert img.stat().st_size % cluster == 0
    assert img.read_bytes()[:16] == (SIG_V1 if version == 1 else SIG_V2)
    qemu_check(img)
    want = bytes(model)
    assert_same(qemu_read(img, tmp_path), want, "qemu read of ImageWriter output")
    assert_same(ploopfs_read(img), want, "ploopfs read of ImageWriter output")
    assert_same(dissect_read_image(img), want, "dissect read of ImageWriter output")


def test_write_descriptor_never_clobbers(tmp_path: Path) -> None:
    """write_descriptor keeps ploop's own half-written `DiskDescriptor.xml.tmp` (a fresh unique
    temporary name instead), refuses an existing file unless told to overwrite, and leaves no
    temporary file behind; what it writes opens as a disk."""
    from ploopfs.errors import OutputError

    size, cluster = 4 << 20, 1 << 20
    with ImageWriter.create(str(tmp_path / "root.hds"), size, cluster) as w:
        w.write_cluster(0, b"\x5a" * cluster)
    target = tmp_path / "DiskDescriptor.xml"
    ploop_tmp = tmp_path / "DiskDescriptor.xml.tmp"
    ploop_tmp.write_bytes(b"<Parallels_disk_image> half written by ploop")
    d = chain_descriptor(["root.hds"], size, cluster)
    write_descriptor(target, d)
    assert ploop_tmp.read_bytes() == b"<Parallels_disk_image> half written by ploop"
    first = target.read_bytes()
    with pytest.raises(OutputError):
        write_descriptor(target, chain_descriptor(["other.hds"], size, cluster))
    assert target.read_bytes() == first
    write_descriptor(target, d, overwrite=True)
    assert target.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "DiskDescriptor.xml", "DiskDescriptor.xml.tmp", "root.hds"]
    with open_source(str(target)) as disk:
        assert disk.volume(None).read(0, 4) == b"\x5a" * 4
