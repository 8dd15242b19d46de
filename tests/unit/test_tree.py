"""The file tree a mount shows, driven without FUSE: a disk made here with ImageWriter."""

from __future__ import annotations

from pathlib import Path

from ploopfs.services.tree import Dir, File, MountTree
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

C = 64 << 10


def _disk(folder: Path) -> tuple[Path, list[bytes]]:
    """A 2-level chain of 1 MiB: base writes cluster 1, the top rewrites cluster 2."""
    base, top = bytearray(1 << 20), bytearray(1 << 20)
    with ImageWriter.create(folder / "root.hds", 1 << 20, C) as w:
        w.write_cluster(1, b"B" * C)
    base[C:2 * C] = b"B" * C
    top[:] = base
    with ImageWriter.create(folder / "root.hds.1", 1 << 20, C) as w:
        w.write_cluster(2, b"T" * C)
    top[2 * C:3 * C] = b"T" * C
    d = chain_descriptor(["root.hds", "root.hds.1"], 1 << 20, C)
    write_descriptor(folder / "DiskDescriptor.xml", d)
    return folder, [bytes(base), bytes(top)]


def test_tree_serves_every_snapshot(tmp_path: Path) -> None:
    folder, models = _disk(tmp_path)
    with open_source(folder) as disk:
        tree = MountTree(disk, None)
        root = tree.root
        assert {"disk", "info.json", "snapshots"} <= set(root.children)
        f = root.children["disk"]
        assert isinstance(f, File) and f.size == 1 << 20
        assert bytes(f.read(0, f.size)) == models[1]
        assert f.stored == 2 * C  # the base's cluster 1 and the top's cluster 2
        snaps = root.children["snapshots"]
        assert isinstance(snaps, Dir)
        guids = [e.guid.strip("{}") for e in disk.chain()]
        assert set(snaps.children) == set(guids)
        for g, model in zip(guids, models, strict=True):
            sd = snaps.children[g]
            assert isinstance(sd, Dir)
            sf = sd.children["disk"]
            assert isinstance(sf, File)
            assert bytes(sf.read(0, sf.size)) == model
            assert bytes(sf.read(sf.size - 10, 100)) == model[-10:]  # clipped at the end
