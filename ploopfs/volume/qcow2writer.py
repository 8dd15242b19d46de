"""A new qcow2 v3 image, written front to back (docs/formats.md, "qcow2 output").

The layout is format/qcow2.py's: data clusters and L2 tables are appended in virtual order
(each L2 table right after the last cluster it maps), then the L1 table, the refcount blocks
and the refcount table; the header (cluster 0) is written last, then the file is fsynced.
Only one L2 table is held in memory. The file is opened through `fileio`; `abort` closes and
removes it (only if this process created it).

Every write is whole clusters at cluster offsets, so the file is written with O_DIRECT where
the filesystem allows it (set on fileio's descriptor with fcntl): the data goes from the
caller's buffer to the device, with no page cache pages to allocate, dirty and flush, and the
final fsync has only metadata left to do. Through the page cache the same export spent most of
its time in the kernel's write path and the final fsync, and far more under memory and write
load (docs/benchmarks.md, qcow2_bench). O_DIRECT needs an aligned buffer: `buffer(n)` gives
page-aligned memory for the caller's data; any other buffer (and every metadata write) is
copied through an aligned staging buffer. A filesystem that refuses O_DIRECT, or a write that
fails with EINVAL under it, falls back to ordinary writes for the rest of the file.

`next_buffer` hands out DEPTH such buffers in turn: the data written from one goes to the file
on a worker thread while the caller reads the next chunk into the other, so reading the source
and writing the output overlap (os.pwrite and os.preadv release the GIL). A buffer is handed
out again only once its writes are done; the metadata is written on the caller's thread.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import sys
from array import array
from concurrent.futures import Future, ThreadPoolExecutor

from ploopfs.errors import OutputError
from ploopfs.format import qcow2
from ploopfs.volume import fileio

_SWAP = sys.byteorder == "little"
_O_DIRECT = getattr(os, "O_DIRECT", 0)
STAGING = 1 << 20  # bytes of the aligned buffer that other buffers are copied through
DEPTH = 2  # buffers of next_buffer: one being filled while the other one is written


def aligned_buffer(n: int) -> memoryview:
    """`n` bytes of writable, page-aligned (anonymous mapping) memory, as O_DIRECT needs."""
    return memoryview(mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False where the filesystem refuses it."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return on


class Qcow2Writer:
    def __init__(self, path: str, fd: int, size: int, cluster_size: int,
                 backing_file: str | None, direct: bool = True) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.cluster_size = cluster_size
        self.backing_file = backing_file
        self.l2n = qcow2.l2_entries(cluster_size)
        self.l1 = array("Q", bytes(8 * qcow2.l1_size(size, cluster_size)))
        self._host = 1  # next free host cluster; cluster 0 is the header
        self._l2_index = -1
        self._l2 = array("Q", bytes(8 * self.l2n))
        self._last = -1  # last virtual cluster given an entry (they must increase)
        self.data_clusters = 0
        self.zero_clusters = 0
        self.file_bytes = 0
        self.direct = _set_direct(fd, True) if direct else False
        self._staging: memoryview | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._bufs: list[memoryview] = []
        self._inflight: list[list[Future[None]]] = []
        self._turn = -1

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int,
               cluster_size: int = qcow2.DEFAULT_CLUSTER_SIZE, *,
               backing_file: str | None = None, replace: bool = False,
               direct: bool = True) -> Qcow2Writer:
        """A new file at `path` (through fileio). `direct`: write with O_DIRECT where the
        filesystem allows it (see the module's docstring)."""
        p = os.fspath(path)
        qcow2.cluster_bits(cluster_size)
        why = qcow2.check_size(size, cluster_size)
        if why:
            raise OutputError(why, p)
        fd = fileio.create(p, replace=replace, what="qcow2 image",
                           hint="; pass --force to replace an earlier output")
        return cls(p, fd, size, cluster_size, backing_file, direct)

    # -- entries, in increasing virtual cluster order ---------------------------------------
    def _entry(self, vc: int, value: int) -> None:
        if vc <= self._last or vc * self.cluster_size >= self.size:
            raise ValueError(f"virtual cluster {vc} out of order or past the disk")
        self._last = vc
        idx, slot = divmod(vc, self.l2n)
        if idx != self._l2_index:
            self._flush_l2()
            self._l2_index = idx
        self._l2[slot] = value

    def _flush_l2(self) -> None:
        if self._l2_index < 0:
            return
        table = self._l2
        if _SWAP:
            table = array("Q", table)
            table.byteswap()
        off = self._host * self.cluster_size
        self._pwrite_meta(memoryview(table).cast("B"), off)
        self.l1[self._l2_index] = qcow2.data_entry(off)
        self._host += 1
        self._l2 = array("Q", bytes(8 * self.l2n))
        self._l2_index = -1

    def write_data(self, vcluster: int, data: bytes | bytearray | memoryview) -> None:
        """Whole clusters of data (the last one of the disk zero-padded by the caller) for
        virtual clusters vcluster, vcluster+1, …, appended as one write."""
        c = self.cluster_size
        n, rest = divmod(len(data), c)
        if rest or n == 0:
            raise ValueError("write_data takes whole clusters")
        if vcluster <= self._last:
            raise ValueError(f"virtual cluster {vcluster} out of order")
        base = self._host
        if self._pool is not None:  # data from next_buffer: written on the worker thread
            self._inflight[self._turn].append(
                self._pool.submit(self._pwrite, data, base * c, False))
        else:
            self._pwrite(data, base * c)
        self._host += n
        for i in range(n):
            self._entry(vcluster + i, qcow2.data_entry((base + i) * c))
        self.data_clusters += n

    def write_zero(self, vcluster: int, count: int = 1) -> None:
        """Clusters that read as zeros whatever a backing file holds (no data allocated)."""
        for i in range(count):
            self._entry(vcluster + i, qcow2.ZERO_CLUSTER)
        self.zero_clusters += count

    # -- end ---------------------------------------------------------------------------------
    def close(self) -> int:
        """Write the metadata and header, fsync, close. Returns the file size."""
        c = self.cluster_size
        try:
            self._drain()
            self._flush_l2()
            l1 = array("Q", self.l1)
            if _SWAP:
                l1.byteswap()
            l1_bytes = memoryview(l1).cast("B")
            l1_clusters = max(1, -(-len(l1_bytes) // c))
            l1_off = self._host * c
            self._pwrite_meta(bytes(l1_bytes) + bytes(l1_clusters * c - len(l1_bytes)), l1_off)
            self._host += l1_clusters
            blocks, table = qcow2.refcount_layout(self._host, c)
            total = self._host + blocks + table
            per_block = c // qcow2.REFCOUNT_BYTES
            offsets = []
            for b in range(blocks):
                off = (self._host + b) * c
                self._pwrite_meta(qcow2.refcount_block(b * per_block, total, c), off)
                offsets.append(off)
            rt_off = (self._host + blocks) * c
            self._pwrite_meta(qcow2.refcount_table(offsets, table, c), rt_off)
            self._host = total
            head = qcow2.header(size=self.size, cluster_size=c, l1_entries=len(self.l1),
                                l1_offset=l1_off, refcount_table_offset=rt_off,
                                refcount_table_clusters=table, backing_file=self.backing_file)
            self._pwrite_meta(head, 0)
            os.fsync(self.fd)
        except OSError as e:
            raise OutputError(f"write failed: {e.strerror}", self.path) from None
        finally:
            self._stop()  # no write of the worker may outlive the descriptor
            os.close(self.fd)
            self.fd = -1
        self.file_bytes = total * c
        return self.file_bytes

    def abort(self) -> None:
        """Close and remove the partial file."""
        self._stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        fileio.remove(self.path)

    def buffer(self, n: int) -> memoryview:
        """Page-aligned memory for the caller's data: write_data of views of it (at multiples
        of the cluster size) goes to the file without a copy under O_DIRECT."""
        return aligned_buffer(n)

    def next_buffer(self, n: int) -> memoryview:
        """One of DEPTH page-aligned buffers of `n` bytes, in turn, for the caller to fill:
        write_data of views of it is written on the worker thread (without a copy under
        O_DIRECT) while the caller fills the next one. The caller must not touch a buffer
        after the next call, which may still be writing it."""
        if self._pool is None:
            if not self._bufs:
                self._bufs = [aligned_buffer(n) for _ in range(DEPTH)]
                self._inflight = [[] for _ in range(DEPTH)]
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="qcow2-write")
        if n > len(self._bufs[0]):
            raise ValueError("next_buffer: larger than the first buffer asked for")
        self._turn = (self._turn + 1) % DEPTH
        self._wait(self._turn)
        return self._bufs[self._turn][:n]

    def _wait(self, turn: int) -> None:
        futures, self._inflight[turn] = self._inflight[turn], []
        for f in futures:
            f.result()  # the worker's OutputError, raised here

    def _drain(self) -> None:
        """Wait for every write of the worker thread (raising the first failure), end it."""
        if self._pool is None:
            return
        for turn in range(DEPTH):
            self._wait(turn)
        self._stop()

    def _stop(self) -> None:
        """End the worker thread: queued writes dropped, a running one waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._inflight = [[] for _ in range(DEPTH)]

    def _pwrite_meta(self, data: bytes | bytearray | memoryview, off: int) -> None:
        """A metadata write (whole clusters): copied through the aligned staging buffer under
        O_DIRECT."""
        if self.direct:
            self._staged(memoryview(data), off)
        else:
            self._pwrite(data, off)

    def _staged(self, view: memoryview, off: int) -> None:
        if self._staging is None:
            self._staging = aligned_buffer(STAGING)
        for pos in range(0, len(view), STAGING):
            piece = view[pos:pos + STAGING]
            self._staging[:len(piece)] = piece
            self._pwrite(self._staging[:len(piece)], off + pos)

    def _pwrite(self, data: bytes | bytearray | memoryview, off: int, stage: bool = True) -> None:
        """Write all of `data` at `off`. Under O_DIRECT an EINVAL is an unaligned buffer or a
        filesystem that refuses O_DIRECT writes: with `stage` it goes through `_unaligned`;
        without (the worker thread, whose buffers are aligned and which must not share the
        staging buffer with the caller's thread) O_DIRECT is turned off and the write
        retried."""
        view = memoryview(data)
        try:
            while view:
                try:
                    n = os.pwrite(self.fd, view, off)
                except OSError as e:
                    if e.errno != errno.EINVAL or not self.direct:
                        raise
                    if stage:
                        self._unaligned(view, off)
                        return
                    self.direct = _set_direct(self.fd, False)
                    continue
                if n <= 0:
                    raise OutputError("short write", self.path, offset=off)
                view, off = view[n:], off + n
        except OSError as e:
            raise OutputError(f"write failed: {e.strerror}", self.path, offset=off) from None

    def _unaligned(self, view: memoryview, off: int) -> None:
        """EINVAL under O_DIRECT: copy through the aligned staging buffer; if that is refused
        too, write without O_DIRECT from here on."""
        if self._staging is not None and view.obj is self._staging.obj:
            self.direct = _set_direct(self.fd, False)
            self._pwrite(view, off)
            return
        self._staged(view, off)
