"""Storage what-if (`ploopfs du --dedup DISK...`, docs/dedup.md): how much
block-level deduplication and compression would save across one or many disks.

Each disk's virtual disk is read through its block map: unallocated ranges are skipped (a
ploop hole reads as zeros and would not be stored by ZFS either); the allocated ranges, rounded
out to the large block size, are read in chunks and handed to the C scanner (native/pf_dedup.c),
which counts all-zero blocks apart and hashes every other small (4 KiB) and large (128 KiB)
block with XXH3-128 into a reference-count table per size (a large block's hash is taken over
its small blocks' hashes, so the data is hashed once). Two workers each read a 1 MiB chunk and
hash it while it is still in their core's cache; reads and the C call run without the GIL.

Memory is bounded: a table that would outgrow its share of --memory switches to consistent
hash sampling (only hashes whose low k bits are zero are kept, k rising as needed), which keeps
exact reference counts for a uniform sample of the distinct blocks, so refs / entries estimates
the dedup ratio without bias. The report says which mode each table ended in.

Compression is measured with the real libraries (zlib level 6, zstd level 3, lz4 block
default) on a deterministic sample of large blocks: the ones whose content hash (XXH3-128, a
fixed function) satisfies (lo >> 32) mod N == 0, so the same content is always in or out of
the sample. Each distinct sampled block is compressed once, on another thread.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ploopfs.errors import UnsupportedError, UsageError
from ploopfs.native import DedupScanner
from ploopfs.volume.source import OpenOptions, open_source
from ploopfs.volume.volume import Volume

KIB = 1024
MIB = 1 << 20
# Bytes read and hashed per step: small enough to stay in a core's L2 cache between the read
# (a copy from the page cache) and the hashing, so the data crosses the memory bus once.
CHUNK = 4 * MIB  # per worker step: 1 MiB spent ~5 % more time in Python and syscalls (quiet A/B, 10 GiB)
THREADS = 2  # readers+hashers; each reads a chunk and hashes it, the table is shared
MAX_BACKLOG = 64  # sampled blocks waiting for the compressor before the scan waits for it
LARGE_SHARE = 16  # the large-block table gets 1/16 of --memory (it has 32x fewer entries)
ASHIFT = 12  # ZFS allocates in 4 KiB sectors on today's disks
COMPRESSORS = ("gzip-6", "zstd-3", "lz4")


@dataclass
class DedupOptions:
    small: int = 4 * KIB
    large: int = 128 * KIB
    memory: int = 1 << 30  # both tables together
    shift: int = 0  # start sampled at 1/2^shift (0 = exact until the memory limit)
    sample_every: int = 1024  # compression sample: 1 in N distinct large blocks; 0 = none
    snapshot: str | None = None
    open_options: OpenOptions = field(default_factory=OpenOptions)

    def check(self) -> None:
        if self.small <= 0 or self.large <= 0 or self.large % self.small:
            raise UsageError(f"--block-sizes: {self.small} must divide {self.large}")
        if CHUNK % self.large:
            raise UsageError(f"--block-sizes: the large size must divide {CHUNK} (1 MiB)")
        if self.large // self.small > 256:
            raise UsageError("--block-sizes: at most 256 small blocks per large one")
        if self.memory < 64 * KIB:
            raise UsageError(f"--memory {self.memory} is below the minimum of 64 KiB")
        if not 0 <= self.shift <= 40:
            raise UsageError("--sample-bits must be 0..40")
        if self.sample_every < 0:
            raise UsageError("--sample must be >= 0")


# -- reading plan --------------------------------------------------------------------------
def read_ranges(vol: Volume, large: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges covering every allocated cluster, rounded out to `large`
    blocks and merged; the rest of the disk is unallocated (reads as zeros)."""
    if vol.raw_base:  # what the raw file covers, not the whole disk (it may claim 128 TiB)
        pieces = [(s, s + n) for s, n in vol.stored_ranges()]
    else:
        c = vol.cluster_size
        pieces = [(v * c, (v + n) * c) for v, n in zip(vol.map.vstart.tolist(),
                                                        vol.map.count.tolist(), strict=True)]
    out: list[tuple[int, int]] = []
    for start, end in pieces:
        s = start // large * large
        e = min(-(-end // large) * large, vol.size)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        elif s < e:
            out.append((s, e))
    return out


def _chunks(ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    for s, e in ranges:
        for off in range(s, e, CHUNK):
            yield off, min(CHUNK, e - off)


# -- compression ---------------------------------------------------------------------------
def _compressors() -> dict[str, Callable[[bytes], int]]:
    import lz4.block
    import zstandard

    zc = zstandard.ZstdCompressor(level=3, write_content_size=False, write_checksum=False)
    return {
        "gzip-6": lambda b: len(zlib.compress(b, 6)),
        # a compressor object is not thread-safe: only the one compression thread uses it
        "zstd-3": lambda b: len(zc.compress(b)),
        "lz4": lambda b: len(lz4.block.compress(b, mode="default", store_size=False)),
    }


def zfs_asize(lsize: int, csize: int) -> int:
    """Bytes ZFS would allocate for a block: compressed only if that saves at least 1/8
    (zio_compress_data), rounded up to whole 2^ashift sectors."""
    psize = csize if csize <= lsize - (lsize >> 3) else lsize
    sector = 1 << ASHIFT
    return -(-psize // sector) * sector


class _Maps:
    """Read-only mmaps of a volume's image files, made on first use."""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self._maps: dict[int, tuple[mmap.mmap, memoryview]] = {}
        self._unmappable: set[int] = set()  # levels whose file could not be mapped: read them
        self._lock = threading.Lock()

    def view(self, off: int, n: int) -> memoryview | None:
        """The n bytes at virtual offset off straight from an image file, if they are one
        stretch of one file that is wholly inside the file (else None: read them)."""
        segs = list(self.vol.segments(off, n))
        if len(segs) != 1 or segs[0].level is None:
            return None
        seg = segs[0]
        with self._lock:
            m = self._maps.get(seg.level)
            if m is None:
                if seg.level in self._unmappable:
                    return None
                fd = self.vol.images[seg.level].fd
                size = os.fstat(fd).st_size
                if size == 0:
                    return None
                try:
                    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
                except OSError:  # e.g. ENOMEM: a large sparse file in a limited address space
                    self._unmappable.add(seg.level)
                    return None
                m = self._maps[seg.level] = (mm, memoryview(mm))
        if seg.offset + n > len(m[1]):
            return None  # past the end: the read path zero-fills or reports it
        return m[1][seg.offset: seg.offset + n]

    def done(self, off: int, n: int) -> None:
        """Drop the page-table entries of a hashed stretch (MADV_DONTNEED: the pages stay in
        the page cache), so the process's RSS does not grow with every file it maps."""
        seg = next(self.vol.segments(off, n))
        mm = self._maps[seg.level][0]  # type: ignore[index]
        page = mmap.PAGESIZE
        s = -(-seg.offset // page) * page
        e = (seg.offset + n) // page * page
        if e > s:
            mm.madvise(mmap.MADV_DONTNEED, s, e - s)

    def close(self) -> None:
        for mm, mv in self._maps.values():
            try:
                mv.release()
                mm.close()
            except BufferError:  # a view is still held (by an exception's traceback): the
                pass  # mapping goes when the last view does; the error is the one to report
        self._maps.clear()


@dataclass
class _Sample:
    lsize: int
    sizes: dict[str, int]
    refs: int = 0


# -- the scan ------------------------------------------------------------------------------
class Scanner:
    """Feeds disks through one C scanner; `report()` once all are in."""

    def __init__(self, o: DedupOptions) -> None:
        o.check()
        self.o = o
        small_mem = o.memory - o.memory // LARGE_SHARE
        try:
            self._native = DedupScanner(o.small, o.large, small_mem, o.memory // LARGE_SHARE,
                                        o.shift, max(o.sample_every, 1))
        except ValueError:
            raise UsageError("du --dedup: cannot set up the hash tables (bad sizes or no memory)"
                             ) from None
        self._comp = _compressors() if o.sample_every else {}
        self._samples: dict[tuple[int, int], _Sample | Future[_Sample]] = {}
        self._backlog: list[Future[_Sample]] = []
        self._refs: dict[tuple[int, int], int] = {}  # sampled block -> times seen
        self._lock = threading.Lock()
        self._cpool = ThreadPoolExecutor(1, thread_name_prefix="dedup-compress")
        self.disks: list[dict[str, Any]] = []
        self.read_bytes = 0

    # -- per chunk (runs on the worker threads) --
    def _feed(self, view: memoryview, n: int, picks: array) -> None:
        got = self._native.feed(view[:n], picks)  # MemoryError when a table cannot grow
        if not self._comp or not got:
            return
        L = self.o.large
        with self._lock:
            for k in range(got):
                idx, lo, hi = picks[3 * k], picks[3 * k + 1], picks[3 * k + 2]
                key = (int(lo), int(hi))
                if key not in self._samples:
                    data = bytes(view[idx * L: min(idx * L + L, n)])
                    fut = self._cpool.submit(self._compress, data)
                    self._samples[key] = fut
                    self._backlog.append(fut)
                self._refs[key] = self._refs.get(key, 0) + 1
            wait = self._backlog.pop(0) if len(self._backlog) > MAX_BACKLOG else None
        if wait is not None:
            wait.result()

    def _compress(self, data: bytes) -> _Sample:
        return _Sample(len(data), {name: fn(data) for name, fn in self._comp.items()})

    # -- per disk --
    def add(self, source: str, progress: Callable[[int], None] | None = None) -> None:
        try:
            self._add(source, progress)
        except MemoryError:
            raise self._out_of_memory(source) from None
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            raise self._out_of_memory(source) from None

    def _out_of_memory(self, source: str) -> UnsupportedError:
        """Memory ran out (the process's limit, or the machine's, below --memory): exit 9."""
        return UnsupportedError(
            f"du --dedup: out of memory: too large for the --memory budget ({size_text(self.o.memory)}"
            " for the hash tables) in the memory this process can get; give a smaller --memory "
            "(past it the tables sample) or more memory", source)

    def _add(self, source: str, progress: Callable[[int], None] | None) -> None:
        with open_source(source, self.o.open_options) as disk:
            vol = disk.volume(self.o.snapshot)
            ranges = read_ranges(vol, self.o.large)
            nread = sum(e - s for s, e in ranges)
            self._scan(vol, ranges, progress)
            self.disks.append({
                "source": source,
                "snapshot": self.o.snapshot or disk.top_guid,
                "images": len(vol.images),
                "image_bytes": sum(os.stat(im.path).st_blocks * 512 for im in vol.images),
                "virtual_bytes": vol.size,
                "read_bytes": nread,
                "unallocated_bytes": vol.size - nread,
                "warnings": list(disk.warnings),
            })
            self.read_bytes += nread

    def _scan(self, vol: Volume, ranges: Sequence[tuple[int, int]],
              progress: Callable[[int], None] | None) -> None:
        """THREADS workers, each taking the next chunk and hashing it (the C call runs without
        the GIL). A chunk that lies in one stretch of one image file is hashed in place
        through a read-only mmap of that file (no copy out of the page cache); any other
        (holes, several extents, a raw base's tail) is read into the worker's buffer."""
        chunks = _chunks(ranges)
        state = {"done": self.read_bytes, "stop": False}
        maps = _Maps(vol)

        def worker() -> None:
            buf = memoryview(bytearray(CHUNK))
            picks = self._native.picks_buffer(CHUNK)
            while True:
                with self._lock:
                    nxt = None if state["stop"] else next(chunks, None)
                if nxt is None:
                    return
                off, n = nxt
                try:
                    view = maps.view(off, n)
                    if view is None:
                        vol.zero_fill_readinto(buf[:n], off)
                        self._feed(buf[:n], n, picks)
                    else:
                        self._feed(view, n, picks)
                        del view
                        maps.done(off, n)
                except BaseException:
                    state["stop"] = True
                    raise
                if progress:
                    with self._lock:
                        state["done"] += n
                        progress(state["done"])

        try:
            with ThreadPoolExecutor(THREADS, thread_name_prefix="dedup") as pool:
                futs = [pool.submit(worker) for _ in range(THREADS)]
                try:
                    for f in futs:
                        f.result()
                except BaseException:  # a worker failed, or Ctrl-C: the others stop too
                    state["stop"] = True
                    raise
        finally:
            maps.close()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cpool.shutdown(wait=True, cancel_futures=True)

    # -- results --
    def report(self) -> dict[str, Any]:
        tables = [self._table(w) for w in (0, 1)]
        comp = self._compression()
        out: dict[str, Any] = {
            "disks": self.disks,
            "totals": {k: sum(d[k] for d in self.disks) for k in
                       ("virtual_bytes", "read_bytes", "unallocated_bytes", "image_bytes")},
            "mode": "exact" if all(t["mode"] == "exact" for t in tables) else "sampled",
            "block_sizes": tables,
            "compression": comp,
        }
        out["combined"] = _combined(tables[1], comp)
        return out

    def _table(self, which: int) -> dict[str, Any]:
        bs = self.o.large if which else self.o.small
        t = self._native.table(which)
        shift, entries, refs = t.shift, t.entries, t.refs
        he, hr = t.hist_entries, t.hist_refs
        hashed, zero = t.blocks, t.zero
        total = sum(-(-d["virtual_bytes"] // bs) for d in self.disks)
        referenced = hashed - zero
        # Sampled: every kept figure stands for referenced / refs (~2^shift) of the real ones.
        scale = referenced / refs if refs else 0.0
        unique = int(he[0])  # entries referenced once
        hist = [{"refcnt": 1 << b, "entries": round(he[b] * scale), "refs": round(hr[b] * scale)}
                for b in range(len(he)) if he[b]]
        distinct = round(entries * scale)
        return {
            "block_size": bs,
            "mode": "exact" if shift == 0 else "sampled",
            "sample_fraction": 1 / (1 << shift),
            "kept_entries": entries,
            "blocks": total,
            "unallocated_blocks": total - hashed,
            "zero_blocks": zero,
            "referenced_blocks": referenced,
            "allocated_blocks": distinct,
            "unique_entries": round(unique * scale),
            "duplicate_entries": round((entries - unique) * scale),
            "duplicate_refs": round((refs - unique) * scale),
            "saved_blocks": referenced - distinct,
            "referenced_bytes": referenced * bs,
            "allocated_bytes": distinct * bs,
            "dedup_ratio": refs / entries if entries else None,  # None: nothing hashed
            "table_peak_bytes": t.peak_bytes,
            "histogram": hist,
        }

    def _compression(self) -> dict[str, Any] | None:
        if not self._comp:
            return None
        done = {k: (v.result() if isinstance(v, Future) else v) for k, v in self._samples.items()}
        res: dict[str, Any] = {
            "sample_every": self.o.sample_every,
            "block_size": self.o.large,
            "distinct_blocks": len(done),
            "referenced_blocks": sum(self._refs.values()),
            "distinct_bytes": sum(s.lsize for s in done.values()),
            "referenced_bytes": sum(s.lsize * self._refs[k] for k, s in done.items()),
        }
        for name in COMPRESSORS:
            c_u = sum(s.sizes[name] for s in done.values())
            c_r = sum(s.sizes[name] * self._refs[k] for k, s in done.items())
            a_u = sum(zfs_asize(s.lsize, s.sizes[name]) for s in done.values())
            res[name] = {
                "distinct_compressed_bytes": c_u,
                "referenced_compressed_bytes": c_r,
                # None: no block was sampled, so there is no ratio to give
                "ratio": res["referenced_bytes"] / c_r if c_r else None,
                "ratio_distinct": res["distinct_bytes"] / c_u if c_u else None,
                "zfs_ratio_distinct": res["distinct_bytes"] / a_u if a_u else None,
            }
        return res


def _combined(large: dict[str, Any], comp: dict[str, Any] | None) -> dict[str, Any]:
    """What a pool with dedup and compression at the large block size would store: the distinct
    blocks, each compressed (ZFS allocation rules), against everything referenced."""
    out: dict[str, Any] = {"block_size": large["block_size"],
                           "referenced_bytes": large["referenced_bytes"]}
    for name in COMPRESSORS if comp else ():
        r = comp[name]["zfs_ratio_distinct"]  # type: ignore[index]
        if r is None:  # nothing sampled: nothing to say
            out[name] = {"stored_bytes": None, "ratio": None}
            continue
        stored = large["allocated_bytes"] / r
        out[name] = {"stored_bytes": round(stored),
                     "ratio": large["referenced_bytes"] / stored if stored else None}
    return out


def planned_bytes(sources: Sequence[str], o: DedupOptions) -> int:
    """Bytes the scan will read (for a progress bar): opens each disk's block map once."""
    total = 0
    for src in sources:
        with open_source(src, o.open_options) as disk:
            total += sum(e - s for s, e in read_ranges(disk.volume(o.snapshot), o.large))
    return total


def estimate(sources: Sequence[str], o: DedupOptions,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    with Scanner(o) as sc:
        for src in sources:
            sc.add(src, progress)
        return sc.report()


def size_text(n: float) -> str:
    """A byte count as du --dedup prints it (its report and its errors): whole bytes, at most
    TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
