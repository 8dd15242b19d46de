"""The rules across the images of one chain (format.md §1.4, §4.2), lenient: what breaks them and
how badly. The disk opener raises what a strict read cannot pass, salvage reads on where it can,
and `check` reports every one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ploopfs.format.findings import Anomaly, Severity
from ploopfs.format.header import SECTOR, Header


@dataclass(frozen=True)
class Level:
    path: str
    header: Header | None  # None: a raw base, or an image whose header could not be used


def chain_anomalies(levels: Sequence[Level], *, blocksize: int = 0, disk_size: int = 0,
                    current_top: bool = True, descriptor: str | None = None) -> list[Anomaly]:
    """`levels` base first. `blocksize`, `disk_size`: the descriptor's <Blocksize> and
    <Disk_size> in sectors (0: absent); `current_top`: the chain ends at the disk's top, the one
    <Disk_size> describes. Severities: FATAL where no reader can make one disk of the images
    (their cluster sizes differ), DAMAGED where only salvage reads on (the descriptor's
    <Blocksize> disagrees with every image; v1 mixed with v2), WARNING where ploop would show
    the disk differently from what the files suggest."""
    out: list[Anomaly] = []
    ploop = [lv for lv in levels if lv.header is not None]
    if not ploop:
        return out
    first = ploop[0]
    assert first.header is not None
    for lv in ploop:
        h = lv.header
        assert h is not None
        if h.cluster_sectors != first.header.cluster_sectors:
            out.append(Anomaly(
                "DESCRIPTOR_CLUSTER_MISMATCH", Severity.FATAL,
                f"cluster size {h.cluster_sectors} sectors differs from "
                f"{first.header.cluster_sectors} in {first.path}: not one disk", lv.path, 0x1C))
        elif blocksize and h.cluster_sectors != blocksize:
            out.append(Anomaly(
                "DESCRIPTOR_CLUSTER_MISMATCH", Severity.DAMAGED,
                f"cluster size {h.cluster_sectors} sectors differs from the descriptor's "
                f"<Blocksize> {blocksize}", lv.path, 0x1C))
        if h.version != first.header.version:
            out.append(Anomaly(
                "DESCRIPTOR_VERSION_MISMATCH", Severity.DAMAGED,
                f"format v{h.version} mixed with v{first.header.version} of {first.path} in one "
                "chain: ploop refuses it; --salvage reads each image by its own version",
                lv.path, 0))
    top = levels[-1]
    if top.header is not None:
        top_size = top.header.disk_bytes
        for lv in ploop[:-1]:
            assert lv.header is not None
            if lv.header.disk_bytes > top_size:
                out.append(Anomaly(
                    "DESCRIPTOR_LOWER_LARGER", Severity.WARNING,
                    f"lower delta is larger ({lv.header.disk_bytes} bytes) than the top "
                    f"({top_size}): the excess is not part of the disk; dm-ploop refuses such a "
                    "chain", lv.path, 0x20))
        if descriptor and current_top and disk_size and disk_size * SECTOR != top_size:
            out.append(Anomaly(
                "DESCRIPTOR_DISK_SIZE", Severity.WARNING,
                f"<Disk_size> is {disk_size} sectors but the top image describes "
                f"{top_size // SECTOR}; the disk is <Disk_size>, as ploop shows it", descriptor,
                element="Disk_Parameters/Disk_size"))
    return out
