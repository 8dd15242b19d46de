"""Salvage reads (docs/salvage.md): `export --salvage`, `recover` and `mount --salvage` on damaged
disks. Damage comes from tools/corrupt.py (corpus cases) and from chains built here with
ImageWriter, where every cluster's content per level is known, so the expected bytes of a salvage
read (older-level data or zeros) are modelled independently of ploopfs; the undamaged chain is
checked against qemu-img first. Read errors come from tests/faultfs.py (EIO for a byte range).
Sources are hash-guarded in every test."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import damage as dm
import pytest
from conftest import REPO, qemu_json_chain, qemu_to_raw, run_cli
from mounting import Mounter, is_mounted, wait_until

from ploopfs.errors import ExitCode
from ploopfs.volume.source import open_source
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

sys.path.insert(0, str(REPO / "tools"))
from corrupt import make_variants

C = 64 << 10  # cluster size of the built chains
N = 16  # clusters of the built disks
# level -> virtual clusters it maps, in write order (the top's last written cluster, 4, ends
# the file: the `truncated` damage cuts it off)
LAYOUT = {0: [0, 1, 2, 3, 4, 5, 6, 7], 1: [2, 3, 4, 5], 2: [8, 9, 6, 7, 5, 4]}
BAT_CODES = {"BAT_PAST_EOF", "BAT_INTO_HEADER", "BAT_RESERVED", "BAT_DUPLICATE"}


def _data(level: int, vc: int) -> bytes:
    return random.Random(level * 1000 + vc).randbytes(C)


@dataclass
class Chain:
    folder: Path
    files: list[Path]  # base first

    @property
    def top(self) -> Path:
        return self.files[-1]


def build_chain(folder: Path, version: int, top_path: Path | None = None) -> Chain:
    """Three levels as in LAYOUT; `top_path` puts the top image elsewhere (absolute <File>)."""
    folder.mkdir(parents=True)
    files = [folder / "root.hdd", folder / "root.hdd.mid", top_path or folder / "root.hdd.top"]
    for lv, path in enumerate(files):
        with ImageWriter.create(path, N * C, C, version) as w:
            for vc in LAYOUT[lv]:
                w.write_cluster(vc, _data(lv, vc))
    names = [f.name if f.parent == folder else str(f) for f in files]
    write_descriptor(folder / "DiskDescriptor.xml", chain_descriptor(names, N * C, C))
    return Chain(folder, files)


def model(damaged: set[int], policy: str | None, top: int = 2) -> bytes:
    """The virtual disk with the top's entries for `damaged` dropped (older) or zeroed."""
    out = bytearray(N * C)
    for vc in range(N):
        levels = [lv for lv in range(top + 1) if vc in LAYOUT[lv]]
        if vc in damaged:
            if policy == "zeros":
                continue
            levels = [lv for lv in levels if lv < top]
        if levels:
            out[vc * C:(vc + 1) * C] = _data(max(levels), vc)
    return bytes(out)


def damage(ch: Chain, kind: str) -> set[int]:
    """Damage the top's BAT; returns the damaged virtual clusters."""
    top = ch.top
    per = C // 512 if _is_v1(top) else 1  # BAT entry units per cluster (format.md §2.2)
    size = top.stat().st_size
    if kind == "truncated":
        os.truncate(top, size - C)  # vc 4 is the last cluster written
        return {4}
    value = {"past_eof": (size // C + 3) * per, "reserved": 0xFFFFFFFF, "into_header": 1}[kind]
    for vc in (4, 8):  # 4 is mapped below too, 8 only in the top
        dm.bat_entry(top, vc, value)
    return {4, 8}


def _is_v1(path: Path) -> bool:
    return path.read_bytes()[:16] == b"WithoutFreeSpace"


def _report(args: list[str | os.PathLike[str]]) -> dict:
    """The JSON report of an export or recover; exit 15 exactly when it lists data served as
    zeros or older data (or dropped levels), else 0."""
    r = run_cli(*args, "--no-progress", "--json")
    assert r.returncode in (0, ExitCode.DATA_REPLACED), r.stderr.decode()
    rep = json.loads(r.stdout)
    sal = rep.get("salvage", rep)
    replaced = bool(sal.get("substituted_ranges") or sal.get("dropped_levels"))
    assert r.returncode == (ExitCode.DATA_REPLACED if replaced else 0), (r.returncode, sal)
    return rep


def _clusters(ranges: list[dict], kind: str | None = None) -> set[int]:
    return {r["vcluster"] for r in ranges if kind is None or r["kind"] == kind}


def _assert_strict_fails(src: Path, out: Path, code: ExitCode, *extra: str) -> None:
    r = run_cli("export", src, out, "--no-progress", *extra)
    err = r.stderr.decode().strip()
    assert r.returncode == code, err
    assert len(err.splitlines()) == 1 and "offset" in err and "Traceback" not in err, err


# -- chains built here ----------------------------------------------------------------------------
KINDS = [(2, "past_eof"), (2, "reserved"), (2, "truncated"), (1, "into_header"), (1, "past_eof"),
         (1, "truncated")]


@pytest.mark.parametrize(("version", "kind"), KINDS)
def test_export_salvage_built_chain(tmp_path: Path, guard_sources, version: int, kind: str) -> None:
    ch = build_chain(tmp_path / "src", version)
    ref = tmp_path / "clean.raw"
    qemu_to_raw(qemu_json_chain(ch.files), ref)
    assert ref.read_bytes() == model(set(), None), "the model disagrees with qemu"
    damaged = damage(ch, kind)
    guard_sources(ch.folder)
    _assert_strict_fails(ch.folder, tmp_path / "strict.raw", ExitCode.CORRUPT)
    code = {"past_eof": "BAT_PAST_EOF", "truncated": "BAT_PAST_EOF", "reserved": "BAT_RESERVED",
            "into_header": "BAT_INTO_HEADER"}[kind]
    for policy in ("older", "zeros"):
        out = tmp_path / f"{policy}.raw"
        rep = _report(["export", ch.folder, out, f"--salvage={policy}"])
        assert out.read_bytes() == model(damaged, policy)
        sal = rep["salvage"]
        assert sal["policy"] == policy and sal["read_errors"] == 0
        assert _clusters(sal["ranges"]) == damaged
        for r in sal["ranges"]:
            assert (r["kind"], r["code"], r["level"], Path(r["file"])) == ("bat", code, 2, ch.top)
            assert r["offset"] == 64 + 4 * r["vcluster"] and r["length"] == C
            below = [lv for lv in (0, 1) if r["vcluster"] in LAYOUT[lv]]
            if policy == "older" and below:
                assert (r["substitution"], r["served_from_level"]) == ("older", max(below))
            else:
                assert (r["substitution"], r["served_from_level"]) == ("zeros", None)


def test_bare_salvage_is_zeros_and_stderr_summary(tmp_path: Path, guard_sources) -> None:
    ch = build_chain(tmp_path / "src", 2)
    damaged = damage(ch, "reserved")
    guard_sources(ch.folder)
    out = tmp_path / "out.raw"
    r = run_cli("export", ch.folder, out, "--no-progress", "--salvage")
    assert r.returncode == ExitCode.DATA_REPLACED == 15, r.stderr.decode()
    assert out.read_bytes() == model(damaged, "zeros")
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ploopfs: warning: salvage (zeros): 2 damaged")


def test_strict_report_unchanged(tmp_path: Path, guard_sources) -> None:
    """No `salvage` key in a strict export's report; a salvage export of a clean disk reads the
    same bytes and lists nothing."""
    ch = build_chain(tmp_path / "src", 2)
    guard_sources(ch.folder)
    rep = _report(["export", ch.folder, tmp_path / "a.raw"])
    assert "salvage" not in rep
    rep2 = _report(["export", ch.folder, tmp_path / "b.raw", "--salvage=older"])
    assert rep2["salvage"]["ranges"] == []
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "b.raw").read_bytes() == model(set(), None)


@pytest.mark.parametrize("policy", ["older", "zeros"])
def test_recover_built_chain(tmp_path: Path, guard_sources, policy: str) -> None:
    ch = build_chain(tmp_path / "src", 1)
    damaged = damage(ch, "past_eof")
    guard_sources(ch.folder)
    out = tmp_path / "rec"
    rec = _report(["recover", ch.folder, out, "--salvage", policy, "--flatten"])
    _assert_recovered(out, rec, model(damaged, policy), damaged, tmp_path)


def _assert_recovered(out: Path, rec: dict, expected: bytes, damaged: set[int],
                      tmp_path: Path) -> None:
    assert json.loads((out / "recovery.json").read_text()) == rec
    assert _clusters(rec["ranges"]) == damaged
    assert sorted(os.listdir(out)) == ["DiskDescriptor.xml", "recovery.json", "root.hds"]
    r = run_cli("check", out)
    assert r.returncode == 0, r.stdout.decode()
    q = subprocess.run(["qemu-img", "check", "-f", "parallels", str(out / "root.hds")],
                       capture_output=True, text=True, check=False)
    assert q.returncode == 0, q.stdout + q.stderr
    raw = tmp_path / "recovered.raw"
    qemu_to_raw(str(out / "root.hds"), raw)
    assert raw.read_bytes() == expected


def test_recover_refuses_existing_output(tmp_path: Path, guard_sources) -> None:
    ch = build_chain(tmp_path / "src", 2)
    damage(ch, "reserved")
    guard_sources(ch.folder)
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "x").write_text("x")
    r = run_cli("recover", ch.folder, tmp_path / "rec", "--no-progress")
    assert r.returncode == ExitCode.OUTPUT and len(r.stderr.decode().splitlines()) == 1


# -- corpus cases damaged by tools/corrupt.py ------------------------------------------------------
VARIANTS = ["bat-past-eof", "truncated", "bat-into-header", "bat-reserved", "bat-duplicate"]


@pytest.mark.parametrize("case", ["v1-chain2", "v2-single", "plain-base-chain3"])
def test_corpus_variants(corpus_case, tmp_path: Path, guard_sources, case: str) -> None:
    src = corpus_case(case)
    with open_source(src) as disk:
        entries = disk.chain()
        files = [Path(disk.paths[e.guid]).name for e in entries]
        raw_base = disk.image(entries[0].guid, level=0).is_raw
        c = disk.volume().cluster_size
    clean = tmp_path / "clean.raw"
    qemu_to_raw(qemu_json_chain([src / f for f in files], raw_base), clean)
    parent = None  # the virtual disk without the top delta: what "older" serves
    if len(files) > 1:
        parent = tmp_path / "parent.raw"
        qemu_to_raw(qemu_json_chain([src / f for f in files[:-1]], raw_base), parent)
    made = make_variants(src, tmp_path / "var", only=VARIANTS)
    assert made, "no variant applies"
    clean_b = clean.read_bytes()
    parent_b = parent.read_bytes() if parent else bytes(len(clean_b))
    for m in made:
        guard_sources(m.path)
        strict = tmp_path / f"{m.name}-strict.raw"
        if m.name == "bat-duplicate":  # readable: strict serves the shared cluster twice
            assert run_cli("export", m.path, strict, "--no-progress").returncode == 0
        else:
            _assert_strict_fails(m.path, strict, ExitCode.CORRUPT)
        chk = json.loads(run_cli("check", m.path, "--json").stdout)
        damaged = {f["vcluster"] for f in chk["findings"] if f["code"] in BAT_CODES}
        assert damaged, m.name
        outs = {}
        for policy in ("older", "zeros"):
            out = tmp_path / f"{m.name}-{policy}.raw"
            rep = _report(["export", m.path, out, f"--salvage={policy}"])
            assert _clusters(rep["salvage"]["ranges"]) == damaged, m.name
            got = out.read_bytes()
            assert len(got) == len(clean_b)
            for vc in range(-(-len(got) // c)):
                sl = slice(vc * c, (vc + 1) * c)
                if vc not in damaged:
                    assert got[sl] == clean_b[sl], (m.name, policy, vc)
                elif policy == "older":
                    assert got[sl] == parent_b[sl], (m.name, policy, vc)
                else:
                    assert got[sl] == bytes(len(got[sl])), (m.name, policy, vc)
            outs[policy] = (got, rep)
        if m.name == "truncated":
            rec_dir = tmp_path / f"{m.name}-rec"
            rec = _report(["recover", m.path, rec_dir, "--flatten"])
            assert rec["ranges"] == outs["older"][1]["salvage"]["ranges"]
            _assert_recovered(rec_dir, rec, outs["older"][0], damaged, tmp_path)


# -- mounts ----------------------------------------------------------------------------------------
def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


needs_fuse = pytest.mark.skipif(not _fuse_usable(), reason="needs /dev/fuse as root")




@needs_fuse
def test_mount_salvage(tmp_path: Path, guard_sources, mounter: Mounter) -> None:
    ch = build_chain(tmp_path / "src", 2)
    damaged = damage(ch, "past_eof")
    guard_sources(ch.folder)
    r = mounter.run("mount", ch.folder, mounter.mountpoint("strict"))
    assert r.returncode == ExitCode.CORRUPT and len(r.stderr.splitlines()) == 1, r.stderr
    for policy, args in (("older", ["--salvage=older"]), ("zeros", ["-o", "salvage=zeros"])):
        m = mounter.mount(ch.folder, *args, name=policy)
        bad = json.loads((m / "bad-clusters.json").read_text())
        assert bad["policy"] == policy and _clusters(bad["ranges"]) == damaged
        assert (m / "disk").read_bytes() == model(damaged, policy)
        assert not m.error_lines()
        assert mounter.umount(m).returncode == 0


# -- read errors (tests/faultfs.py) ------------------------------------------------------------------
@needs_fuse
def test_read_error_sector_salvage(tmp_path: Path, guard_sources, mounter: Mounter) -> None:
    """The top image behind a FUSE file system failing reads of bytes [X+1000, X+3000) of the
    data cluster of virtual cluster 4 (also mapped by the level below): strict export fails
    with the I/O exit code; salvage keeps every other sector of that cluster and serves the 5
    sectors 512..3072 from the level below (older) or as zeros, and lists exactly that run."""
    backing = tmp_path / "backing"
    backing.mkdir()
    mnt = mounter.mountpoint("fault")
    served = mnt / "root.hdd.top"
    ch0 = build_chain(tmp_path / "clean", 2)
    os.link(ch0.top, backing / "root.hdd.top")
    x = dm.bat_entries(ch0.top)[4] * C
    p, err = mounter.popen([sys.executable, str(REPO / "tests" / "faultfs.py"),
                            str(backing / "root.hdd.top"), str(mnt), "root.hdd.top",
                            str(x + 1000), str(x + 3000)], "faultfs")
    wait_until(lambda: is_mounted(mnt) or p.poll() is not None, 20, "faultfs mount")
    assert p.poll() is None, err.read_text()
    folder = tmp_path / "src"
    folder.mkdir()
    for f in ch0.files[:2]:
        os.link(f, folder / f.name)
    write_descriptor(folder / "DiskDescriptor.xml", chain_descriptor(
        ["root.hdd", "root.hdd.mid", str(served)], N * C, C))
    guard_sources(folder, backing)
    _assert_strict_fails(folder, tmp_path / "strict.raw", ExitCode.IO, "--allow-outside-paths")
    clean = model(set(), None)
    for policy in ("older", "zeros"):
        out = tmp_path / f"{policy}.raw"
        rep = _report(["export", folder, out, f"--salvage={policy}", "--allow-outside-paths"])
        got = out.read_bytes()
        lo, hi = 4 * C + 512, 4 * C + 3072
        assert got[:lo] == clean[:lo] and got[hi:] == clean[hi:]
        assert got[lo:hi] == (_data(1, 4)[512:3072] if policy == "older" else bytes(hi - lo))
        [r] = rep["salvage"]["ranges"]
        assert (r["kind"], r["level"], r["voffset"], r["length"], r["offset"]) == \
            ("read", 2, lo, 2560, x + 512)
        assert r["substitution"] == policy and r["served_from_level"] == (1 if policy == "older"
                                                                          else None)
        assert "Input/output error" in r["reason"]
