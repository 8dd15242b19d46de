"""`ploopfs restore-descriptor` (issue #5 item 4): the descriptor rebuilt from the image files
alone must read exactly what the lost one did.

* every corpus case with its DiskDescriptor.xml gone: each level of the rebuilt top chain hashes
  to expected.sha256 of the original level;
* chains made by qemu-img/qemu-io (partial-cluster writes at random offsets, 2-6 deep), files
  named at random and mtimes shuffled: the order is recovered from content alone, and
  `qemu-img convert` of the true chain equals `ploopfs export` through the rebuilt descriptor;
* a snapshot tree (two children of one base), grown disks, ambiguous input (deltas sharing no
  cluster) reported as low confidence, never overwriting, and one-line errors for bad input.
Image files are hard-linked into the working folders, so guard_sources/corpus_case prove that
nothing ever wrote to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import CORPUS_CASES, expected_hashes, qemu_json_chain, qemu_to_raw, run_cli
from readers import dissect_read_disk

from ploopfs.format.descriptor_scan import parse_descriptor
from ploopfs.format.header import NONE_GUID, TOP_GUID
from ploopfs.volume.source import OpenOptions, open_source

DD = "DiskDescriptor.xml"


# -- helpers ---------------------------------------------------------------------------------------
def link_images(src: Path, dst: Path, skip: tuple[str, ...] = (DD,)) -> None:
    """dst gets hard links of src's files (same inodes: a write would show in the guarded src)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            os.link(f, dst / f.name)


def restore_json(folder: Path, *extra: str) -> tuple[int, dict]:
    r = run_cli("restore-descriptor", folder, "--json", *extra)
    assert r.returncode in (0, 1), r.stderr.decode()
    assert r.stderr.count(b"Traceback") == 0
    return r.returncode, json.loads(r.stdout)


def volume_sha(descriptor: Path, guid: str | None = None, outside: bool = False) -> str:
    h = hashlib.sha256()
    with open_source(descriptor, OpenOptions(allow_outside_paths=outside)) as disk:
        vol = disk.volume(guid)
        pos = 0
        while pos < vol.size:
            n = min(4 << 20, vol.size - pos)
            h.update(vol.read(pos, n))
            pos += n
    return h.hexdigest()


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_sha(folder: Path, tmp: Path, *extra: str) -> str:
    out = tmp / f"export-{uuid.uuid4().hex}.raw"
    r = run_cli("export", folder, out, "--no-progress", *extra)
    assert r.returncode == 0, r.stderr.decode()
    sha = file_sha(out)
    out.unlink()
    return sha


def qemu_sha(files: list[Path], tmp: Path, raw_base: bool = False) -> str:
    out = tmp / f"qemu-{uuid.uuid4().hex}.raw"
    if len(files) == 1 and not raw_base:
        qemu_to_raw(str(files[0]), out)
    else:
        qemu_to_raw(qemu_json_chain(files, raw_base), out)
    sha = file_sha(out)
    out.unlink()
    return sha


def qemu_create(path: Path, size: int, cluster: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "parallels", "-o", f"cluster_size={cluster}",
                    str(path), str(size)], check=True, capture_output=True, timeout=60)


def qemu_write(target: str, writes: list[tuple[int, int, int]]) -> None:
    cmds: list[str] = []
    for off, length, pattern in writes:
        cmds += ["-c", f"write -q -P {pattern:#x} {off} {length}"]
    args = ["qemu-io", *cmds, target]
    if not target.startswith("json:"):
        args[1:1] = ["-f", "parallels"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "error" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def partial_writes(rng: random.Random, size: int, cluster: int, count: int,
                   clusters: list[int] | None = None) -> list[tuple[int, int, int]]:
    """Writes shorter than a cluster at random (partly unaligned) offsets; with `clusters`, only
    inside those virtual clusters."""
    out = []
    for _ in range(count):
        v = rng.choice(clusters) if clusters else rng.randrange(size // cluster)
        length = rng.randrange(1, cluster // 4)
        off = v * cluster + rng.randrange(cluster - length)
        out.append((off, length, rng.randrange(1, 256)))
    return out


def build_chain(disk: Path, rng: random.Random, depth: int, *, sizes: list[int] | None = None,
                cluster: int = 64 << 10, hot: int = 6, writes: int = 24) -> list[Path]:
    """A qemu chain of `depth` images with random names; each level writes through the json:
    chain ending at it, partly into a few 'hot' clusters every level touches, so that levels
    share clusters whose copied-up bytes tell the order."""
    disk.mkdir()
    sizes = sizes or [4 << 20] * depth
    files: list[Path] = []
    hot_clusters = rng.sample(range(sizes[0] // cluster), hot)
    for level in range(depth):
        f = disk / f"img-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        qemu_create(f, sizes[level], cluster)
        files.append(f)
        w = partial_writes(rng, sizes[level], cluster, writes) + \
            partial_writes(rng, sizes[level], cluster, writes // 2, hot_clusters)
        qemu_write(str(f) if level == 0 else qemu_json_chain(files), w)
    return files


def shuffle_mtimes(rng: random.Random, files: list[Path]) -> None:
    stamps = [1_600_000_000 + i * 3600 for i in range(len(files))]
    rng.shuffle(stamps)
    for f, t in zip(files, stamps, strict=True):
        os.utime(f, (t, t))


def set_dirty(path: Path) -> None:
    """m_DiskInUse = "Ynot" (format.md §1.3) on a test-made image."""
    with open(path, "r+b") as f:
        f.seek(44)
        f.write((0x746F6E59).to_bytes(4, "little"))


def chain_files(report: dict) -> list[str]:
    return report["chain"]


# -- the corpus ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORPUS_CASES)
def test_corpus_case_rebuilt(name, corpus_case, tmp_path):
    case = corpus_case(name)
    original = parse_descriptor((case / DD).read_bytes())
    orig_chain = original.chain()
    work = tmp_path / "restored"
    link_images(case, work)
    rc, rep = restore_json(work)
    assert rep["written"] and (work / DD).exists()
    assert chain_files(rep) == [im.file for im in orig_chain], rep["links"]
    assert rc == 0 and rep["confidence"] == "high", rep["decisions"]
    rebuilt = parse_descriptor((work / DD).read_bytes(), str(work / DD))
    assert rebuilt.top_guid == TOP_GUID  # format.md §5.4
    assert rebuilt.blocksize == original.blocksize and rebuilt.disk_size == original.disk_size
    assert [im.type for im in rebuilt.images] == [im.type for im in original.images]
    want = expected_hashes(case)
    # Level by level: the rebuilt GUID at level i reads what the original GUID at level i read.
    for level, (new, old) in enumerate(zip(rebuilt.chain(), orig_chain, strict=True)):
        key = f"expected-{old.guid}.raw" if f"expected-{old.guid}.raw" in want else "expected.raw"
        assert volume_sha(work / DD, new.guid) == want[key], f"{name} level {level}"
        if new.guid != TOP_GUID:
            assert new.guid != old.guid  # the snapshot GUIDs cannot be recovered (format.md §4.3)
    assert export_sha(work, tmp_path) == want["expected.raw"]
    r = run_cli("check", work)
    assert r.returncode in (0, 1), r.stdout.decode()  # 1: the dirty case's warning
    # GUIDs are stable: a second run (dry) proposes the same descriptor.
    _, again = restore_json(work, "--dry-run", "-o", tmp_path / "other.xml")
    assert [i["guid"] for i in again["images"]] == [i["guid"] for i in rep["images"]]
    assert not again["written"] and not (tmp_path / "other.xml").exists()


def test_corpus_guids_from_names(corpus_case, tmp_path):
    case = corpus_case("plain-base-chain3")
    work = tmp_path / "w"
    link_images(case, work)
    _, rep = restore_json(work)
    by_file = {i["file"]: i for i in rep["images"]}
    mid = "root.hdd.{d6ea89c2-b800-4998-8a2c-f63ec8f1d877}"
    assert by_file[mid]["guid"] == "{d6ea89c2-b800-4998-8a2c-f63ec8f1d877}"
    assert by_file[mid]["guid_source"] == "file name"
    assert by_file["root.hdd"]["kind"] == "raw"
    d = parse_descriptor((work / DD).read_bytes())
    assert {im.type for im in d.images} == {"Plain"}  # ploop labels every image alike (format.md §3)
    assert d.chain()[0].file == "root.hdd" and d.shot(d.chain()[0].guid).parent == NONE_GUID


# -- qemu chains without naming evidence -----------------------------------------------------------
@pytest.mark.parametrize("depth,seed", [(2, 1), (3, 2), (4, 3), (6, 4)])
def test_qemu_chain_order_from_content(depth, seed, tmp_path, guard_sources):
    rng = random.Random(seed)
    files = build_chain(tmp_path / "made", rng, depth)
    shuffle_mtimes(rng, files)
    guard_sources(*files)
    work = tmp_path / "work"
    link_images(tmp_path / "made", work)
    rc, rep = restore_json(work)
    assert chain_files(rep) == [f.name for f in files], rep["links"]
    assert rc == 0 and rep["confidence"] == "high", rep["decisions"]
    for link in rep["links"]:
        if link["parent"] is not None:
            assert link["decided_by"] == "content" and link["content_margin_sectors"] >= 8
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)
    d = parse_descriptor((work / DD).read_bytes())
    level = len(files) // 2  # a middle snapshot reads like qemu's chain cut there
    assert volume_sha(work / DD, d.chain()[level].guid) == qemu_sha(files[:level + 1], tmp_path)
    # dissect.hypervisor, an independent descriptor parser and reader, agrees on the top.
    got = hashlib.sha256(dissect_read_disk(work, TOP_GUID, 64 << 10)).hexdigest()
    assert got == qemu_sha(files, tmp_path)
    assert run_cli("check", work).returncode == 0


def test_sampled_content(tmp_path, guard_sources):
    """--sample bounds the clusters read; the report says so."""
    rng = random.Random(2)
    files = build_chain(tmp_path / "made", rng, 3)
    guard_sources(*files)
    _, full = restore_json(tmp_path / "made", "--dry-run")
    _, part = restore_json(tmp_path / "made", "--dry-run", "--sample", "4")
    assert part["content"]["sampled_clusters"] == 4 < full["content"]["shared_clusters"]
    assert part["content"]["bytes_read"] < full["content"]["bytes_read"]
    assert any("--sample" in n for n in part["notes"])
    assert part["chain"] == full["chain"] == [f.name for f in files]


def test_qemu_grown_chain(tmp_path, guard_sources):
    """Later deltas are bigger after a resize (format.md §1.4): sizes alone order them."""
    rng = random.Random(11)
    sizes = [2 << 20, 3 << 20, 5 << 20]
    files = build_chain(tmp_path / "made", rng, 3, sizes=sizes, hot=3)
    shuffle_mtimes(rng, files)
    guard_sources(*files)
    work = tmp_path / "work"
    link_images(tmp_path / "made", work)
    rc, rep = restore_json(work)
    assert chain_files(rep) == [f.name for f in files]
    assert rc == 0 and rep["disk_size"] == sizes[-1]
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path)


def test_qemu_raw_base(tmp_path, guard_sources):
    """A raw file (no header, a whole number of clusters) can only be the base (format.md §0)."""
    rng = random.Random(5)
    made = tmp_path / "made"
    made.mkdir()
    cluster = 64 << 10
    base = made / "disk.img"
    base.write_bytes(rng.randbytes(2 << 20) + bytes(2 << 20))
    files = [base]
    for _ in range(2):
        f = made / uuid.UUID(int=rng.getrandbits(128)).hex
        qemu_create(f, 4 << 20, cluster)
        files.append(f)
        qemu_write(qemu_json_chain(files, raw_base=True),
                   partial_writes(rng, 4 << 20, cluster, 20, list(range(8))))
    shuffle_mtimes(rng, files)
    (made / "notes.txt").write_text("not an image")
    guard_sources(*files)
    work = tmp_path / "work"
    link_images(made, work)
    rc, rep = restore_json(work)
    assert chain_files(rep) == [f.name for f in files]
    assert rc == 0, rep["decisions"]
    assert any(i["file"] == "notes.txt" for i in rep["ignored"])
    assert export_sha(work, tmp_path) == qemu_sha(files, tmp_path, raw_base=True)


def test_snapshot_tree(tmp_path, guard_sources):
    """Two deltas made on the same base (snapshot-switch, format.md §4.3): a tree, not a chain. The top is
    the dirty one; without the dirty flag the top is only a guess (low confidence)."""
    rng = random.Random(7)
    made = tmp_path / "made"
    made.mkdir()
    cluster = 64 << 10
    base = made / "root.hds"
    qemu_create(base, 4 << 20, cluster)
    hot = list(range(10))
    qemu_write(str(base), partial_writes(rng, 4 << 20, cluster, 30, hot))
    kids = []
    for name in ("a", "b"):
        f = made / f"root.hds.{{{uuid.UUID(int=rng.getrandbits(128))}}}{name}"
        qemu_create(f, 4 << 20, cluster)
        qemu_write(qemu_json_chain([base, f]), partial_writes(rng, 4 << 20, cluster, 30, hot))
        kids.append(f)
    guard_sources(base, *kids)
    for variant in ("plain", "dirty"):
        work = tmp_path / variant
        link_images(made, work)
        if variant == "dirty":  # a copy, so the guarded images stay as made
            top = work / kids[0].name
            top.unlink()
            top.write_bytes(kids[0].read_bytes())
            set_dirty(top)
        rc, rep = restore_json(work)
        parents = {L["child"]: L["parent"] for L in rep["links"]}
        assert parents[kids[0].name] == parents[kids[1].name] == "root.hds", rep["links"]
        d = parse_descriptor((work / DD).read_bytes())
        guid = {im.file: im.guid for im in d.images}
        for k in kids:
            assert volume_sha(work / DD, guid[k.name]) == qemu_sha([base, k], tmp_path)
        if variant == "dirty":
            assert rc == 0 and chain_files(rep)[-1] == kids[0].name
            assert any(x["what"] == "top" and x["decided_by"] == "dirty flag"
                       for x in rep["decisions"])
        else:
            top = next(x for x in rep["decisions"] if x["what"] == "top")
            assert rc == 1 and top["confidence"] == "low", rep["decisions"]


def test_ambiguous_deltas_sharing_nothing(tmp_path, guard_sources):
    """Base and delta written in disjoint clusters, random names, equal sizes, no dirty flag:
    nothing tells their order. Reported as low confidence (exit 1), not silently right."""
    rng = random.Random(3)
    made = tmp_path / "made"
    made.mkdir()
    cluster = 64 << 10
    a, b = made / "x1", made / "x2"
    qemu_create(a, 4 << 20, cluster)
    qemu_write(str(a), partial_writes(rng, 4 << 20, cluster, 10, list(range(0, 8))))
    qemu_create(b, 4 << 20, cluster)
    qemu_write(qemu_json_chain([a, b]), partial_writes(rng, 4 << 20, cluster, 10, list(range(32, 40))))
    for f in (a, b):
        os.utime(f, (1_600_000_000, 1_600_000_000))
    guard_sources(a, b)
    work = tmp_path / "work"
    link_images(made, work)
    r = run_cli("restore-descriptor", work)
    assert r.returncode == 1, r.stdout.decode() + r.stderr.decode()
    assert b"LOW CONFIDENCE" in r.stdout and b"[low]" in r.stdout
    assert r.stderr.decode().count("\n") == 1 and "low confidence" in r.stderr.decode()
    # Whatever order was chosen, the top reads the same here (no cluster is shared).
    assert export_sha(work, tmp_path) == qemu_sha([a, b], tmp_path)


# -- never overwriting -----------------------------------------------------------------------------
def test_never_overwrites(corpus_case, tmp_path):
    case = corpus_case("v1-chain2")
    work = tmp_path / "w"
    link_images(case, work, skip=())  # the descriptor too: it exists
    before = file_sha(work / DD)
    r = run_cli("restore-descriptor", work)
    assert r.returncode == 11 and b"already exists" in r.stderr and b"-o" in r.stderr
    assert r.stderr.count(b"\n") == 1 and file_sha(work / DD) == before
    existing = tmp_path / "taken.xml"
    existing.write_text("mine")
    r = run_cli("restore-descriptor", work, "-o", existing)
    assert r.returncode == 11 and existing.read_text() == "mine"
    # -o elsewhere: a new file whose <File> paths lead back into the folder.
    out = tmp_path / "elsewhere" / "new.xml"
    out.parent.mkdir()
    r = run_cli("restore-descriptor", work, "-o", out)
    assert r.returncode == 0, r.stderr.decode()
    assert file_sha(work / DD) == before
    assert export_sha(out, tmp_path, "--allow-outside-paths") == \
        expected_hashes(case)["expected.raw"]
    r = run_cli("restore-descriptor", work, "-o", out)  # a second run: out exists now
    assert r.returncode == 11 and not list(out.parent.glob("*.tmp"))


# -- bad input -------------------------------------------------------------------------------------
def _one_line_error(args: list[str | Path], code: int, *needles: str) -> None:
    r = run_cli("restore-descriptor", *args)
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err, r.stdout.decode())
    assert err.count("\n") == 1 and err.startswith("ploopfs: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    assert not r.stdout


def test_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error([empty], 3, "no image files")
    _one_line_error([tmp_path / "missing"], 3, "no such folder")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.bin").write_bytes(b"x" * 1000)
    (junk / "b.txt").write_text("hello")
    _one_line_error([junk], 4, "no ploop image")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    qemu_create(mixed / "root.hds", 2 << 20, 64 << 10)
    qemu_create(mixed / "root.hds.{11111111-2222-3333-4444-555555555555}", 2 << 20, 1 << 20)
    _one_line_error([mixed], 7, "root.hds.{11111111", "at offset 28", "cluster size")
    _one_line_error([mixed, "--sample", "-1"], 64, "--sample")  # a usage error
    assert not (mixed / DD).exists() and not (empty / DD).exists()


def test_raw_only_folder(tmp_path, guard_sources):
    """A lone raw disk: described as ploop restore-descriptor -f raw would (format.md §5.8)."""
    d = tmp_path / "d"
    d.mkdir()
    raw = d / "root.hdd"
    raw.write_bytes(random.Random(1).randbytes(1 << 20) + bytes(3 << 20))
    guard_sources(raw)
    rc, rep = restore_json(d)
    assert rc == 0 and rep["cluster_size"] == 1 << 20 and rep["disk_size"] == 4 << 20
    assert parse_descriptor((d / DD).read_bytes()).images[0].type == "Plain"
    assert export_sha(d, tmp_path) == file_sha(raw)


def test_names_against_content_flagged(tmp_path, guard_sources):
    """File names that say the opposite of clear content evidence: names win (they are what
    ploop writes, format.md §5.9), but the conflict makes the result low confidence, never silent."""
    rng = random.Random(9)
    files = build_chain(tmp_path / "made", rng, 2)
    made = tmp_path / "made"
    lying = [made / "root.hds.{0b7e1c2d-0000-4000-8000-000000000001}", made / "root.hds"]
    for f, new in zip(files, lying, strict=True):
        f.rename(new)
    guard_sources(*lying)
    work = tmp_path / "work"
    link_images(made, work)
    rc, rep = restore_json(work)
    assert chain_files(rep)[0] == "root.hds"  # the names' verdict
    assert rc == 1 and any(d["what"] == "conflict" for d in rep["decisions"]), rep["decisions"]
    assert any("contradict" in n for n in rep["notes"])


def test_damaged_old_descriptor_keeps_guids(corpus_case, tmp_path):
    """A truncated DiskDescriptor.xml (not XML any more) still names the images' GUIDs and some
    parent links; they are reused, so the snapshot GUIDs survive (read by their old GUIDs)."""
    case = corpus_case("plain-base-chain3")
    original = parse_descriptor((case / DD).read_bytes())
    work = tmp_path / "w"
    link_images(case, work)
    data = (case / DD).read_bytes()
    (work / DD).write_bytes(data[:data.index(b"</Shot>") + 20])  # the first Shot, then cut
    with pytest.raises(Exception):  # noqa: B017 - really damaged: the strict parser refuses it
        parse_descriptor((work / DD).read_bytes())
    out = tmp_path / "rebuilt" / DD
    out.parent.mkdir()
    rc, rep = restore_json(work, "-o", out)
    assert rc == 0 and any("old descriptor" in n for n in rep["notes"]), rep["notes"]
    rebuilt = parse_descriptor(out.read_bytes())
    assert [im.guid for im in rebuilt.chain()] == [im.guid for im in original.chain()]
    sources = {i["file"]: i["guid_source"] for i in rep["images"]}
    assert sources["root.hdd"] == "old descriptor"
    want = expected_hashes(case)
    for im in original.chain():
        assert volume_sha(out, im.guid, outside=True) == want[f"expected-{im.guid}.raw"]
    # --ignore-old: back to GUIDs from names and uuid5.
    _, rep2 = restore_json(work, "--dry-run", "--ignore-old", "-o", tmp_path / "x.xml")
    assert {i["guid_source"] for i in rep2["images"]} <= {"top", "file name", "generated"}


@pytest.mark.parametrize("damage", ["garbled", "zeroed"])
def test_garbled_old_descriptor_keeps_guids(corpus_case, tmp_path, damage):
    """What the one descriptor decoder recovers of an old descriptor (scan_descriptor with
    recover): an element garbled (a NUL and invalid UTF-8 in a tag name, a mismatched end
    tag) and the file cut inside the last <Shot>, or its first bytes zeroed up to the end of the
    first <Image>. Every GUID still readable is reused."""
    case = corpus_case("plain-base-chain3")
    original = parse_descriptor((case / DD).read_bytes())
    data = (case / DD).read_bytes()
    if damage == "garbled":
        data = data.replace(b"<Type>Plain</Type>", b"<Ty\x00\xffpe>Plain</Tpe>", 2)
        data = data[:data.rindex(b"<ParentGUID>") + 20]
        reused = {im.file for im in original.images}
    else:
        cut = data.index(b"</Image>")
        data = bytes(cut) + data[cut:]
        reused = {im.file for im in original.images[1:]}
    work = tmp_path / "w"
    link_images(case, work)
    (work / DD).write_bytes(data)
    out = tmp_path / "rebuilt" / DD
    out.parent.mkdir()
    rc, rep = restore_json(work, "-o", out)
    assert rc == 0, rep["notes"]
    note = next(n for n in rep["notes"] if "old descriptor" in n)
    assert f"{len(reused)} image GUID(s)" in note, note
    sources = {i["file"]: i["guid_source"] for i in rep["images"]}
    top = original.image(TOP_GUID).file  # its GUID is ploop's magic top GUID, source "top"
    assert {f for f, src in sources.items() if src == "old descriptor"} == reused - {top}, sources
    rebuilt = parse_descriptor(out.read_bytes())
    old = {im.file: im.guid for im in original.images}
    names = {os.path.basename(im.file): im.guid for im in rebuilt.images}  # -o elsewhere: ../w/…
    assert {f: names[f] for f in reused} == {f: old[f] for f in reused}
    assert [os.path.basename(im.file) for im in rebuilt.chain()] == [
        im.file for im in original.chain()]


def test_hostile_old_descriptor_is_not_loaded(corpus_case, tmp_path):
    """An old descriptor declaring entities is refused by the one XML loader, in recovery too:
    nothing is taken from it, the note says why, and the rest of the evidence still decides."""
    case = corpus_case("plain-base-chain3")
    work = tmp_path / "w"
    link_images(case, work)
    data = (case / DD).read_bytes()
    (work / DD).write_bytes(b'<!DOCTYPE d [<!ENTITY x "y">]>' + data[data.index(b"<Virtuozzo"):])
    rc, rep = restore_json(work, "--dry-run", "-o", tmp_path / "x.xml")
    assert rc in (0, 1)
    note = next(n for n in rep["notes"] if "old descriptor" in n)
    assert "0 image GUID(s)" in note and "unusable: DTD or entity" in note, note
    assert "old descriptor" not in {i["guid_source"] for i in rep["images"]}
