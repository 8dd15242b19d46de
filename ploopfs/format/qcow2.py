"""qcow2 version 3 layout as bytes, for `export -f qcow2` (docs/formats.md, "qcow2 output").

Pure: no I/O. The writer (volume/qcow2writer.py) lays a file out as

    cluster 0            header, header extensions (backing format, end), backing file name
    clusters 1 … k       data clusters and L2 tables, in virtual order, each L2 table right
                         after the last data cluster it maps
    then                 the L1 table, the refcount blocks, the refcount table

so every cluster of the file is in use exactly once: refcount 1 for clusters 0 … n-1, and the
refcount blocks are a run of ones (refcount_order 4, 16-bit counts). Entries follow the qcow2
specification (qemu docs/interop/qcow2.txt): L1 and L2 entries carry the host offset in bits
9-55 and bit 63 ("copied", refcount 1); an L2 entry of 1 (bit 0, no offset) is a zero cluster
that reads as zeros whatever a backing file holds there.
"""

from __future__ import annotations

import struct

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_LENGTH = 104  # the v3 header without the optional compression-type byte
REFCOUNT_ORDER = 4  # 16-bit refcounts
REFCOUNT_BYTES = 1 << (REFCOUNT_ORDER - 3)
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_END = 0
OFLAG_COPIED = 1 << 63
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
ZERO_CLUSTER = 1  # L2 entry: reads as zeros, nothing allocated
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
DEFAULT_CLUSTER_SIZE = 64 << 10
MAX_L1_BYTES = 32 << 20  # qemu's QCOW_MAX_L1_SIZE
MAX_BACKING_NAME = 1023  # qemu refuses longer names

_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")


def cluster_bits(cluster_size: int) -> int:
    bits = cluster_size.bit_length() - 1
    if cluster_size != 1 << bits or not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise ValueError(f"qcow2 cluster size must be a power of two from 512 B to 2 MiB, "
                         f"not {cluster_size}")
    return bits


def l2_entries(cluster_size: int) -> int:
    """Entries of one L2 table (one cluster of 8-byte entries)."""
    return cluster_size // 8


def l1_size(size: int, cluster_size: int) -> int:
    """L1 entries needed for a disk of `size` bytes."""
    span = l2_entries(cluster_size) * cluster_size
    return -(-size // span)


def check_size(size: int, cluster_size: int) -> str | None:
    """Why a disk of `size` bytes cannot be a qcow2 image with this cluster size, or None."""
    if l1_size(size, cluster_size) * 8 > MAX_L1_BYTES:
        return (f"the disk is {size} bytes; with {cluster_size}-byte clusters its L1 table "
                f"would exceed {MAX_L1_BYTES} bytes, qemu's limit")
    if size >= 1 << 63:
        return f"the disk is {size} bytes, more than qcow2 addresses"
    return None


def data_entry(host_offset: int) -> int:
    """L1 or L2 entry of an allocated cluster (refcount 1)."""
    return (host_offset & OFFSET_MASK) | OFLAG_COPIED


def refcount_layout(used_clusters: int, cluster_size: int) -> tuple[int, int]:
    """(refcount blocks, refcount table clusters) covering `used_clusters` plus themselves."""
    per_block = cluster_size // REFCOUNT_BYTES
    per_table_cluster = cluster_size // 8
    blocks, table = 1, 1
    while True:
        total = used_clusters + blocks + table
        need_blocks = -(-total // per_block)
        need_table = -(-need_blocks // per_table_cluster)
        if need_blocks <= blocks and need_table <= table:
            return blocks, table
        blocks, table = max(blocks, need_blocks), max(table, need_table)


def refcount_block(first: int, count: int, cluster_size: int) -> bytes:
    """Refcount block covering clusters first … first+per_block-1, of which the first `count`
    clusters overall (0 … count-1) are in use."""
    per_block = cluster_size // REFCOUNT_BYTES
    ones = max(0, min(per_block, count - first))
    return b"\x00\x01" * ones + bytes((per_block - ones) * REFCOUNT_BYTES)


def refcount_table(block_offsets: list[int], clusters: int, cluster_size: int) -> bytes:
    body = b"".join(struct.pack(">Q", o) for o in block_offsets)
    return body + bytes(clusters * cluster_size - len(body))


def header(*, size: int, cluster_size: int, l1_entries: int, l1_offset: int,
           refcount_table_offset: int, refcount_table_clusters: int,
           backing_file: str | None = None) -> bytes:
    """Cluster 0: the header, its extensions (backing format "qcow2" when backed) and the
    backing file name, padded to one cluster."""
    bits = cluster_bits(cluster_size)
    exts = b""
    backing_off = backing_len = 0
    name = b""
    if backing_file is not None:
        name = backing_file.encode()
        if not 0 < len(name) <= MAX_BACKING_NAME:
            raise ValueError(f"backing file name of {len(name)} bytes")
        exts += _extension(EXT_BACKING_FORMAT, b"qcow2")
    exts += _extension(EXT_END, b"")
    head = _HEADER.pack(MAGIC, VERSION, 0, 0, bits, size, 0, l1_entries, l1_offset,
                        refcount_table_offset, refcount_table_clusters, 0, 0,
                        0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH)
    if name:
        backing_off = len(head) + len(exts)
        backing_len = len(name)
        head = _HEADER.pack(MAGIC, VERSION, backing_off, backing_len, bits, size, 0, l1_entries,
                            l1_offset, refcount_table_offset, refcount_table_clusters, 0, 0,
                            0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH)
    out = head + exts + name
    if len(out) > cluster_size:
        raise ValueError("qcow2 header does not fit in one cluster")
    return out + bytes(cluster_size - len(out))


def _extension(kind: int, data: bytes) -> bytes:
    pad = -len(data) % 8
    return struct.pack(">II", kind, len(data)) + data + bytes(pad)


def decode_header(data: bytes) -> dict[str, int]:
    """The fields the tests and the writer care about (no validation beyond the magic)."""
    (magic, version, bf_off, bf_size, bits, size, _crypt, l1_entries, l1_off, rt_off, rt_clusters,
     _nsnap, _snap_off, incompat, compat, autoclear, rorder, hlen) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a qcow2 image")
    return {"version": version, "backing_file_offset": bf_off, "backing_file_size": bf_size,
            "cluster_bits": bits, "size": size, "l1_size": l1_entries, "l1_table_offset": l1_off,
            "refcount_table_offset": rt_off, "refcount_table_clusters": rt_clusters,
            "incompatible_features": incompat, "compatible_features": compat,
            "autoclear_features": autoclear, "refcount_order": rorder, "header_length": hlen}
