"""Large sparse disks: the format limits, read correctly with small memory in seconds.

* v2, 64 TiB, 1 MiB clusters: m_Size = 2^26 entries, a 256 MiB BAT over 257 clusters (format.md §2.1:
  262,128 slots in the first BAT cluster, 262,144 in each further one).
* v1, 1 MiB clusters, 2 TiB - 1 MiB: the largest v1 disk of whole 1 MiB clusters below the u32
  m_SizeInSectors limit (format.md §2.6).
* v1, 512-byte clusters, exactly 2^32-1 sectors: the u32 limit itself, with a 16 GiB BAT
  (qemu refuses it: "Catalog too large"; ploopfs only).

Images are written sparse with ImageWriter, holding a handful of clusters at the start, middle,
end and on both sides of BAT-cluster boundaries. ploopfs must find them (the BAT scan skips
holes with SEEK_DATA) and read mapped and unmapped ranges exactly; qemu-io checks small ranges
where qemu can open the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import cli_json, run_cli

from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter

KiB, MiB, TiB = 1 << 10, 1 << 20, 1 << 40
RSS_LIMIT_KIB = 200 * 1024


# -- a sparse model of the disk -----------------------------------------------------------------
@dataclass
class SparseModel:
    size: int
    cluster: int
    clusters: dict[int, bytearray] = field(default_factory=dict)

    def write(self, offset: int, data: bytes) -> None:
        c = self.cluster
        pos = 0
        while pos < len(data):
            v, intra = divmod(offset + pos, c)
            n = min(c - intra, len(data) - pos)
            self.clusters.setdefault(v, bytearray(c))[intra:intra + n] = data[pos:pos + n]
            pos += n

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        out = bytearray(max(0, end - offset))
        c = self.cluster
        for v in range(offset // c, -(-end // c)):
            buf = self.clusters.get(v)
            if buf is None:
                continue
            lo, hi = max(offset, v * c), min(end, (v + 1) * c)
            out[lo - offset:hi - offset] = buf[lo - v * c:hi - v * c]
        return bytes(out)


@dataclass
class BigDisk:
    path: Path
    model: SparseModel
    version: int
    bat_boundaries: list[int]  # first virtual cluster whose slot is in each BAT cluster ≥ 1
    pattern_clusters: dict[int, int]  # vcluster -> fill byte (for qemu-io read -P)


def bat_boundaries(cluster: int, nclusters: int, count: int) -> list[int]:
    """First virtual clusters whose slots start BAT clusters 1, 2, … and the last one (format.md §2.1)."""
    per = cluster // 4
    first = per - 16  # the header takes 16 slots of BAT cluster 0
    starts = [first + k * per for k in range(count)]
    last = first + ((nclusters - 1 - first) // per) * per
    return sorted({s for s in [*starts, last] if 0 < s < nclusters})


def make_disk(path: Path, size: int, cluster: int, version: int, seed: str) -> BigDisk:
    rng = random.Random(seed)
    n = -(-size // cluster)
    bounds = bat_boundaries(cluster, n, 3)
    targets = {0, 1, n // 2, n // 2 + 1, n - 2, n - 1}
    for b in bounds:
        targets |= {b - 1, b}
    model = SparseModel(n * cluster, cluster)
    patterns: dict[int, int] = {}
    with ImageWriter.create(path, size, cluster, version) as w:
        for i, v in enumerate(sorted(targets)):
            if i % 2:  # random bytes, checked by content
                data = rng.randbytes(cluster)
            else:  # a fill byte, checked by qemu-io read -P as well
                patterns[v] = (v * 7 + i) % 254 + 1
                data = bytes([patterns[v]]) * cluster
            w.write_cluster(v, data)
            model.write(v * cluster, data)
        # Partial writes: into a new cluster far from the others and the very last byte.
        for off, data in [((n // 3) * cluster + 1234, b"partial write"), (n * cluster - 1, b"\xee")]:
            w.write(off, data)
            model.write(off, data)
            patterns.pop(off // cluster, None)
    return BigDisk(path, model, version, bounds, patterns)


def sparse_digest(path: Path) -> str:
    """SHA-256 of (size, data extents, their bytes), walking SEEK_DATA/SEEK_HOLE: identifies the
    content of a huge sparse file without reading its holes."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h.update(str(size).encode())
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            h.update(f"@{data_at}".encode())
            p = data_at
            while p < hole_at:
                chunk = os.pread(fd, min(8 * MiB, hole_at - p), p)
                h.update(chunk)
                p += len(chunk)
            pos = hole_at
    finally:
        os.close(fd)
    return h.hexdigest()


# -- fixtures -----------------------------------------------------------------------------------
SPECS = {
    "v2-64TiB-1M": (64 * TiB, 1 * MiB, 2),
    "v1-2TiB-1M": ((0xFFFFFFFF // 2048) * 2048 * 512, 1 * MiB, 1),
    "v1-u32max-512": (0xFFFFFFFF * 512, 512, 1),
}
QEMU_OK = ["v2-64TiB-1M", "v1-2TiB-1M"]  # qemu loads the whole BAT; 16 GiB is "Catalog too large"


@pytest.fixture(scope="module")
def big_disks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BigDisk]]:
    root = tmp_path_factory.mktemp("large")
    disks = {name: make_disk(root / f"{name}.hds", size, c, v, name)
             for name, (size, c, v) in SPECS.items()}
    digests = {name: sparse_digest(d.path) for name, d in disks.items()}
    yield disks
    for name, d in disks.items():
        assert sparse_digest(d.path) == digests[name], f"{d.path} changed"
        d.path.unlink()


def test_images_are_sparse(big_disks: dict[str, BigDisk]) -> None:
    for d in big_disks.values():
        st = d.path.stat()
        assert st.st_blocks * 512 < 64 * MiB, f"{d.path} is not sparse"


# -- info ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SPECS))
def test_info_json(big_disks: dict[str, BigDisk], name: str) -> None:
    d = big_disks[name]
    size, c, version = SPECS[name]
    n = -(-size // c)
    info = cli_json("info", "--json", d.path)
    disk = info["disk"]
    assert disk["size_bytes"] == n * c
    assert disk["size_sectors"] == n * c // 512
    assert disk["cluster_size"] == c
    assert disk["version"] == version
    assert disk["chain_depth"] == 1 and disk["raw_base"] is False and disk["dirty"] is False
    assert disk["mapped_clusters"] == len(d.model.clusters)
    im = info["images"][0]
    hdr = im["header"]
    assert hdr["signature"] == ("WithoutFreeSpace" if version == 1 else "WithouFreSpacExt")
    assert hdr["m_Sectors"] == c // 512
    assert hdr["m_Size"] == n
    assert hdr["m_SizeInSectors"] == n * c // 512
    assert im["allocated_clusters"] == len(d.model.clusters)
    assert im["bat_clusters"] == -(-(64 + 4 * n) // c)
    assert hdr["m_FirstBlockOffset"] == im["bat_clusters"] * c // 512
    assert info["warnings"] == []
    if name == "v1-u32max-512":
        assert hdr["m_SizeInSectors"] == 0xFFFFFFFF
    if name == "v2-64TiB-1M":
        assert im["bat_clusters"] == 257 and hdr["m_Size"] == 1 << 26


# -- reads --------------------------------------------------------------------------------------
def read_plan(d: BigDisk, rng: random.Random) -> list[tuple[int, int]]:
    """(offset, length): every written cluster (with unaligned edges), straddles of mapped and
    unmapped clusters, random unmapped reads and the end of the disk."""
    c, size = d.model.cluster, d.model.size
    plan = []
    for v in sorted(d.model.clusters):
        plan.append((v * c, c))
        plan.append((v * c + rng.randrange(c), rng.randrange(1, 2 * c)))
        plan.append((max(0, v * c - rng.randrange(1, c)), rng.randrange(c, 3 * c)))
    for _ in range(40):
        plan.append((rng.randrange(size), rng.randrange(1, 2 * c)))
    plan += [(size - 1, 1), (size - c, 3 * c), (size, 100)]
    return plan


@pytest.mark.parametrize("name", list(SPECS))
def test_reads_mapped_and_unmapped(big_disks: dict[str, BigDisk], name: str) -> None:
    d = big_disks[name]
    rng = random.Random(f"reads-{name}")
    with open_source(d.path) as disk:
        vol = disk.volume()
        assert vol.size == d.model.size
        assert vol.map.mapped_clusters == len(d.model.clusters)
        for off, length in read_plan(d, rng):
            assert bytes(vol.read(off, length)) == d.model.read(off, length), (off, length)
        # The clusters on both sides of each BAT-cluster boundary are separate and exact.
        for b in d.bat_boundaries:
            c = vol.cluster_size
            assert bytes(vol.read((b - 1) * c, 2 * c)) == d.model.read((b - 1) * c, 2 * c)


def _hexdumps(out: str) -> dict[int, bytes]:
    """qemu-io `read -v` output: `OFFSET:  xx xx …  ascii` lines, each dump followed by
    `read N/N bytes at offset OFF`. Returns {OFF: bytes}."""
    dumps: dict[int, bytes] = {}
    data = bytearray()
    for line in out.splitlines():
        head, sep, rest = line.partition(":  ")
        if sep and len(head) >= 8 and all(ch in "0123456789abcdef" for ch in head):
            data += bytes.fromhex(rest.split("  ", 1)[0])
        elif line.startswith("read ") and " bytes at offset " in line:
            dumps[int(line.rsplit(" ", 1)[1])] = bytes(data)
            data = bytearray()
    return dumps


@pytest.mark.parametrize("name", QEMU_OK)
def test_qemu_io_small_ranges(big_disks: dict[str, BigDisk], name: str) -> None:
    """qemu reads the same bytes: fill-byte clusters with `read -P`, random ones with
    `read -v` over small unaligned ranges, unmapped ranges as zeros. (`qemu-img compare` is no
    use here: 7.2 fails on these images with an I/O error or an assertion.)"""
    d = big_disks[name]
    c = d.model.cluster
    rng = random.Random(f"qemu-{name}")
    cmds: list[str] = []
    for v, p in d.pattern_clusters.items():
        cmds += ["-c", f"read -q -P {p:#x} {v * c} {c}"]
    dumps: list[tuple[int, int]] = []
    for v in sorted(set(d.model.clusters) - set(d.pattern_clusters)):
        off, length = v * c + rng.randrange(c - 600), rng.randrange(1, 600)
        dumps.append((off, length))
    n = d.model.size // c
    unmapped = [v for v in (rng.randrange(n) for _ in range(200)) if v not in d.model.clusters][:8]
    unmapped += [b + 1 for b in d.bat_boundaries if b + 1 not in d.model.clusters]
    for v in unmapped:
        cmds += ["-c", f"read -q -P 0 {v * c} {c}"]
    for off, length in dumps:
        cmds += ["-c", f"read -v {off} {length}"]
    r = subprocess.run(["qemu-io", "-r", "-f", "parallels", *cmds, str(d.path)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "fail" not in r.stdout.lower(), r.stdout + r.stderr
    got = _hexdumps(r.stdout)
    for off, length in dumps:
        assert got[off] == d.model.read(off, length), (off, length)


# -- exports ------------------------------------------------------------------------------------
def test_export_raw_2tib_is_sparse_and_exact(big_disks: dict[str, BigDisk], tmp_path: Path) -> None:
    d = big_disks["v1-2TiB-1M"]
    out = tmp_path / "v1.raw"
    try:
        r = run_cli("export", d.path, out, "--no-progress", "--json")
        assert r.returncode == 0, r.stderr.decode()
        report = json.loads(r.stdout)
        assert report["size_bytes"] == d.model.size == out.stat().st_size
        assert out.stat().st_blocks * 512 < 64 * MiB, "export is not sparse"
        with open(out, "rb") as f:
            for off, length in read_plan(d, random.Random("export-raw")):
                f.seek(off)
                assert f.read(length) == d.model.read(off, length), (off, length)
    finally:
        out.unlink(missing_ok=True)


def test_export_ploop_64tib(big_disks: dict[str, BigDisk], tmp_path: Path) -> None:
    """Re-exporting the 64 TiB disk as a ploop disk keeps every cluster, and qemu reads it."""
    d = big_disks["v2-64TiB-1M"]
    folder = tmp_path / "exported"
    r = run_cli("export", d.path, folder, "--format", "ploop", "--no-progress")
    assert r.returncode == 0, r.stderr.decode()
    image = folder / "root.hds"
    try:
        with open_source(folder) as disk:
            vol = disk.volume()
            assert vol.size == d.model.size
            for off, length in read_plan(d, random.Random("export-ploop")):
                assert bytes(vol.read(off, length)) == d.model.read(off, length), (off, length)
        c = d.model.cluster
        cmds = [a for v, p in d.pattern_clusters.items() for a in ("-c", f"read -q -P {p:#x} {v * c} {c}")]
        q = subprocess.run(["qemu-io", "-r", "-f", "parallels", *cmds, str(image)],
                           capture_output=True, text=True, timeout=120, check=False)
        assert q.returncode == 0 and "fail" not in q.stdout.lower(), q.stdout + q.stderr
    finally:
        image.unlink(missing_ok=True)


# -- memory -------------------------------------------------------------------------------------
RSS_SCRIPT = r"""
import contextlib, io, random, sys
from ploopfs.cli import main
from ploopfs.volume.source import open_source
src = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["info", "--json", src]) == 0
with open_source(src) as disk:
    vol = disk.volume()
    rng = random.Random(7)
    for _ in range(300):
        vol.read(rng.randrange(vol.size), 1 << 20)
# VmHWM is the peak RSS of this process image. (ru_maxrss is not: Linux carries the maximum
# across fork+exec, so a child of a big pytest process would report pytest's size.)
with open("/proc/self/status") as f:
    print(next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")))
"""


@pytest.mark.parametrize("name", list(SPECS))
def test_peak_rss_small(big_disks: dict[str, BigDisk], name: str) -> None:
    """`info` + random reads stay far below the size of the BAT (256 MiB, 16 GiB)."""
    d = big_disks[name]
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(d.path)], capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stdout.strip().splitlines()[-1])
    print(f"{name}: peak RSS {peak_kib} KiB")
    assert peak_kib < RSS_LIMIT_KIB, f"peak RSS {peak_kib} KiB for {name}"
