"""The engine of `ploopfs diff`: which clusters of NEW differ from OLD, in order, each run handed
to a sink (sinks.py) with NEW's bytes; command.py opens the sides and picks the sink.

Matching is cluster-aligned with no rolling search (docs/rdiff.md): data in a ploop image
never shifts inside a cluster, so cluster k of NEW is compared with cluster k of OLD only.

Which clusters are read. Before reading anything both block maps are walked side by side
(`candidate_runs`). A byte of OLD and NEW served from the *same file at the same offset* (same
inode; e.g. two snapshots of one descriptor sharing their lower deltas, format.md §4.1) or a hole in both
cannot differ, so only the other clusters ("candidates") are read and compared. A candidate
whose bytes turn out equal (a cluster re-written with the same data in a later delta) is
dropped: the output lists only clusters whose bytes truly differ, so the fast path and the full
compare always give the same answer. Whole-disk hashes of OLD and NEW (the manifest's, `hash`)
need every byte, so with a hash all of both disks is read (and still only candidates compared
byte-wise, all clusters in `full_compare` mode); with `hash=None` unchanged data is never read.

Sizes. Cluster k of NEW is unchanged iff its bytes (clipped to NEW's size) lie inside OLD and
are equal. When NEW is larger every cluster reaching past OLD's end is "new" (changed); when it
is smaller the report says so through the sizes (rdiff output simply stops earlier).

Reading maps each image file once (mmap, read-only) and takes a window as a slice of the
mapping where one extent serves it whole (a hole: the zero page), instead of copying from the
page cache: this is what makes the compare run at memory speed. A window's pages are given back
once it is done (`_Maps`). A source file truncated *while* a diff runs would then kill the process
with SIGBUS instead of a one-line error; `mmap=False` (`--no-mmap`) reads with preadv only.

Memory is bounded: buffer sets of `chunk` bytes per side, whatever the disk size.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import queue
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ploopfs.errors import UnsupportedError
from ploopfs.native import (
    RELEASE_NEW,
    RELEASE_OLD,
    Blake3,
    MapArrays,
    diff_window,
)
from ploopfs.native import candidate_runs as native_candidate_runs
from ploopfs.volume.blockmap import ZERO_LEVEL
from ploopfs.volume.volume import Segment, Volume, zeros

Progress = Callable[[int], None]  # bytes of NEW scanned so far
ReadHook = Callable[[str, int, int], None]  # side ("old"/"new"), virtual offset, length
# Bytes per window where both sides are slices of file mappings. Their compared pieces are
# given back at once (diff_window's release), so what stays resident is at most NEW's changed
# bytes of SLOTS windows: peak RSS 47 MiB at 5 % changed, 55 MiB with every byte changed
# (4 MiB windows: 47 / 47 MiB, but 0.03-0.05 s more per GiB of per-window work; 16 MiB: 72).
CHUNK = 8 << 20
# Bytes per window where a side must be read (copied into a buffer that stays resident, one
# per side and slot): 4 MiB keeps those buffers at 16 MiB in all (8 MiB: 68 MiB peak RSS for a
# disk written in random order, whose clusters are scattered in its file).
READ_CHUNK = 4 << 20
MMAP_MIN = 1 << 20  # smaller reads are copied
PREFETCH = 8  # parts ahead whose bytes the kernel is asked to read (POSIX_FADV_WILLNEED)
# Bytes of each candidate cluster announced (_prefetch) while the probes decide most clusters
# and nothing needs NEW's bytes (json ranges without hashes): the compare stops at the first
# difference, so the rest of a changed cluster is never asked for; when the first PROBE bytes
# are equal, diff_window asks for the rest (MADV_WILLNEED) before comparing it.
PROBE = 64 << 10
Mapped = tuple[mmap.mmap, int, int]  # a window's pages in a mapping: map, start, length
# Manifest hashes. blake3 (the default) is BLAKE3 as a tree (native/pf_b3.h): the workers hash
# pieces of both sides on both cores in any order, and a piece of NEW equal to OLD's takes OLD's
# subtree values without being hashed, so a diff hashes OLD once and only NEW's changes. sha256
# and blake2b are streams: each side's worker hashes its side in order (`_Worker`).
# hashlib (OpenSSL: 3-6 ms of a start) is imported only when one of its hashes is asked for.
HASHES: dict[str, Callable[[], Any]] = {
    "blake3": Blake3,
    "sha256": lambda: __import__("hashlib").sha256(),
    "blake2b": lambda: __import__("hashlib").blake2b()}
TREE_HASHES = {"blake3"}
DEFAULT_HASH = "blake3"


@dataclass
class DiffOptions:
    chunk: int = CHUNK  # bytes per window (whole clusters; windows read, not mapped: READ_CHUNK)
    hash: str | None = DEFAULT_HASH  # whole-disk hashes of OLD and NEW; None: read only candidates
    full_compare: bool = False  # ignore the block maps: read and compare every cluster
    progress: Progress | None = None
    on_read: ReadHook | None = None  # called for every read of either volume (tests, tracing)
    mmap: bool = True  # map image files instead of copying (see the module doc)


@dataclass
class DiffStats:
    cluster_size: int
    old_size: int
    new_size: int
    clusters: int  # clusters of NEW
    mode: str  # "map" (only candidates compared) or "full"
    candidate_clusters: int = 0  # clusters the block maps could not prove unchanged
    changed_clusters: int = 0
    changed_bytes: int = 0  # of NEW, clipped to its size
    changed_ranges: int = 0
    new_clusters: int = 0  # changed clusters reaching past OLD's size (growth)
    zero_clusters: int = 0  # changed clusters whose NEW bytes are all zero
    equal_candidate_clusters: int = 0  # candidates whose bytes were equal after all (re-written)
    bytes_read_old: int = 0  # bytes handed to the compare (a probed cluster may be read only in
    bytes_read_new: int = 0  # part: see probe_clusters)
    probe_clusters: int = 0  # candidates compared from a PROBE first (json without hashes)
    probe_undecided: int = 0  # ... whose probe was equal, so the rest was read too
    hash: str | None = None
    old_hash: str | None = None
    new_hash: str | None = None
    seconds: float = 0.0
    last_changed_end: int = field(default=-1, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["last_changed_end"]
        return d


class Sink(Protocol):
    # False when the sink does not look at NEW's changed bytes (which clusters are all zero,
    # `zero`, is found by the compare, up to a cluster's first non-zero byte): then a changed
    # cluster need not be read whole.
    needs_bytes: bool

    def same(self, c0: int, n: int) -> None: ...
    # n changed clusters from c0: NEW's bytes, and 1 per cluster all zero in them (else 0)
    def changed(self, c0: int, n: int, data: memoryview, zero: bytes | bytearray) -> None: ...


# -- which clusters may differ ------------------------------------------------------------------
def _file_keys(vol: Volume, keys: dict[tuple[int, int], int]) -> list[int]:
    """A number per level of `vol` naming its image file (same inode: same number, through
    `keys`, which both sides share)."""
    out = []
    for im in vol.images:
        st = os.fstat(im.fd)
        out.append(keys.setdefault((st.st_dev, st.st_ino), len(keys)))
    return out


class Runs(Sequence[tuple[int, int]]):
    """Sorted (first cluster, count) runs kept as two array("q"): 16 bytes a run, where a list
    of tuples took ~110 (27 MB for the 241,063 runs between two snapshots of a 1 TiB disk
    mapped in a million extents)."""

    __slots__ = ("count", "first")

    def __init__(self, first: array, count: array) -> None:
        self.first = first
        self.count = count

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        return self.first[i], self.count[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.first, self.count, strict=True)

    def clusters(self) -> int:
        return sum(self.count)


def candidate_runs(old: Volume, new: Volume) -> Runs:
    """(first cluster, count) runs of NEW's clusters that may differ from OLD: every cluster
    not proven equal by the block maps (same file and offset, or zeros in both).

    Both maps' extents are walked side by side in C (native/pf_map.c, pf_candidate_runs): the
    clusters are cut where an extent of either side starts or ends, and each piece's source
    (its first cluster's file and offset) is compared; a stretch where neither side changes
    source is one piece, however long. 0.02 s for two snapshots of a 1 TiB disk mapped in a
    million extents (a Python loop over the extents took 10.6 s, numpy windows 0.3 s)."""
    c = new.cluster_size
    common = -(-min(old.size, new.size) // c)  # clusters holding bytes of both
    keys: dict[tuple[int, int], int] = {}

    def arrays(vol: Volume) -> MapArrays:
        m = vol.map
        return (m.vstart, m.count, m.level, m.offset, _file_keys(vol, keys), ZERO_LEVEL,
                vol.raw_base)

    first, count = native_candidate_runs(arrays(old), arrays(new), common, c)
    nclusters = -(-new.size // c)
    if new.size > old.size:  # every cluster reaching past OLD's end is new
        g = old.size // c  # (the first of them may be a candidate already: merged)
        if first and first[-1] + count[-1] >= g:
            count[-1] = max(first[-1] + count[-1], nclusters) - first[-1]
        else:
            first.append(g)
            count.append(nclusters - g)
    return Runs(first, count)


# -- the scan -----------------------------------------------------------------------------------
OLD, NEW = 0, 1  # side indexes
SLOTS = 2  # windows live: one being emitted while the next is read, hashed and compared
PIECE = 1 << 20  # bytes a worker hashes and then compares while they are still in its cache


class _Buffer:
    """A window's read buffer for one side (a private anonymous mapping: untouched pages cost
    nothing). When its slot's window was mapped instead, a buffer filled earlier is given back
    (MADV_DONTNEED), so at most one of the two is resident per slot and side: peak RSS stays
    bounded whatever mix of mapped and read windows a disk needs, and a disk whose windows are
    always read (or always mapped) never pays for re-faulting the pages."""

    def __init__(self, size: int) -> None:
        # Private: MADV_DONTNEED then frees the pages. Python's default for an anonymous map
        # is MAP_SHARED (shmem), where it only unmaps them: out of the RSS, still in memory.
        self.mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.filled = False

    def release(self) -> None:
        """Called before a mapping takes this buffer's place (not after: both at once would be
        one window too many)."""
        if self.filled:
            self.mm.madvise(mmap.MADV_DONTNEED)
            self.filled = False


@dataclass
class _Part:
    """Whole clusters [c0, c0+n) of NEW: bytes [b0, b1) of NEW and [b0, ob1) of OLD (ob1 < b1
    when NEW is larger)."""

    c0: int
    n: int
    b0: int
    b1: int
    ob1: int
    maybe: bytearray  # candidate flag (0/1) per cluster (only candidates are compared)
    flags: bytearray  # changed flag (0/1) per cluster, filled in by the workers
    zero: bytearray  # 1 per changed cluster all zero in NEW, filled in by the workers
    pairs: tuple[bytearray, bytearray, bytearray, bytearray] | None  # see native.diff_window
    views: list[memoryview | None] = field(default_factory=lambda: [None, None])
    mapped: list[Mapped | None] = field(default_factory=lambda: [None, None])
    g0: int = 0  # number of the part's first piece within its window (who compares which)
    probe: bool = False  # announced PROBE bytes a cluster: compared in two steps (diff_window)
    missed: list[int] = field(default_factory=lambda: [0, 0])  # per side: probes undecided


@dataclass
class _Window:
    """One job of both side workers at once: a part of NEW's clusters, or several small parts
    (candidate runs of a snapshot diff, often one cluster each) handed over together (see
    _batches), so the threads meet once per window, not once per run."""

    slot: int
    parts: list[_Part]
    ready: list[threading.Event] = field(default_factory=lambda: [threading.Event(),
                                                                  threading.Event()])
    futures: list[_Job] = field(default_factory=list)
    # (start, end of NEW's bytes, end of OLD's) of parts further on, whose bytes each side's
    # worker asks the kernel to start reading (_prefetch) before it reads this window's
    prefetch: list[tuple[int, int, int]] = field(default_factory=list)


class _Worker:
    """One side's thread. For every window, in order: read (or map) the side's bytes, then
    compare half of the window's pieces (the other worker takes the other half) in C without
    the GIL; with the tree hash (blake3) the same call hashes each of its pieces of both sides
    while they are in this core's cache, NEW's only where it differs. A stream hash (sha256,
    blake2b) must see its side in order: each worker then hashes its own side piece by piece and
    compares every other piece right after, while that piece is still in its cache. Both cores
    do equal work and no byte is read from memory more than needed."""

    def __init__(self, side: int, vol: Volume, alg: str | None, o: DiffOptions,
                 maps: _Maps, per: int) -> None:
        self.side = side
        self.maps = maps
        self.per = per  # clusters per piece
        self.vol = vol
        self.h = HASHES[alg]() if alg and alg not in TREE_HASHES else None  # stream hash
        self.o = o
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"ploopfs-diff-{('old', 'new')[side]}")
        self.thread.start()

    def submit(self, w: _Window, buf: _Buffer, c: int) -> _Job:
        job = _Job((w, buf, c))
        self.jobs.put(job)
        return job

    def _loop(self) -> None:
        """The windows, in order (what a ThreadPoolExecutor(1) gave; concurrent.futures and the
        logging it imports were 8 ms of every start)."""
        while (job := self.jobs.get()) is not None:
            try:
                if self.closing:  # after close(): skipped, and the other side's worker, which
                    job.args[0].ready[self.side].set()  # may wait for this side, told so
                else:
                    self._run(*job.args)
            except BaseException as e:  # raised again by job.result(), on the caller's thread
                job.error = e
            finally:
                job.done.set()

    def _run(self, w: _Window, buf: _Buffer, c: int) -> None:
        side = self.side
        try:
            for b0, b1, ob1 in w.prefetch:
                e = ob1 if side == OLD else b1
                if e > b0:
                    _prefetch(self.vol, b0, e - b0)
            pos = 0  # bytes of the buffer taken by this window's parts read so far
            for p in w.parts:
                end = p.ob1 if side == OLD else p.b1
                if end > p.b0:
                    into = memoryview(buf.mm)[pos: pos + end - p.b0]
                    # A mapping takes the buffer's place (its pages given back first), unless
                    # a part before it in this window is in the buffer.
                    got, p.mapped[side] = _read(self.vol, into, p.b0, self.o, self.maps,
                                                None if pos else buf.release)
                    if got is into:
                        pos += len(into)
                        buf.filled = True
                    p.views[side] = got
                else:
                    p.views[side] = memoryview(b"")
        finally:
            w.ready[side].set()  # also on failure: the other worker must not wait forever
        per = self.per
        if self.h is None:
            w.ready[1 - side].wait()  # returns at once when already set
            for p in w.parts:
                if p.views[1 - side] is None:
                    return  # its read failed; its job says so
                # Pieces done are given back at once (file mappings only, see diff_window).
                release = (RELEASE_OLD if p.mapped[OLD] else 0) | \
                    (RELEASE_NEW if p.mapped[NEW] else 0)
                p.missed[side] = self._compare(p, c, per, (side - p.g0) % 2, 2, release)
            return
        for p in w.parts:
            view = p.views[side]
            assert view is not None
            npieces = -(-p.n // per)
            for j in range(npieces):
                k0, k1 = j * per, min((j + 1) * per, p.n)
                if k0 * c < len(view):
                    self.h.update(view[k0 * c: k1 * c])
                if (p.g0 + j) % 2 == side:
                    w.ready[1 - side].wait()
                    if p.views[1 - side] is None:
                        return
                    self._compare(p, c, per, j, npieces)

    @staticmethod
    def _compare(p: _Part, c: int, per: int, first: int, stride: int, release: int = 0) -> int:
        bo, bn = p.views[OLD], p.views[NEW]
        assert bo is not None and bn is not None
        return diff_window(bo, bn, p.b0, c, per, p.n, p.maybe, p.flags, first, stride, p.pairs,
                           release, PROBE if p.probe else 0, p.zero)

    def close(self) -> None:
        self.closing = True
        self.jobs.put(None)
        self.thread.join()


class _Job:
    """A window handed to a side's worker; result() waits for it and raises what it raised."""

    __slots__ = ("args", "done", "error")

    def __init__(self, args: tuple[_Window, _Buffer, int]) -> None:
        self.args = args
        self.done = threading.Event()
        self.error: BaseException | None = None

    def result(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


def _lookahead(it: Iterator[tuple[int, int]], k: int,
               announce: Callable[[int, int], None]) -> Iterator[tuple[int, int]]:
    """The items of `it`, each announced (prefetched) k items before it is yielded."""
    pending: deque[tuple[int, int]] = deque()
    for item in it:
        announce(*item)
        pending.append(item)
        if len(pending) > k:
            yield pending.popleft()
    yield from pending


def _batches(parts: Iterator[tuple[int, int]], limit: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive parts (c0, n) gathered into windows of at most `limit` clusters (a part of
    more goes alone). `limit` is the read window's size: a window's read parts then fit its
    buffers, and NEW's changed bytes it keeps mapped until they are written out stay as few as
    one read window holds (8 MiB windows of single clusters took the fast path's peak RSS from
    53 to 60 MiB, for no time saved)."""
    batch: list[tuple[int, int]] = []
    total = 0
    for c0, n in parts:
        if batch and total + n > limit:
            yield batch
            batch, total = [], 0
        batch.append((c0, n))
        total += n
    if batch:
        yield batch


def _work(runs: Sequence[tuple[int, int]], per: int) -> Iterator[tuple[int, int]]:
    """The runs cut into parts of at most `per` clusters."""
    for c0, n in runs:
        for a in range(c0, c0 + n, per):
            yield a, min(per, c0 + n - a)


def _emit(sink: Sink, flags: bytearray, zero: bytearray, c0: int, view: memoryview, c: int,
          stats: DiffStats) -> None:
    """Hand runs of equal flags to the sink; `view` holds NEW's bytes from cluster c0, `zero`
    marks the changed clusters that are all zero there."""
    n = len(flags)
    a = 0
    while a < n:
        changed = flags[a]
        b = flags.find(0 if changed else 1, a)  # the run's end: where the flag flips
        if b < 0:
            b = n
        if not changed:
            sink.same(c0 + a, b - a)
            a = b
            continue
        data = view[a * c: min(b * c, len(view))]
        if c0 + a != stats.last_changed_end:
            stats.changed_ranges += 1
        stats.last_changed_end = c0 + b
        stats.changed_clusters += b - a
        stats.changed_bytes += len(data)
        zeros = zero[a:b]
        stats.zero_clusters += zeros.count(1)
        sink.changed(c0 + a, b - a, data, zeros)
        a = b


def scan(old: Volume, new: Volume, sink: Sink, opts: DiffOptions | None = None) -> DiffStats:
    """Compare OLD and NEW cluster by cluster, in order, telling `sink` about every run of
    clusters of NEW (same or changed, with NEW's bytes). Returns the statistics. See `Scan`."""
    return Scan(old, new, sink, opts).run()


class Scan:
    """One comparison of OLD and NEW, its runs handed to `sink` in order (`run`, once).

    Pipeline: NEW is cut into windows of `chunk` bytes (or of several small parts: candidate
    runs); one worker thread per side reads, hashes and compares (`_Worker`), up to SLOTS
    windows ahead, while the caller's thread feeds the sink with the windows done, in order.

    Everything below is touched only on the caller's thread; the workers see a window's parts.
    The plan, fixed here: which clusters may differ (`cands`), which are read (`work`: all of
    them when hashing), clusters per window where both sides are mapped (`per`) or read
    (`read_per`), per hashed and compared piece (`piece_clusters`). Then what changes as the
    scan goes:

    * `_due`: byte ranges (start, end of NEW's, end of OLD's) announced for prefetching and not
      yet handed to the workers; they go with the next window submitted, so each side's worker
      walks the page cache (POSIX_FADV_WILLNEED, ~0.1 ms per MiB even when every page is
      cached), not the thread the workers wait for.
    * `_probed`: first clusters of the parts announced PROBE bytes a cluster (see `_announce`);
      whether to go on probing is decided from `stats.probe_clusters` and `probe_undecided`.
    * `pos`: the next cluster of NEW not yet handed to the sink; `done`: bytes of NEW done
      (progress); `stats`.
    * during `run`: the mappings (`_maps`), the two workers, the two tree hashers of BLAKE3
      (fed here, in order) and the read buffers of each slot and side (`_bufs`, see _Buffer).
    """

    def __init__(self, old: Volume, new: Volume, sink: Sink, opts: DiffOptions | None = None
                 ) -> None:
        o = opts or DiffOptions()
        if old.cluster_size != new.cluster_size:
            raise UnsupportedError(
                f"cluster sizes differ: OLD {old.cluster_size} bytes, NEW {new.cluster_size} "
                "bytes; diff compares whole clusters of one size")
        self._t0 = time.perf_counter()
        self.old, self.new, self.sink, self.o = old, new, sink, o
        c = self.c = new.cluster_size
        self.nclusters = -(-new.size // c)
        self.stats = DiffStats(c, old.size, new.size, self.nclusters,
                               "full" if o.full_compare else "map", hash=o.hash)
        self.cands = Runs(array("q", [0]), array("q", [self.nclusters])) if o.full_compare \
            else candidate_runs(old, new)
        self.stats.candidate_clusters = self.cands.clusters()
        self.read_per = max(1, min(o.chunk, READ_CHUNK) // c)
        # Large windows only where compared pieces are given back (a stream hash reads its side
        # in order, behind the compare: its windows stay whole until emitted).
        self.per = max(1, o.chunk // c) if o.hash is None or o.hash in TREE_HASHES \
            else self.read_per
        self.work: Sequence[tuple[int, int]] = \
            [(0, self.nclusters)] if o.full_compare or o.hash else self.cands
        self.piece_clusters = max(1, PIECE // c)
        self.piece = self.piece_clusters * c
        # Probing: only the first PROBE bytes of each candidate cluster are announced, as long
        # as the probes decide at least half the clusters compared with one (a snapshot's
        # rewritten clusters, changed from their start); equal clusters, or clusters changed
        # only further in, make the scan announce parts whole again (read ahead as before, no
        # waiting).
        self.probing = o.hash is None and not o.full_compare and c > PROBE and \
            not sink.needs_bytes
        self._cursor = _RunCursor(self.cands)
        self._due: list[tuple[int, int, int]] = []
        self._probed: set[int] = set()
        self.pos = 0
        self.done = 0
        self._maps: _Maps | None = None
        self._workers: tuple[_Worker, _Worker] | None = None
        self._trees: tuple[Blake3, Blake3] | None = None
        self._bufs: list[tuple[_Buffer, _Buffer]] = []

    def run(self) -> DiffStats:
        o, stats = self.o, self.stats
        maps = self._maps = _Maps()
        self._workers = (_Worker(OLD, self.old, o.hash, o, maps, self.piece_clusters),
                         _Worker(NEW, self.new, o.hash, o, maps, self.piece_clusters))
        self._trees = (Blake3(), Blake3()) if o.hash in TREE_HASHES else None
        self._bufs = [(_Buffer(self.per * self.c), _Buffer(self.per * self.c))
                      for _ in range(SLOTS)]
        windows = enumerate(_batches(_lookahead(self._parts(), PREFETCH, self._announce),
                                     self.read_per))
        inflight: deque[_Window] = deque()
        try:
            for i, batch in itertools.islice(windows, SLOTS):
                inflight.append(self._submit(i, batch))
            while inflight:
                w = inflight.popleft()
                for f in w.futures:
                    f.result()
                for p in w.parts:
                    self._emit_part(p)
                # Its slot is free: the next window goes to the workers now, so they go on to it
                # straight from the window they are on (not after this thread next waits).
                nxt = next(windows, None)
                if nxt is not None:
                    inflight.append(self._submit(*nxt))
                if o.progress:
                    o.progress(self.done)
            if self.pos < self.nclusters:
                self.sink.same(self.pos, self.nclusters - self.pos)
            if o.hash:
                self._hash_both()
        finally:
            for worker in self._workers:
                worker.close()
            inflight.clear()
            maps.close()
            # The buffers and threads go with this call, not with the object.
            self._maps = self._workers = self._trees = None
            self._bufs = []
        stats.equal_candidate_clusters = stats.candidate_clusters - stats.changed_clusters
        stats.seconds = round(time.perf_counter() - self._t0, 3)
        return stats

    # -- planning, ahead of the workers --
    def _extent(self, c0: int, n: int) -> tuple[int, int, int]:
        """NEW's bytes [b0, b1) of clusters [c0, c0+n), and the end of OLD's (ob1 <= b1)."""
        b0 = c0 * self.c
        b1 = min((c0 + n) * self.c, self.new.size)
        return b0, b1, max(b0, min(b1, self.old.size))

    def _parts(self) -> Iterator[tuple[int, int]]:
        """Parts of `per` clusters where both sides map whole, else of at most `read_per`."""
        o, old, new, read_per = self.o, self.old, self.new, self.read_per
        for c0, n in _work(self.work, self.per):
            b0, b1, ob1 = self._extent(c0, n)
            if n <= read_per or (o.mmap and _Maps.extent(new, b0, b1 - b0) is not None and
                                 (ob1 == b0 or _Maps.extent(old, b0, ob1 - b0) is not None)):
                yield c0, n
            else:
                yield from _work([(c0, n)], read_per)

    def _announce(self, c0: int, n: int) -> None:
        """Name the bytes of a part coming up for prefetching (PREFETCH parts ahead): all of
        them, or while probing pays, the first PROBE bytes of each cluster."""
        b0, b1, ob1 = self._extent(c0, n)
        st = self.stats
        if self.probing and 2 * st.probe_undecided <= st.probe_clusters:
            self._probed.add(c0)
            for a in range(b0, b1, self.c):
                self._due.append((a, min(b1, a + PROBE), max(a, min(ob1, a + PROBE))))
        else:
            self._due.append((b0, b1, ob1))

    def _submit(self, i: int, batch: list[tuple[int, int]]) -> _Window:
        """Window i, made of the parts in `batch`, to both workers."""
        assert self._workers is not None
        parts = []
        g0 = 0
        for c0, n in batch:
            b0, b1, ob1 = self._extent(c0, n)
            npieces = -(-n // self.piece_clusters)
            pairs = (bytearray(64 * npieces), bytearray(npieces), bytearray(64 * npieces),
                     bytearray(npieces)) \
                if self._trees else None
            parts.append(_Part(c0, n, b0, b1, ob1, self._cursor.mask(c0, n), bytearray(n),
                               bytearray(n), pairs, g0=g0, probe=c0 in self._probed))
            self._probed.discard(c0)
            g0 += npieces
            self._account("new", b0, b1 - b0)
            if ob1 > b0:
                self._account("old", b0, ob1 - b0)
        w = _Window(i % SLOTS, parts)
        w.prefetch, self._due = self._due, []
        w.futures = [self._workers[side].submit(w, self._bufs[w.slot][side], self.c)
                     for side in (OLD, NEW)]
        return w

    def _account(self, side: str, off: int, n: int) -> None:
        """Count (and report) a read; before the read is started."""
        if self.o.on_read:
            self.o.on_read(side, off, n)
        if side == "old":
            self.stats.bytes_read_old += n
        else:
            self.stats.bytes_read_new += n

    # -- in order, behind the workers --
    def _emit_part(self, p: _Part) -> None:
        """A part the workers are done with, to the sink (after the clusters before it that no
        part covered: same), to the tree hashes and into the statistics; then its pages go."""
        assert self._maps is not None
        c, stats = self.c, self.stats
        if p.c0 > self.pos:
            self.sink.same(self.pos, p.c0 - self.pos)
        stats.new_clusters += p.flags.count(1, (p.ob1 - p.b0) // c)
        vn = p.views[NEW]
        assert vn is not None
        if self._trees and p.pairs:
            self._trees[OLD].feed(p.views[OLD], p.ob1 - p.b0, self.piece, *p.pairs[:2])
            self._trees[NEW].feed(vn, p.b1 - p.b0, self.piece, *p.pairs[2:])
        _emit(self.sink, p.flags, p.zero, p.c0, memoryview(vn), c, stats)
        if p.probe:
            stats.probe_clusters += p.maybe.count(1)
            stats.probe_undecided += sum(p.missed)
        p.views = [None, None]
        del vn
        for m in p.mapped:
            self._maps.release(m)
        self.pos = p.c0 + p.n
        self.done += p.b1 - p.b0

    def _hash_both(self) -> None:
        """The manifest's hashes of both disks, once every window is emitted; OLD's bytes past
        NEW's end (shrink) still belong to OLD's hash: read here (the workers are idle)."""
        assert self._workers is not None and self._maps is not None
        hashers = self._trees or (self._workers[OLD].h, self._workers[NEW].h)
        h, vol, maps = hashers[OLD], self.old, self._maps
        buf = memoryview(self._bufs[0][OLD].mm)
        pos, size = self.new.size, vol.size
        _prefetch(vol, pos, size - pos)
        while pos < size:
            n = min(len(buf), size - pos)
            self._account("old", pos, n)
            got, mapped = _read(vol, buf[:n], pos, self.o, maps)
            h.update(got)
            maps.release(mapped)
            pos += n
            del got
        del buf
        self.stats.old_hash = hashers[OLD].hexdigest()
        self.stats.new_hash = hashers[NEW].hexdigest()


class _RunCursor:
    """Is cluster k a candidate? For increasing queries over sorted runs."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs
        self.i = 0

    def mask(self, c0: int, n: int) -> bytearray:
        m = bytearray(n)
        while self.i < len(self.runs) and sum(self.runs[self.i]) <= c0:
            self.i += 1
        j = self.i
        while j < len(self.runs) and self.runs[j][0] < c0 + n:
            a, k = self.runs[j]
            lo, hi = max(a, c0) - c0, min(a + k, c0 + n) - c0
            m[lo:hi] = b"\x01" * (hi - lo)
            j += 1
        return m


class _Maps:
    """One read-only mapping of each image file for the whole scan, made on first use: a window
    is a slice of it. An mmap()/munmap() per window took the process's memory-map lock for
    writing, which serialised the two workers' reads (and each munmap flushed TLBs); page faults
    on a standing mapping run side by side. A window's pages are given back when it is done
    (`release`, MADV_DONTNEED: the page cache keeps them), so the RSS stays what the windows in
    flight hold."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap | None] = {}
        self._lock = threading.Lock()

    def view(self, vol: Volume, off: int, n: int,
             before_map: Callable[[], None] | None = None) -> tuple[memoryview, Mapped] | None:
        """A view of [off, off+n) of `vol` when one extent of one image file serves it all, and
        the page range to release after use; else None."""
        seg = self.extent(vol, off, n)
        if seg is None:
            return None
        if seg.level is None:  # a hole: the zero page, mapped read-only (no RSS, no copy)
            return zeros(n), None
        im = vol.images[seg.level]
        with self._lock:
            if id(im) not in self._maps:
                try:
                    self._maps[id(im)] = mmap.mmap(im.fd, 0, flags=mmap.MAP_SHARED,
                                                   prot=mmap.PROT_READ)
                except (OSError, ValueError, OverflowError):
                    self._maps[id(im)] = None  # not mappable (e.g. some special files): read
            mm = self._maps[id(im)]
        if mm is None or seg.offset + n > len(mm):
            return None
        # The pages are faulted in by the compare itself (the caller announced the range with
        # _prefetch first, so a cold file is read in large requests, not fault by fault).
        if before_map is not None:
            before_map()
        start = seg.offset - seg.offset % mmap.PAGESIZE
        return memoryview(mm)[seg.offset:seg.offset + n], (mm, start, seg.offset + n - start)

    @staticmethod
    def extent(vol: Volume, off: int, n: int) -> Segment | None:
        """The one extent (or hole) serving all of [off, off+n) of `vol` when a view of a
        mapping can serve it (not too small, not past the end of a raw base's file); else None."""
        seg = next(vol.segments(off, n), None)
        if n < MMAP_MIN or seg is None or seg.length != n:
            return None
        if seg.level is not None and seg.offset + n > vol.images[seg.level].file_size:
            return None  # a raw base ending early: zeros past its end
        return seg

    @staticmethod
    def release(m: Mapped | None) -> None:
        if m is not None:
            with contextlib.suppress(OSError, ValueError):
                m[0].madvise(mmap.MADV_DONTNEED, m[1], m[2])

    def close(self) -> None:
        """After every view is dropped."""
        for mm in self._maps.values():
            if mm is not None:
                with contextlib.suppress(BufferError):
                    mm.close()
        self._maps.clear()


def _read(vol: Volume, view: memoryview, off: int, o: DiffOptions, maps: _Maps,
          before_map: Callable[[], None] | None = None) -> tuple[memoryview, Mapped | None]:
    """The bytes of `vol` at [off, off+len(view)): a read-only view of the image file's
    mapping when one extent serves them all (no copy; `before_map` is called first; the second
    item says what to release after use), else read into `view`."""
    mapped = maps.view(vol, off, len(view), before_map) if o.mmap else None
    if mapped is not None:
        return mapped
    vol.zero_fill_readinto(view, off)
    return view, None


def _prefetch(vol: Volume, off: int, n: int) -> None:
    """Ask the kernel to start reading the image-file bytes behind [off, off+n) of `vol`
    (POSIX_FADV_WILLNEED: asynchronous, a no-op for cached pages). Only bytes the scan will read
    are named, so the fast path still reads nothing it skips."""
    for seg in vol.segments(off, n):
        if seg.level is None:
            continue
        im = vol.images[seg.level]
        end = min(seg.offset + seg.length, im.file_size)
        if end > seg.offset:
            with contextlib.suppress(OSError):
                os.posix_fadvise(im.fd, seg.offset, end - seg.offset, os.POSIX_FADV_WILLNEED)
