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

import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import qemu_json_chain, run_cli
from test_restore import (
    DD,
    export_sha,
    link_images,
    partial_writes,
    qemu_create,
    qemu_sha,
    qemu_write,
    restore_json,
)

from ploopfs.format.descriptor import parse_descriptor

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
