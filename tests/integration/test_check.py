"""`ploopfs check` (issue #5 part 1): clean corpus, every damaged variant of tools/corrupt.py,
qemu-img check as an oracle, --deep, and a hypothesis fuzz of header, BAT and descriptor bytes.
Every test checks that the inputs are unchanged afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import damage as dm
import pytest
from conftest import REPO, run_cli, sha256_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploopfs.cli.check import finding_line
from ploopfs.format.header import TOP_GUID
from ploopfs.services.check import CODES, Severity, check
from ploopfs.volume.writer import ImageWriter

sys.path.insert(0, str(REPO / "tools"))
import corrupt

CLEAN_CASES = ["v2-single", "v1-chain2", "plain-base-chain3", "ext4-gpt-chain2"]
DOCS = (REPO / "docs" / "check.md").read_text()


def _hashes(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(p): sha256_file(p) for p in files}


def _small_cluster_chain(tmp: Path) -> Path:
    """v2 base + v2 delta, 512 MiB with 32 KiB clusters (ploop's smallest): 3 header/BAT
    clusters, so a v2 entry can point into the BAT (bat-into-header applies)."""
    return dm.build_chain(tmp / "small", [(32768, 2), (32768, 2)], size=512 << 20).parent


def _sources(corpus_root: Path, tmp: Path) -> dict[str, Path]:
    out = {}
    for name in CLEAN_CASES:
        out[name] = dm.copy_case(corpus_root, name, tmp / "in")
    out["v2-single-image"] = out["v2-single"] / "root.hdd"
    out["small-cluster-chain"] = _small_cluster_chain(tmp / "in")
    return out


# -- clean inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*CLEAN_CASES, "v2-dirty-inuse"])
def test_corpus_clean(corpus_case, name: str) -> None:
    case = corpus_case(name)
    rep = check(case)
    want = {"DIRTY"} if name == "v2-dirty-inuse" else set()
    assert rep.codes() == want, [finding_line(f) for f in rep.findings]
    assert rep.exit_code == (1 if want else 0)
    # the same through the descriptor file and, for single images, the image itself
    assert check(case / "DiskDescriptor.xml").codes() == want
    deep = check(case, deep=True)
    assert {f.severity for f in deep.findings if f.code != "DIRTY"} <= {Severity.INFO}
    assert deep.codes() - want <= {"DEEP_HOLE"}  # partly written clusters are sparse


def test_corpus_snapshots(corpus_case) -> None:
    case = corpus_case("ext4-gpt-chain2")
    for g in json.loads((case / "case.json").read_text())["chain_base_to_top"]:
        rep = check(case, snapshot=g["guid"].upper())
        assert rep.exit_code == 0 and rep.chain[-1] == g["guid"], rep.findings
    rep = check(case, snapshot="{11111111-2222-3333-4444-555555555555}")
    assert rep.codes() == {"SNAPSHOT_NOT_FOUND"} and rep.exit_code == 3


def test_cli_clean_and_json(corpus_case) -> None:
    case = corpus_case("v2-dirty-inuse")
    r = run_cli("check", case)
    out = r.stdout.decode().splitlines()
    assert r.returncode == 1 and not r.stderr
    assert re.match(r"^WARNING DIRTY \S+root\.hdd at offset 44: ", out[0]), out
    assert out[-1].startswith("check: 1 finding(s)") and out[-1].endswith("(exit 1)")
    r = run_cli("check", "--json", "--deep", case)
    js = json.loads(r.stdout)
    assert js["exit_code"] == 1 == r.returncode and js["verdict"] == "warnings"
    assert js["findings"][0] == {"code": "DIRTY", "severity": "warning", "file": js["images"][0]["file"],
                                 "offset": 44, "message": js["findings"][0]["message"]}
    r = run_cli("check", case.parent / "nothing-here")
    assert r.returncode == 3 and r.stdout.decode().startswith("FATAL SOURCE_NOT_FOUND")


def test_raw_file(corpus_case) -> None:
    """The raw base of plain-base-chain3 alone: a raw disk with --cluster-size, else unreadable."""
    raw = corpus_case("plain-base-chain3") / "root.hdd"
    r = run_cli("check", "--cluster-size", "1M", raw)
    assert r.returncode == 0 and r.stdout.decode().startswith("check: 0 finding(s)"), r.stdout
    r = run_cli("check", raw)
    assert r.returncode == 3 and r.stdout.decode().startswith("FATAL HEADER_SIGNATURE ")


# -- damaged variants ---------------------------------------------------------------------------
def test_variants_exact_codes(corpus_root: Path, tmp_path: Path) -> None:
    """Each variant of each disk: exactly the expected codes and exit code; inputs and the
    variants themselves unchanged by check."""
    srcs = _sources(corpus_root, tmp_path)
    before = {n: _hashes(p) for n, p in srcs.items()}
    seen_names: set[str] = set()
    seen_codes: set[str] = set()
    failures = []
    for name, src in srcs.items():
        for m in corrupt.make_variants(src, tmp_path / "out" / name):
            seen_names.add(m.name)
            h = _hashes(m.path)
            rep = check(m.path)
            assert _hashes(m.path) == h, f"{name}/{m.name}: check modified its input"
            seen_codes |= rep.codes()
            if rep.codes() != m.expect or rep.exit_code != m.exit_code:
                failures.append(f"{name}/{m.name}: expected {sorted(m.expect)} exit {m.exit_code}, "
                                f"got {sorted(rep.codes())} exit {rep.exit_code}: "
                                + " | ".join(finding_line(f) for f in rep.findings))
    assert not failures, "\n".join(failures)
    assert {n: _hashes(p) for n, p in srcs.items()} == before, "make_variants modified its input"
    assert seen_names == set(corrupt.VARIANTS), set(corrupt.VARIANTS) - seen_names
    assert seen_codes <= set(CODES)


def test_variants_cli(corpus_root: Path, tmp_path: Path) -> None:
    """Through the CLI: exit code per variant, one `SEVERITY CODE location: message` line per
    finding and a summary; --json agrees."""
    src = dm.copy_case(corpus_root, "v2-single", tmp_path / "in")
    line_re = re.compile(r"^(INFO|WARNING|DAMAGED|FATAL) ([A-Z0-9_]+) .+: .+$")
    for k, m in enumerate(corrupt.make_variants(src, tmp_path / "out")):
        r = run_cli("check", m.path)
        lines = r.stdout.decode().splitlines()
        assert r.returncode == m.exit_code, (m.name, lines, r.stderr)
        assert not r.stderr, r.stderr
        assert {line_re.match(ln).group(2) for ln in lines[:-1]} == m.expect, (m.name, lines)
        assert lines[-1].startswith("check: ")
        if k % 4 == 0:  # the JSON form on a sample (each CLI start costs ~0.5 s)
            js = json.loads(run_cli("check", "--json", m.path).stdout)
            assert {f["code"] for f in js["findings"]} == m.expect
            assert js["exit_code"] == m.exit_code


def _qemu_check(image: Path) -> tuple[int, list[str]]:
    r = subprocess.run(["qemu-img", "check", "-f", "parallels", str(image)], capture_output=True,
                       text=True, timeout=120, check=False)
    return r.returncode, (r.stdout + r.stderr).splitlines()


# qemu-img check message -> codes of ours that cover it
QEMU_MAP = [
    ("not closed correctly", {"DIRTY"}),
    ("is outside image", {"BAT_PAST_EOF", "BAT_RESERVED"}),
    ("space leaked at the end", {"LEAKED_CLUSTERS", "PREALLOCATED_TAIL", "FILE_NOT_CLUSTER_ALIGNED"}),
    ("duplicate", {"BAT_DUPLICATE"}),
    ("data_off", {"FIRST_BLOCK_OFFSET"}),
]


def test_qemu_oracle(corpus_root: Path, tmp_path: Path) -> None:
    """On the same damaged single images, everything `qemu-img check` reports is reported by
    check too (the format extension, which qemu 7.2 counts as leaked, is the documented
    exception, format.md §6.4); an image qemu cannot open gets at least a warning from us."""
    srcs = _sources(corpus_root, tmp_path)
    compared = 0
    for name, src in srcs.items():
        for m in corrupt.make_variants(src, tmp_path / "out" / name):
            img = m.qemu_image
            if img is None or not img.is_file():
                continue
            h = _hashes(img)
            rc, lines = _qemu_check(img)
            ours = check(img)
            assert _hashes(img) == h
            compared += 1
            if rc == 1 or any("Could not open" in ln for ln in lines):
                assert ours.exit_code >= 1, (name, m.name, lines, ours.findings)
                continue
            for ln in (x for x in lines if x.startswith("ERROR")):
                want = next((codes for pat, codes in QEMU_MAP if pat in ln), None)
                assert want is not None, f"unmapped qemu message {ln!r}"
                if "leaked" in ln and m.name == "extension-ok":
                    # qemu 7.2 computes the end from the BAT only and would cut off the
                    # extension; we exclude extension + CBT clusters (format.md §6.4, §7.1).
                    assert ours.codes() == set()
                    continue
                assert ours.codes() & want, (name, m.name, ln, [finding_line(f) for f in ours.findings])
    assert compared >= 60


# -- chains built here --------------------------------------------------------------------------
def test_chain_mismatches(tmp_path: Path) -> None:
    dd = dm.build_chain(tmp_path / "ver", [(1 << 20, 1), (1 << 20, 2)])
    rep = check(dd.parent)
    assert rep.codes() == {"DESCRIPTOR_VERSION_MISMATCH"} and rep.exit_code == 2  # salvage reads it
    dd = dm.build_chain(tmp_path / "clu", [(1 << 20, 2), (1 << 19, 2)])
    rep = check(dd.parent)
    assert rep.codes() == {"DESCRIPTOR_CLUSTER_MISMATCH"} and rep.exit_code == 3  # not one disk
    dd = dm.build_chain(tmp_path / "lower", [(1 << 20, 2)], size=8 << 20)
    with ImageWriter.create(dd.parent / "top.hdd", 4 << 20, 1 << 20, 2) as w:
        w.write(0, b"x" * 512)
    # make a 2-level chain whose base (8 MiB) is larger than its top (4 MiB)
    d = dm.load_xml(dd).getroot()
    g = "{11111111-0000-0000-0000-000000000001}"
    from lxml import etree

    base_guid = d.xpath("Snapshots/TopGUID/text()")[0]
    img = etree.SubElement(d.find("StorageData/Storage"), "Image")
    for k, v in (("GUID", g), ("Type", "Compressed"), ("File", "top.hdd")):
        etree.SubElement(img, k).text = v
    shot = etree.SubElement(d.find("Snapshots"), "Shot")
    etree.SubElement(shot, "GUID").text = g
    etree.SubElement(shot, "ParentGUID").text = base_guid
    d.find("Snapshots/TopGUID").text = g
    d.find("Disk_Parameters/Disk_size").text = str(8192)
    etree.ElementTree(d).write(str(dd))
    rep = check(dd)
    assert rep.codes() == {"DESCRIPTOR_LOWER_LARGER"} and rep.exit_code == 1, rep.findings


def test_deep(tmp_path: Path, guard_sources) -> None:
    """--deep: a cluster the delta copied unchanged is a shadow (info); a hole punched into a
    referenced cluster is reported (info); neither without --deep."""
    folder = tmp_path / "d"
    folder.mkdir()
    c = 1 << 16
    with ImageWriter.create(folder / "base.hdd", 1 << 20, c, 2) as w:
        w.write(0, b"\x11" * c)
        w.write(c, b"\x22" * c)
    with ImageWriter.create(folder / "top.hdd", 1 << 20, c, 2) as w:
        w.write(0, b"\x11" * c)  # identical copy: shadows the base
        w.write(c, b"\x33" * c)
        w.write(3 * c, b"\x44" * c)
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml", chain_descriptor(["base.hdd", "top.hdd"], 1 << 20, c))
    top = folder / "top.hdd"
    entries = dm.bat_entries(top)
    subprocess.run(["fallocate", "-p", "-o", str(entries[3] * c + 4096), "-l", "8192", str(top)],
                   check=True)
    guard_sources(folder)
    assert check(folder).codes() == set()
    rep = check(folder, deep=True)
    assert rep.codes() == {"DEEP_SHADOW", "DEEP_HOLE"} and rep.exit_code == 0
    shadow = next(f for f in rep.findings if f.code == "DEEP_SHADOW")
    assert shadow.vcluster == 0 and shadow.file == str(top) and "1 cluster" in shadow.message
    hole = next(f for f in rep.findings if f.code == "DEEP_HOLE")
    assert hole.vcluster == 3 and hole.pcluster == entries[3]


def _mbr(start: int, sectors: int) -> bytes:
    """A 512-byte MBR with one Linux partition of `sectors` from LBA `start`."""
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + start.to_bytes(4, "little") + \
        sectors.to_bytes(4, "little")
    return bytes(446) + entry + bytes(48) + b"\x55\xaa"


def test_content_read_as_salvage_reads(tmp_path: Path, guard_sources) -> None:
    """The partition check reads the disk through the volume layer's salvage read path: a top
    entry that cannot be read is served by the level below, as `--salvage=older` serves it. The
    base's MBR has a partition past the disk's end, the top's a good one; with the top's entry
    for cluster 0 pointing past the end of its file, check sees the base's table, like export
    --salvage=older."""
    folder = tmp_path / "d"
    folder.mkdir()
    c = 1 << 16
    with ImageWriter.create(folder / "base.hdd", 1 << 20, c, 2) as w:
        w.write(0, _mbr(2048, 4096) + bytes(c - 512))  # 1 MiB disk: 2048 sectors, outside
    with ImageWriter.create(folder / "top.hdd", 1 << 20, c, 2) as w:
        w.write(0, _mbr(128, 1024) + bytes(c - 512))
    from ploopfs.volume.writer import chain_descriptor, write_descriptor

    write_descriptor(folder / "DiskDescriptor.xml", chain_descriptor(["base.hdd", "top.hdd"], 1 << 20, c))
    assert check(folder).codes() == set()
    top = folder / "top.hdd"
    dm.set_field(top, 64, "<I", 1000)  # v2: cluster 1000 of a file of a few clusters
    guard_sources(folder)
    rep = check(folder)
    assert rep.codes() == {"BAT_PAST_EOF", "LEAKED_CLUSTERS", "PARTITION_OUTSIDE"}, rep.findings
    outside = next(f for f in rep.findings if f.code == "PARTITION_OUTSIDE")
    assert "MBR entry 1 (LBA 2048, 4096 sectors)" in outside.message
    out = tmp_path / "salvaged.raw"
    r = run_cli("export", "--salvage=older", "--no-progress", folder, out)
    assert r.returncode == 15, r.stderr.decode()
    assert out.read_bytes()[:512] == _mbr(2048, 4096)


def test_absurd_disk_size(corpus_case, tmp_path: Path) -> None:
    """A <Disk_size> of 10^39 sectors (more clusters than 64-bit numbers count): one warning,
    and the content checks still read the disk (zeros past what the images map)."""
    src = corpus_case("v2-single")
    d = tmp_path / "d"
    d.mkdir()
    os.link(src / "root.hdd", d / "root.hdd")
    xml = (src / "DiskDescriptor.xml").read_bytes()
    xml = re.sub(rb"<Disk_size>\d+</Disk_size>", b"<Disk_size>" + b"9" * 39 + b"</Disk_size>", xml)
    (d / "DiskDescriptor.xml").write_bytes(xml)
    for deep in ([], ["--deep"]):
        r = run_cli("check", "--json", *deep, d)
        assert r.returncode == 1, r.stderr.decode()
        codes = {f["code"] for f in json.loads(r.stdout)["findings"]}
        assert "DESCRIPTOR_DISK_SIZE" in codes and codes <= {"DESCRIPTOR_DISK_SIZE", "DEEP_HOLE"}


# -- documentation ------------------------------------------------------------------------------
def test_every_code_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DOCS, re.M))
    assert documented == set(CODES), (set(CODES) - documented, documented - set(CODES))


# -- fuzzing --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 2-level v2 chain with 4 KiB clusters (2 header/BAT clusters, padding slots)."""
    return dm.build_chain(tmp_path_factory.mktemp("fuzz") / "disk", [(4096, 2), (4096, 2)],
                          size=1 << 20).parent


def _fresh(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def _assert_sane(rep) -> None:
    assert rep.codes() <= set(CODES)
    assert rep.exit_code in (0, 1, 2, 3)
    for f in rep.findings:
        assert f.severity in Severity and f.message


FUZZ = settings(max_examples=120, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 64 + 4 * 300), st.binary(min_size=1, max_size=8)),
                      min_size=1, max_size=6),
       level=st.sampled_from(["root.hdd", "root.hdd.1"]), deep=st.booleans())
def test_fuzz_header_and_bat(fuzz_disk: Path, tmp_path_factory, edits, level, deep) -> None:
    d = _fresh(fuzz_disk, tmp_path_factory.getbasetemp() / "fuzz-hb")
    for off, data in edits:
        dm.set_field(d / level, off, f"{len(data)}s", data)
    h = _hashes(d)
    _assert_sane(check(d, deep=deep))
    _assert_sane(check(d / level, deep=deep))
    assert _hashes(d) == h


@FUZZ
@given(cut=st.integers(0, 20000), level=st.sampled_from(["root.hdd", "root.hdd.1"]))
def test_fuzz_truncation(fuzz_disk: Path, tmp_path_factory, cut, level) -> None:
    d = _fresh(fuzz_disk, tmp_path_factory.getbasetemp() / "fuzz-tr")
    os.truncate(d / level, cut)
    _assert_sane(check(d, deep=True))


@FUZZ
@given(data=st.data())
def test_fuzz_descriptor(fuzz_disk: Path, tmp_path_factory, data) -> None:
    d = _fresh(fuzz_disk, tmp_path_factory.getbasetemp() / "fuzz-dd")
    xml = (d / "DiskDescriptor.xml").read_bytes()
    kind = data.draw(st.sampled_from(["bytes", "text", "guid"]))
    if kind == "bytes":
        pos = data.draw(st.integers(0, len(xml)))
        xml = xml[:pos] + data.draw(st.binary(max_size=16)) + xml[pos + data.draw(st.integers(0, 16)):]
    elif kind == "text":
        texts = re.findall(rb">([^<>]+)<", xml)
        old = data.draw(st.sampled_from(texts))
        new = data.draw(st.sampled_from([b"", b"0", b"-1", b"0x10", b"010", b"99999999999999999999",
                                         b"../x", b"/etc/passwd", b"root.hdd", TOP_GUID.encode()]))
        xml = xml.replace(old, new, 1)
    else:
        guids = sorted(set(re.findall(rb"\{[0-9a-f-]{36}\}", xml)))
        a, b = data.draw(st.sampled_from(guids)), data.draw(st.sampled_from(guids))
        xml = xml.replace(a, b, data.draw(st.integers(1, 3)))
    (d / "DiskDescriptor.xml").write_bytes(xml)
    h = _hashes(d)
    _assert_sane(check(d))
    assert _hashes(d) == h


def test_deep_io_error(corpus_case, tmp_path: Path) -> None:
    """--deep on an image served through a FUSE file system that fails reads of 4 KiB inside
    one referenced cluster (tests/faultfs.py): exactly that cluster is DEEP_IO_ERROR; the
    metadata check alone is clean."""
    img = corpus_case("v2-single") / "root.hdd"
    c = 1 << 20
    entries = dm.bat_entries(img)  # v2: cluster numbers
    vc = 4
    bad = (entries[vc] * c + 4096, entries[vc] * c + 8192)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "faultfs.py"), str(img), str(mnt),
                             "root.hdd", str(bad[0]), str(bad[1])], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        served = mnt / "root.hdd"
        assert served.stat().st_size == img.stat().st_size
        assert check(served).codes() == set()
        rep = check(served, deep=True)
        errs = [f for f in rep.findings if f.code == "DEEP_IO_ERROR"]
        assert rep.codes() == {"DEEP_IO_ERROR"} and rep.exit_code == 2, rep.findings
        assert [(f.vcluster, f.pcluster, f.offset) for f in errs] == [(vc, entries[vc], entries[vc] * c)]
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
