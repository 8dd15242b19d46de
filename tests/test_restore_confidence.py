"""`ploopfs restore-descriptor` gives no false confidence (docs/restore.md):

* genuine chains with partial-cluster writes and clusters allocated as zeros over the parent's
  data (discard/zeroing, format.md §11 trap 24) read as the content model expects: names and
  content agree, every link is high, exit 0.

The truth is always the chain as built, read by qemu-img; sources are hash-guarded.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import qemu_json_chain
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
