"""`ploopfs du --dedup` (issue #6 item 4): dedup and compression figures on disks built from
known content with qemu-img, checked against the constructed figures, against an independent
count (SHA-256 of every block of qemu-img's raw export, allocation from `qemu-img map`) and
against the reference compression CLIs (gzip, zstd, lz4)."""

from __future__ import annotations

import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_json, qemu_json_chain, qemu_to_raw, run_cli

from ploopfs.errors import ExitCode
from ploopfs.volume.writer import chain_descriptor, write_descriptor

MIB = 1 << 20
K4 = 4096
K128 = 128 * 1024
DISK = 16 * MIB
WORDS = [b"ploop", b"disk", b"image", b"cluster", b"delta", b"snapshot", b"block", b"table",
         b"header", b"zero", b"alpha", b"beta", b"gamma", b"kernel", b"backup", b"container",
         b"template", b"debian", b"ubuntu"]


def _blocks(rng: random.Random, n: int) -> list[bytes]:
    """n distinct 4 KiB blocks: even ones compressible text, odd ones random bytes."""
    out = []
    for i in range(n):
        if i % 2:
            out.append(rng.randbytes(K4))
        else:
            text = b" ".join(rng.choice(WORDS) for _ in range(900))
            out.append((b"%08d " % i + text)[:K4])
    assert len(set(out)) == n and all(len(b) == K4 for b in out)
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three 16 MiB parallels disks: the same 2 MiB template (512 blocks) in each at 1 MiB, a
    second copy in disk 1 at 4 MiB + 12 KiB (4 KiB- but not 128 KiB-aligned), 1 MiB of data
    unique to each disk at 8 MiB, and in disk 2 a 1 MiB cluster allocated but written with
    zeros (qemu-io). Expected 4 KiB figures from the construction."""
    d = tmp_path_factory.mktemp("dedup-fleet")
    rng = random.Random(6)
    template = b"".join(_blocks(rng, 512))
    images = []
    for k in range(3):
        raw = bytearray(DISK)
        raw[MIB:MIB + len(template)] = template
        if k == 1:
            off = 4 * MIB + 12 * 1024
            raw[off:off + len(template)] = template
        uniq = b"".join(_blocks(rng, 256))
        raw[8 * MIB:9 * MIB] = uniq
        src = d / f"disk{k}.raw"
        src.write_bytes(raw)
        img = d / f"disk{k}.hds"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "parallels", str(src), str(img)],
                       check=True, capture_output=True)
        src.unlink()
        images.append(img)
    subprocess.run(["qemu-io", "-f", "parallels", "-c", f"write -P 0 {12 * MIB} {MIB}",
                    str(images[2])], check=True, capture_output=True)
    # constructed: 512 template blocks referenced 4 times, 3 x 256 blocks once
    expect4 = {"referenced_blocks": 512 * 4 + 768, "allocated_blocks": 512 + 768,
               "unique_entries": 768, "duplicate_entries": 512, "duplicate_refs": 2048}
    return {"dir": d, "images": images, "expect4": expect4}


def reference(raws: list[Path], bs: int) -> dict:
    """Independent count over raw exports: SHA-256 of each block, zero blocks apart."""
    counts: Counter[bytes] = Counter()
    zero = total = 0
    import hashlib

    for r in raws:
        data = r.read_bytes()
        for off in range(0, len(data), bs):
            blk = data[off:off + bs]
            total += 1
            if blk.count(0) == len(blk):
                zero += 1
            else:
                counts[hashlib.sha256(blk).digest()] += 1
    refs = sum(counts.values())
    once = sum(1 for c in counts.values() if c == 1)
    return {"blocks": total, "zero_or_unallocated": zero, "referenced_blocks": refs,
            "allocated_blocks": len(counts), "unique_entries": once,
            "duplicate_entries": len(counts) - once, "duplicate_refs": refs - once,
            "dedup_ratio": refs / len(counts)}


def unallocated_bytes(image: Path) -> int:
    """Bytes qemu-img map reports as not allocated in the image."""
    out = subprocess.run(["qemu-img", "map", "-f", "parallels", "--output=json", str(image)],
                         check=True, capture_output=True).stdout
    return sum(e["length"] for e in json.loads(out) if not e["data"])


def raw_exports(fleet: dict) -> list[Path]:
    raws = []
    for img in fleet["images"]:
        dst = fleet["dir"] / (img.stem + ".export.raw")
        if not dst.exists():
            qemu_to_raw(str(img), dst)
        raws.append(dst)
    return raws


def check_table(tb: dict, ref: dict) -> None:
    for k in ("referenced_blocks", "allocated_blocks", "unique_entries", "duplicate_entries",
              "duplicate_refs", "blocks"):
        assert tb[k] == ref[k], (tb["block_size"], k, tb[k], ref[k])
    assert tb["zero_blocks"] + tb["unallocated_blocks"] == ref["zero_or_unallocated"]
    assert tb["dedup_ratio"] == pytest.approx(ref["dedup_ratio"], rel=1e-12)
    assert tb["saved_blocks"] == tb["referenced_blocks"] - tb["allocated_blocks"]
    hist = tb["histogram"]
    assert sum(h["entries"] for h in hist) == ref["allocated_blocks"]
    assert sum(h["refs"] for h in hist) == ref["referenced_blocks"]


def test_exact_counts(fleet: dict, guard_sources) -> None:
    guard_sources(*fleet["images"])
    rep = cli_json("du", "--dedup", "--json", "--sample", "0", *fleet["images"])
    assert rep["mode"] == "exact" and rep["compression"] is None
    small, large = rep["block_sizes"]
    assert (small["block_size"], large["block_size"]) == (K4, K128)
    for k, v in fleet["expect4"].items():
        assert small[k] == v, (k, small[k], v)
    assert small["dedup_ratio"] == pytest.approx(2816 / 1280, rel=1e-12)
    raws = raw_exports(fleet)
    check_table(small, reference(raws, K4))
    check_table(large, reference(raws, K128))
    # unallocated = what qemu-img map calls unallocated; the qemu-io zero cluster is read and
    # counted as 256 all-zero 4 KiB blocks (the only zeros in allocated clusters apart from
    # the tails of partly written ones)
    for img, dk in zip(fleet["images"], rep["disks"], strict=True):
        assert dk["unallocated_bytes"] == unallocated_bytes(img)
        assert dk["read_bytes"] + dk["unallocated_bytes"] == dk["virtual_bytes"] == DISK
    assert small["unallocated_blocks"] * K4 == rep["totals"]["unallocated_bytes"]
    assert small["zero_blocks"] >= 256


def test_sampled_mode_forced(fleet: dict, guard_sources) -> None:
    """--sample-bits 2 keeps 1/4 of the distinct hashes: referenced stays exact, the dedup
    ratio (true 2.2) and the distinct count come out within 15 % (data fixed: deterministic)."""
    guard_sources(*fleet["images"])
    rep = cli_json("du", "--dedup", "--json", "--sample", "0", "--sample-bits", "2",
                   *fleet["images"])
    small = rep["block_sizes"][0]
    assert rep["mode"] == "sampled" and small["mode"] == "sampled"
    assert small["sample_fraction"] == 0.25
    assert small["referenced_blocks"] == 2816
    assert small["dedup_ratio"] == pytest.approx(2.2, rel=0.15)
    assert small["allocated_blocks"] == pytest.approx(1280, rel=0.15)
    assert 0 < small["kept_entries"] < 1280


def test_sampling_switch_by_memory(fleet: dict, guard_sources) -> None:
    """--memory 64K: the 4 KiB table (60 KiB, at most 716 entries) cannot hold 1280 distinct
    hashes and switches to sampling by itself; the 128 KiB table (4 KiB) stays exact."""
    guard_sources(*fleet["images"])
    rep = cli_json("du", "--dedup", "--json", "--sample", "0", "--memory", "64K",
                   *fleet["images"])
    small, large = rep["block_sizes"]
    assert rep["mode"] == "sampled"
    assert small["mode"] == "sampled" and small["sample_fraction"] < 1
    assert small["table_peak_bytes"] <= 60 * 1024
    assert small["dedup_ratio"] == pytest.approx(2.2, rel=0.15)
    assert large["mode"] == "exact"
    check_table(large, reference(raw_exports(fleet), K128))
    text = run_cli("du", "--dedup", "--sample", "0", "--memory", "64K", *fleet["images"])
    assert text.returncode == 0
    assert b"sampled: 1/" in text.stdout and b"unbiased" in text.stdout


def _cli_size(argv: list[str], data: bytes) -> int:
    return len(subprocess.run(argv, input=data, capture_output=True, check=True).stdout)


# Framing the CLIs add around the compressed payload that the library figures leave out:
# gzip header 10 + trailer 8 against zlib's 2 + 4; zstd from a pipe (no content size, no
# checksum with --no-check) has the library's frame; lz4 frame: header 7, block size 4, end
# mark 4, content checksum 4. Tolerance: the lz4 CLI and the lz4 binding produce the same
# payload; gzip 1.12 has its own deflate code (not zlib's), which emits the same bytes on text
# but splits incompressible data into stored blocks differently (~0.02 % here); the zstd CLI
# (Debian's libzstd) and the binding's bundled libzstd may differ by a few bytes.
CLIS = {"gzip-6": (["gzip", "-6", "-n", "-c"], 18 - 6, 0.005),
        "zstd-3": (["zstd", "-3", "-q", "-c", "--no-check"], 0, 0.005),
        "lz4": (["lz4", "-q", "-c"], 19, 0.0)}


def test_compression_matches_reference_clis(fleet: dict, guard_sources) -> None:
    """--sample 1: every distinct non-zero 128 KiB block is in the sample. Compress each of
    them (taken from qemu-img's raw export) with gzip -6, zstd -3 and lz4: the totals, less the
    CLIs' framing, equal the reported ones (gzip and zstd: within 0.5 %, see CLIS)."""
    guard_sources(*fleet["images"])
    rep = cli_json("du", "--dedup", "--json", "--sample", "1", *fleet["images"])
    c = rep["compression"]
    blocks: Counter[bytes] = Counter()
    for r in raw_exports(fleet):
        data = r.read_bytes()
        for off in range(0, len(data), K128):
            blk = data[off:off + K128]
            if blk.count(0) != len(blk):
                blocks[blk] += 1
    assert c["distinct_blocks"] == len(blocks) == rep["block_sizes"][1]["allocated_blocks"]
    assert c["referenced_blocks"] == sum(blocks.values())
    assert c["distinct_bytes"] == len(blocks) * K128
    for name, (argv, framing, tol) in CLIS.items():
        sizes = {b: _cli_size(argv, b) - framing for b in blocks}
        distinct = sum(sizes.values())
        referenced = sum(sizes[b] * n for b, n in blocks.items())
        got = c[name]
        assert got["distinct_compressed_bytes"] == pytest.approx(distinct, rel=tol, abs=0), name
        assert got["referenced_compressed_bytes"] == pytest.approx(referenced, rel=tol, abs=0)
        assert got["ratio"] == pytest.approx(c["referenced_bytes"] / referenced, rel=tol + 1e-12)
    # the mix is half text, half random: every compressor finds something, none a miracle
    assert 1.2 < c["zstd-3"]["ratio_distinct"] < 3
    comb = rep["combined"]["zstd-3"]
    assert comb["ratio"] >= rep["block_sizes"][1]["dedup_ratio"]


def test_compression_sample_is_deterministic_subset(fleet: dict, guard_sources) -> None:
    """--sample 4 picks by content hash: the same figures on every run, a subset of --sample 1."""
    guard_sources(*fleet["images"])
    a = cli_json("du", "--dedup", "--json", "--sample", "4", *fleet["images"])["compression"]
    b = cli_json("du", "--dedup", "--json", "--sample", "4", *fleet["images"])["compression"]
    assert a == b and a["distinct_blocks"] > 0
    full = cli_json("du", "--dedup", "--json", "--sample", "1", *fleet["images"])["compression"]
    assert a["distinct_blocks"] < full["distinct_blocks"]


def test_chain_with_snapshot(tmp_path: Path, guard_sources) -> None:
    """A base (qemu-img convert) and a delta written through qemu-io: the top and the base
    snapshot each give the figures of their own raw export."""
    rng = random.Random(9)
    blocks = _blocks(rng, 256)
    raw = bytearray(8 * MIB)
    raw[0:MIB] = b"".join(blocks)
    raw[2 * MIB:3 * MIB] = b"".join(blocks)
    (tmp_path / "base.raw").write_bytes(raw)
    base, top = tmp_path / "base.hds", tmp_path / "top.hds"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "parallels",
                    str(tmp_path / "base.raw"), str(base)], check=True, capture_output=True)
    (tmp_path / "base.raw").unlink()
    subprocess.run(["qemu-img", "create", "-f", "parallels", str(top), str(8 * MIB)],
                   check=True, capture_output=True)
    chain = qemu_json_chain([base, top])
    # the top overwrites the second copy's first half and adds one more copy at 5 MiB
    for cmd in (f"write -P 0x5a {2 * MIB} {MIB // 2}", f"write -P 0x5a {5 * MIB} {MIB // 2}"):
        subprocess.run(["qemu-io", "-c", cmd, chain], check=True, capture_output=True)
    d = chain_descriptor(["base.hds", "top.hds"], 8 * MIB, MIB)
    write_descriptor(tmp_path / "DiskDescriptor.xml", d)
    guard_sources(base, top)
    qemu_to_raw(chain, tmp_path / "top.export")
    qemu_to_raw(str(base), tmp_path / "base.export")
    top_rep = cli_json("du", "--dedup", "--json", "--sample", "0", tmp_path)
    base_rep = cli_json("du", "--dedup", "--json", "--sample", "0", "--snapshot",
                        d.images[0].guid, tmp_path)
    for rep, exp in ((top_rep, "top.export"), (base_rep, "base.export")):
        for tb in rep["block_sizes"]:
            check_table(tb, reference([tmp_path / exp], tb["block_size"]))
    assert base_rep["block_sizes"][0]["dedup_ratio"] == 2.0
    assert top_rep["disks"][0]["images"] == 2 and base_rep["disks"][0]["images"] == 1


def test_bad_input(tmp_path: Path, fleet: dict) -> None:
    missing = tmp_path / "nope.hds"
    r = run_cli("du", "--dedup", fleet["images"][0], missing)
    err = r.stderr.decode().strip()
    assert r.returncode == ExitCode.NOT_FOUND, err
    assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err
    junk = tmp_path / "junk.hds"
    junk.write_bytes(random.Random(1).randbytes(3 * 4096))
    r = run_cli("du", "--dedup", junk)
    err = r.stderr.decode().strip()
    assert r.returncode == ExitCode.BAD_IMAGE, err
    assert len(err.splitlines()) == 1 and str(junk) in err
    r = run_cli("du", "--dedup", "--snapshot", "{11111111-2222-3333-4444-555555555555}",
                fleet["images"][0])
    err = r.stderr.decode().strip()
    assert r.returncode == ExitCode.NOT_FOUND and "unknown snapshot" in err
    assert len(err.splitlines()) == 1 and str(fleet["images"][0]) in err
    for argv, what in ((["--block-sizes", "3000,128K"], "--block-sizes"),
                       (["--memory", "lots"], "--memory"), (["--memory", "1K"], "--memory")):
        r = run_cli("du", "--dedup", *argv, fleet["images"][0])
        err = r.stderr.decode().strip()
        assert r.returncode == ExitCode.USAGE and what in err and len(err.splitlines()) == 1


def test_corpus_disks_together(corpus_case, tmp_path: Path) -> None:
    """All corpus disks in one run (v1 and v2 images, a raw base, chains, an ext4 disk): the
    figures equal the count over qemu-img's raw exports of the same chains, whose SHA-256 is
    first checked against the corpus's expected.sha256. corpus_case checks the sources are
    unchanged."""
    from conftest import CORPUS_CASES, expected_hashes, sha256_file

    dirs, raws = [], []
    for name in CORPUS_CASES:
        d = corpus_case(name)
        chain = json.loads((d / "case.json").read_text())["chain_base_to_top"]
        raw_base = chain[0]["header"] == "raw (no header)"
        out = tmp_path / f"{name}.raw"
        qemu_to_raw(qemu_json_chain([d / lv["file"] for lv in chain], raw_base=raw_base), out)
        assert sha256_file(out) == expected_hashes(d)["expected.raw"], name
        dirs.append(d)
        raws.append(out)
    rep = cli_json("du", "--dedup", "--json", "--sample", "0", *dirs)
    assert rep["mode"] == "exact" and len(rep["disks"]) == len(dirs)
    for tb in rep["block_sizes"]:
        check_table(tb, reference(raws, tb["block_size"]))
