"""`ploopfs diff` (issue #4): changed cluster ranges, rdiff and ploop deltas, the block-map fast path.

Every expectation comes from an independent reader: the virtual disks are flattened by
`qemu-img convert` (a json: chain for snapshots), the truly differing clusters are found by a
plain Python loop over those raw files, rdiff deltas are applied by stock `rdiff patch`, and
ploop deltas are read back by qemu (stacked on OLD's chain) and checked by `qemu-img check`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    PLOOPFS,
    expected_hashes,
    qemu_json_chain,
    qemu_to_raw,
    run_cli,
    sha256_file,
)

from ploopfs.errors import ExitCode
from ploopfs.format.descriptor import ImageEntry, Shot
from ploopfs.format.header import TOP_GUID
from ploopfs.services.diff import (
    DiffOptions,
    RangesSink,
    candidate_runs,
    open_sides,
    scan,
)
from ploopfs.services.diff import engine as diff_engine
from ploopfs.services.diff.engine import _batches
from ploopfs.volume.source import OpenOptions, open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, new_guid, write_descriptor

KiB = 1 << 10
MiB = 1 << 20
C = 64 * KiB  # cluster size of the generated disks


# -- independent truth --------------------------------------------------------------------------
def chain_files(source: Path, snapshot: str | None) -> tuple[list[str], bool]:
    """The image files of a snapshot's chain, base first, and whether the base is raw."""
    with open_source(source, OpenOptions(cluster_size=C, allow_outside_paths=True)) as disk:
        files = [disk.paths[e.guid] for e in disk.chain(snapshot)]
        raw = disk.image(disk.chain(snapshot)[0].guid, level=0).is_raw
    return files, raw


def qemu_raw(source: Path, snapshot: str | None, dst: Path) -> Path:
    files, raw = chain_files(source, snapshot)
    qemu_to_raw(qemu_json_chain(files, raw), dst)
    return dst


def truly_changed(old_raw: Path, new_raw: Path, c: int) -> list[int]:
    """Clusters of NEW whose bytes differ from OLD's or reach past OLD's end."""
    old, new = old_raw.read_bytes(), new_raw.read_bytes()
    out = []
    for k in range(-(-len(new) // c)):
        a, b = k * c, min((k + 1) * c, len(new))
        if b > len(old) or old[a:b] != new[a:b]:
            out.append(k)
    return out


def b3sum(data: Path | bytes) -> str:
    """BLAKE3 by the `b3sum` tool (the reference Rust implementation's CLI), not by the C
    implementation ploopfs builds in (native/pf_b3.h)."""
    args = ["b3sum", "--no-names"]
    if isinstance(data, Path):
        r = subprocess.run([*args, str(data)], capture_output=True, check=True, timeout=120)
    else:
        r = subprocess.run(args, input=data, capture_output=True, check=True, timeout=120)
    return r.stdout.decode().split()[0]


def digest(data: Path | bytes, alg: str) -> str:
    if alg == "blake3":
        return b3sum(data)
    if alg == "sha256":
        return sha256_file(data) if isinstance(data, Path) else hashlib.sha256(data).hexdigest()
    raise AssertionError(f"no independent check for {alg}")


def clusters_of(ranges: list[dict]) -> list[int]:
    return [k for r in ranges for k in range(r["cluster"], r["cluster"] + r["clusters"])]


# -- generated disks ----------------------------------------------------------------------------
def write_image(path: Path, size: int, clusters: dict[int, bytes], version: int = 2) -> None:
    with ImageWriter.create(path, size, C, version) as w:
        for k, data in clusters.items():
            w.write_cluster(k, data)


def make_chain(folder: Path, size: int, levels: list[dict[int, bytes]]) -> list[str]:
    """level0.hds (base) … levelN.hds and a DiskDescriptor.xml; returns the snapshot GUIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, clusters in enumerate(levels):
        files.append(f"level{i}.hds")
        write_image(folder / files[-1], size, clusters)
    d = chain_descriptor(files, size, C)
    write_descriptor(folder / "DiskDescriptor.xml", d)
    return [im.guid for im in d.images]


def rand_clusters(rng: np.random.Generator, ks) -> dict[int, bytes]:
    return {int(k): rng.bytes(C) for k in ks}


# -- checks of each output ----------------------------------------------------------------------
def check_json(old: Path, new: Path, old_raw: Path, new_raw: Path, out: Path, *args: str) -> dict:
    r = run_cli("diff", old, new, "-o", out, "-f", "json", *args)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(out.read_text())
    assert clusters_of(doc["ranges"]) == truly_changed(old_raw, new_raw, doc["cluster_size"])
    alg = doc["hash"]
    assert alg == (expect_hash(args) if "--hash" in args else "blake3")  # the default
    data = new_raw.read_bytes()
    for rg in doc["ranges"]:
        piece = data[rg["offset"]: rg["offset"] + rg["length"]]
        assert rg["length"] == len(piece)
        if alg:
            assert rg[alg] == digest(piece, alg)
        assert rg["zero"] == (piece.count(0) == len(piece))
    assert doc["new"]["size"] == new_raw.stat().st_size
    assert doc["old"]["size"] == old_raw.stat().st_size
    if alg:
        assert doc["old"][alg] == digest(old_raw, alg) and doc["new"][alg] == digest(new_raw, alg)
    return doc


def expect_hash(args: tuple[str, ...]) -> str | None:
    alg = args[args.index("--hash") + 1]
    return None if alg == "none" else alg


def check_rdiff(old: Path, new: Path, old_raw: Path, new_raw: Path, tmp: Path, *args: str) -> dict:
    delta = tmp / "delta.rdiff"
    r = run_cli("diff", old, new, "-o", delta, "-f", "rdiff", *args)
    assert r.returncode == 0, r.stderr.decode()
    assert delta.read_bytes()[:4] == b"rs\x026"
    patched = tmp / "patched.raw"
    subprocess.run(["rdiff", "patch", str(old_raw), str(delta), str(patched)], check=True,
                   capture_output=True, timeout=300)
    assert sha256_file(patched) == sha256_file(new_raw)
    man = json.loads((tmp / "delta.rdiff.json").read_text())
    assert man["delta"]["size"] == delta.stat().st_size
    alg = man["hash"]  # the manifest names its algorithm; blake3 unless --hash says otherwise
    assert alg == (expect_hash(args) if "--hash" in args else "blake3")
    assert man["delta"][alg] == digest(delta, alg)
    assert man["old"][alg] == digest(old_raw, alg)
    assert man["new"][alg] == digest(new_raw, alg)
    assert (man["old"]["size"], man["new"]["size"]) == (old_raw.stat().st_size,
                                                        new_raw.stat().st_size)
    return man


def check_ploop(old: Path, new: Path, new_raw: Path, tmp: Path, *args: str,
                old_snapshot: str | None = None) -> dict:
    out = tmp / "ploop-out"
    r = run_cli("diff", old, new, "-o", out, "-f", "ploop", *args)
    assert r.returncode == 0, r.stderr.decode()
    man = json.loads((out / "diff-manifest.json").read_text())
    assert man["hash"] == "blake3" and man["new"]["blake3"] == b3sum(new_raw)
    delta = Path(man["image"])
    chk = subprocess.run(["qemu-img", "check", "-f", "parallels", str(delta)], capture_output=True,
                         text=True, timeout=120)
    assert chk.returncode == 0 and "No errors were found" in chk.stdout, chk.stdout + chk.stderr
    # qemu: OLD's chain (as qemu reads it) with the delta on top equals NEW.
    files, raw = chain_files(old, old_snapshot)
    via_qemu = tmp / "ploop-qemu.raw"
    qemu_to_raw(qemu_json_chain([*files, str(delta)], raw), via_qemu)
    # ploop rounds the disk up to whole clusters (the images' m_Size)
    n = new_raw.stat().st_size
    assert via_qemu.read_bytes()[:n] == new_raw.read_bytes()
    # ploopfs: exporting the stacked descriptor equals NEW (OLD's images lie outside the folder)
    refused = run_cli("info", out / "DiskDescriptor.xml")
    assert refused.returncode == ExitCode.UNSAFE_PATH, refused.stderr.decode()
    exp = tmp / "ploop-export.raw"
    r = run_cli("export", out / "DiskDescriptor.xml", exp, "--allow-outside-paths")
    assert r.returncode == 0, r.stderr.decode()
    assert exp.read_bytes()[:n] == new_raw.read_bytes()
    assert exp.read_bytes()[n:].count(0) == exp.stat().st_size - n
    return man


# -- corpus: diffs between snapshots of one descriptor --------------------------------------------
@pytest.mark.parametrize("case", ["ext4-gpt-chain2", "plain-base-chain3", "v1-chain2"])
def test_corpus_snapshot_pairs(corpus_case: Callable[[str], Path], tmp_path: Path, case: str) -> None:
    src = corpus_case(case)
    expect = expected_hashes(src)
    with open_source(src) as disk:
        guids = [e.guid for e in disk.chain()]
    raws = {}
    for g in guids:
        raws[g] = qemu_raw(src, g, tmp_path / f"{g}.raw")
        assert sha256_file(raws[g]) == expect[f"expected-{g}.raw"]  # qemu agrees with the corpus
    # every older -> newer pair, and back from the top to the base (changes undone)
    pairs = [(guids[i], guids[j]) for i in range(len(guids)) for j in range(i + 1, len(guids))]
    pairs.append((guids[-1], guids[0]))
    for k, (a, b) in enumerate(pairs):
        work = tmp_path / f"pair{k}"
        work.mkdir()
        snap = ("--old-snapshot", a, "--new-snapshot", b)
        fast = check_json(src, src, raws[a], raws[b], work / "fast.json", *snap, "--hash", "none")
        full = check_json(src, src, raws[a], raws[b], work / "full.json", *snap, "--full-compare")
        assert fast["ranges"] == [{k: v for k, v in r.items() if k != "blake3"} for r in
                                  full["ranges"]]
        assert fast["stats"]["mode"] == "map" and full["stats"]["mode"] == "full"
        # the fast path read no more than the clusters the maps could not prove equal
        c = fast["cluster_size"]
        assert fast["stats"]["bytes_read_new"] <= fast["stats"]["candidate_clusters"] * c
        assert full["stats"]["bytes_read_new"] == full["new"]["size"]
        check_rdiff(src, src, raws[a], raws[b], work, *snap)
        check_ploop(src, src, raws[b], work, *snap, old_snapshot=a)


def test_two_raw_exports(corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    """`ploopfs diff a.raw b.raw -o d` of two exports needs no --cluster-size (ploop's default
    1 MiB, as rdiff needs no block size either), and `rdiff patch a.raw d` gives b.raw. The
    same file twice is no change."""
    src = corpus_case("ext4-gpt-chain2")
    with open_source(src) as disk:
        old_guid, new_guid = (e.guid for e in disk.chain())
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    for guid, raw in ((old_guid, a), (new_guid, b)):
        r = run_cli("export", "-s", guid, src, raw)
        assert r.returncode == 0, r.stderr.decode()
    assert sha256_file(a) != sha256_file(b)
    d = tmp_path / "d"
    r = run_cli("diff", a, b, "-o", d)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    out = tmp_path / "out.raw"
    subprocess.run(["rdiff", "patch", str(a), str(d), str(out)], check=True, capture_output=True,
                   timeout=300)
    assert sha256_file(out) == sha256_file(b)
    man = json.loads((tmp_path / "d.json").read_text())
    assert man["stats"]["cluster_size"] == 1 << 20
    assert man["stats"]["changed_clusters"] == len(truly_changed(a, b, 1 << 20)) > 0
    same = run_cli("diff", a, a, "-o", "-", "-f", "json", "--hash", "none")
    assert same.returncode == 0, same.stderr.decode()
    doc = json.loads(same.stdout)
    assert doc["cluster_size"] == 1 << 20 and doc["ranges"] == []


def test_in_use_image_is_reported(corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    """A side whose image is marked in use (m_DiskInUse "Ynot": a running container may be
    writing it) is diffed as read, named in the report (`in_use`) and in one warning line."""
    old, new = corpus_case("v2-single"), corpus_case("v2-dirty-inuse")
    raws = tmp_path / "old.raw", tmp_path / "new.raw"
    for src, raw in zip((old, new), raws, strict=True):
        qemu_to_raw(str(src / "root.hdd"), raw)
        assert sha256_file(raw) == expected_hashes(src)["expected.raw"]
    out = tmp_path / "d.json"
    r = run_cli("diff", old, new, "-o", out, "-f", "json", "--hash", "sha256")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().splitlines() == [
        f"ploopfs: warning: {new / 'root.hdd'} at offset 44: marked in use (m_DiskInUse): a "
        "running container may be writing it, or it was not closed cleanly; unreferenced "
        "clusters are possible"]
    doc = json.loads(out.read_text())
    assert doc["new"]["in_use"] == [str(new / "root.hdd")] and "in_use" not in doc["old"]
    assert clusters_of(doc["ranges"]) == truly_changed(*raws, doc["cluster_size"])
    assert (doc["old"]["sha256"], doc["new"]["sha256"]) == tuple(map(sha256_file, raws))


def test_corpus_fast_path_skips_base(corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    """ext4-gpt-chain2: from the base snapshot to the top only the top delta's clusters are read."""
    src = corpus_case("ext4-gpt-chain2")
    with open_source(src) as disk:
        base, top = (e.guid for e in disk.chain())
        top_vol = disk.volume()
        top_clusters = top_vol.map.clusters_per_level(2)[1]
    sides = open_sides(str(src), str(src), base, top, OpenOptions())
    try:
        stats = scan(sides.old, sides.new, RangesSink(sides.new.cluster_size, None),
                     DiffOptions(hash=None))
    finally:
        sides.close()
    assert stats.candidate_clusters == top_clusters
    assert stats.bytes_read_new == stats.bytes_read_old == top_clusters * stats.cluster_size
    assert stats.bytes_read_new < stats.new_size // 4


# -- the fast path never reads unchanged clusters ------------------------------------------------
def test_fast_path_reads_only_remapped_clusters(tmp_path: Path, guard_sources) -> None:
    rng = np.random.default_rng(7)
    n = 64
    base = rand_clusters(rng, range(n))
    top = rand_clusters(rng, [5, 9, 10, 40])
    top[20] = base[20]  # re-written with the same bytes: read, compared, dropped
    top[30] = bytes(C)  # changed to zeros
    top[50] = rng.bytes(C)  # a cluster that is a hole in the base
    del base[50]
    disk = tmp_path / "disk"
    g_base, _g_top = make_chain(disk, n * C, [base, top])
    guard_sources(disk)
    old_raw = qemu_raw(disk, g_base, tmp_path / "old.raw")
    new_raw = qemu_raw(disk, None, tmp_path / "new.raw")
    reads: list[tuple[str, int, int]] = []
    sides = open_sides(str(disk), str(disk), g_base, None, OpenOptions())
    try:
        sink = RangesSink(C, "sha256")
        stats = scan(sides.old, sides.new, sink,
                     DiffOptions(hash=None, on_read=lambda *a: reads.append(a)))
        sink.flush()
        full_sink = RangesSink(C, "sha256")
        full = scan(sides.old, sides.new, full_sink, DiffOptions(hash=None, full_compare=True))
        full_sink.flush()
        copy_sink = RangesSink(C, "sha256")  # preadv instead of mmap, hashes on, small chunks
        copied = scan(sides.old, sides.new, copy_sink,
                      DiffOptions(hash="blake3", mmap=False, chunk=3 * C))
        copy_sink.flush()
    finally:
        sides.close()
    remapped = {5, 9, 10, 20, 30, 40, 50}
    read_clusters = {k for _side, off, ln in reads for k in range(off // C, -(-(off + ln) // C))}
    assert read_clusters == remapped
    assert stats.bytes_read_new == stats.bytes_read_old == len(remapped) * C
    assert stats.candidate_clusters == len(remapped)
    assert clusters_of(sink.ranges) == [5, 9, 10, 30, 40, 50]
    assert stats.equal_candidate_clusters == 1 and stats.zero_clusters == 1
    assert sink.ranges == full_sink.ranges
    assert full.bytes_read_new == n * C
    assert copy_sink.ranges == sink.ranges and copied.bytes_read_new == n * C
    assert copied.new_hash == b3sum(new_raw) and copied.old_hash == b3sum(old_raw)
    # and the truth, from qemu
    assert clusters_of(sink.ranges) == truly_changed(old_raw, new_raw, C)
    doc = check_json(disk, disk, old_raw, new_raw, tmp_path / "d.json", "--old-snapshot", g_base,
                     "--hash", "none")
    assert doc["stats"]["bytes_read_new"] == len(remapped) * C


def test_diff_and_export_do_not_import_numpy(tmp_path: Path, guard_sources) -> None:
    """The way to a read and a diff (image, block map, candidate walk, scan) stays free of
    numpy, whose import was ~75 ms of every command's start: a fresh process runs the commands
    in-process and reports what it imported; the outputs are checked against qemu's disks."""
    rng = np.random.default_rng(11)
    n = 48
    base = rand_clusters(rng, range(0, n, 2))
    top = rand_clusters(rng, [1, 4, 7, 30])
    disk = tmp_path / "disk"
    g_base, _g_top = make_chain(disk, n * C, [base, top])
    guard_sources(disk)
    old_raw = qemu_raw(disk, g_base, tmp_path / "old.raw")
    new_raw = qemu_raw(disk, None, tmp_path / "new.raw")
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import sys, ploopfs.cli as c\n"
        "argv = sys.argv[1:]\n"
        "for cmd in (['diff', argv[0], argv[0], '--old-snapshot', argv[1], '-o', argv[2]"
        " + '/d.json', '-f', 'json'],\n"
        "            ['diff', argv[0], argv[0], '--old-snapshot', argv[1], '-o', argv[2]"
        " + '/d.rdiff', '-f', 'rdiff', '--full-compare'],\n"
        "            ['export', argv[0], argv[2] + '/new.raw']):\n"
        "    assert c.main(cmd) == 0, cmd\n"
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('numpy.')))\n")
    r = subprocess.run([sys.executable, "-c", code, str(disk), g_base, str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
    doc = json.loads((out / "d.json").read_text())
    assert clusters_of(doc["ranges"]) == truly_changed(old_raw, new_raw, C)
    assert (out / "new.raw").read_bytes() == new_raw.read_bytes()
    subprocess.run(["rdiff", "patch", old_raw, out / "d.rdiff", out / "patched.raw"], check=True)
    assert (out / "patched.raw").read_bytes() == new_raw.read_bytes()


def _probe_scan(tmp_path: Path, top_of: Callable[[dict[int, bytes]], dict[int, bytes]],
                n: int = 96) -> tuple[list[dict], object, Path, Path]:
    """A two-level chain, TOP made from BASE by `top_of`; the json fast path without hashes
    (probing) checked against the full compare and against qemu's raw disks."""
    rng = np.random.default_rng(21)
    base = rand_clusters(rng, range(n))
    disk = tmp_path / "disk"
    g_base, _g_top = make_chain(disk, n * C, [base, top_of(base)])
    old_raw = qemu_raw(disk, g_base, tmp_path / "old.raw")
    new_raw = qemu_raw(disk, None, tmp_path / "new.raw")
    sides = open_sides(str(disk), str(disk), g_base, None, OpenOptions())
    try:
        sink = RangesSink(C, None)
        stats = scan(sides.old, sides.new, sink, DiffOptions(hash=None))
        sink.flush()
        full_sink = RangesSink(C, None)
        scan(sides.old, sides.new, full_sink, DiffOptions(hash=None, full_compare=True))
        full_sink.flush()
        rd = scan(sides.old, sides.new, RangesSink(C, "sha256"), DiffOptions(hash=None))
    finally:
        sides.close()
    assert sink.ranges == full_sink.ranges
    assert clusters_of(sink.ranges) == truly_changed(old_raw, new_raw, C)
    assert rd.probe_clusters == 0  # hashed ranges need every byte: no probing
    return sink.ranges, stats, old_raw, new_raw


def test_probe_decides_clusters_changed_from_their_start(tmp_path: Path, guard_sources,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """json without hashes compares each candidate over its first PROBE bytes first (mapped
    windows: the rest is asked for only when they are equal). Clusters changed from their start,
    zeroed, changed in their last byte and re-written equal all come out right, and the counts
    say which probes decided."""
    monkeypatch.setattr(diff_engine, "PROBE", 4096)
    monkeypatch.setattr(diff_engine, "MMAP_MIN", C)  # windows of one cluster are mapped too
    guard_sources(tmp_path)

    def top_of(base: dict[int, bytes]) -> dict[int, bytes]:
        rng = np.random.default_rng(5)
        top = {k: rng.bytes(C) for k in range(0, 40, 2)}  # changed from their first bytes
        top[41] = bytes(C)  # zeroed
        for k in (50, 52, 54):  # changed in their last byte only
            top[k] = base[k][:-1] + bytes([base[k][-1] ^ 1])
        top[60] = base[60]  # re-written with the same bytes
        return top

    ranges, stats, _o, _n = _probe_scan(tmp_path, top_of)
    assert stats.candidate_clusters == 25
    assert stats.probe_clusters == 25 and stats.probe_undecided == 4  # 50, 52, 54, 60
    assert any(r["zero"] for r in ranges)


def test_probing_stops_when_probes_do_not_decide(tmp_path: Path, guard_sources,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Clusters changed only at their end (or equal) defeat the probe: after at most the parts
    already announced, the scan announces whole clusters again, with the same result."""
    monkeypatch.setattr(diff_engine, "PROBE", 4096)
    monkeypatch.setattr(diff_engine, "MMAP_MIN", C)
    guard_sources(tmp_path)

    def top_of(base: dict[int, bytes]) -> dict[int, bytes]:
        top = {k: base[k][:-1] + bytes([base[k][-1] ^ 1]) for k in range(0, 380, 2)}
        top.update({k: base[k] for k in range(1, 20, 2)})  # and some re-written equal
        return top

    # Single-cluster candidates, 64 a window: several windows, so results come back while
    # later parts are still to be announced.
    _ranges, stats, _o, _n = _probe_scan(tmp_path, top_of, n=400)
    assert stats.candidate_clusters == 200 and stats.changed_clusters == 190
    assert 0 < stats.probe_clusters < 200
    assert stats.probe_undecided == stats.probe_clusters


def test_fast_path_across_branches(tmp_path: Path, guard_sources) -> None:
    """Two branches of a snapshot tree (base -> A, base -> B, as `ploop snapshot-switch` leaves
    it): only clusters mapped by A or B are read; the result equals qemu's truth."""
    rng = np.random.default_rng(11)
    n = 48
    disk = tmp_path / "tree"
    disk.mkdir()
    write_image(disk / "base.hds", n * C, rand_clusters(rng, range(n)))
    write_image(disk / "a.hds", n * C, rand_clusters(rng, [1, 2, 30]))
    b = rand_clusters(rng, [2, 3, 40])
    write_image(disk / "b.hds", n * C, b)
    d = chain_descriptor(["base.hds", "a.hds"], n * C, C)
    g_base, g_a = d.images[0].guid, new_guid()
    d.images[1].guid = d.shots[1].guid = d.top_guid = g_a
    d.images.append(ImageEntry(TOP_GUID, "b.hds", "Compressed"))
    d.shots.append(Shot(TOP_GUID, g_base))
    d.top_guid = TOP_GUID
    write_descriptor(disk / "DiskDescriptor.xml", d)
    guard_sources(disk)
    old_raw, new_raw = tmp_path / "a.raw", tmp_path / "b.raw"
    qemu_to_raw(qemu_json_chain([str(disk / "base.hds"), str(disk / "a.hds")], False), old_raw)
    qemu_to_raw(qemu_json_chain([str(disk / "base.hds"), str(disk / "b.hds")], False), new_raw)
    doc = check_json(disk, disk, old_raw, new_raw, tmp_path / "t.json", "--old-snapshot", g_a,
                     "--hash", "none")
    assert clusters_of(doc["ranges"]) == [1, 2, 3, 30, 40]
    assert doc["stats"]["candidate_clusters"] == 5
    assert doc["stats"]["bytes_read_new"] == doc["stats"]["bytes_read_old"] == 5 * C
    check_rdiff(disk, disk, old_raw, new_raw, tmp_path, "--old-snapshot", g_a)
    check_ploop(disk, disk, new_raw, tmp_path, "--old-snapshot", g_a, old_snapshot=g_a)


# -- independent images: growth, shrink, zeros, change rates ---------------------------------------
def two_disks(tmp: Path, n_old: int, n_new: int, rate: float, seed: int,
              old_holes: list[int] = (), new_holes: list[int] = (), new_zero: list[int] = ()
              ) -> tuple[Path, Path, Path, Path]:
    rng = np.random.default_rng(seed)
    old = rand_clusters(rng, range(n_old))
    new = {k: v for k, v in old.items() if k < n_new}
    for k in rng.choice(n_new, max(1, round(rate * n_new)), replace=False):
        new[int(k)] = rng.bytes(C)
    new.update(rand_clusters(rng, range(n_old, n_new)))
    for k in old_holes:
        old.pop(k, None)
    for k in new_holes:
        new.pop(k, None)
    for k in new_zero:
        new[k] = bytes(C)
    src = tmp / "src"
    src.mkdir()
    paths = src / "old.hds", src / "new.hds"
    write_image(paths[0], n_old * C, old)
    write_image(paths[1], n_new * C, new)
    raws = tmp / "old.raw", tmp / "new.raw"
    qemu_to_raw(str(paths[0]), raws[0])
    qemu_to_raw(str(paths[1]), raws[1])
    return paths[0], paths[1], raws[0], raws[1]


@pytest.mark.parametrize(("n_old", "n_new", "rate"), [
    (64, 64, 0.05), (64, 64, 0.5), (48, 80, 0.1), (80, 48, 0.1)],
    ids=["5pct", "50pct", "growth", "shrink"])
def test_independent_images(tmp_path: Path, guard_sources, n_old: int, n_new: int,
                            rate: float) -> None:
    old, new, old_raw, new_raw = two_disks(
        tmp_path, n_old, n_new, rate, seed=n_old * 1000 + n_new,
        old_holes=[2, 3], new_holes=[7, 8, n_new - 3], new_zero=[11, n_new - 1])
    guard_sources(old.parent)
    doc = check_json(old, new, old_raw, new_raw, tmp_path / "d.json")
    zero_ranges = [r for r in doc["ranges"] if r["zero"]]
    assert zero_ranges  # holes over old data and zero-written clusters are changes
    if n_new > n_old:
        assert doc["stats"]["new_clusters"] == n_new - n_old
    check_rdiff(old, new, old_raw, new_raw, tmp_path)
    man = check_ploop(old, new, new_raw, tmp_path)
    # every change to zeros inside OLD is an explicit zero cluster (a hole would show OLD's data)
    data = new_raw.read_bytes()
    inside_zero = [k for k in clusters_of(doc["ranges"])
                   if k < n_old and data[k * C:(k + 1) * C].count(0) == C]
    assert man["zero_clusters_written"] == len(inside_zero) > 0


def test_scattered_and_contiguous_windows(tmp_path: Path, guard_sources) -> None:
    """Default window sizes over qemu disks (1 MiB clusters) where some windows are one extent
    of each file (mapped, 8 MiB) and others are scattered (read, 4 MiB): OLD written in
    shuffled cluster order except its first 16 MiB, NEW in order; 3 clusters changed, one grown.
    Every output equals the truth, and the reads of a mapped window are its whole window."""
    size, rng = 40 << 20, np.random.default_rng(12)
    order = [*range(16), *(16 + rng.permutation(24))]
    changed = {3, 21, 38}
    paths = tmp_path / "old.hds", tmp_path / "new.hds"
    for p, ks in ((paths[0], order), (paths[1], range(41))):
        subprocess.run(["qemu-img", "create", "-q", "-f", "parallels", str(p),
                        str(size + (MiB if p == paths[1] else 0))], check=True, timeout=60)
        pat = [f"write -q -P {(k * 7 + (k in changed and p == paths[1])) % 251} {k}M 1M"
               for k in ks if k < 40 or p == paths[1]]
        subprocess.run(["qemu-io", "-f", "parallels", *(a for c in pat for a in ("-c", c)),
                        str(p)], check=True, timeout=300)
    guard_sources(*paths)
    raws = tmp_path / "old.raw", tmp_path / "new.raw"
    for p, r in zip(paths, raws, strict=True):
        qemu_to_raw(str(p), r)
    doc = check_json(*paths, *raws, tmp_path / "d.json")
    assert clusters_of(doc["ranges"]) == [3, 21, 38, 40]
    check_rdiff(*paths, *raws, tmp_path)
    check_ploop(*paths, raws[1], tmp_path)
    reads: list[tuple[str, int, int]] = []
    sides = open_sides(str(paths[0]), str(paths[1]), None, None, OpenOptions())
    try:
        scan(sides.old, sides.new, RangesSink(MiB, None),
             DiffOptions(on_read=lambda side, off, n: reads.append((side, off, n))))
    finally:
        sides.close()
    new_reads = [(off, n) for side, off, n in reads if side == "new"]
    assert new_reads[:2] == [(0, 8 * MiB), (8 * MiB, 8 * MiB)]  # both sides one extent each
    assert all(n <= 4 * MiB for off, n in new_reads if off >= 16 * MiB)  # OLD scattered there
    assert sum(n for _, n in new_reads) == size + MiB


def test_candidate_runs_across_map_windows(tmp_path: Path, guard_sources) -> None:
    """The block maps are compared in windows of 65536 clusters, cut where either side's
    extents start or end, and a stretch without any cut is taken whole: candidates at and
    across window edges, a run crossing one, a stretch of more than two windows with nothing
    on either side before a last candidate, a cluster re-written with equal bytes. The
    candidates are exactly the clusters written above OLD; the changes exactly those whose
    bytes differ (only candidates read)."""
    c, W = 4 * KiB, 65536
    n = 6 * W + 123  # [3W+1, n-1): nothing on either side, two windows and more without a cut
    rng = np.random.default_rng(31)
    base = {k: rng.bytes(c) for k in [*range(0, 10), *range(W - 3, W + 200), 2 * W + 50]}
    mid = {k: rng.bytes(c) for k in [W - 1, W, 2 * W - 1, 2 * W, 2 * W + 1, n - 1]}
    top = {k: rng.bytes(c) for k in [5, *range(W + 100, W + 300), 3 * W]}
    top[2 * W + 50] = base[2 * W + 50]  # same bytes: a candidate, not a change
    disk = tmp_path / "disk"
    disk.mkdir()
    files = ["l0.hds", "l1.hds", "l2.hds"]
    for f, clusters in zip(files, (base, mid, top), strict=True):
        with ImageWriter.create(disk / f, n * c, c, 2) as w:
            for k in sorted(clusters):
                w.write_cluster(k, clusters[k])
    d = chain_descriptor(files, n * c, c)
    write_descriptor(disk / "DiskDescriptor.xml", d)
    guard_sources(disk)
    above = sorted({*mid, *top})
    want_runs: list[tuple[int, int]] = []
    for k in above:
        if want_runs and sum(want_runs[-1]) == k:
            want_runs[-1] = (want_runs[-1][0], want_runs[-1][1] + 1)
        else:
            want_runs.append((k, 1))
    final = {**base, **mid, **top}
    truth = [k for k in above if final[k] != base.get(k, bytes(c))]
    sides = open_sides(str(disk), str(disk), d.images[0].guid, None, OpenOptions())
    try:
        assert list(candidate_runs(sides.old, sides.new)) == want_runs
        assert list(candidate_runs(sides.new, sides.old)) == want_runs
        assert list(candidate_runs(sides.new, sides.new)) == []
        sink = RangesSink(c, "sha256")
        stats = scan(sides.old, sides.new, sink, DiffOptions(hash=None))
        sink.flush()
    finally:
        sides.close()
    assert clusters_of(sink.ranges) == truth
    assert stats.bytes_read_new == len(above) * c
    for r in sink.ranges:
        data = b"".join(final[k] for k in range(r["cluster"], r["cluster"] + r["clusters"]))
        assert r["sha256"] == hashlib.sha256(data).hexdigest()


def test_batches_plan() -> None:
    """Consecutive small parts share a window up to the limit; a larger part goes alone."""
    parts = [(0, 2), (4, 1), (9, 1), (20, 1), (30, 8), (40, 2), (42, 3), (50, 4)]
    assert list(_batches(iter(parts), 4)) == [
        [(0, 2), (4, 1), (9, 1)], [(20, 1)], [(30, 8)], [(40, 2)], [(42, 3)], [(50, 4)]]
    assert list(_batches(iter([]), 4)) == []


def test_small_runs_share_windows(tmp_path: Path, guard_sources) -> None:
    """A snapshot diff whose candidates are short runs in different files (1 MiB clusters):
    a window then holds several parts, a read one (clusters 10-12, over two deltas) followed by
    a mapped one (20: one extent), so a mapping must not give back the buffer a part before it
    was read into. Ranges and the bytes handed to the sink equal qemu's truth, with and without
    mmap and with a stream hash."""
    rng = np.random.default_rng(21)
    n = 40
    levels = [{k: rng.bytes(MiB) for k in range(n)},
              {k: rng.bytes(MiB) for k in (10, 12)},
              {k: rng.bytes(MiB) for k in (11, 20, 30, 33)}]
    levels[1][12] = levels[0][12]  # re-written with the same bytes: a candidate, not a change
    levels[2][33] = levels[0][33]
    disk = tmp_path / "disk"
    disk.mkdir()
    files = [f"level{i}.hds" for i in range(3)]
    for f, clusters in zip(files, levels, strict=True):
        with ImageWriter.create(disk / f, n * MiB, MiB, 2) as w:
            for k, data in clusters.items():
                w.write_cluster(k, data)
    d = chain_descriptor(files, n * MiB, MiB)
    write_descriptor(disk / "DiskDescriptor.xml", d)
    g_base = d.images[0].guid
    guard_sources(disk)
    old_raw, new_raw = tmp_path / "old.raw", tmp_path / "new.raw"
    qemu_to_raw(qemu_json_chain([str(disk / files[0])]), old_raw)
    qemu_to_raw(qemu_json_chain([str(disk / f) for f in files]), new_raw)
    truth = truly_changed(old_raw, new_raw, MiB)
    assert truth == [10, 11, 20, 30]
    data = new_raw.read_bytes()
    sides = open_sides(str(disk), str(disk), g_base, None, OpenOptions())
    try:
        for opts in (DiffOptions(hash=None), DiffOptions(hash=None, mmap=False),
                     DiffOptions(hash="sha256")):
            sink = RangesSink(MiB, "sha256")
            stats = scan(sides.old, sides.new, sink, opts)
            sink.flush()
            assert clusters_of(sink.ranges) == truth, opts
            for rg in sink.ranges:
                piece = data[rg["offset"]: rg["offset"] + rg["length"]]
                assert rg["sha256"] == hashlib.sha256(piece).hexdigest(), (opts, rg)
            if opts.hash is None:
                assert stats.candidate_clusters == 6  # 10-12, 20, 30, 33
                assert stats.bytes_read_new == stats.bytes_read_old == 6 * MiB
            else:
                assert stats.new_hash == sha256_file(new_raw)
                assert stats.old_hash == sha256_file(old_raw)
    finally:
        sides.close()


def test_progress_bar_on_a_terminal(tmp_path: Path, guard_sources) -> None:
    """With stderr on a terminal (a pty) diff draws a progress bar of the candidates' bytes
    (work_bytes, computed only then); the result is the same as without one."""
    import os
    import pty

    old, new, old_raw, new_raw = two_disks(tmp_path, 64, 64, 0.1, seed=5)
    guard_sources(old.parent)
    cmd = [str(PLOOPFS)] if PLOOPFS.exists() else [sys.executable, "-m", "ploopfs"]
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([*cmd, "diff", str(old), str(new), "-o", str(tmp_path / "t.json"),
                              "-f", "json", "--hash", "none"], stderr=slave,
                             stdout=subprocess.DEVNULL)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert p.wait(timeout=120) == 0, shown.decode(errors="replace")
    finally:
        os.close(master)
    assert b"diff" in shown and b"\x1b[" in shown  # rich drew (and cleared) its bar
    doc = json.loads((tmp_path / "t.json").read_text())
    assert clusters_of(doc["ranges"]) == truly_changed(old_raw, new_raw, C)


def test_raw_sources(tmp_path: Path, guard_sources) -> None:
    """Raw files (e.g. the `disk` file of a ploopfs mount): the cluster size comes from the
    other side or --cluster-size; two raw files without it are compared at 1 MiB."""
    old, new, old_raw, new_raw = two_disks(tmp_path, 32, 32, 0.2, seed=3)
    guard_sources(old.parent, old_raw, new_raw)
    check_json(old, new_raw, old_raw, new_raw, tmp_path / "a.json", "--no-mmap")
    check_json(old_raw, new_raw, old_raw, new_raw, tmp_path / "b.json", "--cluster-size", "64K")
    doc = check_json(old_raw, new_raw, old_raw, new_raw, tmp_path / "c.json")
    assert doc["cluster_size"] == 1 << 20
    check_rdiff(old_raw, new, old_raw, new_raw, tmp_path, "--hash", "sha256")
    man = check_ploop(old_raw, new, new_raw, tmp_path)
    assert man["version"] == 2


@pytest.mark.parametrize("hash_alg", ["blake3", "sha256", None])
def test_sink_error_ends_the_scan(tmp_path: Path, guard_sources, hash_alg: str | None) -> None:
    """An error while windows are still queued with the workers (here the sink's, as a full
    output disk would raise) comes out of scan() as it is, and the workers end: none waits for
    a window its partner skipped."""
    old, new, _, _ = two_disks(tmp_path, 64, 64, 0.5, seed=9)
    guard_sources(old.parent)

    class Full(RangesSink):
        def changed(self, c0: int, n: int, data: memoryview, zero: bytes | bytearray) -> None:
            if c0 >= 8:
                raise OSError(28, "No space left on device")
            super().changed(c0, n, data, zero)

    outcome: list[BaseException | None] = []

    def run() -> None:
        sides = open_sides(str(old), str(new), None, None, OpenOptions())
        try:
            scan(sides.old, sides.new, Full(C, None), DiffOptions(hash=hash_alg, chunk=C))
            outcome.append(None)
        except OSError as e:
            outcome.append(e)
        finally:
            sides.close()

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "scan did not end after its sink failed"
    assert len(outcome) == 1 and isinstance(outcome[0], OSError) and outcome[0].errno == 28
    assert not [x.name for x in threading.enumerate() if x.name.startswith("ploopfs-diff-")]


# -- memory -------------------------------------------------------------------------------------
RSS_SCRIPT = r"""
import contextlib, io, sys
from ploopfs.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
# VmHWM: the peak RSS of this process image (ru_maxrss would carry pytest's across exec).
with open("/proc/self/status") as f:
    print(rc, next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")))
"""


def qemu_pair(tmp: Path, size: int) -> tuple[Path, Path]:
    """Two qemu-written parallels disks of `size` bytes: all but the last 32 MiB written
    (a pattern), NEW with five 1 MiB spots rewritten."""
    paths = tmp / f"old{size}.hds", tmp / f"new{size}.hds"
    data = size - (32 << 20)
    for i, p in enumerate(paths):
        subprocess.run(["qemu-img", "create", "-q", "-f", "parallels", str(p), str(size)],
                       check=True, timeout=60)
        cmds = ["-c", f"write -q -P 0x11 0 {data}"]
        if i:
            cmds += [a for k in range(5) for a in (
                "-c", f"write -q -P 0x22 {(k * data // 5) & -(1 << 20)} 1M")]
        subprocess.run(["qemu-io", "-f", "parallels", *cmds, str(p)], check=True, timeout=300)
    return paths


def test_peak_rss_does_not_grow_with_disk_size(tmp_path: Path, guard_sources) -> None:
    """Memory is bounded by the windows in flight, not by the disk: a default diff (BLAKE3 of
    both disks, rdiff output) of two 1 GiB disks peaks within 8 MiB of the same diff of two
    96 MiB disks, and under the issue's 64 MiB."""
    peaks = []
    for size in (96 << 20, 1 << 30):
        old, new = qemu_pair(tmp_path, size)
        guard_sources(old, new)
        out = tmp_path / f"d{size}.rdiff"
        r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, "diff", str(old), str(new), "-o",
                            str(out), "--no-progress"], capture_output=True, text=True,
                           timeout=300, check=False)
        rc, peak = (int(x) for x in r.stdout.split())
        assert rc == 0, r.stderr
        man = json.loads(Path(str(out) + ".json").read_text())
        assert man["stats"]["changed_clusters"] == 5 and man["new"]["size"] == size
        peaks.append(peak)
    print(f"peak RSS {peaks} KiB")
    assert peaks[1] <= peaks[0] + 8 * 1024, f"peak RSS {peaks} KiB"
    assert peaks[1] < 64 * 1024, f"peak RSS {peaks[1]} KiB"


# -- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs(tmp_path: Path, guard_sources) -> None:
    old, new, _old_raw, _new_raw = two_disks(tmp_path, 16, 16, 0.2, seed=5)
    other = tmp_path / "src" / "other.hds"
    with ImageWriter.create(other, 16 * C, 2 * C):
        pass
    guard_sources(old.parent)
    (tmp_path / "exists.rdiff").write_bytes(b"")
    cases = [
        (["diff", tmp_path / "nope", new, "-o", tmp_path / "o1"], ExitCode.NOT_FOUND, "nope"),
        (["diff", old, new, "-o", tmp_path / "exists.rdiff"], ExitCode.OUTPUT, "exists.rdiff"),
        (["diff", old, new, "-o", "-"], ExitCode.USAGE, "json"),
        (["diff", old, other, "-o", tmp_path / "o2"], ExitCode.UNSUPPORTED, "cluster sizes"),
        (["diff", old, other, "-o", tmp_path / "o4", "-f", "ploop"], ExitCode.UNSUPPORTED,
         "cluster sizes"),
        (["diff", old, other, "-o", tmp_path / "o5", "-f", "json"], ExitCode.UNSUPPORTED,
         "cluster sizes"),
        (["diff", old, new, "-o", tmp_path / "o3", "--old-snapshot", "{12345678-1234-1234-1234-"
          "123456789abc}"], ExitCode.NOT_FOUND, "snapshot"),
        (["diff", old, new, "-o", old.parent, "-f", "ploop"], ExitCode.OUTPUT, "src"),
    ]
    for args, code, word in cases:
        r = run_cli(*args)
        err = r.stderr.decode().strip()
        assert r.returncode == code, (args, err)
        assert len(err.splitlines()) == 1 and word in err and "Traceback" not in err, err
    for name in ("o1", "o2", "o2.json", "o4", "o5"):  # nothing half-written is left behind
        assert not (tmp_path / name).exists(), name
