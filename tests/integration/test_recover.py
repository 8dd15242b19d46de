"""`ploopfs recover` keeping the snapshot structure (docs/salvage.md, issue #5 item 3).

Every snapshot of the output is read by qemu-img (an independent reader) and compared with the
same snapshot of the source: with the corpus' expected hashes for clean disks, with the source
read by `export --salvage=<same policy>` for damaged ones (tools/corrupt.py variants and chains
built here whose damage is modelled independently), and with qemu's read of the source chain
without the lost level when a whole image is unreadable. Every output passes `ploopfs check`
(exit 0) and `qemu-img check -f parallels` on each image. Sources are hash-guarded."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import damage as dm
import pytest
from conftest import CORPUS_CASES, REPO, expected_hashes, qemu_json_chain, qemu_to_raw, run_cli

from ploopfs.errors import ExitCode
from ploopfs.format.descriptor import Descriptor, ImageEntry, Shot
from ploopfs.format.header import NONE_GUID, TOP_GUID, decode_header_fields
from ploopfs.volume.source import OpenOptions, open_source
from ploopfs.volume.writer import ImageWriter, new_guid, write_descriptor

sys.path.insert(0, str(REPO / "tools"))
from corrupt import make_variants

BAT_VARIANTS = ["bat-past-eof", "truncated", "bat-into-header", "bat-reserved", "bat-duplicate"]


# -- helpers -----------------------------------------------------------------------------------------
def _recover(src: Path, out: Path, *args: str) -> dict:
    """recovery.json; the exit code is 15 exactly when it lists substituted ranges or dropped
    levels (data replaced or lost), else 0."""
    r = run_cli("recover", src, out, "--no-progress", "--json", *args)
    assert r.returncode in (0, ExitCode.DATA_REPLACED), r.stderr.decode()
    rec = json.loads(r.stdout)
    assert json.loads((out / "recovery.json").read_text()) == rec
    replaced = bool(rec["substituted_ranges"] or rec.get("dropped_levels"))
    assert r.returncode == (ExitCode.DATA_REPLACED if replaced else 0), (r.returncode, rec)
    return rec


def _tree(src: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """(TopGUID, {guid: parent}, {guid: file path}) of a disk."""
    with open_source(src, OpenOptions(salvage="older")) as disk:  # tolerates a missing file
        d = disk.descriptor
        return d.top_guid, {s.guid: s.parent for s in d.shots}, dict(disk.paths)


def _chain_files(paths: dict[str, str], parents: dict[str, str], guid: str) -> list[str]:
    files = []
    while guid != NONE_GUID:
        files.append(paths[guid])
        guid = parents[guid]
    return files[::-1]


def _qemu_read(files: list[str], dst: Path, raw_base: bool = False) -> bytes:
    qemu_to_raw(qemu_json_chain(files, raw_base), dst)
    data = dst.read_bytes()
    dst.unlink()
    return data


def _assert_clean_output(out: Path) -> None:
    r = run_cli("check", out)
    assert r.returncode == 0, r.stdout.decode()
    _top, _parents, paths = _tree(out)
    for f in paths.values():
        q = subprocess.run(["qemu-img", "check", "-f", "parallels", f], capture_output=True,
                           text=True, check=False)
        assert q.returncode == 0, q.stdout + q.stderr
        h = decode_header_fields(Path(f).read_bytes()[:64])
        assert h.version == 2 and not h.dirty and h.type == 2


def _output_snapshots(out: Path, tmp: Path) -> dict[str, bytes]:
    """Every snapshot of the output as qemu reads it."""
    _top, parents, paths = _tree(out)
    return {g: _qemu_read(_chain_files(paths, parents, g), tmp / "o.raw") for g in parents}


def _salvage_export(src: Path, guid: str, policy: str, tmp: Path) -> bytes:
    out = tmp / "s.raw"
    r = run_cli("export", src, out, "-s", guid, f"--salvage={policy}", "--no-progress")
    assert r.returncode in (0, ExitCode.DATA_REPLACED), r.stderr.decode()
    data = out.read_bytes()
    out.unlink()
    return data


def _assert_same_tree(src: Path, out: Path, dropped: set[str] = frozenset()) -> None:
    """Same GUIDs, parents (dropped levels spliced out) and TopGUID; all images v2."""
    top, parents, _ = _tree(src)
    otop, oparents, _ = _tree(out)

    def up(g: str) -> str:
        while g in dropped:
            g = parents[g]
        return g

    assert otop == up(top)
    assert oparents == {g: up(p) for g, p in parents.items() if g not in dropped}


# -- clean corpus disks ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS_CASES)
def test_corpus_tree_kept(corpus_case, tmp_path: Path, case: str) -> None:
    src = corpus_case(case)
    out = tmp_path / "rec"
    rec = _recover(src, out)
    assert rec["snapshots_kept"] and rec["ranges"] == [] and rec["dropped_levels"] == []
    _assert_same_tree(src, out)
    _assert_clean_output(out)
    want = expected_hashes(src)
    got = _output_snapshots(out, tmp_path)
    top = _tree(out)[0]
    for g, data in got.items():
        key = f"expected-{g}.raw" if f"expected-{g}.raw" in want else "expected.raw"
        assert g == top or key != "expected.raw", (case, g)
        assert hashlib.sha256(data).hexdigest() == want[key], (case, g)
    # the output opened strictly by ploopfs reads the same as qemu (top)
    strict = tmp_path / "top.raw"
    assert run_cli("export", out, strict, "--no-progress").returncode == 0
    assert strict.read_bytes() == got[top]


def test_snapshot_option_keeps_its_chain(corpus_case, tmp_path: Path) -> None:
    src = corpus_case("plain-base-chain3")
    _top, parents, _ = _tree(src)
    mid = next(g for g, p in parents.items() if p != NONE_GUID and g != TOP_GUID)
    out = tmp_path / "rec"
    rec = _recover(src, out, "-s", mid)
    otop, oparents, _ = _tree(out)
    assert otop == mid == rec["snapshot"] and set(oparents) == {mid, parents[mid]}
    _assert_clean_output(out)
    data = _output_snapshots(out, tmp_path)[mid]
    assert hashlib.sha256(data).hexdigest() == expected_hashes(src)[f"expected-{mid}.raw"]


# -- corrupt.py variants of corpus chains --------------------------------------------------------------
@pytest.mark.parametrize("case", ["v1-chain2", "plain-base-chain3", "ext4-gpt-chain2"])
def test_corrupt_variants(corpus_case, tmp_path: Path, guard_sources, case: str) -> None:
    """Each BAT damage of the top, both policies: every snapshot of the output reads like the
    same snapshot of the source read with --salvage=<policy>, and the damaged clusters are
    listed with level, virtual cluster, physical offset and what was served."""
    src = corpus_case(case)
    made = make_variants(src, tmp_path / "var", only=BAT_VARIANTS)
    assert {m.name for m in made} >= {"bat-past-eof", "truncated", "bat-reserved"}
    for m in made:
        guard_sources(m.path)
        chk = json.loads(run_cli("check", m.path, "--json").stdout)
        damaged = {f["vcluster"] for f in chk["findings"] if f["code"].startswith("BAT_")}
        top, parents, paths = _tree(m.path)
        top_level = len(_chain_files(paths, parents, top)) - 1
        for policy in ("older", "zeros"):
            out = tmp_path / f"{m.name}-{policy}"
            rec = _recover(m.path, out, "--salvage", policy)
            _assert_same_tree(m.path, out)
            _assert_clean_output(out)
            for g, data in _output_snapshots(out, tmp_path).items():
                assert data == _salvage_export(m.path, g, policy, tmp_path), (m.name, policy, g)
            assert {r["vcluster"] for r in rec["ranges"]} == damaged, (m.name, rec["ranges"])
            for r in rec["ranges"]:
                assert (r["guid"], r["level"], r["kind"]) == (top, top_level, "bat")
                assert r["physical_offset"] == r["entry"] * (512 if case == "v1-chain2" else
                                                             (1 << 20))
                assert r["substitution"] in ("older", "zeros")


# -- chains built here: damage below the top, a branch, a lost level -----------------------------------
C = 64 << 10
N = 12
# guid name -> (parent name, clusters it writes); "branch" is a second child of the base.
TREE = {"base": (None, [0, 1, 2, 3, 4, 5]), "mid": ("base", [2, 3, 4, 7]),
        "top": ("mid", [4, 8, 9]), "branch": ("base", [1, 3, 10])}


def _data(name: str, vc: int) -> bytes:
    return random.Random(f"{name}/{vc}").randbytes(C)


def _build_tree(folder: Path, version: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    guids = {n: (TOP_GUID if n == "top" else new_guid()) for n in TREE}
    d = Descriptor(disk_size=N * C // 512, cylinders=1, heads=1, sectors=N * C // 512,
                   blocksize=C // 512, top_guid=TOP_GUID)
    for n, (parent, vcs) in TREE.items():
        with ImageWriter.create(folder / f"{n}.hds", N * C, C, version) as w:
            for vc in vcs:
                w.write_cluster(vc, _data(n, vc))
        d.images.append(ImageEntry(guids[n], f"{n}.hds", "Compressed"))
        d.shots.append(Shot(guids[n], guids[parent] if parent else NONE_GUID))
    write_descriptor(folder / "DiskDescriptor.xml", d)
    return guids


def _model(name: str, damaged: dict[str, set[int]], policy: str, lost: set[str] = frozenset()
           ) -> bytes:
    """Snapshot `name` of TREE with `damaged[level]` entries dropped (older) or zero-masked
    (zeros), and the levels in `lost` missing."""
    chain = []
    n: str | None = name
    while n:
        chain.append(n)
        n = TREE[n][0]
    out = bytearray(N * C)
    for vc in range(N):
        for lv in chain:  # top first
            if lv in lost:
                continue
            if vc in damaged.get(lv, set()):
                if policy == "zeros":
                    break
                continue
            if vc in TREE[lv][1]:
                out[vc * C:(vc + 1) * C] = _data(lv, vc)
                break
    return bytes(out)


@pytest.mark.parametrize(("version", "policy"), [(2, "older"), (2, "zeros"), (1, "older")])
def test_damaged_lower_level_and_branch(tmp_path: Path, guard_sources, version: int,
                                        policy: str) -> None:
    src = tmp_path / "src"
    guids = _build_tree(src, version)
    clean = tmp_path / "clean.raw"
    qemu_to_raw(qemu_json_chain([src / "base.hds", src / "mid.hds", src / "top.hds"]), clean)
    assert clean.read_bytes() == _model("top", {}, policy), "the model disagrees with qemu"
    size = (src / "mid.hds").stat().st_size
    per = C // 512 if version == 1 else 1
    dm.bat_entry(src / "mid.hds", 3, 0xFFFFFFFF)  # mapped below (base) too
    dm.bat_entry(src / "mid.hds", 7, (size // C + 5) * per)  # only mid maps it
    dm.bat_entry(src / "mid.hds", 4, (size // C + 6) * per)  # shadowed by top
    damaged = {"mid": {3, 4, 7}}
    guard_sources(src)
    out = tmp_path / "rec"
    rec = _recover(src, out, "--salvage", policy)
    _assert_same_tree(src, out)
    _assert_clean_output(out)
    got = _output_snapshots(out, tmp_path)
    for n, g in guids.items():
        assert got[g] == _model(n, damaged, policy), (n, policy)
        assert got[g] == _salvage_export(src, g, policy, tmp_path), n
    rs = {(r["guid"], r["vcluster"]): r for r in rec["ranges"]}
    assert set(rs) == {(guids["mid"], v) for v in (3, 4, 7)}
    assert rs[(guids["mid"], 3)]["substitution"] == policy
    assert rs[(guids["mid"], 3)]["served_from_level"] == (0 if policy == "older" else None)
    assert rs[(guids["mid"], 7)]["substitution"] == "zeros"
    levels = {lv["guid"]: lv for lv in rec["levels"]}
    # zeros: cluster 3 hides the base's copy with an explicit zero cluster, 4 and 7 need none
    assert levels[guids["mid"]]["zero_masked_clusters"] == (2 if policy == "zeros" else 0)


def test_missing_level_is_merged(tmp_path: Path, guard_sources) -> None:
    """The middle image is gone: the top and the branch keep their data, the top now stacks on
    the base (qemu reads the source chain without the middle the same), recovery.json says so;
    a strict open still refuses the source."""
    src = tmp_path / "src"
    guids = _build_tree(src, 2)
    os.unlink(src / "mid.hds")
    guard_sources(src)
    assert run_cli("export", src, tmp_path / "x.raw", "--no-progress").returncode != 0
    out = tmp_path / "rec"
    r = run_cli("recover", src, out, "--no-progress", "--json")
    assert r.returncode == ExitCode.DATA_REPLACED, r.stderr.decode()  # the middle's data is lost
    assert "1 unreadable image(s) left out" in r.stderr.decode()
    rec = json.loads(r.stdout)
    [d] = rec["dropped_levels"]
    assert d["guid"] == guids["mid"] and "does not exist" in d["reason"]
    assert d["merged_into_children_on"] == guids["base"]
    _assert_same_tree(src, out, {guids["mid"]})
    _assert_clean_output(out)
    got = _output_snapshots(out, tmp_path)
    assert set(got) == {guids[n] for n in ("base", "top", "branch")}
    for n in ("base", "top", "branch"):
        assert got[guids[n]] == _model(n, {}, "older", {"mid"}), n
    assert got[guids["top"]] == _qemu_read([str(src / "base.hds"), str(src / "top.hds")],
                                           tmp_path / "q.raw")


def test_flatten_and_refusals(tmp_path: Path, guard_sources) -> None:
    src = tmp_path / "src"
    guids = _build_tree(src, 2)
    guard_sources(src)
    out = tmp_path / "flat"
    rec = _recover(src, out, "--flatten", "-s", guids["branch"])
    assert not rec["snapshots_kept"] and sorted(os.listdir(out)) == [
        "DiskDescriptor.xml", "recovery.json", "root.hds"]
    assert _qemu_read([str(out / "root.hds")], tmp_path / "f.raw") == _model("branch", {}, "older")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run_cli("recover", src, tmp_path / "full", "--no-progress")
    err = r.stderr.decode()
    assert r.returncode == ExitCode.OUTPUT and len(err.splitlines()) == 1 and "not an empty folder" in err


# -- damaged headers (issue #5 item 5) ------------------------------------------------------------------
@pytest.mark.parametrize("case", ["v2-single", "v1-chain2", "ext4-gpt-chain2"])
def test_header_garbage_inferred(corpus_case, tmp_path: Path, guard_sources, case: str) -> None:
    """The top's 64 header bytes are garbage: strict readers refuse it with one line; under
    --salvage the cluster size, version and m_Size are inferred from the BAT (and the descriptor
    and the other headers), reported as a warning with the evidence, and every snapshot of the
    recovered disk reads like the corpus' expected contents."""
    src = corpus_case(case)
    [m] = make_variants(src, tmp_path / "var", only=["header-garbage"])
    guard_sources(m.path)
    r = run_cli("export", m.path, tmp_path / "strict.raw", "--no-progress")
    err = r.stderr.decode().strip()
    assert r.returncode == ExitCode.BAD_IMAGE and len(err.splitlines()) == 1 and "offset 0" in err
    chk = json.loads(run_cli("check", m.path, "--json").stdout)
    assert {f["code"] for f in chk["findings"]} == {"HEADER_SIGNATURE", "HEADER_INFERRED"}
    assert chk["exit_code"] == 2  # damaged but salvageable, no longer unreadable
    out = tmp_path / "rec"
    rec = _recover(m.path, out)
    [w] = [w for w in rec["warnings"] if "header inferred" in w]
    assert "cluster size 1048576 bytes" in w and ("v1" if case == "v1-chain2" else "v2") in w
    assert "non-zero BAT entries are distinct" in w
    _assert_clean_output(out)
    want = expected_hashes(src)
    top = _tree(out)[0]
    for g, data in _output_snapshots(out, tmp_path).items():
        key = f"expected-{g}.raw" if g != top else "expected.raw"
        assert hashlib.sha256(data).hexdigest() == want[key], (case, g)


def test_header_and_bat_garbage_not_inferred(tmp_path: Path, guard_sources) -> None:
    """Garbage header and garbage BAT: nothing consistent to infer. A salvage export says so in
    one line; recover leaves the image out, the middle snapshot becomes the top."""
    src = tmp_path / "src"
    guids = _build_tree(src, 2)
    with open(src / "top.hds", "r+b") as f:
        f.write(b"\x99" + random.Random(7).randbytes(C - 1))
    guard_sources(src)
    r = run_cli("export", src, tmp_path / "x.raw", "--no-progress", "--salvage")
    err = r.stderr.decode().strip()
    assert r.returncode == ExitCode.BAD_IMAGE and len(err.splitlines()) == 1, err
    assert "header inference failed" in err
    out = tmp_path / "rec"
    rec = _recover(src, out)
    [d] = rec["dropped_levels"]
    assert d["guid"] == guids["top"] and "header inference failed" in d["reason"]
    assert rec["snapshot"] == guids["mid"] == _tree(out)[0]
    _assert_same_tree(src, out, {guids["top"]})
    _assert_clean_output(out)
    got = _output_snapshots(out, tmp_path)
    for n in ("base", "mid", "branch"):
        assert got[guids[n]] == _model(n, {}, "older"), n
