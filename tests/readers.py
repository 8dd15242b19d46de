"""Independent readers the tests compare ploopfs with: dissect.hypervisor's HDD/HDS."""

from __future__ import annotations

from pathlib import Path

from dissect.hypervisor.disk.hdd import HDD, HDS
from dissect.util.stream import AlignedStream


def _dissect_read(stream: AlignedStream, cluster: int) -> bytes:
    """Read a dissect stream one cluster per underlying `_read` call.

    dissect.hypervisor 3.21 `HDS._iter_runs` merges a hole of N bytes with a following mapped
    cluster stored at file offset N (it uses offset 0 as the hole marker and tests
    `read_offset == run_offset + run_size`), so a read spanning both returns zeros for that
    cluster. With every stream's alignment set to the cluster size and one cluster per read,
    each `_read` covers a single cluster and no runs are merged."""
    streams = [stream]
    for _storage, s in getattr(stream, "streams", []):
        while s is not None:
            streams.append(s)
            s = getattr(s, "parent", None)
    for s in streams:  # nothing has been read yet, so position 0 stays aligned
        s.align = cluster
    parts = []
    for pos in range(0, stream.size, cluster):
        stream.seek(pos)
        parts.append(stream.read(cluster))
    return b"".join(parts)


def dissect_read_image(image: Path) -> bytes:
    with open(image, "rb") as fh:
        s = HDS(fh)
        return _dissect_read(s, s.cluster_size)


def dissect_read_disk(folder: Path, guid: str, cluster: int) -> bytes:
    return _dissect_read(HDD(folder).open(guid), cluster)
