"""Read correctness on the sample corpus (issue #2).

Every case of the sample corpus (tests/data/sample-corpus.tar.zst) is read through the library
and the CLI, and each snapshot's virtual disk must hash to the `expected.sha256` the corpus was
built with (cross-checked three independent ways when the corpus was made). Exported ploop disks
are checked with `qemu-img check` and read back through qemu. The ext4 case is checked one level
further: its filesystems are checked with e2fsck and every file is compared (debugfs and the
kernel's ext4).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CORPUS_CASES,
    cli_json,
    expected_hashes,
    qemu_to_raw,
    run_cli,
    sha256_file,
)
from mounting import compare_tree, expected_files

from ploopfs.format.header import NONE_GUID
from ploopfs.volume.source import OpenOptions, open_source
from ploopfs.volume.volume import Volume

SINGLE_IMAGE_CASES = ["v2-single", "v2-dirty-inuse"]
EXT4_CASE = "ext4-gpt-chain2"
CaseFactory = Callable[[str], Path]


# -- helpers ------------------------------------------------------------------------------------
def snapshot_of(name: str) -> str | None:
    """`expected.raw` is the top (no --snapshot); `expected-<GUID>.raw` is that snapshot."""
    if name == "expected.raw":
        return None
    assert name.startswith("expected-{") and name.endswith("}.raw"), name
    return name[len("expected-"):-len(".raw")]


def case_meta(case_dir: Path) -> dict[str, Any]:
    return json.loads((case_dir / "case.json").read_text())


def volume_sha256(vol: Volume, chunk: int) -> tuple[str, int]:
    """Stream the whole volume in `chunk`-sized reads; (sha256, bytes read)."""
    h = hashlib.sha256()
    pos = 0
    while pos < vol.size:
        data = vol.read(pos, chunk)
        assert len(data) == min(chunk, vol.size - pos), f"short read at {pos}"
        h.update(data)
        pos += len(data)
    return h.hexdigest(), pos


def read_all(vol: Volume) -> bytes:
    return bytes(vol.read(0, vol.size))


def export_raw_cli(source: Path, out: Path, snapshot: str | None) -> None:
    args: list[str | os.PathLike[str]] = ["export", source, out, "--no-progress"]
    if snapshot:
        args += ["--snapshot", snapshot]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr.decode()
    assert out.stat().st_size > 0


def qemu_check(image: Path) -> None:
    r = subprocess.run(["qemu-img", "check", "-f", "parallels", str(image)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, f"qemu-img check {image}: {r.stdout}{r.stderr}"
    assert "No errors were found" in r.stdout, r.stdout


# -- (a) the library ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS_CASES)
def test_library_stream_read(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    meta = case_meta(d)
    expected = expected_hashes(d)
    assert "expected.raw" in expected
    with open_source(d / "DiskDescriptor.xml") as disk:
        for name, want in expected.items():
            vol = disk.volume(snapshot_of(name))
            assert vol.size == meta["virtual_size_bytes"]
            # An odd chunk size so that reads straddle cluster and extent boundaries.
            got, n = volume_sha256(vol, 1_000_003)
            assert n == meta["ddxml_disk_size_sectors"] * 512
            assert got == want, f"{case} {name}"


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_library_random_ranges(corpus_case: CaseFactory, case: str) -> None:
    """Reads of arbitrary ranges (unaligned, crossing clusters and the end of the disk) are slices
    of the full read, which itself must match the expected hash."""
    d = corpus_case(case)
    expected = expected_hashes(d)
    rng = random.Random(f"ranges-{case}")
    with open_source(d) as disk:
        for name, want in expected.items():
            vol = disk.volume(snapshot_of(name))
            full = read_all(vol)
            assert hashlib.sha256(full).hexdigest() == want
            c = vol.cluster_size
            for _ in range(150):
                kind = rng.randrange(4)
                if kind == 0:  # around a cluster boundary
                    off = max(0, rng.randrange(1, vol.size // c) * c - rng.randrange(1, 4096))
                    length = rng.randrange(1, 8192)
                elif kind == 1:  # tiny
                    off, length = rng.randrange(vol.size), rng.randrange(1, 16)
                elif kind == 2:  # across the end of the disk: clipped
                    off = vol.size - rng.randrange(1, 3 * c)
                    length = rng.randrange(1, 4 * c)
                else:  # big, spanning several clusters
                    off, length = rng.randrange(vol.size), rng.randrange(c, 5 * c)
                off = max(0, off)
                assert vol.read(off, length) == full[off:off + length], (off, length)
            assert vol.read(vol.size, 10) == b""


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_open_by_descriptor_and_folder(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    want = expected_hashes(d)["expected.raw"]
    for src in (d / "DiskDescriptor.xml", d, str(d) + "/"):
        with open_source(src) as disk:
            assert disk.descriptor_path is not None
            assert hashlib.sha256(read_all(disk.volume())).hexdigest() == want, src


@pytest.mark.parametrize("case", SINGLE_IMAGE_CASES)
def test_open_by_image_file(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    want = expected_hashes(d)["expected.raw"]
    image = d / case_meta(d)["chain_base_to_top"][0]["file"]
    with open_source(image) as disk:
        assert disk.descriptor_path is None
        assert hashlib.sha256(read_all(disk.volume())).hexdigest() == want
    r = run_cli("export", image, "-")
    assert r.returncode == 0, r.stderr.decode()
    assert hashlib.sha256(r.stdout).hexdigest() == want


def test_open_raw_base_as_raw_file(corpus_case: CaseFactory) -> None:
    """The raw base of plain-base-chain3, opened alone with a cluster size, is its own snapshot."""
    d = corpus_case("plain-base-chain3")
    base = case_meta(d)["chain_base_to_top"][0]
    want = expected_hashes(d)[f"expected-{base['guid']}.raw"]
    with open_source(d / base["file"], OpenOptions(cluster_size=1 << 20)) as disk:
        assert hashlib.sha256(read_all(disk.volume())).hexdigest() == want
    r = run_cli("export", d / base["file"], "-", "--cluster-size", "1M")
    assert r.returncode == 0, r.stderr.decode()
    assert hashlib.sha256(r.stdout).hexdigest() == want


# -- (b) the CLI --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS_CASES)
def test_cli_export_raw_file_and_stdout(corpus_case: CaseFactory, case: str, tmp_path: Path) -> None:
    d = corpus_case(case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for i, (name, want) in enumerate(expected_hashes(d).items()):
        snap = snapshot_of(name)
        out = out_dir / f"{i}.raw"
        export_raw_cli(d, out, snap)
        assert out.stat().st_size == case_meta(d)["virtual_size_bytes"]
        assert sha256_file(out) == want, f"{case} {name} (file)"
        args = ["export", d / "DiskDescriptor.xml", "-"] + (["--snapshot", snap] if snap else [])
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr.decode()
        assert hashlib.sha256(r.stdout).hexdigest() == want, f"{case} {name} (stdout)"


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_cli_export_ploop_roundtrip(corpus_case: CaseFactory, case: str, tmp_path: Path) -> None:
    """export --format ploop gives a disk that qemu accepts and reads identically, and that
    ploopfs re-exports to the same raw bytes."""
    d = corpus_case(case)
    for i, (name, want) in enumerate(expected_hashes(d).items()):
        snap = snapshot_of(name)
        folder = tmp_path / f"ploop{i}"
        args: list[str | os.PathLike[str]] = ["export", d, folder, "--format", "ploop", "--json",
                                              "--no-progress"]
        if snap:
            args += ["--snapshot", snap]
        report = cli_json(*args)
        assert report["format"] == "ploop"
        assert report["size_bytes"] == case_meta(d)["virtual_size_bytes"]
        image = folder / "root.hds"
        assert (folder / "DiskDescriptor.xml").exists() and image.exists()
        qemu_check(image)
        qemu_raw = tmp_path / f"qemu{i}.raw"
        qemu_to_raw(str(image), qemu_raw)
        assert sha256_file(qemu_raw) == want, f"{case} {name}: qemu read of the exported ploop"
        back = tmp_path / f"back{i}.raw"
        export_raw_cli(folder, back, None)
        assert sha256_file(back) == want, f"{case} {name}: ploop -> raw re-export"
        qemu_raw.unlink()
        back.unlink()


def _header_fields(case_header: dict[str, Any]) -> dict[str, Any]:
    """case.json names some fields with a gloss, e.g. `m_Sectors(cluster_sectors)`."""
    out = {k.split("(")[0]: v for k, v in case_header.items() if k != "file_size"}
    out["m_DiskInUse"] = out["m_DiskInUse"].lower()
    return out


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_cli_info_json(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    meta = case_meta(d)
    chain = meta["chain_base_to_top"]
    info = cli_json("info", "--json", d)
    disk = info["disk"]
    assert info["snapshot"] == info["top_guid"] == meta["top_guid"]
    assert disk["size_bytes"] == meta["virtual_size_bytes"]
    assert disk["size_sectors"] == meta["ddxml_disk_size_sectors"]
    assert disk["cluster_size"] == meta["ddxml_blocksize_sectors"] * 512
    assert disk["chain_depth"] == len(chain)
    assert disk["raw_base"] == (chain[0]["header"] == "raw (no header)")
    assert disk["dirty"] == (case == "v2-dirty-inuse")
    top_header = chain[-1]["header"]
    assert disk["version"] == top_header["version"]
    # The merged map: the union of all levels' mapped clusters (raw base aside).
    union = set().union(*(set(lv.get("bat_nonzero", {})) for lv in chain))
    assert disk["mapped_clusters"] == len(union)

    by_guid = {im["guid"]: im for im in info["images"]}
    assert set(by_guid) == {lv["guid"] for lv in chain}
    for level, lv in enumerate(chain):
        im = by_guid[lv["guid"]]
        assert im["level"] == level
        assert im["file"] == lv["file"]
        assert im["xml_type"] == lv["xml_type"]
        if lv["header"] == "raw (no header)":
            assert im["kind"] == "raw"
            assert im["file_size"] == lv["file_size"]
            continue
        hdr = lv["header"]
        assert im["kind"] == f"ploop-v{hdr['version']}"
        assert im["file_size"] == hdr["file_size"]
        assert im["allocated_clusters"] == len(lv["bat_nonzero"])
        assert im["dirty"] == (int(hdr["m_DiskInUse"], 16) == 0x746F6E59)
        got = {k: v for k, v in im["header"].items() if k != "m_DiskInUse_meaning"}
        assert got == _header_fields(hdr)

    parts = info["partitions"]
    if case == EXT4_CASE:
        p = meta["partition"]
        assert parts["scheme"] == p["table"] == "gpt"
        part1 = parts["partitions"][0]
        assert part1["number"] == p["number"] == 1
        assert part1["fs"] == p["fs"] == "ext4"
        assert part1["fs_label"] == "ploop-oracle"
        assert part1["start"] == p["start_sector"] * 512
        assert part1["size"] == (p["end_sector_inclusive"] - p["start_sector"] + 1) * 512


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_cli_info_per_snapshot(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    chain = case_meta(d)["chain_base_to_top"]
    for depth, lv in enumerate(chain, start=1):
        info = cli_json("info", "--json", d, "--snapshot", lv["guid"].upper().strip("{}"))
        assert info["snapshot"] == lv["guid"]
        assert info["disk"]["chain_depth"] == depth
        levels = {im["guid"]: im["level"] for im in info["images"]}
        for level, other in enumerate(chain):
            assert levels[other["guid"]] == (level if level < depth else None)


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_cli_snapshots_json(corpus_case: CaseFactory, case: str) -> None:
    d = corpus_case(case)
    meta = case_meta(d)
    chain = meta["chain_base_to_top"]
    out = cli_json("snapshots", "--json", d / "DiskDescriptor.xml")
    assert out["top_guid"] == meta["top_guid"]
    shots = {s["guid"]: s for s in out["snapshots"]}
    assert set(shots) == {lv["guid"] for lv in chain}
    assert [s["guid"] for s in out["snapshots"] if s["current"]] == [meta["top_guid"]]
    for depth, lv in enumerate(chain):
        s = shots[lv["guid"]]
        assert s["parent"] == lv["parent"]
        assert s["file"] == lv["file"]
        assert s["depth"] == depth
        assert s["in_top_chain"] is True
        assert Path(s["path"]).resolve() == (d / lv["file"]).resolve()
    assert chain[0]["parent"] == NONE_GUID
    # The plain listing marks the top with '*'.
    r = run_cli("snapshots", d)
    assert r.returncode == 0, r.stderr.decode()
    starred = [ln for ln in r.stdout.decode().splitlines() if " * " in ln and "{" in ln]
    assert starred and all(meta["top_guid"] in ln for ln in starred)


# -- ext4-gpt-chain2: the filesystems inside ---------------------------------------------------
def _partition_span(case_dir: Path) -> tuple[int, int]:
    p = case_meta(case_dir)["partition"]
    return p["start_sector"] * 512, (p["end_sector_inclusive"] - p["start_sector"] + 1) * 512


def _extract(raw: Path, start: int, size: int, dst: Path) -> None:
    with open(raw, "rb") as src, open(dst, "wb") as out:
        src.seek(start)
        left = size
        while left:
            chunk = src.read(min(left, 4 << 20))
            assert chunk, "exported raw file too short"
            out.write(chunk)
            left -= len(chunk)


def _ext4_snapshots(case_dir: Path) -> list[str]:
    guids = [lv["guid"] for lv in case_meta(case_dir)["chain_base_to_top"]]
    assert all((case_dir / f"files-{g}.json").exists() for g in guids)
    return guids


def test_ext4_e2fsck_and_debugfs_files(corpus_case: CaseFactory, tmp_path: Path) -> None:
    d = corpus_case(EXT4_CASE)
    start, size = _partition_span(d)
    for i, guid in enumerate(_ext4_snapshots(d)):
        raw = tmp_path / f"snap{i}.raw"
        export_raw_cli(d, raw, guid)
        part = tmp_path / f"part{i}.img"
        _extract(raw, start, size, part)
        r = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 0, f"e2fsck on snapshot {guid}: {r.stdout}{r.stderr}"
        tree = tmp_path / f"tree{i}"
        tree.mkdir()
        r = subprocess.run(["debugfs", "-R", f"rdump / {tree}", str(part)], capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        compare_tree(tree, expected_files(d, guid))
        shutil.rmtree(tree)
        raw.unlink()
        part.unlink()


@contextmanager
def _loop_mount(raw: Path, start: int, size: int, mnt: Path) -> Iterator[Path]:
    """Read-only loop device over the partition of `raw`, mounted ro,noload; always torn down."""
    r = subprocess.run(["losetup", "-r", "-f", "--show", "-o", str(start), "--sizelimit",
                        str(size), str(raw)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"no loop devices here: {r.stderr.strip()}")
    dev = r.stdout.strip()
    mounted = False
    try:
        mnt.mkdir()
        subprocess.run(["mount", "-t", "ext4", "-o", "ro,noload", dev, str(mnt)], check=True,
                       capture_output=True, timeout=60)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=60)
        subprocess.run(["losetup", "-d", dev], check=False, capture_output=True, timeout=60)


def test_ext4_kernel_mount_files(corpus_case: CaseFactory, tmp_path: Path) -> None:
    """The kernel's ext4 driver, an independent reader, sees exactly the expected files in every
    snapshot exported by ploopfs."""
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    d = corpus_case(EXT4_CASE)
    start, size = _partition_span(d)
    for i, guid in enumerate(_ext4_snapshots(d)):
        raw = tmp_path / f"snap{i}.raw"
        export_raw_cli(d, raw, guid)
        with _loop_mount(raw, start, size, tmp_path / f"mnt{i}") as mnt:
            compare_tree(mnt, expected_files(d, guid))
        raw.unlink()
