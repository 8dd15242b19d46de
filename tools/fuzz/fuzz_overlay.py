"""Fuzz target: continuing an earlier overlay (`mount --overlay DIR`, volume/overlay.py
Overlay.open, _continue, _load_delta: header and BAT checks, the repair after a crash that cuts
off and punches out unreferenced clusters, the dirty flag) whose delta file is damaged. At
start-up the target makes a fixed source (common.overlay_source: a 4 MiB v2 image of 4 KiB
clusters) and an overlay of it in DIR, so DIR holds a real descriptor and a delta carrying
ploopfs's output mark. Input: the delta file `root.hds.{GUID}`, written over the existing one in
place (the mark stays).

Beyond "only PloopfsError": when the overlay opens, the first clusters its BAT maps read as
the input holds them (the crash repair drops only unreferenced clusters); writes at the start,
near the end (across a cluster boundary, over a hole of the source) and of one whole cluster
read back as written, and the bytes around them (and around the clusters the BAT maps) read as
before the writes; after `close` the delta is marked closed, the overlay continues again
(ploopfs accepts the delta it wrote) and serves the same bytes; the source's files never change
(size and mtime every input, sha256 every SHA_EVERY inputs)."""

from __future__ import annotations

import glob
import hashlib
import os
import struct

import common

with common.atheris.instrument_imports(include=["ploopfs"]):
    from ploopfs.errors import PloopfsError
    from ploopfs.format.header import decode_header_fields
    from ploopfs.volume.overlay import Overlay
    from ploopfs.volume.source import open_source

WORK = common.workdir()
SRC = common.overlay_source(os.path.join(WORK, "src"))
DIR = os.path.join(WORK, "overlay")
C = common.OVERLAY_CLUSTER
SIZE = common.OVERLAY_SIZE
# (offset, length) of the target's writes: inside source cluster 0; across clusters 1022 (a
# hole of the source) and 1023 (stored) to 6000 bytes before the end; all of cluster 512.
WRITES = [(10, 100), (SIZE - 6000, 5000), (512 * C, C)]
# Spans whose bytes are compared before and after the writes: the writes and their neighbours.
SPANS = [(0, 3 * C), (SIZE - 3 * C, 3 * C), (511 * C, 3 * C)]
MAX_BAT_SPANS = 6  # clusters the fuzzed BAT maps whose bytes are compared as well
SHA_EVERY = 100


def source_state(deep: bool) -> list[tuple[str, int, int, str]]:
    out = []
    for name in sorted(os.listdir(SRC)):
        p = os.path.join(SRC, name)
        st = os.stat(p)
        digest = ""
        if deep:
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        out.append((name, st.st_size, st.st_mtime_ns, digest))
    return out


def setup() -> str:
    """The overlay of SRC in DIR, written once and closed; returns its delta's path."""
    with open_source(SRC) as disk:
        ov = Overlay.open(disk, None, DIR)
        ov.write(WRITES[0][0], b"\x5a" * WRITES[0][1])
        ov.close()
    (delta,) = glob.glob(os.path.join(DIR, "root.hds.*"))
    return delta


DELTA = setup()
SOURCE = source_state(True)
count = 0


def check_source() -> None:
    global count
    count += 1
    deep = count % SHA_EVERY == 0
    now = source_state(deep)
    if [s[:3] for s in now] != [s[:3] for s in SOURCE] or (deep and now != SOURCE):
        raise common.Finding(f"the source changed: {SOURCE} -> {now}")


def mapped(data: bytes) -> list[tuple[int, int]]:
    """(virtual cluster, BAT entry) of the first clusters the fuzzed BAT maps, read from the
    input, not by ploopfs (v2: entries count clusters, format.md §2.2)."""
    out: list[tuple[int, int]] = []
    n = min(SIZE // C, (len(data) - 64) // 4)
    for v in range(max(0, n)):
        (e,) = struct.unpack_from("<I", data, 64 + 4 * v)
        if e:
            out.append((v, e))
            if len(out) == MAX_BAT_SPANS:
                break
    return out


def check_mapped(ov: Overlay, data: bytes, bat: list[tuple[int, int]]) -> None:
    """A cluster the accepted delta maps reads as the input holds it there (zeros past the
    input's end): the repair after a crash drops only clusters no entry references."""
    for v, e in bat:
        want = data[e * C:(e + 1) * C].ljust(C, b"\0")
        if bytes(ov.read(v * C, C)) != want:
            raise common.Finding(f"cluster {v} (BAT entry {e}) does not read as the delta "
                                 "holds it")


def read_spans(ov: Overlay, spans: list[tuple[int, int]], when: str) -> list[bytes]:
    out = []
    for off, n in spans:
        got = bytes(ov.read(off, n))
        if len(got) != n:
            raise common.Finding(f"{when}: read({off}, {n}) returned {len(got)} bytes")
        out.append(got)
    return out


def expect(before: list[bytes], spans: list[tuple[int, int]],
           writes: list[tuple[int, bytes]]) -> list[bytes]:
    """The spans' bytes once `writes` are applied (the model)."""
    out = []
    for (off, n), b in zip(spans, before, strict=True):
        m = bytearray(b)
        for woff, wdata in writes:
            a, z = max(off, woff), min(off + n, woff + len(wdata))
            if a < z:
                m[a - off:z - off] = wdata[a - woff:z - woff]
        out.append(bytes(m))
    return out


def compare(got: list[bytes], want: list[bytes], spans: list[tuple[int, int]], when: str) -> None:
    for (off, n), g, w in zip(spans, got, want, strict=True):
        if g != w:
            i = next(k for k in range(n) if g[k] != w[k])
            raise common.Finding(f"{when}: byte {off + i} reads {g[i]:#x}, want {w[i]:#x}")


def test_one_input(data: bytes) -> None:
    with open(DELTA, "r+b") as f:  # in place: the file keeps its output mark
        f.truncate(0)
        f.write(data)
    try:
        with open_source(SRC) as disk:
            try:
                ov = Overlay.open(disk, None, DIR)
            except PloopfsError:
                return
            bat = mapped(data)
            check_mapped(ov, data, bat)
            spans = SPANS + [(a, min(C + 200, SIZE - a)) for a in
                             (max(0, v * C - 100) for v, _ in bat)]
            before = read_spans(ov, spans, "after opening")
            pattern = hashlib.sha256(data).digest() * (C // 32 + 1)
            writes = [(off, pattern[i:i + n]) for i, (off, n) in enumerate(WRITES)]
            for off, w in writes:
                if ov.write(off, w) != len(w):
                    raise common.Finding(f"write({off}, {len(w)} bytes) was short")
            want = expect(before, spans, writes)
            compare(read_spans(ov, spans, "after the writes"), want, spans, "after the writes")
            ov.close()
        with open(DELTA, "rb") as f:
            if decode_header_fields(f.read(64)).dirty:
                raise common.Finding("the delta is still marked in use after close")
        with open_source(SRC) as disk:
            try:
                ov = Overlay.open(disk, None, DIR)
            except PloopfsError as e:
                raise common.Finding(f"the overlay refuses the delta it closed: {e}") from None
            compare(read_spans(ov, spans, "continued"), want, spans, "continued")
            ov.close()
    finally:
        check_source()


if __name__ == "__main__":
    common.main(test_one_input)
