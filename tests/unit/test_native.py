"""Tests of ploopfs.native (the cffi-built C helpers) against pure-Python references."""

from __future__ import annotations

import array
import itertools
import random
import struct
import subprocess

import pytest

from ploopfs import native


def ref_first_nonzero(buf: bytes) -> int:
    for i, b in enumerate(buf):
        if b:
            return i
    return len(buf)


def ref_count_nonzero_u32(buf: bytes) -> int:
    return sum(1 for (v,) in struct.iter_unpack("<I", buf) if v)


def sparse_buffer(rng: random.Random, n: int, nonzero: int) -> bytes:
    b = bytearray(n)
    for _ in range(nonzero):
        if n:
            b[rng.randrange(n)] = rng.randrange(1, 256)
    return bytes(b)


def test_version() -> None:
    assert native.version() == 3


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]])
def test_empty(empty: native.Buffer) -> None:
    assert native.first_nonzero(empty) == 0
    assert native.is_zero(empty) is True
    assert native.count_nonzero_u32(empty) == 0


def test_every_position_and_offset() -> None:
    for length in range(71):
        for off in range(9):
            base = bytearray(off + length + 3)
            view = memoryview(base)[off : off + length]
            assert native.first_nonzero(view) == length
            assert native.is_zero(view)
            for pos in range(length):
                base[off + pos] = 0x80
                assert native.first_nonzero(view) == pos, (length, off, pos)
                assert not native.is_zero(view)
                base[off + pos] = 0


def test_bytes_outside_view_are_ignored() -> None:
    base = b"\x01" + bytes(100) + b"\x01"
    for length in range(101):
        assert native.first_nonzero(memoryview(base)[1 : 1 + length]) == length


@pytest.mark.parametrize("seed", range(5))
def test_random_first_nonzero(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        n = rng.randrange(0, 3000)
        buf = sparse_buffer(rng, n, rng.randrange(0, 3))
        off = rng.randrange(0, 8) if n > 8 else 0
        expected = ref_first_nonzero(buf[off:])
        for candidate in (buf[off:], bytearray(buf)[off:], memoryview(buf)[off:]):
            assert native.first_nonzero(candidate) == expected
            assert native.is_zero(candidate) is (expected == len(buf) - off)


def test_large_buffers() -> None:
    n = (8 << 20) + 5
    buf = bytearray(n)
    assert native.is_zero(buf)
    for pos in (0, 1, 4095, 4096, n // 2, n - 8, n - 1):
        buf[pos] = 1
        assert native.first_nonzero(buf) == pos
        assert native.first_nonzero(memoryview(buf)[1:]) == (pos - 1 if pos else n - 1)
        buf[pos] = 0


def test_other_buffer_types() -> None:
    # multi-byte item formats are handled as raw bytes
    arr = array.array("I", [0, 0, 0x100, 0])
    assert native.first_nonzero(arr) == ref_first_nonzero(arr.tobytes())
    assert native.count_nonzero_u32(arr) == 1
    assert native.first_nonzero(memoryview(arr)) == ref_first_nonzero(arr.tobytes())
    two_d = memoryview(bytes(12)).cast("B", (3, 4))
    assert native.is_zero(two_d)


def test_non_contiguous_rejected() -> None:
    strided = memoryview(b"\x00\x01" * 8)[::2]
    for fn in (native.first_nonzero, native.is_zero, native.count_nonzero_u32):
        with pytest.raises(ValueError, match="contiguous"):
            fn(strided)


@pytest.mark.parametrize("seed", range(5))
def test_random_count_nonzero_u32(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(200):
        n = rng.randrange(0, 600)
        vals = [0 if rng.random() < 0.5 else 1 << rng.randrange(32) for _ in range(n)]
        raw = struct.pack(f"<{n}I", *vals)
        expected = sum(1 for v in vals if v)
        assert ref_count_nonzero_u32(raw) == expected
        assert native.count_nonzero_u32(raw) == expected
        assert native.count_nonzero_u32(bytearray(raw)) == expected
        # unaligned start: the wrapper must cope (it copies to aligned memory)
        for off in range(1, 4):
            padded = bytes(off) + raw + bytes(4 - off)
            assert native.count_nonzero_u32(memoryview(padded)[off : off + len(raw)]) == expected


def test_count_nonzero_u32_every_byte_lane() -> None:
    for lane in range(4):
        raw = bytearray(4 * 9)
        raw[4 * 5 + lane] = 1
        assert native.count_nonzero_u32(raw) == 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 4097])
def test_count_nonzero_u32_bad_length(n: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        native.count_nonzero_u32(bytes(n))


def test_count_nonzero_u32_large() -> None:
    n = 1 << 20
    arr = array.array("I", bytes(4 * n))
    for i in range(0, n, 1000):
        arr[i] = i + 1
    assert native.count_nonzero_u32(arr) == len(range(0, n, 1000))


@pytest.mark.parametrize("lanes", [8, 4, 1])
def test_blake2b_many_equals_hashlib(lanes: int) -> None:
    """The multi-buffer BLAKE2b (native/pf_b2x.c) against hashlib's, for each lane width the
    CPU offers: lengths around the 128-byte block edges, partial batches, digest sizes 1..64,
    unaligned messages."""
    import hashlib

    got_lanes = native.blake2b_lanes(lanes)
    try:
        assert got_lanes <= lanes
        rng = random.Random(lanes)
        area = rng.randbytes(300_000)
        for length in (0, 1, 127, 128, 129, 256, 1000, 4096, 65537):
            for count in (1, 3, 4, 5, 8, 9, 17):
                for size in (1, 16, 20, 32, 64):
                    starts = [rng.randrange(len(area) - length) for _ in range(count)]
                    msgs = [memoryview(area)[s:s + length] for s in starts]
                    want = [hashlib.blake2b(m, digest_size=size).digest() for m in msgs]
                    assert native.blake2b_many(msgs, size) == want, (length, count, size)
    finally:
        native.blake2b_lanes(8)


def test_blake2b_many_bad_arguments() -> None:
    with pytest.raises(ValueError):
        native.blake2b_many([b"ab", b"abc"])
    with pytest.raises(ValueError):
        native.blake2b_many([b"ab"], 65)
    assert native.blake2b_many([]) == []


# -- BLAKE3 as a tree (native/pf_b3.h), checked against b3sum (the reference Rust CLI) --------
def b3sum(data: bytes) -> str:
    r = subprocess.run(["b3sum", "--no-names"], input=data, capture_output=True, check=True,
                       timeout=60)
    return r.stdout.decode().split()[0]


def test_blake3_equals_b3sum() -> None:
    rng = random.Random(3)
    data = rng.randbytes(3 << 20)
    for n in (0, 1, 63, 64, 1023, 1024, 1025, 2048, 65537, 1 << 20, (3 << 20) - 7):
        h = native.Blake3()
        cut = n // 3
        h.update(data[:cut])
        h.update(memoryview(data)[cut:n])
        assert h.hexdigest() == b3sum(data[:n]), n
        assert h.count == n


@pytest.mark.parametrize(("c", "per", "n", "old_len", "new_len", "offset"), [
    (65536, 16, 48, 48 << 16, 48 << 16, 0),               # three 1 MiB pieces
    (65536, 16, 48, 48 << 16, 48 << 16, 4 << 20),         # at 4 MiB of the disks
    (65536, 16, 40, 20 << 16, 40 << 16, 0),               # OLD ends mid-window (growth)
    (65536, 16, 40, (40 << 16) + 999, (39 << 16) + 5, 0),  # NEW ends mid-cluster (shrink)
    (4096, 3, 30, 30 * 4096, 30 * 4096, 0),               # 12 KiB pieces: no pairs, bytes
    (1 << 20, 1, 5, 5 << 20, 5 << 20, 0),                 # 1 MiB clusters
])
def test_diff_window_flags_and_tree_hashes(c: int, per: int, n: int, old_len: int,
                                           new_len: int, offset: int) -> None:
    """Flags are the changed clusters (candidates only), and feeding the window's pairs gives
    b3sum of each side: NEW's pairs of equal pieces come from OLD's."""
    rng = random.Random(c + n + old_len)
    head = rng.randbytes(offset)  # the bytes before the window, the same on both sides
    old = bytearray(rng.randbytes(old_len))
    new = bytearray(old[:new_len] + rng.randbytes(max(0, new_len - old_len)))
    pool = [k for k in range(min(n, old_len // c, new_len // c)) if k // per != 1]  # piece 1 equal
    changed = set(rng.sample(pool, len(pool) // 4))
    for k in changed:
        new[k * c + rng.randrange(c)] ^= 0xA5
    for k in rng.sample(sorted(changed), -(-len(changed) // 3)):  # changed to zeros
        new[k * c:(k + 1) * c] = bytes(c)
    maybe = bytearray(1 if rng.random() < 0.9 or k in changed else 0 for k in range(n))
    for k in range(n):  # a non-candidate is equal by proof: make it so
        if not maybe[k]:
            e = min((k + 1) * c, new_len, old_len)
            new[k * c:e] = old[k * c:e]
    npieces = -(-n // per)
    pairs = (bytearray(64 * npieces), bytearray(npieces), bytearray(64 * npieces),
             bytearray(npieces))
    flags, zero = bytearray(n), bytearray(b"\x07" * n)
    for first in (0, 1):  # two workers
        native.diff_window(old, new, offset, c, per, n, maybe, flags, first, 2, pairs, zero=zero)
    ends = [min((k + 1) * c, new_len) for k in range(n)]
    want = [k for k in range(n) if maybe[k] and (ends[k] > old_len or
                                                  old[k * c:ends[k]] != new[k * c:ends[k]])]
    assert [k for k in range(n) if flags[k]] == want
    want_zero = [k for k in want if new[k * c:ends[k]].count(0) == ends[k] - k * c]
    assert want_zero or not changed
    assert [k for k in range(n) if zero[k] == 1] == want_zero
    assert all(zero[k] == (7 if not maybe[k] else k in want_zero) for k in range(n))
    for side, data, plen, ps in ((0, old, old_len, pairs[:2]), (1, new, new_len, pairs[2:])):
        h = native.Blake3(head)
        h.feed(data, plen, per * c, *ps)
        assert h.hexdigest() == b3sum(head + bytes(data)), side
    p = per * c
    if p >= 2048 and p & (p - 1) == 0 and offset % p == 0 and 2 * p <= min(old_len, new_len):
        equal = [j for j in range(npieces) if pairs[3][j] and not any(
            flags[j * per:(j + 1) * per])]
        assert equal, "some pieces are equal and reuse OLD's pair"
        for j in equal:
            assert pairs[2][64 * j:64 * j + 64] == pairs[0][64 * j:64 * j + 64]
        h = native.Blake3(head)  # pairs alone, no bytes: proves they are what is fed
        if all(pairs[3][j] for j in range(new_len // (per * c))) and new_len % (per * c) == 0:
            h.feed(None, new_len, per * c, *pairs[2:])
            assert h.hexdigest() == b3sum(head + bytes(new))


def test_diff_window_bad_arguments() -> None:
    with pytest.raises(ValueError):
        native.diff_window(b"x" * 10, b"y" * 10, 0, 4, 1, 5, bytes(5), bytearray(5))
    with pytest.raises(ValueError):  # per-cluster outputs shorter than the window
        native.diff_window(b"x" * 20, b"y" * 20, 0, 4, 1, 5, bytes(5), bytearray(5),
                           zero=bytearray(4))
    with pytest.raises(ValueError):
        native.diff_window(b"x" * 20, b"y" * 20, 0, 4, 1, 5, bytes(5), bytearray(4))
    h = native.Blake3()
    with pytest.raises(ValueError):
        h.feed(None, 4096, 4096, bytearray(64), bytearray(1))
    with pytest.raises(ValueError):
        h.feed(b"short", 4096, 4096, bytearray(64), bytearray(1))


# -- block maps (pf_map.c) -----------------------------------------------------------------------
def _dense_chain(levels: list[tuple[array.array, array.array | None, int, int]], n: int,
                 c: int) -> list[tuple[int, int] | None]:
    """(level, file offset) of every cluster, later levels winning: the model of the merge."""
    out: list[tuple[int, int] | None] = [None] * n
    for v, e, unit, lv in levels:
        for i, x in enumerate(v):
            if x < n:
                out[x] = (lv, e[i] * unit if e is not None else x * c)
    return out


def _random_levels(rng: random.Random, n: int, nlevels: int, zero: bool
                   ) -> list[tuple[array.array, array.array | None, int, int]]:
    levels = []
    for lv in range(nlevels):
        v = array.array("I", sorted(rng.sample(range(n + 5), rng.randint(0, n))))
        nxt, ents = 0, []
        for _ in v:  # mostly consecutive file clusters
            nxt += 1 if rng.random() < 0.8 else rng.randint(2, 50)
            ents.append(nxt)
        levels.append((v, array.array("I", ents), rng.choice([512, 4096]), lv))
        if zero and rng.random() < 0.5:
            levels.append((array.array("I", sorted(rng.sample(range(n), rng.randint(0, n // 4)))),
                           None, 1, 255))
    return levels


@pytest.mark.parametrize("seed", range(40))
def test_map_merge_and_candidate_runs_match_dense_models(seed: int) -> None:
    rng = random.Random(seed)
    c = 4096
    na, nb = rng.randint(1, 300), rng.randint(1, 300)
    la = _random_levels(rng, na, rng.randint(0, 4), zero=seed % 3 == 0)
    lb = la[: rng.randint(0, len(la))] + _random_levels(rng, nb, rng.randint(0, 3), zero=False)
    maps = []
    for levels, n in ((la, na), (lb, nb)):
        vstart, count, level, offset = native.map_merge(levels, n, c)
        dense = _dense_chain(levels, n, c)
        got: list[tuple[int, int] | None] = [None] * n
        for s, k, lv, off in zip(vstart, count, level, offset, strict=True):
            assert k > 0
            for j in range(k):
                got[s + j] = (lv, off + j * c)
        assert got == dense
        # maximal extents: none continues the one before it
        for i in range(1, len(vstart)):
            assert not (vstart[i - 1] + count[i - 1] == vstart[i] and level[i - 1] == level[i]
                        and offset[i - 1] + count[i - 1] * c == offset[i])
        maps.append((vstart, count, level, offset, dense))
    keys_a = list(range(10))
    keys_b = [k if rng.random() < 0.7 else 100 + k for k in keys_a]  # shared files, mostly
    raw_a = rng.random() < 0.3
    raw_b = raw_a and rng.random() < 0.7
    common = min(na, nb)

    def source(dense: list, keys: list[int], raw: bool, x: int) -> tuple[int, int]:
        d = dense[x]
        if d is None:
            return (keys[0], x * c) if raw else (-1, 0)
        return (-1, 0) if d[0] == 255 else (keys[d[0]], d[1])

    want = [x for x in range(common)
            if source(maps[0][4], keys_a, raw_a, x) != source(maps[1][4], keys_b, raw_b, x)]
    first, runs = native.candidate_runs((*maps[0][:4], keys_a, 255, raw_a),
                                        (*maps[1][:4], keys_b, 255, raw_b), common, c)
    got_runs = list(zip(first, runs, strict=True))
    assert [x for f, k in got_runs for x in range(f, f + k)] == want
    assert all(f2 > f1 + k1 for (f1, k1), (f2, _k2) in itertools.pairwise(got_runs))  # merged


def test_bat_nonzero_reads_little_endian_slots() -> None:
    entries = [0, 7, 0, 0xFFFFFFFF, 3, 100, 0]
    raw = struct.pack(f"<{len(entries)}I", *entries)
    v, e = array.array("I"), array.array("I")
    bad = native.bat_nonzero(raw, 1000, 5, 99, v, e)
    assert list(v) == [1001, 1003, 1004, 1005] and list(e) == [7, 0xFFFFFFFF, 3, 100]
    assert bad == 3  # 0xffffffff, 3 (< 5) and 100 (> 99)


# -- du --dedup through native.DedupScanner ----------------------------------------------------
def test_dedup_scanner_counts_blocks_and_picks() -> None:
    """4 KiB / 16 KiB blocks: a repeated large block, a zero block, a short tail; every
    non-zero large block picked (sample_every 1), with its index in the chunk."""
    rng = random.Random(5)
    a, b = rng.randbytes(16384), rng.randbytes(16384)
    data = a + bytes(16384) + a + b + b"x" * 100
    sc = native.DedupScanner(4096, 16384, 1 << 20, 1 << 20, 0, 1)
    picks = sc.picks_buffer(len(data))
    assert len(picks) == 3 * 5
    got = sc.feed(data, picks)
    assert got == 4 and [picks[3 * k] for k in range(got)] == [0, 2, 3, 4]
    assert picks[1:3] == picks[4:6] != picks[7:9]  # same content, same hash
    small, large = sc.table(0), sc.table(1)
    assert (large.blocks, large.zero, large.entries, large.refs, large.shift) == (5, 1, 3, 4, 0)
    assert large.hist_entries[0] == 2 and large.hist_entries[1] == 1  # refcount 1, 1, 2
    assert (small.blocks, small.zero) == (17, 4)
    with pytest.raises(ValueError):
        native.DedupScanner(4096, 5000, 1 << 20, 1 << 20, 0, 1)  # small does not divide large


# -- every C call goes through native.py; the build lists every part ---------------------------
def test_only_native_py_imports_the_cffi_module() -> None:
    """The services call C through native.py's typed wrappers, never ffi/lib directly."""
    import ast
    from pathlib import Path

    pkg = Path(native.__file__).resolve().parent
    users = []
    for p in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            mods = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(m == "ploopfs._native" or m.startswith("ploopfs._native.") for m in mods) or (
                    isinstance(node, ast.ImportFrom) and node.module == "ploopfs"
                    and any(a.name == "_native" for a in node.names)):
                users.append(str(p.relative_to(pkg)))
    assert users == ["native.py"]


def test_build_and_makefile_list_every_native_source() -> None:
    """build_native.py and the Makefile list the same parts, and every one there is."""
    import re
    from pathlib import Path

    here = Path(native.__file__).resolve().parents[1] / "native"
    if not (here / "build_native.py").exists():
        pytest.skip("no source tree")
    text = (here / "build_native.py").read_text()
    names = {m for part in ("HEADER_NAMES", "SOURCE_NAMES")
             for m in re.findall(r'"([\w.]+)"', text.split(part + " = [", 1)[1].split("]", 1)[0])}
    mk = (here / "Makefile").read_text().replace("\\\n", " ")
    make_names = {n for var in ("SRC", "HDR")
                  for n in re.search(rf"^{var} := (.*)$", mk, re.M).group(1).split()}
    on_disk = {p.name for p in here.iterdir() if re.fullmatch(r"(pf_\w+|ploopfs_native)\.[chS]", p.name)}
    assert make_names == on_disk
    assert names == on_disk - {"pf_rdiff.h"}  # the umbrella header has no CDEF section
