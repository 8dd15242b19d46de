"""`ploopfs restore-descriptor` gives no false confidence (docs/restore.md):

* a delta whose header was rebuilt from its BAT (`ploopfs recover` of a lone image with a zeroed
  header: m_Size from the last mapped slot, a lower bound) must not be taken for the base just
  because it looks smaller; names and content place it, and its size decides nothing;
* genuine chains with partial-cluster writes and clusters allocated as zeros over the parent's
  data (discard/zeroing, format.md §11 trap 24) read as the content model expects: names and
  content agree, every link is high, exit 0;
* a link that only an uncertain size decides is low, never high;
* `--salvage`: damaged headers are inferred (or the image left out), the output says what it
  could not decide, exit 15.

The truth is always the chain as built, read by qemu-img; sources are hash-guarded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import qemu_json_chain, run_cli
from damage import bat_entries, bat_entry
from test_restore import (
    DD,
    build_chain,
    export_sha,
    file_sha,
    link_images,
    partial_writes,
    qemu_create,
    qemu_sha,
    qemu_write,
    restore_json,
)

from ploopfs.format.descriptor_scan import parse_descriptor

A = "root.hds.{7c1e5a00-0000-4000-8000-00000000000a}"
B = "root.hds.{7c1e5a00-0000-4000-8000-00000000000b}"
NAMES = ["root.hds", A, B]


def named_chain(made: Path, rng: random.Random, cluster: int, clusters: int,
                extra: list[list[tuple[int, int, int]]]) -> list[Path]:
    """root.hds <- A <- B, as ploop names them (format.md §4.3), written through qemu's chain:
    partial-cluster writes into a few hot clusters at every level, plus `extra[level]`."""
    made.mkdir()
    files: list[Path] = []
    hot = list(range(12))
    for level, name in enumerate(NAMES):
        f = made / name
        qemu_create(f, clusters * cluster, cluster)
        files.append(f)
        w = partial_writes(rng, clusters * cluster, cluster, 24, hot) + extra[level]
        qemu_write(str(f) if level == 0 else qemu_json_chain(files), w)
    return files


def zero_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(bytes(64))


def descriptor_files(folder: Path) -> list[Path]:
    d = parse_descriptor((folder / DD).read_bytes())
    return [folder / im.file for im in d.chain()]


# -- the content model agrees with what ploop writes ----------------------------------------------
@pytest.mark.parametrize("cluster,seed", [(64 << 10, 1), (1 << 20, 1), (64 << 10, 5)])
def test_zero_clusters_and_partial_writes_high(cluster, seed, tmp_path, guard_sources):
    """Copy-on-write copies whole clusters up, and a child may allocate a cluster as zeros over
    the parent's data (a discard or a zeroing write): neither argues for another order, so the
    names and the content agree and the result is high confidence. (Before, the zero clusters
    made "content alone" prefer a tree with the zero-filled delta at the bottom: exit 1.)"""
    rng = random.Random(seed)
    C = cluster
    full = [(v * C, C, 0x30 + v) for v in range(20, 26)]
    zeros_a = [(v * C, C, 0) for v in (20, 21, 22)]
    zeros_b = [(v * C, C, 0) for v in (23, 24)]
    files = named_chain(tmp_path / "made", rng, C, 32, [full, zeros_a, zeros_b])
    guard_sources(*files)
    work = tmp_path / "work"
    link_images(tmp_path / "made", work)
    rc, rep = restore_json(work)
    assert rep["chain"] == NAMES, rep["links"]
    assert rc == 0 and rep["confidence"] == "high", (rep["decisions"], rep["notes"])
    assert all(d["confidence"] == "high" for d in rep["decisions"])
    assert not any(d["what"] == "conflict" for d in rep["decisions"])
    # qemu reads the chain in the written descriptor's order like the chain as built.
    assert qemu_sha(descriptor_files(work), tmp_path) == qemu_sha(files, tmp_path)
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)


# -- sizes that are only a lower bound --------------------------------------------------------------
def recovered_chain(tmp_path: Path, damaged: int, guard_sources) -> tuple[list[Path], Path, dict]:
    """The issue's folder: a 3-level chain (1 MiB clusters, 32 MiB disk), its descriptor lost,
    level `damaged` with a zeroed header; as docs/restore.md used to advise, `ploopfs recover`
    was run on that image alone and its output put in its place. The recovered header has
    m_Size from the last mapped slot, a lower bound."""
    rng = random.Random(17)
    C = 1 << 20
    base = [(v * C + rng.randrange(C - 8192), rng.randrange(512, 8192), 0x10 + v)
            for v in range(24)]
    mid = [(v * C + rng.randrange(C - 8192), rng.randrange(512, 8192), 0x60 + v) for v in range(8)]
    top = [(v * C + rng.randrange(C - 8192), rng.randrange(512, 8192), 0xa0 + v)
           for v in (2, 4, 6, 11)]
    files = named_chain(tmp_path / "made", rng, C, 32, [base, mid, top])
    guard_sources(*files)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(files[damaged], broken / files[damaged].name)
    zero_header(broken / files[damaged].name)
    rec = tmp_path / "rec"
    r = run_cli("recover", broken / files[damaged].name, rec)
    assert r.returncode == 0, r.stderr.decode()
    assert b"a lower bound" in r.stderr  # recover says so, but its output header cannot
    work = tmp_path / "work"
    link_images(tmp_path / "made", work, skip=(DD, files[damaged].name))
    shutil.copy(rec / files[damaged].name, work / files[damaged].name)
    guard_sources(work)
    rc, rep = restore_json(work)
    return files, work, rep | {"rc": rc}


def test_recovered_middle_is_not_the_base(tmp_path, guard_sources):
    """Before: the recovered middle delta (12 MiB of a 32 MiB disk) was made the base "by
    sizes" with [high], and root.hds put off the chain. Now its size decides nothing, the names
    place root.hds at the bottom and the content orders the deltas."""
    files, work, rep = recovered_chain(tmp_path, 1, guard_sources)
    assert rep["chain"] == NAMES, rep["links"]
    facts = {i["file"]: i for i in rep["images"]}
    assert facts[A]["virtual_size"] == 12 << 20 and not facts[A]["size_exact"]
    assert facts["root.hds"]["size_exact"] and facts[B]["size_exact"]
    assert any(n.startswith(A) and "lower bound" in n for n in rep["notes"])
    for d in rep["decisions"]:
        assert d["decided_by"] not in ("structure", "uncertain sizes") or d["confidence"] == "low"
    assert rep["rc"] == 0, rep["decisions"]
    assert rep["disk_size"] == 32 << 20
    # The rebuilt chain reads like the original chain, as qemu reads it (the small delta
    # simply does not map the clusters past its size, format.md §2.8).
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)


def test_recovered_top_disk_size_is_a_guess(tmp_path, guard_sources):
    """The recovered image is the top: its lower-bound size cannot be <Disk_size>. The largest
    size in its chain is used, and the disk size is reported as a low-confidence guess."""
    files, work, rep = recovered_chain(tmp_path, 2, guard_sources)
    assert rep["chain"] == NAMES, rep["links"]
    assert rep["disk_size"] == 32 << 20
    size = next(d for d in rep["decisions"] if d["what"] == "disk size")
    assert size["confidence"] == "low" and "lower bound" in size["text"]
    assert rep["rc"] == 1 and rep["confidence"] == "low"
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)


@pytest.mark.parametrize("tight", [True, False])
def test_only_sizes_decide(tight, tmp_path, guard_sources):
    """Two deltas with random names sharing no cluster, the lower one smaller (a grown disk,
    format.md §1.4): only the sizes tell the order. An exact size decides with high confidence.
    A size that ends at the image's last mapped cluster may be a lower bound (it cannot be told
    from a header rebuilt from the BAT): the same order, but low confidence, exit 1."""
    rng = random.Random(4)
    C = 64 << 10
    made = tmp_path / "made"
    made.mkdir()
    a, b = made / "x-older", made / "x-newer"
    qemu_create(a, 2 << 20, C)
    last = (2 << 20) - C if tight else 8 * C
    qemu_write(str(a), [*partial_writes(rng, 2 << 20, C, 6, list(range(4))), (last, 4096, 7)])
    qemu_create(b, 4 << 20, C)
    qemu_write(qemu_json_chain([a, b]), partial_writes(rng, 4 << 20, C, 6, list(range(40, 48))))
    for f in (a, b):
        os.utime(f, (1_600_000_000, 1_600_000_000))
    guard_sources(a, b)
    work = tmp_path / "work"
    link_images(made, work)
    rc, rep = restore_json(work)
    assert rep["chain"] == [a.name, b.name]
    link = next(L for L in rep["links"] if L["child"] == b.name)
    if tight:
        assert link["decided_by"] == "uncertain sizes" and link["confidence"] == "low"
        assert rc == 1
    else:
        assert link["decided_by"] == "structure" and link["confidence"] == "high"
        assert rc == 0, rep["decisions"]
    assert export_sha(work, tmp_path) == qemu_sha([a, b], tmp_path)


# -- damaged images: strict refusal, --salvage ------------------------------------------------------
def salvage_chain(tmp_path: Path, guard_sources, names: bool = True) -> list[Path]:
    """A 3-level chain (64 KiB clusters, 4 MiB), partial writes everywhere; ploop's names or
    random ones."""
    rng = random.Random(23)
    if names:
        files = named_chain(tmp_path / "made", rng, 64 << 10, 64, [[], [], []])
    else:
        files = build_chain(tmp_path / "made", rng, 3)
    guard_sources(*files)
    return files


def damaged_copy(tmp_path: Path, files: list[Path], damage) -> Path:
    """Real copies (they are damaged), descriptor-less; `damage(folder)` edits them."""
    work = tmp_path / "work"
    work.mkdir()
    for f in files:
        shutil.copy(f, work / f.name)
    damage(work)
    return work


def salvage_read_sha(folder: Path, tmp_path: Path) -> str:
    out = tmp_path / "salvage.raw"
    r = run_cli("export", folder, out, "--no-progress", "--salvage=older")
    assert r.returncode in (0, 15), r.stderr.decode()
    sha = file_sha(out)
    out.unlink()
    return sha


def strict_refused(work: Path, code: int) -> str:
    r = run_cli("restore-descriptor", work)
    err = r.stderr.decode()
    assert r.returncode == code and err.count("\n") == 1 and "--salvage" in err, (r.returncode, err)
    assert not (work / DD).exists()
    return err


@pytest.mark.parametrize("level", [0, 1, 2])
def test_zeroed_header_strict_then_salvage(level, tmp_path, guard_sources):
    """A lost descriptor and a zeroed header (level 0, 1 or 2). Before, the zeroed middle delta
    was taken for a raw base and the wrong chain came out [high], exit 0. Strict now refuses
    (exit 4, pointing at --salvage). --salvage infers the header from the BAT, rebuilds the
    right chain, says what it could not decide and exits 15; the salvage read of the new
    descriptor, and `recover` of it read by qemu-img, equal the chain as built."""
    files = salvage_chain(tmp_path, guard_sources)
    work = damaged_copy(tmp_path, files, lambda w: zero_header(w / NAMES[level]))
    guard_sources(work)
    err = strict_refused(work, 4)
    assert NAMES[level] in err and "damaged header" in err
    r = run_cli("restore-descriptor", work, "--salvage", "--json")
    assert r.returncode == 15, r.stderr.decode()
    rep = json.loads(r.stdout)
    assert rep["chain"] == NAMES and rep["partial"] and rep["exit_code"] == 15, rep["links"]
    assert rep["damage"] == {"left_out": 0, "inferred": 1, "bad_bat_entries": 0}
    assert any(NAMES[level] in u and "inferred" in u for u in rep["undecided"])
    facts = {i["file"]: i for i in rep["images"]}
    assert facts[NAMES[level]]["header_inferred"] and not facts[NAMES[level]]["size_exact"]
    assert "partial" in r.stderr.decode()
    assert rep["disk_size"] == 4 << 20
    assert salvage_read_sha(work, tmp_path) == qemu_sha(files, tmp_path)
    rec = tmp_path / "rec"
    r = run_cli("recover", work, rec)
    assert r.returncode == 0, r.stderr.decode()
    assert qemu_sha(descriptor_files(rec), tmp_path) == qemu_sha(files, tmp_path)
    # The text says the same.
    text = run_cli("restore-descriptor", work, "--salvage", "-n", "-o", tmp_path / "x.xml")
    assert text.returncode == 15 and b"could not decide: the header of " + NAMES[level].encode() \
        in text.stdout and b"result: PARTIAL" in text.stdout


def test_zeroed_header_random_names(tmp_path, guard_sources):
    """No names to tell a delta: a file without signature whose first cluster holds a BAT in
    the other images' layout is a damaged delta, not a raw base."""
    files = salvage_chain(tmp_path, guard_sources, names=False)
    work = damaged_copy(tmp_path, files, lambda w: zero_header(w / files[1].name))
    guard_sources(work)
    assert "holds a ploop BAT" in strict_refused(work, 4)
    r = run_cli("restore-descriptor", work, "--salvage", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 15 and rep["chain"] == [f.name for f in files], rep["links"]
    assert salvage_read_sha(work, tmp_path) == qemu_sha(files, tmp_path)


def test_unreadable_bat_entry(tmp_path, guard_sources):
    """A BAT entry of the middle delta points past the end of its file: strict exit 5 (with
    the --salvage hint); --salvage drops the entry, says so, and exits 15. The cluster is one
    the top maps too, so the top still reads exactly like the chain as built."""
    files = salvage_chain(tmp_path, guard_sources)
    mid = bat_entries(files[1])
    top = bat_entries(files[2])
    v = min(set(mid) & set(top))

    def damage(w: Path) -> None:
        bat_entry(w / A, v, 0x7FFFFFF0)

    work = damaged_copy(tmp_path, files, damage)
    guard_sources(work)
    strict_refused(work, 5)
    r = run_cli("restore-descriptor", work, "--salvage", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 15 and rep["chain"] == NAMES, rep["links"]
    assert rep["damage"] == {"left_out": 0, "inferred": 0, "bad_bat_entries": 1}
    assert any(A in u and "BAT_PAST_EOF" in u for u in rep["undecided"])
    assert salvage_read_sha(work, tmp_path) == qemu_sha(files, tmp_path)


def test_unusable_image_left_out(tmp_path, guard_sources):
    """The top's first cluster is overwritten with garbage behind an intact signature: no
    header can be inferred. --salvage leaves it out, rebuilds the rest, says where it could
    not place it, exit 15; the rebuilt disk reads like qemu's chain of the other two."""
    files = salvage_chain(tmp_path, guard_sources)

    def damage(w: Path) -> None:
        with open(w / B, "r+b") as f:
            f.seek(16)
            f.write(random.Random(1).randbytes((64 << 10) - 16))

    work = damaged_copy(tmp_path, files, damage)
    guard_sources(work)
    strict_refused(work, 4)
    r = run_cli("restore-descriptor", work, "--salvage", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 15 and rep["chain"] == NAMES[:2], (rep["left_out"], rep["links"])
    assert [lo["file"] for lo in rep["left_out"]] == [B]
    assert any(u.startswith(f"where {B} belongs") for u in rep["undecided"])
    assert export_sha(work, tmp_path) == qemu_sha(files[:2], tmp_path)


def test_salvage_on_intact_folder(tmp_path, guard_sources):
    """Nothing damaged: --salvage changes nothing (exit 0, not partial)."""
    files = salvage_chain(tmp_path, guard_sources)
    work = tmp_path / "work"
    link_images(tmp_path / "made", work)
    rc, rep = restore_json(work, "--salvage")
    assert rc == 0 and not rep["partial"] and rep["chain"] == NAMES, rep["decisions"]
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)


def test_salvage_leaves_out_another_cluster_size(tmp_path, guard_sources):
    """An image of another cluster size is not part of the disk (format.md §4.2): strict exit 7;
    --salvage leaves it out and says so (exit 15), the rest is rebuilt."""
    files = salvage_chain(tmp_path, guard_sources)
    stray = "root.hds.{7c1e5a00-0000-4000-8000-0000000000ff}"

    def damage(w: Path) -> None:
        qemu_create(w / stray, 4 << 20, 1 << 20)
        qemu_write(str(w / stray), [(0, 4096, 9)])

    work = damaged_copy(tmp_path, files, damage)
    guard_sources(work)
    r = run_cli("restore-descriptor", work)
    assert r.returncode == 7 and b"cluster size" in r.stderr, r.stderr.decode()
    r = run_cli("restore-descriptor", work, "--salvage", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 15 and rep["chain"] == NAMES, rep["links"]
    assert [lo["file"] for lo in rep["left_out"]] == [stray]
    assert "not one disk" in rep["left_out"][0]["reason"]
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)
