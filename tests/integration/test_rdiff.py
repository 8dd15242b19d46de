"""rdiff drop-in (issue #4): `ploopfs signature|delta|patch` and ploopfs/services/rdiff.py
against stock librsync `rdiff` (2.3.x) as the independent producer and consumer.

* signatures byte-identical to `rdiff signature` for all four magics and -S 8/16/32/-1/0;
* our deltas (from rdiff's or our signatures) applied by stock `rdiff patch` give NEW exactly;
  `ploopfs patch` of rdiff's own deltas equals `rdiff patch`;
* growth, shrink, short last blocks, all-zero and moved blocks, 5 % / 50 % change, a > 4 GiB
  sparse basis (8-byte COPY offsets), the rollsum/zero-block input;
* bad or truncated signatures and deltas: one-line errors, exit codes 13 / 14.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from ploopfs import native
from ploopfs.errors import BadDeltaError, BadSignatureError, ExitCode
from ploopfs.services import rdiff as R

pytestmark = pytest.mark.skipif(shutil.which("rdiff") is None, reason="rdiff not installed")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
RDIFF = shutil.which("rdiff") or "rdiff"
SIG_KINDS = [(h, r) for h in ("md4", "blake2") for r in ("rollsum", "rabinkarp")]


# -- helpers ------------------------------------------------------------------------------------
def rnd(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def rdiff(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([RDIFF, "-f", *map(str, args)], capture_output=True, check=False,
                          timeout=300)


def rdiff_ok(*args: str | os.PathLike[str]) -> None:
    r = rdiff(*args)
    assert r.returncode == 0, r.stderr.decode()


def cli_ok(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr.decode()
    return r


def one_line_error(r: subprocess.CompletedProcess[bytes], code: int, *needles: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith("ploopfs: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def sparse_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of the data extents (SEEK_DATA/SEEK_HOLE) with their offsets: a cheap
    unchanged-check for large sparse files."""
    h = hashlib.sha256()
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            h.update(struct.pack(">QQ", start, end))
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(8 * MiB, end - pos), pos)
                h.update(chunk)
                pos += len(chunk)
            off = end
    finally:
        os.close(fd)
    return size, h.hexdigest()


def parse_delta(data: bytes) -> list[tuple[str, int, int]]:
    """Independent decoder of the delta command stream (docs/rdiff.md): a list of
    ('copy', start, len) / ('lit', width, len) / ('end', 0, 0)."""
    assert data[:4] == b"rs\x026"
    i, cmds = 4, []
    while True:
        op = data[i]
        i += 1
        if op == 0:
            cmds.append(("end", 0, 0))
            return cmds
        if op <= 0x40:
            cmds.append(("lit", 0, op))
            i += op
        elif op <= 0x44:
            w = 1 << (op - 0x41)
            n = int.from_bytes(data[i:i + w], "big")
            cmds.append(("lit", w, n))
            i += w + n
        elif op <= 0x54:
            wa, wb = 1 << ((op - 0x45) // 4), 1 << ((op - 0x45) % 4)
            s = int.from_bytes(data[i:i + wa], "big")
            n = int.from_bytes(data[i + wa:i + wa + wb], "big")
            assert wa == min_width(s) and wb == min_width(n), "not minimal width"
            cmds.append(("copy", s, n))
            i += wa + wb
        else:
            raise AssertionError(f"bogus op {op:#x}")


def min_width(v: int) -> int:
    return 1 if v < 1 << 8 else 2 if v < 1 << 16 else 4 if v < 1 << 32 else 8


def roundtrip(tmp: Path, basis: Path, new: Path, *sig_opts: str, rdiff_sig: bool = False,
              guard=None) -> dict:
    """Signature (ours or rdiff's) -> `ploopfs delta` -> stock `rdiff patch` and
    `ploopfs patch`; both must give NEW. Returns the delta's JSON summary."""
    if guard:
        guard(basis, new)
    sig, delta = tmp / "sig", tmp / "delta"
    if rdiff_sig:
        rdiff_ok(*sig_opts, "signature", basis, sig)
    else:
        cli_ok("signature", *sig_opts, basis, sig, "--force")
    summary = json.loads(cli_ok("delta", sig, new, delta, "--force", "--json").stdout)
    out1, out2 = tmp / "out.rdiff", tmp / "out.ploopfs"
    rdiff_ok("patch", basis, delta, out1)
    assert out1.read_bytes() == new.read_bytes(), "rdiff patch of our delta differs from NEW"
    cli_ok("patch", basis, delta, out2, "--force")
    assert out2.read_bytes() == new.read_bytes(), "ploopfs patch of our delta differs from NEW"
    parse_delta(delta.read_bytes())
    return summary


# -- signatures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def basis_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 MiB + 12345 bytes: random, a run of zero blocks, a repeated block, a short tail."""
    rng = random.Random(4)
    data = bytearray(rnd(rng, 3 * MiB + 12345))
    data[MiB: MiB + 256 * KiB] = bytes(256 * KiB)
    data[2 * MiB: 2 * MiB + 64 * KiB] = data[64 * KiB: 128 * KiB]
    return write(tmp_path_factory.mktemp("basis") / "basis.bin", bytes(data))


@pytest.mark.parametrize(("hash_", "roll"), SIG_KINDS)
@pytest.mark.parametrize("sum_size", [8, 16, 32, -1, 0])
def test_signature_identical_to_rdiff(tmp_path: Path, basis_file: Path, guard_sources, hash_: str,
                                      roll: str, sum_size: int) -> None:
    if hash_ == "md4" and sum_size == 32:
        pytest.skip("MD4 sums are at most 16 bytes")
    guard_sources(basis_file)
    for block in ("65536", "0", "1000"):
        opts = ["-H", hash_, "-R", roll, "-S", str(sum_size), "-b", block]
        rdiff_ok(*opts, "signature", basis_file, tmp_path / "ref.sig")
        cli_ok("signature", *opts, basis_file, tmp_path / "our.sig", "--force")
        assert (tmp_path / "our.sig").read_bytes() == (tmp_path / "ref.sig").read_bytes(), opts
        sig = R.read_signature(tmp_path / "ref.sig")
        assert sig.params.hash == hash_ and sig.params.rollsum == roll
        assert sig.nblocks == -(-basis_file.stat().st_size // sig.params.block_size)


def test_signature_default_options_and_small_files(tmp_path: Path, basis_file: Path) -> None:
    """No options (BLAKE2 + RabinKarp, sqrt block rule, full sums); tiny and empty files."""
    rng = random.Random(9)
    files = [basis_file]
    for n in (0, 1, 255, 256, 257, 65536, 65537, 300000):
        files.append(write(tmp_path / f"f{n}", rnd(rng, n)))
    for f in files:
        rdiff_ok("signature", f, tmp_path / "ref.sig")
        cli_ok("signature", f, tmp_path / "our.sig", "--force")
        assert (tmp_path / "our.sig").read_bytes() == (tmp_path / "ref.sig").read_bytes(), f
    ref = (tmp_path / "ref.sig").read_bytes()
    assert ref[:4] == b"rs\x01G"


def test_signature_api_threads_and_stdout(tmp_path: Path, basis_file: Path) -> None:
    data = basis_file.read_bytes()
    outs = []
    for threads in (1, 2, 5):
        buf = io.BytesIO()
        p = R.write_signature(lambda o, n: data[o:o + n], len(data), buf,
                              R.SigParams("md4", "rollsum", 4096, 8), threads=threads)
        assert (p.block_size, p.sum_size, p.magic) == (4096, 8, 0x72730136)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] == outs[2]
    rdiff_ok("-H", "md4", "-R", "rollsum", "-b", "4096", "-S", "8", "signature", basis_file,
             tmp_path / "ref.sig")
    assert outs[0] == (tmp_path / "ref.sig").read_bytes()
    r = cli_ok("signature", "-H", "md4", "-R", "rollsum", "-b", "4096", "-S", "8", basis_file, "-")
    assert r.stdout == outs[0]


def test_signature_of_ploop_source(tmp_path: Path, corpus_case) -> None:
    """A ploop disk as BASIS: the signature of its virtual disk equals rdiff's signature of the
    disk exported to raw by qemu-img (independent reader)."""
    from conftest import qemu_to_raw

    case = corpus_case("v2-single")
    raw = tmp_path / "disk.raw"
    qemu_to_raw(str(case / "root.hdd"), raw)
    rdiff_ok("-b", "65536", "signature", raw, tmp_path / "ref.sig")
    cli_ok("signature", "-b", "65536", case, tmp_path / "our.sig")
    assert (tmp_path / "our.sig").read_bytes() == (tmp_path / "ref.sig").read_bytes()

    # the disk as NEW: a delta against a changed raw basis, applied by stock rdiff patch
    disk = raw.read_bytes()
    basis = bytearray(disk)
    basis[70000:75000] = bytes(5000)
    basis[-3:] = b"xyz"
    bf = write(tmp_path / "basis.raw", bytes(basis))
    rdiff_ok("-b", "65536", "signature", bf, tmp_path / "b.sig")
    cli_ok("delta", tmp_path / "b.sig", case / "DiskDescriptor.xml", tmp_path / "d")
    rdiff_ok("patch", bf, tmp_path / "d", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == disk


# -- deltas through stock rdiff patch -------------------------------------------------------------
def changed_copy(data: bytes, block: int, frac: float, rng: random.Random) -> bytes:
    out = bytearray(data)
    n = len(data) // block
    for i in rng.sample(range(n), max(1, round(n * frac))):
        out[i * block:(i + 1) * block] = rnd(rng, block)
    return bytes(out)


@pytest.mark.parametrize(("hash_", "roll"), SIG_KINDS)
@pytest.mark.parametrize("sum_size", [8, 16, 32])
def test_roundtrip_all_magics(tmp_path: Path, basis_file: Path, guard_sources, hash_: str,
                              roll: str, sum_size: int) -> None:
    """rdiff's signature -> our delta -> rdiff patch, for every magic and sum size."""
    if hash_ == "md4" and sum_size == 32:
        pytest.skip("MD4 sums are at most 16 bytes")
    rng = random.Random(sum_size)
    data = basis_file.read_bytes()
    new = changed_copy(data, 64 * KiB, 0.05, rng)
    new = new[:MiB] + new[2 * MiB: 2 * MiB + 64 * KiB] + new[MiB + 64 * KiB:] + rnd(rng, 5000)
    newf = write(tmp_path / "new.bin", new)
    s = roundtrip(tmp_path, basis_file, newf, "-H", hash_, "-R", roll, "-S", str(sum_size),
                  "-b", "65536", rdiff_sig=True, guard=guard_sources)
    assert s["magic"] == f"0x{R.MAGICS[(hash_, roll)]:08x}"
    assert s["literal_bytes"] < len(new) // 4


def scenario(name: str, rng: random.Random) -> tuple[bytes, bytes, int]:
    """(basis, new, block) for the named case."""
    B = 256 * KiB
    base = rnd(rng, 24 * B + 1000)  # short last block
    blocks = [base[i:i + B] for i in range(0, len(base), B)]
    if name == "5pct":
        return base, changed_copy(base, B, 0.05, rng), B
    if name == "50pct":
        return base, changed_copy(base, B, 0.5, rng), B
    if name == "growth":
        return base, base + rnd(rng, 3 * B + 77), B
    if name == "shrink":
        return base, base[:10 * B + 123], B
    if name == "shrink_to_whole":
        return base, base[:10 * B], B
    if name == "zero_blocks":
        z = bytes(B)
        b = bytearray(base)
        b[2 * B:6 * B] = z * 4
        n = bytearray(b)
        n[10 * B:14 * B] = z * 4  # new zero blocks: found at 2..5
        n[3 * B:4 * B] = rnd(rng, B)  # an old zero block changed
        return bytes(b), bytes(n), B
    if name == "moved":
        order = list(range(24))
        rng.shuffle(order)
        return base, b"".join(blocks[i] for i in order) + blocks[24], B
    if name == "short_tail_moved":  # the basis's short last block ends a shorter NEW
        return base, b"".join(blocks[:5]) + blocks[24], B
    if name == "empty_new":
        return base, b"", B
    if name == "empty_basis":
        return b"", base, B
    raise AssertionError(name)


SCENARIOS = ["5pct", "50pct", "growth", "shrink", "shrink_to_whole", "zero_blocks", "moved",
             "short_tail_moved", "empty_new", "empty_basis"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_roundtrip_scenarios(tmp_path: Path, guard_sources, name: str) -> None:
    rng = random.Random(name)
    base, new, block = scenario(name, rng)
    bf, nf = write(tmp_path / "basis", base), write(tmp_path / "new", new)
    s = roundtrip(tmp_path, bf, nf, "-b", str(block), "-H", "md4", guard=guard_sources)
    cmds = parse_delta((tmp_path / "delta").read_bytes())
    lits = sum(n for k, _, n in cmds if k == "lit")
    assert lits == s["literal_bytes"]
    assert s["copy_bytes"] + s["literal_bytes"] == len(new)
    expect_literal = {"growth": len(new) - 24 * block, "shrink": 123, "shrink_to_whole": 0, "moved": 0,
                      "short_tail_moved": 0, "empty_new": 0, "empty_basis": len(new),
                      "5pct": round(24 * 0.05) * block, "50pct": 12 * block,
                      "zero_blocks": block}
    assert s["literal_bytes"] == expect_literal[name]
    if name in ("5pct", "growth", "shrink"):  # contiguous copies are merged
        assert s["copy_commands"] <= 1 + round(24 * 0.05) + 1


def test_short_last_block_fast_rdiff_bug(tmp_path: Path) -> None:
    """8.5 MiB NEW at 1 MiB blocks, MD4 S=8 (fast-rdiff's input): the result is 8.5 MiB, with
    the short tail copied when unchanged and a literal of exactly its length when changed."""
    rng = random.Random(85)
    base = rnd(rng, 8 * MiB + 512 * KiB)
    bf = write(tmp_path / "basis", base)
    opts = ("-H", "md4", "-R", "rollsum", "-S", "8", "-b", str(MiB))
    s = roundtrip(tmp_path, bf, write(tmp_path / "new", base[:MiB] + rnd(rng, MiB) + base[2 * MiB:]),
                  *opts, rdiff_sig=True)
    assert s["literal_bytes"] == MiB
    s = roundtrip(tmp_path, bf, write(tmp_path / "new", base[:8 * MiB] + rnd(rng, 512 * KiB)),
                  *opts, rdiff_sig=True)
    assert s["literal_bytes"] == 512 * KiB
    assert (tmp_path / "out.rdiff").stat().st_size == 8 * MiB + 512 * KiB


def test_patch_of_rdiff_delta_equals_rdiff(tmp_path: Path, basis_file: Path, guard_sources) -> None:
    """rdiff's own (rolling, byte-shifted) delta applied by `ploopfs patch` == `rdiff patch`."""
    guard_sources(basis_file)
    rng = random.Random(7)
    data = basis_file.read_bytes()
    new = data[:1000] + rnd(rng, 333) + data[1000:2 * MiB] + data[2 * MiB + 17:] + rnd(rng, 99)
    nf = write(tmp_path / "new", new)
    for opts in ((), ("-b", "4096", "-H", "md4", "-S", "8")):
        rdiff_ok(*opts, "signature", basis_file, tmp_path / "sig")
        rdiff_ok("delta", tmp_path / "sig", nf, tmp_path / "delta")
        rdiff_ok("patch", basis_file, tmp_path / "delta", tmp_path / "ref")
        r = cli_ok("patch", basis_file, tmp_path / "delta", tmp_path / "ours", "--force", "--json")
        assert (tmp_path / "ours").read_bytes() == (tmp_path / "ref").read_bytes() == new
        assert json.loads(r.stdout)["output_bytes"] == len(new)
    # delta from stdin, output to stdout (the JSON summary then goes to stderr)
    r = run_cli("patch", basis_file, "-", "-", "--json", input=(tmp_path / "delta").read_bytes())
    assert r.returncode == 0 and r.stdout == new
    assert json.loads(r.stderr)["output_bytes"] == len(new)
    # signature from stdin, delta to stdout
    r = run_cli("delta", "-", nf, "-", input=(tmp_path / "sig").read_bytes())
    assert r.returncode == 0
    write(tmp_path / "d2", r.stdout)
    rdiff_ok("patch", basis_file, tmp_path / "d2", tmp_path / "o2")
    assert (tmp_path / "o2").read_bytes() == new


def test_delta_with_ploopfs_patch_sparse_output(tmp_path: Path) -> None:
    """Zero runs in the result become holes; the bytes still read back exactly."""
    rng = random.Random(3)
    base = rnd(rng, 4 * MiB)
    new = base[:MiB] + bytes(2 * MiB) + base[3 * MiB:]
    bf, nf = write(tmp_path / "b", base), write(tmp_path / "n", new)
    roundtrip(tmp_path, bf, nf, "-b", str(MiB))
    assert (tmp_path / "out.ploopfs").stat().st_blocks * 512 <= 3 * MiB


# -- > 4 GiB: 8-byte COPY offsets ----------------------------------------------------------------
def test_sparse_basis_beyond_4gib(tmp_path: Path) -> None:
    """A 4 GiB + 8 MiB sparse basis with data past 4 GiB. (1) NEW = a few MiB assembled from
    blocks beyond 4 GiB: stock rdiff patch must follow 8-byte COPY offsets. (2) NEW = the full
    basis with two blocks changed: `ploopfs patch` reproduces it (sparse)."""
    rng = random.Random(44)
    size = 4 * GiB + 8 * MiB
    bf = tmp_path / "basis.sparse"
    blocks = {}
    with open(bf, "wb") as f:
        f.truncate(size)
        for off in (0, 2 * GiB, 4 * GiB - MiB, 4 * GiB, 4 * GiB + 3 * MiB, 4 * GiB + 7 * MiB):
            blocks[off] = rnd(rng, MiB)
            f.seek(off)
            f.write(blocks[off])
    before = sparse_digest(bf)
    sig = tmp_path / "sig"
    cli_ok("signature", "-b", str(MiB), "-H", "md4", bf, sig)
    assert sig.stat().st_size == 12 + (size // MiB) * 20

    small = (blocks[4 * GiB + 7 * MiB] + blocks[4 * GiB] + rnd(rng, 1000) + bytes(MiB)
             + blocks[4 * GiB + 3 * MiB])
    nf = write(tmp_path / "new.small", small)
    cli_ok("delta", sig, nf, tmp_path / "delta")
    cmds = parse_delta((tmp_path / "delta").read_bytes())
    assert ("copy", 4 * GiB + 7 * MiB, MiB) in cmds and ("copy", 4 * GiB, MiB) in cmds
    rdiff_ok("patch", bf, tmp_path / "delta", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == small

    big = tmp_path / "new.sparse"
    with open(big, "wb") as f:
        f.truncate(size)
        for off, blk in blocks.items():
            f.seek(off)
            f.write(blk)
        f.seek(4 * GiB + 3 * MiB)
        f.write(rnd(rng, MiB))
        f.seek(GiB)
        f.write(rnd(rng, MiB))
    s = json.loads(cli_ok("delta", sig, big, tmp_path / "delta2", "--json").stdout)
    assert s["literal_bytes"] == 2 * MiB and s["new_size"] == size
    cli_ok("patch", bf, tmp_path / "delta2", tmp_path / "out2")
    assert sparse_digest(tmp_path / "out2")[0] == size
    with open(tmp_path / "out2", "rb") as a, open(big, "rb") as b:
        for off in [*blocks, GiB, size - MiB, 3 * GiB]:
            a.seek(off)
            b.seek(off)
            assert a.read(MiB) == b.read(MiB), off
    assert sparse_digest(tmp_path / "out2")[1] == sparse_digest(big)[1]
    assert sparse_digest(bf) == before


def test_rollsum_zero_blocks_linear(tmp_path: Path) -> None:
    """rollsum with 1 MiB blocks hashes every zero window to 0, which makes a rolling
    search quadratic. Aligned matching does the same work as for any other input."""
    rng = random.Random(45)
    base = bytes(32 * MiB) + rnd(rng, MiB)
    new = bytes(16 * MiB) + rnd(rng, 1000) + bytes(17 * MiB)
    bf, nf = write(tmp_path / "b", base), write(tmp_path / "n", new)
    s = roundtrip(tmp_path, bf, nf, "-R", "rollsum", "-H", "md4", "-b", str(MiB))
    # block 16 holds the random bytes; NEW's short tail (1000 zeros) has no basis twin
    assert s["literal_bytes"] == MiB + 1000
    assert (tmp_path / "sig").read_bytes()[12:16] == b"\0\0\0\0"  # weak sum of a zero MiB


# -- DeltaWriter ----------------------------------------------------------------------------------
def test_delta_writer_merging_and_widths(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = R.DeltaWriter(buf)
    w.copy(0, 100)
    w.copy(100, 50)  # merged: COPY(0,150)
    w.copy(10, 5)  # not contiguous
    w.literal(b"ab")
    w.literal(b"c" * 63)  # merged: 65 bytes -> LITERAL_N1
    w.copy(5 * GiB, MiB)
    w.copy(5 * GiB + MiB, 4 * GiB)  # merged beyond 4 GiB: COPY_N8_N8
    w.literal(b"x" * (R.LITERAL_MAX + 10))  # split at LITERAL_MAX
    stats = w.close()
    w.close()  # idempotent
    cmds = parse_delta(buf.getvalue())
    assert cmds == [("copy", 0, 150), ("copy", 10, 5), ("lit", 1, 65),
                    ("copy", 5 * GiB, 4 * GiB + MiB), ("lit", 4, R.LITERAL_MAX), ("lit", 0, 10),
                    ("end", 0, 0)]
    assert buf.getvalue()[-1:] == b"\0"
    assert stats.copy_commands == 3 and stats.literal_commands == 3
    assert stats.delta_bytes == len(buf.getvalue())
    with pytest.raises(ValueError):
        R.DeltaWriter(io.BytesIO()).copy(-1, 5)


def test_delta_writer_applied_by_rdiff(tmp_path: Path) -> None:
    rng = random.Random(8)
    base = rnd(rng, 200000)
    bf = write(tmp_path / "b", base)
    with open(tmp_path / "d", "wb") as f:
        w = R.DeltaWriter(f)
        w.copy(199990, 10)
        w.literal(b"hello")
        w.copy(0, 70000)
        w.copy(70000, 1)
        w.literal(b"")
        w.copy(0, 0)
        w.close()
    rdiff_ok("patch", bf, tmp_path / "d", tmp_path / "o")
    assert (tmp_path / "o").read_bytes() == base[199990:] + b"hello" + base[:70001]


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_signatures(tmp_path: Path, basis_file: Path, guard_sources) -> None:
    guard_sources(basis_file)
    good = tmp_path / "good.sig"
    rdiff_ok("-H", "md4", "-b", "65536", "signature", basis_file, good)
    g = good.read_bytes()
    cases = {
        "short": (g[:7], "at offset 7", "truncated signature header"),
        "record": (g[:12 + 20 * 3 + 5], f"at offset {12 + 60}", "truncated signature record"),
        "magic": (b"XXXX" + g[4:], "at offset 0", "not an rdiff signature"),
        "delta": (b"rs\x026" + g[4:], "at offset 0", "delta, not a signature"),
        "block0": (g[:4] + bytes(4) + g[8:], "at offset 4", "block length 0"),
        "sum17": (g[:8] + struct.pack(">I", 17) + g[12:], "at offset 8", "out of range"),
        "sum0": (g[:8] + bytes(4) + g[12:], "at offset 8", "out of range"),
    }
    new = write(tmp_path / "new", b"x" * 1000)
    for name, (data, where, what) in cases.items():
        p = write(tmp_path / f"{name}.sig", data)
        r = run_cli("delta", p, new, tmp_path / "out.delta")
        one_line_error(r, ExitCode.BAD_SIGNATURE, str(p), where, what)
        assert not (tmp_path / "out.delta").exists()
        with pytest.raises(BadSignatureError):
            R.read_signature(p)
    r = run_cli("delta", tmp_path / "missing.sig", new, tmp_path / "out.delta")
    one_line_error(r, ExitCode.NOT_FOUND)
    # a block length beyond what bounded memory allows
    p = write(tmp_path / "huge.sig", g[:4] + struct.pack(">I", 1 << 30) + g[8:12])
    one_line_error(run_cli("delta", p, new, tmp_path / "o"), ExitCode.UNSUPPORTED, "maximum")


def test_bad_deltas(tmp_path: Path, basis_file: Path, guard_sources) -> None:
    guard_sources(basis_file)
    size = basis_file.stat().st_size
    M = b"rs\x026"
    cases = {
        "magic": (b"rs\x016\x00", "at offset 0", "not an rdiff delta"),
        "short": (b"rs", "at offset 0", "truncated delta header"),
        "no_end": (M + b"\x03abc", "at offset 8", "no END"),
        "cut_literal": (M + b"\x43\x00\x00\x10\x00abc", "at offset 12", "no END"),
        "cut_header": (M + b"\x02ab\x4f\x00", "at offset 9", "no END"),
        "bogus": (M + b"\x02ab\x55\x00", "at offset 7", "bogus command"),
        "zero_lit": (M + b"\x41\x00\x00", "at offset 4", "length 0"),
        "past_end": (M + b"\x02ab" + b"\x4f" + struct.pack(">II", size - 1, 2) + b"\x00",
                     "at offset 7", "outside the basis"),
    }
    for name, (data, where, what) in cases.items():
        d = write(tmp_path / f"{name}.delta", data)
        out = tmp_path / "out"
        r = run_cli("patch", basis_file, d, out)
        one_line_error(r, ExitCode.BAD_DELTA, str(d), where, what)
        assert not out.exists(), name  # partial output removed
        rr = rdiff("patch", basis_file, d, tmp_path / "rdiff.out")
        assert rr.returncode != 0, f"rdiff accepted {name}"
        with pytest.raises(BadDeltaError):
            R.patch(basis_file, d, out)
    # at exactly the basis end it is fine, and bytes after END are ignored (like rdiff)
    d = write(tmp_path / "edge.delta", M + b"\x4f" + struct.pack(">II", size - 1, 1) + b"\x00junk")
    cli_ok("patch", basis_file, d, tmp_path / "edge.out")
    assert (tmp_path / "edge.out").read_bytes() == basis_file.read_bytes()[-1:]


def test_outputs_refused(tmp_path: Path, basis_file: Path) -> None:
    sig = tmp_path / "sig"
    cli_ok("signature", basis_file, sig)
    one_line_error(run_cli("signature", basis_file, sig), ExitCode.OUTPUT, "--force")
    one_line_error(run_cli("signature", basis_file, basis_file, "--force"), ExitCode.OUTPUT,
                   "is the source file")
    one_line_error(run_cli("delta", sig, basis_file, sig, "--force"), ExitCode.OUTPUT)
    cli_ok("delta", sig, basis_file, tmp_path / "d")
    one_line_error(run_cli("patch", basis_file, tmp_path / "d", basis_file, "--force"),
                   ExitCode.OUTPUT)


# -- the C module from Python -------------------------------------------------------------------
def test_native_weak_sums_match_definitions() -> None:
    rng = random.Random(1)
    for n in (0, 1, 31, 32, 33, 1000, 65536):
        data = rnd(rng, n)
        s1 = s2 = 0
        h = 1
        for b in data:
            s1 += b + 31
            s2 += s1
            h = (h * 0x08104225 + b) & 0xFFFFFFFF
        assert native.rollsum(data) == ((s2 & 0xFFFF) << 16) | (s1 & 0xFFFF)
        assert native.rabinkarp(data) == h


def test_native_blake2b_256_matches_hashlib() -> None:
    rng = random.Random(2)
    for n in (0, 1, 127, 128, 129, 100000):
        data = rnd(rng, n)
        out = native.strong_sum(native.HASH_BLAKE2, data)
        assert out == hashlib.blake2b(data, digest_size=32).digest()
        assert out != hashlib.blake2b(data).digest()[:32]
    # MD4 (nettle): RFC 1320 §A.5
    assert native.strong_sum(native.HASH_MD4, b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    with pytest.raises(ValueError):
        native.strong_sum(7, b"abc")


def test_native_command_headers() -> None:
    """Minimal-width big-endian parameters (docs/rdiff.md); nothing for a length of 0."""
    assert native.cmd_literal(0) == b"" and native.cmd_copy(5, 0) == b""
    assert native.cmd_literal(64) == b"\x40"
    assert native.cmd_literal(65) == b"\x41\x41"
    assert native.cmd_literal(1 << 20) == b"\x43\x00\x10\x00\x00"
    assert native.cmd_copy(0, 1) == b"\x45\x00\x01"
    assert native.cmd_copy(1 << 32, 300) == b"\x52" + (1 << 32).to_bytes(8, "big") + b"\x01\x2c"


def test_native_match_chunk_from_python() -> None:
    """Index + match through native.py: same-index first, moved blocks, short tail, misses."""
    rng = random.Random(3)
    bl = 4096
    base = rnd(rng, 10 * bl + 100)
    buf = io.BytesIO()
    p = R.write_signature(lambda o, n: base[o:o + n], len(base), buf, R.SigParams(block_size=bl))
    sig = R.read_signature(io.BytesIO(buf.getvalue()))
    assert sig.params == p and sig.nblocks == 11
    ix = native.MatchIndex(native.HASH_BLAKE2, native.WEAK_RABINKARP, bl, 32, sig.records, 2,
                           4 * bl)
    assert len(ix) == 11
    new = base[3 * bl:4 * bl] + base[bl:2 * bl] + rnd(rng, bl) + base[-100:]
    assert list(ix.match(new, 0)) == [3, 1, -1, 10]
    with pytest.raises(ValueError):
        ix.match(new + bytes(bl), 0)  # more than max_chunk


