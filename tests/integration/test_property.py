"""Property tests: random copy-on-write chains built with ploopfs's ImageWriter read back exactly,
and diffs between any two of their snapshots report exactly the clusters that differ.

A chain has 1-5 levels, one cluster size (512 B .. 64 KiB), v1 or v2, optionally a raw base,
and lower deltas that may be smaller than the ones above them (format.md §1.4). Each level is
built as ploop builds a delta: every cluster a write touches is copied up whole from the level
below (§4.1 "Writes", §11 trap 24) into a new cluster of the level's image. A plain bytearray per
snapshot is the model; ploopfs reads of random ranges of every snapshot must equal it, and for
some examples so must `qemu-img convert` of the snapshot's json: chain.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conftest import qemu_json_chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

CLUSTERS = [512, 4096, 32768, 65536]


@dataclass(frozen=True)
class WriteOp:
    offset: int
    length: int
    fill: int  # 0..255: that byte everywhere; -1: seeded random bytes
    seed: int

    def data(self) -> bytes:
        if self.fill >= 0:
            return bytes([self.fill]) * self.length
        return random.Random(self.seed).randbytes(self.length)


@dataclass
class ChainSpec:
    cluster: int
    version: int
    raw_base: bool
    raw_cut: int  # bytes missing at the end of a raw base file (it may be short, format.md §4.1 rule 3)
    sizes: list[int]  # clusters per level, base first, non-decreasing
    writes: list[list[WriteOp]]
    read_seed: int
    with_qemu: bool


@st.composite
def write_ops(draw: st.DrawFn, size: int, cluster: int) -> list[WriteOp]:
    ops = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):  # anywhere
            off = draw(st.integers(0, size - 1))
        else:  # just before a cluster boundary, so that the write straddles it
            b = draw(st.integers(0, size // cluster)) * cluster
            off = max(0, min(size - 1, b - draw(st.integers(1, 700))))
        length = draw(st.integers(1, min(size - off, 3 * cluster + 17)))
        fill = draw(st.sampled_from([-1, -1, 0, 0x5A, 0xFF]))
        ops.append(WriteOp(off, length, fill, draw(st.integers(0, 2**32))))
    return ops


@st.composite
def chain_specs(draw: st.DrawFn) -> ChainSpec:
    cluster = draw(st.sampled_from(CLUSTERS))
    levels = draw(st.integers(1, 5))
    raw_base = draw(st.booleans())
    n0 = draw(st.integers(1, 40))
    sizes = [n0]
    for _ in range(levels - 1):
        # A raw base has no size of its own in the chain; keep raw-based chains one size.
        grow = 0 if raw_base else draw(st.sampled_from([0, 0, 1, 3, 7]))
        sizes.append(sizes[-1] + grow)
    raw_cut = draw(st.sampled_from([0, 0, 1, 511, 513, cluster + 100])) if raw_base else 0
    raw_cut = min(raw_cut, n0 * cluster - 1)
    writes = [draw(write_ops(n * cluster, cluster)) for n in sizes]
    return ChainSpec(cluster, draw(st.sampled_from([1, 2])), raw_base, raw_cut, sizes, writes,
                     draw(st.integers(0, 2**32)), draw(st.integers(0, 3)) == 0)


@dataclass
class BuiltChain:
    folder: Path
    files: list[Path]
    guids: list[str]
    models: list[bytes]  # the virtual disk of each snapshot
    allocated: list[set[int]] = field(default_factory=list)  # vclusters held by each level


def build(spec: ChainSpec, folder: Path) -> BuiltChain:
    c = spec.cluster
    files: list[Path] = []
    models: list[bytes] = []
    allocated: list[set[int]] = []
    prev = b""
    for level, (n, ops) in enumerate(zip(spec.sizes, spec.writes, strict=True)):
        model = bytearray(n * c)
        model[:len(prev)] = prev[:n * c]
        touched: set[int] = set()
        for op in ops:
            model[op.offset:op.offset + op.length] = op.data()
            touched.update(range(op.offset // c, (op.offset + op.length - 1) // c + 1))
        if level == 0 and spec.raw_base:
            path = folder / "root.hdd"
            keep = len(model) - spec.raw_cut
            path.write_bytes(model[:keep])
            model[keep:] = bytes(len(model) - keep)
            touched = set()
        elif level == 0:
            path = folder / "root.hds"
            with ImageWriter.create(path, n * c, c, spec.version) as w:
                for op in ops:  # partial-cluster writes through the writer itself
                    w.write(op.offset, op.data())
        else:
            path = folder / f"root.hds.{level}"
            with ImageWriter.create(path, n * c, c, spec.version) as w:
                for v in sorted(touched):  # copy-up of whole clusters, as ploop does
                    w.write_cluster(v, model[v * c:(v + 1) * c])
        files.append(path)
        models.append(bytes(model))
        allocated.append(touched)
        prev = bytes(model)
    d = chain_descriptor([f.name for f in files], spec.sizes[-1] * c, c, raw_base=spec.raw_base)
    write_descriptor(folder / "DiskDescriptor.xml", d)
    return BuiltChain(folder, files, [im.guid for im in d.images], models, allocated)


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def check_reads(chain: BuiltChain, spec: ChainSpec) -> None:
    rng = random.Random(spec.read_seed)
    c = spec.cluster
    with open_source(chain.folder / "DiskDescriptor.xml") as disk:
        for level, (guid, model) in enumerate(zip(chain.guids, chain.models, strict=True)):
            vol = disk.volume(guid)
            assert vol.size == len(model) == spec.sizes[level] * c
            assert bytes(vol.read(0, vol.size)) == model, f"full read of level {level}"
            for _ in range(25):
                off = rng.randrange(vol.size + c)
                length = rng.randrange(1, 4 * c)
                want = model[off:off + length]
                assert bytes(vol.read(off, length)) == want, (level, off, length)
                buf = bytearray(b"\xa5" * length)  # stale bytes must be overwritten with zeros
                n = vol.zero_fill_readinto(memoryview(buf), off)
                assert n == len(want) and bytes(buf[:n]) == want, (level, off, length)
            # The merged map holds exactly the clusters some ploop level at or below allocated.
            union = set().union(*chain.allocated[:level + 1])
            assert vol.map.mapped_clusters == len({v for v in union if v < spec.sizes[level]})


def check_qemu(chain: BuiltChain, spec: ChainSpec, tmp: Path) -> None:
    out = tmp / "qemu.raw"
    for level, model in enumerate(chain.models):
        if level == 0 and spec.raw_base:
            continue  # a lone raw file: nothing for qemu to interpret
        if out.exists():
            out.unlink()
        subprocess.run(["qemu-img", "convert", "-O", "raw",
                        qemu_json_chain(chain.files[:level + 1], spec.raw_base), str(out)],
                       check=True, capture_output=True, timeout=120)
        assert out.read_bytes() == model, f"qemu read of level {level}"
    out.unlink(missing_ok=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=chain_specs())
def test_random_cow_chains_read_back(spec: ChainSpec) -> None:
    with tempfile.TemporaryDirectory(prefix="ploopfs-prop-") as tmp:
        folder = Path(tmp) / "disk"
        folder.mkdir()
        chain = build(spec, folder)
        before = hashes(folder)
        check_reads(chain, spec)
        if spec.with_qemu:
            check_qemu(chain, spec, Path(tmp))
        assert hashes(folder) == before, "source files changed"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=chain_specs().filter(lambda s: len(s.sizes) >= 2))
def test_random_cow_chains_match_qemu(spec: ChainSpec) -> None:
    """Always cross-checked with qemu (the first property only does it for a subset)."""
    with tempfile.TemporaryDirectory(prefix="ploopfs-prop-") as tmp:
        folder = Path(tmp) / "disk"
        folder.mkdir()
        chain = build(spec, folder)
        before = hashes(folder)
        check_qemu(chain, spec, Path(tmp))
        with open_source(folder) as disk:
            vol = disk.volume()
            assert bytes(vol.read(0, vol.size)) == chain.models[-1]
        assert hashes(folder) == before, "source files changed"


@dataclass(frozen=True)
class DiffCase:
    spec: ChainSpec
    old: int  # snapshot levels compared (any two, either way round: growth and shrink)
    new: int
    hash: str | None
    mmap: bool
    chunk_clusters: int  # DiffOptions.chunk in clusters: windows of 1, 2, 3 … clusters
    map_small: bool  # map parts down to one cluster (the scan maps only parts >= 1 MiB, more
    # than most of these disks): slices of the image files' mappings at any offset


@st.composite
def diff_cases(draw: st.DrawFn) -> DiffCase:
    spec = draw(chain_specs().filter(lambda s: len(s.sizes) >= 2))
    levels = len(spec.sizes)
    old = draw(st.integers(0, levels - 1))
    new = draw(st.integers(0, levels - 1).filter(lambda k: k != old))
    return DiffCase(spec, old, new, draw(st.sampled_from([None, None, "sha256", "blake3"])),
                    draw(st.booleans()), draw(st.sampled_from([1, 2, 3, 5, 64, 4096])),
                    draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=diff_cases())
def test_random_chain_diffs_match_the_model(case: DiffCase) -> None:
    """`scan` between two snapshots of a random chain (the block-map fast path: only clusters
    served from different places are read; windows of one to many clusters, several short runs
    sharing one, read or mapped) reports exactly the clusters whose bytes differ in the model,
    hands the sink NEW's bytes of each, and hashes both whole disks right."""
    from ploopfs.services.diff import DiffOptions, RangesSink, scan
    from ploopfs.services.diff import engine as diff_engine

    spec = case.spec
    c = spec.cluster
    with tempfile.TemporaryDirectory(prefix="ploopfs-prop-") as tmp:
        folder = Path(tmp) / "disk"
        folder.mkdir()
        chain = build(spec, folder)
        before = hashes(folder)
        old_m, new_m = chain.models[case.old], chain.models[case.new]
        truth = [k for k in range(-(-len(new_m) // c))
                 if (k + 1) * c > len(old_m) or old_m[k * c:(k + 1) * c] != new_m[k * c:(k + 1) * c]]
        with open_source(folder) as disk:
            old = disk.volume(chain.guids[case.old])
            new = disk.volume(chain.guids[case.new])
            sink = RangesSink(c, "sha256")
            mmap_min = diff_engine.MMAP_MIN
            diff_engine.MMAP_MIN = c if case.map_small else mmap_min
            try:
                stats = scan(old, new, sink, DiffOptions(hash=case.hash, mmap=case.mmap,
                                                          chunk=case.chunk_clusters * c))
            finally:
                diff_engine.MMAP_MIN = mmap_min
            sink.flush()
        got = [k for r in sink.ranges for k in range(r["cluster"], r["cluster"] + r["clusters"])]
        assert got == truth
        for r in sink.ranges:
            piece = new_m[r["offset"]: r["offset"] + r["length"]]
            assert r["length"] == len(piece) and r["zero"] == (piece.count(0) == len(piece))
            assert r["sha256"] == hashlib.sha256(piece).hexdigest(), r
        assert stats.changed_clusters == len(truth) <= stats.candidate_clusters
        if case.hash == "sha256":
            assert stats.old_hash == hashlib.sha256(old_m).hexdigest()
            assert stats.new_hash == hashlib.sha256(new_m).hexdigest()
        elif case.hash == "blake3":  # the reference implementation's CLI, not ours
            for m, h in ((old_m, stats.old_hash), (new_m, stats.new_hash)):
                r = subprocess.run(["b3sum", "--no-names"], input=m, capture_output=True,
                                   check=True, timeout=60)
                assert r.stdout.split()[0].decode() == h
        assert hashes(folder) == before, "source files changed"
