"""Bad input (issue #2, point 8): every damaged or hostile source gives exactly one line on stderr,
"ploopfs: <file>[ at offset N| in <element>]: <what>", the documented exit code (docs/cli.md,
ploopfs/errors.py), never a traceback, and the source files stay unchanged.

Each case damages a copy of a corpus disk (or a chain built with ImageWriter) with tests/damage.py
and runs both `ploopfs info` and `ploopfs export` on it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import damage as dm
import pytest
from conftest import REPO, expected_hashes, qemu_json_chain, qemu_to_raw, run_cli, sha256_file

from ploopfs.errors import ExitCode
from ploopfs.format.header import NONE_GUID

VS, V1, PB = "v2-single", "v1-chain2", "plain-base-chain3"
MIB = 1 << 20
TIMEOUT = 60  # a FIFO or device must never make the CLI hang


@dataclass
class Expect:
    """What the one-line error must say: the file it names, the offset/element locator (when the
    problem has one) and a key phrase of the complaint."""

    source: Path
    named: Path
    says: str
    locator: str | None = None
    args: tuple[str, ...] = ()
    extra_guard: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Bad:
    id: str
    case: str | None  # corpus case copied to tmp, or None: `make` builds in an empty folder
    code: ExitCode
    make: Callable[[Path], Expect]


def at(off: int) -> str:
    return f" at offset {off}:"


def el(element: str) -> str:
    return f" in <{element}>:"


def top_delta(f: Path) -> Path:
    return f / dm.load_xml(f / dm.DD).getroot().xpath(
        "StorageData/Storage/Image[last()]/File/text()")[0]


# -- image files and headers ----------------------------------------------------------------------
def empty_direct(f: Path) -> Expect:
    dm.truncate_file(f / "root.hdd", 0)
    return Expect(f / "root.hdd", f / "root.hdd", "empty")


def empty_in_descriptor(f: Path) -> Expect:
    dm.truncate_file(f / "root.hdd", 0)
    return Expect(f, f / "root.hdd", "empty")


def truncated_header(keep: int, direct: bool) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        dm.truncate_header(f / "root.hdd", keep)
        src = f / "root.hdd" if direct else f
        return Expect(src, f / "root.hdd", "truncated" if keep >= 16 else "not a ploop image",
                      at(0))
    return make


def foreign_direct(f: Path) -> Expect:
    dm.foreign_signature(f / "root.hdd")
    return Expect(f / "root.hdd", f / "root.hdd", "--cluster-size", at(0))


def foreign_base(f: Path) -> Expect:
    """A base labelled Compressed must carry a ploop signature; only a Plain base is raw (format.md §3)."""
    dm.foreign_signature(f / "root.hdd")
    return Expect(f, f / "root.hdd", "not a ploop image", at(0))


def foreign_delta(f: Path) -> Expect:
    top = top_delta(f)
    dm.foreign_signature(top)
    return Expect(f, top, "only the base", at(0))


def header(name: str, value: int, says: str, direct: bool = False) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        off = dm.header_field(f / "root.hdd", name, value)
        return Expect(f / "root.hdd" if direct else f, f / "root.hdd", says,
                      at(0x20 if name == "m_SizeInSectors" else off))
    return make


def absurd_bat_size(f: Path) -> Expect:
    img = f / "root.hdd"
    dm.header_field(img, "m_Size", 0xFFFFFFF0)
    return Expect(f, img, "BAT of 4294967280 entries", at(img.stat().st_size))


def bat(value: Callable[[Path], int], says: str, case_img: str = "root.hdd") -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        img = f / case_img
        v = value(img)
        idx = max(dm.bat_entries(img))  # overwrite the last mapped slot: the only bad one
        off = dm.bat_entry(img, idx, v)
        return Expect(f, img, says, at(off))
    return make


def past_eof(img: Path) -> int:
    return img.stat().st_size // MIB + 3  # v2-single: entries are 1 MiB clusters


def bat_into_header_v2(f: Path) -> Expect:
    """v2 entries count clusters, so only an image whose header+BAT spans several clusters can
    point into it: 4 KiB clusters, 16 MiB -> 4096 entries -> 5 header/BAT clusters (format.md §2.4)."""
    dm.build_chain(f, [(4096, 2)], size=16 * MIB)
    img = f / "root.hdd"
    return Expect(f, img, "header/BAT area", at(dm.bat_entry(img, 1000, 2)))


def truncated_data(f: Path) -> Expect:
    img = f / "root.hdd"
    size = 5 * MIB
    first_bad = min(i for i, e in dm.bat_entries(img).items() if (e + 1) * MIB > size)
    dm.truncate_file(img, size)
    return Expect(f, img, "past end of file", at(64 + 4 * first_bad))


def truncated_bat(f: Path) -> Expect:
    dm.truncate_file(f / "root.hdd", 100)
    return Expect(f, f / "root.hdd", "truncated", at(100))


def qcow2(direct: bool) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        img = f / "root.hdd"
        img.unlink()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "16M"], check=True)
        return Expect(img if direct else f, img, "qcow2")
    return make


def raw_no_cluster_size(f: Path) -> Expect:
    raw = f / "disk.raw"
    raw.write_bytes(bytes(range(256)) * 4096)
    return Expect(raw, raw, "--cluster-size", at(0))


def mixed_chain(specs: list[tuple[int, int]], says: str, off: int) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        dm.build_chain(f, specs, blocksize=0)
        return Expect(f, f / "root.hdd.1", says, at(off))
    return make


def blocksize_mismatch(f: Path) -> Expect:
    dm.set_text(f / dm.DD, "StorageData/Storage/Blocksize", "4096")
    return Expect(f, f / "root.hdd", "<Blocksize>", at(0x1C))


def special_file(kind: str) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        img = f / "root.hdd"
        img.unlink()
        if kind == "fifo":
            os.mkfifo(img)
        elif kind == "chardev":
            os.mknod(img, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
        else:
            img.mkdir()
        return Expect(f, img, "is a directory" if kind == "dir" else "not a regular file")
    return make


def fifo_direct(f: Path) -> Expect:
    os.mkfifo(f / "pipe")
    return Expect(f / "pipe", f / "pipe", "not a regular file")


def fifo_descriptor(f: Path) -> Expect:
    (f / dm.DD).unlink()
    os.mkfifo(f / dm.DD)
    return Expect(f, f / dm.DD, "not a regular file")


def dev_zero_direct(f: Path) -> Expect:
    return Expect(Path("/dev/zero"), Path("/dev/zero"), "not a regular file")


# -- sources that are not there --------------------------------------------------------------------
def no_descriptor(f: Path) -> Expect:
    (f / dm.DD).unlink()
    return Expect(f, f, "no DiskDescriptor.xml")


def no_source(f: Path) -> Expect:
    return Expect(f / "nothing-here", f / "nothing-here", "no such file")


def missing_delta(f: Path) -> Expect:
    top_delta(f).unlink()
    return Expect(f, f / dm.DD, "does not exist", el("Storage/Image[2]/File"))


def snapshot_arg(value: str, says: str, locator: str | None) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        return Expect(f, f / dm.DD, says, locator, ("--snapshot", value))
    return make


# -- the snapshot tree -------------------------------------------------------------------------
SHOT = "Snapshots/Shot"


def tree(edit: Callable[[Path, list[str]], None], says: str, element: str) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        dd = f / dm.DD
        edit(dd, dm.guids(dd))
        return Expect(f, dd, says, el(element))
    return make


def cycle(dd: Path, g: list[str]) -> None:
    """plain-base-chain3: the two deltas point at each other, the base stays a root."""
    dm.set_text(dd, f"{SHOT}[2]/ParentGUID", g[2])
    dm.set_text(dd, f"{SHOT}[3]/ParentGUID", g[1])


def cycle_no_root(dd: Path, g: list[str]) -> None:
    dm.set_text(dd, f"{SHOT}[1]/ParentGUID", g[-1])


def two_roots(dd: Path, g: list[str]) -> None:
    dm.set_text(dd, f"{SHOT}[3]/ParentGUID", NONE_GUID)


def dup_image_guid(dd: Path, g: list[str]) -> None:
    dm.set_text(dd, "StorageData/Storage/Image[1]/GUID", g[1])


def dup_shot(dd: Path, g: list[str]) -> None:
    dm.duplicate(dd, f"{SHOT}[1]")


def shot_without_image(dd: Path, g: list[str]) -> None:
    dm.remove(dd, "StorageData/Storage/Image[1]")


def unknown_parent(dd: Path, g: list[str]) -> None:
    dm.set_text(dd, f"{SHOT}[2]/ParentGUID", "{" + str(uuid.uuid4()) + "}")


def unknown_top(dd: Path, g: list[str]) -> None:
    dm.set_text(dd, "Snapshots/TopGUID", "{" + str(uuid.uuid4()) + "}")


# -- the descriptor as a document --------------------------------------------------------------
def xml(edit: Callable[[Path], None], says: str, locator: str | None = None) -> Callable[[Path], Expect]:
    def make(f: Path) -> Expect:
        edit(f / dm.DD)
        return Expect(f, f / dm.DD, says, locator)
    return make


def malformed(dd: Path) -> None:
    dm.truncate_file(dd, dd.stat().st_size // 2)


def oversize(dd: Path) -> None:
    data = dd.read_bytes()
    dd.write_bytes(data + b"<!-- " + b"x" * (4 << 20) + b" -->\n")


def doctype(which: str, encoding: str) -> Callable[[Path], None]:
    def edit(dd: Path) -> None:
        if which == "laughs":
            dm.prepend_doctype(dd, dm.BILLION_LAUGHS, file_ref="&lol9;", encoding=encoding)
        else:
            dm.prepend_doctype(dd, dm.XXE_PASSWD, file_ref="&xxe;", encoding=encoding)
    return edit


# -- paths outside the folder ------------------------------------------------------------------
def outside(how: str) -> Callable[[Path], Expect]:
    """The base image moved out of the folder and reached through `how`: `abs` (absolute <File>),
    `dotdot` (../), `symlink` (a link in the folder), `passwd` (<File>/etc/passwd)."""
    def make(f: Path) -> Expect:
        dd = f / dm.DD
        elsewhere = f.parent / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        moved = elsewhere / "moved.hdd"
        if how != "passwd":
            shutil.move(f / "root.hdd", moved)
        if how == "symlink":
            (f / "root.hdd").symlink_to(moved)
        else:
            target = {"abs": str(moved), "dotdot": "../elsewhere/moved.hdd",
                      "passwd": "/etc/passwd"}[how]
            dm.set_text(dd, "StorageData/Storage/Image[1]/File", target)
        return Expect(f, dd, "outside the descriptor's folder", el("Storage/Image[1]/File"),
                      extra_guard=[elsewhere])
    return make


C = ExitCode
BAD: list[Bad] = [
    # headers (format.md §1)
    Bad("empty-file", VS, C.BAD_IMAGE, empty_direct),
    Bad("empty-image-in-descriptor", VS, C.BAD_IMAGE, empty_in_descriptor),
    Bad("truncated-header", VS, C.BAD_IMAGE, truncated_header(40, direct=False)),
    Bad("truncated-header-direct", VS, C.BAD_IMAGE, truncated_header(40, direct=True)),
    Bad("truncated-signature", VS, C.BAD_IMAGE, truncated_header(10, direct=False)),
    Bad("foreign-signature-direct", VS, C.BAD_IMAGE, foreign_direct),
    Bad("foreign-signature-base", VS, C.BAD_IMAGE, foreign_base),
    Bad("foreign-signature-delta", V1, C.BAD_IMAGE, foreign_delta),
    Bad("m_Type-not-2", VS, C.BAD_IMAGE, header("m_Type", 1, "m_Type is 1")),
    Bad("m_Type-not-2-direct", VS, C.BAD_IMAGE, header("m_Type", 3, "m_Type is 3", direct=True)),
    Bad("cluster-size-zero", VS, C.BAD_IMAGE, header("m_Sectors", 0, "m_Sectors")),
    Bad("cluster-size-absurd", VS, C.BAD_IMAGE, header("m_Sectors", 1 << 24, "absurd cluster size")),
    Bad("m_Size-below-m_SizeInSectors", VS, C.BAD_IMAGE,
        header("m_SizeInSectors", 1 << 40, "cannot cover m_SizeInSectors")),
    Bad("m_Size-absurd", VS, C.CORRUPT, absurd_bat_size),
    Bad("qcow2-direct", VS, C.UNSUPPORTED, qcow2(direct=True)),
    Bad("qcow2-in-descriptor", VS, C.UNSUPPORTED, qcow2(direct=False)),
    Bad("raw-without-cluster-size", VS, C.BAD_IMAGE, raw_no_cluster_size),
    # BAT (format.md §2.3, §2.8)
    Bad("bat-past-eof", VS, C.CORRUPT, bat(past_eof, "past end of file")),
    Bad("bat-into-header-v1", V1, C.CORRUPT, bat(lambda _: 8, "header/BAT area")),
    Bad("bat-into-header-v2", None, C.CORRUPT, bat_into_header_v2),
    Bad("bat-reserved", VS, C.CORRUPT, bat(lambda _: 0xFFFFFFFF, "reserved value")),
    Bad("truncated-data", VS, C.CORRUPT, truncated_data),
    Bad("truncated-bat", VS, C.CORRUPT, truncated_bat),
    # chains (format.md §4.2)
    Bad("chain-cluster-size", None, C.BAD_CHAIN,
        mixed_chain([(64 << 10, 2), (128 << 10, 2)], "cluster size 256 sectors differs", 0x1C)),
    Bad("chain-version", None, C.BAD_CHAIN,
        mixed_chain([(64 << 10, 1), (64 << 10, 2)], "mixed with v1", 0)),
    Bad("blocksize-mismatch", VS, C.BAD_CHAIN, blocksize_mismatch),
    # files that are not images, or not there
    Bad("image-fifo", VS, C.BAD_IMAGE, special_file("fifo")),
    Bad("image-dev-zero", VS, C.BAD_IMAGE, special_file("chardev")),
    Bad("image-directory", VS, C.BAD_IMAGE, special_file("dir")),
    Bad("source-fifo", VS, C.BAD_IMAGE, fifo_direct),
    Bad("descriptor-fifo", VS, C.BAD_IMAGE, fifo_descriptor),
    Bad("source-dev-zero", VS, C.BAD_IMAGE, dev_zero_direct),
    Bad("folder-without-descriptor", VS, C.NOT_FOUND, no_descriptor),
    Bad("no-such-source", VS, C.NOT_FOUND, no_source),
    Bad("missing-image-file", V1, C.NOT_FOUND, missing_delta),
    Bad("snapshot-unknown", V1, C.NOT_FOUND,
        snapshot_arg("{" + str(uuid.uuid4()) + "}", "unknown snapshot", el("Snapshots"))),
    Bad("snapshot-invalid", V1, C.NOT_FOUND, snapshot_arg("top-ish", "not a snapshot GUID", None)),
    # the snapshot tree (format.md §5.3, §5.4)
    Bad("tree-cycle", PB, C.BAD_CHAIN, tree(cycle, "cycle", f"{SHOT}/ParentGUID")),
    Bad("tree-cycle-no-root", V1, C.BAD_CHAIN, tree(cycle_no_root, "no base image",
                                                    f"{SHOT}/ParentGUID")),
    Bad("tree-two-roots", PB, C.BAD_CHAIN, tree(two_roots, "several base images",
                                                f"{SHOT}/ParentGUID")),
    Bad("duplicate-image-guid", V1, C.BAD_CHAIN, tree(dup_image_guid, "used by two images",
                                                      "Storage/Image[2]/GUID")),
    Bad("duplicate-shot", V1, C.BAD_CHAIN, tree(dup_shot, "two <Shot>", f"{SHOT}[2]/GUID")),
    Bad("shot-without-image", V1, C.BAD_CHAIN, tree(shot_without_image, "has no <Image>",
                                                    f"{SHOT}/GUID")),
    Bad("unknown-parent-guid", V1, C.BAD_CHAIN, tree(unknown_parent, "unknown parent",
                                                     f"{SHOT}/ParentGUID")),
    Bad("unknown-top-guid", V1, C.BAD_CHAIN, tree(unknown_top, "is not an image",
                                                  "Snapshots/TopGUID")),
    # the descriptor document (format.md §5)
    Bad("invalid-guid", V1, C.BAD_DESCRIPTOR,
        xml(lambda dd: dm.set_text(dd, f"{SHOT}[2]/GUID", "{not-a-guid}"), "invalid GUID",
            el(f"{SHOT}[2]/GUID"))),
    Bad("missing-element", V1, C.BAD_DESCRIPTOR,
        xml(lambda dd: dm.remove(dd, "Disk_Parameters"), "required element missing",
            el("Virtuozzo_disk_image/Disk_Parameters"))),
    Bad("not-a-number", V1, C.BAD_DESCRIPTOR,
        xml(lambda dd: dm.set_text(dd, "StorageData/Storage/Blocksize", "2K"), "not a number",
            el("Storage/Blocksize"))),
    # valid, but not handled (format.md §5.2): unsupported, not a bad descriptor
    Bad("split-storage", V1, C.UNSUPPORTED,
        xml(lambda dd: dm.duplicate(dd, "StorageData/Storage"), "split disks",
            el("StorageData/Storage"))),
    Bad("malformed-xml", V1, C.BAD_DESCRIPTOR, xml(malformed, "malformed XML line")),
    Bad("oversize-descriptor", V1, C.BAD_DESCRIPTOR, xml(oversize, "byte cap")),
    Bad("billion-laughs", V1, C.BAD_DESCRIPTOR,
        xml(doctype("laughs", "utf-8"), "DTD", el("!DOCTYPE"))),
    Bad("billion-laughs-utf16", V1, C.BAD_DESCRIPTOR,
        xml(doctype("laughs", "utf-16"), "DTD", el("!DOCTYPE"))),
    Bad("xxe-passwd", V1, C.BAD_DESCRIPTOR, xml(doctype("xxe", "utf-8"), "DTD", el("!DOCTYPE"))),
    Bad("xxe-passwd-utf16", V1, C.BAD_DESCRIPTOR,
        xml(doctype("xxe", "utf-16"), "DTD", el("!DOCTYPE"))),
    Bad("billion-laughs-utf7", V1, C.BAD_DESCRIPTOR,
        xml(doctype("laughs", "utf-7"), "DTD", el("!DOCTYPE"))),
    Bad("xxe-passwd-utf7", V1, C.BAD_DESCRIPTOR, xml(doctype("xxe", "utf-7"), "DTD", el("!DOCTYPE"))),
    # paths (format.md §5.6)
    Bad("path-absolute-outside", VS, C.UNSAFE_PATH, outside("abs")),
    Bad("path-dotdot", VS, C.UNSAFE_PATH, outside("dotdot")),
    Bad("path-symlink-outside", VS, C.UNSAFE_PATH, outside("symlink")),
    Bad("path-etc-passwd", VS, C.UNSAFE_PATH, outside("passwd")),
]

# Any line of /etc/passwd in the output would mean an XXE entity (or an outside path) was read.
PASSWD_LINES = [ln for ln in Path("/etc/passwd").read_bytes().splitlines() if ln.strip()]


def _prepare(b: Bad, corpus_root: Path, tmp_path: Path) -> tuple[Path, Expect]:
    work = tmp_path / "src"
    work.mkdir()
    f = dm.copy_case(corpus_root, b.case, work) if b.case else work / "disk"
    return f, b.make(f)


def _guard_all(guard_sources: Callable[..., None], f: Path, exp: Expect) -> None:
    """Hash every regular file of the (damaged) source: nothing may write to it. FIFOs and
    devices are not hashed (reading a FIFO would block)."""
    paths = [f, *exp.extra_guard] if f.exists() else list(exp.extra_guard)
    for p in paths:
        files = list(p.rglob("*")) if p.is_dir() else [p]
        guard_sources(*[q for q in files if q.is_file() and not q.is_symlink()])


def assert_one_line_error(r: subprocess.CompletedProcess[bytes], code: int, exp: Expect) -> str:
    err = r.stderr.decode(errors="replace")
    out = r.stdout.decode(errors="replace")
    assert "Traceback" not in err + out
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {err!r}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"stderr is not one line: {err!r}"
    line = lines[0]
    assert line.startswith("ploopfs: "), line
    prefix = f"ploopfs: {exp.named}"
    assert line.startswith(prefix), f"does not name {exp.named}: {line}"
    rest = line[len(prefix):]  # "[ at offset N| in <element>]: what is wrong"
    locator = exp.locator or ":"
    assert rest.startswith(locator), f"expected {locator!r} right after the file name: {line}"
    assert exp.says in rest.split(": ", 1)[1], f"no {exp.says!r} in {line}"
    return line


@pytest.mark.parametrize("command", ["info", "export"])
@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input(bad: Bad, command: str, corpus_root: Path, tmp_path: Path,
                   guard_sources: Callable[..., None]) -> None:
    f, exp = _prepare(bad, corpus_root, tmp_path)
    _guard_all(guard_sources, f, exp)
    out = tmp_path / "out.raw"
    args = [command, exp.source, *exp.args] + ([out] if command == "export" else [])
    r = run_cli(*args, timeout=TIMEOUT)
    assert_one_line_error(r, bad.code, exp)
    assert not any(ln in r.stdout + r.stderr for ln in PASSWD_LINES)
    assert r.stdout == b""
    assert not out.exists(), "a failed export left an output file"


@pytest.mark.parametrize("case", [VS, V1, PB])
def test_undamaged_controls(case: str, corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    """The same sources before damage read cleanly and export to the corpus' expected content,
    so every failure above is caused by the damage alone."""
    f = corpus_case(case)
    r = run_cli("info", f)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    out = tmp_path / "out.raw"
    r = run_cli("export", f, out)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert sha256_file(out) == expected_hashes(f)["expected.raw"]


def test_built_chain_control(tmp_path: Path, guard_sources: Callable[..., None]) -> None:
    """The ImageWriter chains of the mixed-chain cases, made consistent, export what qemu reads."""
    f = tmp_path / "disk"
    dm.build_chain(f, [(64 << 10, 2), (64 << 10, 2)], blocksize=0)
    guard_sources(f)
    out, ref = tmp_path / "out.raw", tmp_path / "ref.raw"
    r = run_cli("export", f, out)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    qemu_to_raw(qemu_json_chain([f / "root.hdd", f / "root.hdd.1"]), ref)
    assert sha256_file(out) == sha256_file(ref)


@pytest.mark.parametrize("how", ["abs", "dotdot", "symlink"])
def test_outside_paths_allowed(how: str, corpus_root: Path, tmp_path: Path,
                               guard_sources: Callable[..., None]) -> None:
    """--allow-outside-paths reads what the refused cases point at, with the right content."""
    f = dm.copy_case(corpus_root, VS, tmp_path / "src")
    exp = outside(how)(f)
    _guard_all(guard_sources, f, exp)
    out = tmp_path / "out.raw"
    r = run_cli("export", f, out, "--allow-outside-paths", timeout=TIMEOUT)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert sha256_file(out) == expected_hashes(f)["expected.raw"]


def test_outside_device_allowed_still_refused(corpus_root: Path, tmp_path: Path,
                                              guard_sources: Callable[..., None]) -> None:
    """Allowing outside paths does not make /dev/zero an image."""
    f = dm.copy_case(corpus_root, VS, tmp_path / "src")
    dm.set_text(f / dm.DD, "StorageData/Storage/Image[1]/File", "/dev/zero")
    guard_sources(f)
    r = run_cli("info", f, "--allow-outside-paths", timeout=TIMEOUT)
    assert_one_line_error(r, ExitCode.BAD_IMAGE, Expect(f, Path("/dev/zero"), "not a regular file"))


def test_stale_absolute_path_falls_back(corpus_root: Path, tmp_path: Path,
                                        guard_sources: Callable[..., None]) -> None:
    """A moved backup: <File> is an absolute path that no longer exists, but its basename is in
    the descriptor's folder. It is used, with one warning naming the descriptor."""
    f = dm.copy_case(corpus_root, V1, tmp_path / "src")
    dd = f / dm.DD
    gone = "/srv/vz/private/101/root.hdd/root.hdd"
    dm.set_text(dd, "StorageData/Storage/Image[1]/File", gone)
    guard_sources(f)
    out = tmp_path / "out.raw"
    r = run_cli("export", f, out)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ploopfs: warning: {dd}: <File> '{gone}' used as "), lines[0]
    assert sha256_file(out) == expected_hashes(f)["expected.raw"]
    r = run_cli("info", f)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert f"<File> '{gone}' used as" in r.stdout.decode()


def test_v1_high_size_word_is_ignored(corpus_root: Path, tmp_path: Path,
                                      guard_sources: Callable[..., None]) -> None:
    """v1: the u32 at offset 40 ("Unused") must be 0 but is ignored, as qemu does (format.md §1.4, §11 trap
    3): the disk reads exactly as qemu reads it, and a warning names the image and the offset."""
    f = dm.copy_case(corpus_root, V1, tmp_path / "src")
    top = top_delta(f)
    dm.header_field(top, "m_SizeHigh_v1", 7)
    guard_sources(f)
    out, ref = tmp_path / "out.raw", tmp_path / "ref.raw"
    r = run_cli("export", f, out)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ploopfs: warning: {top} at offset 40:"), lines
    qemu_to_raw(qemu_json_chain([f / "root.hdd", top]), ref)
    assert sha256_file(out) == sha256_file(ref) == expected_hashes(f)["expected.raw"]


# -- the command line itself --------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["info"],
    ["info", "x", "--cluster-size", "700"],
    ["info", "x", "--no-such-option"],
    ["export", "x"],
], ids=["no-args", "unknown-command", "missing-source", "bad-cluster-size", "unknown-option",
        "missing-output"])
def test_usage_errors(args: list[str]) -> None:
    r = run_cli(*args)
    err = r.stderr.decode()
    assert r.returncode == ExitCode.USAGE == 64, err  # not 2: that is a `check` verdict
    assert "Traceback" not in err
    assert r.stdout == b""
    if args:  # one line, like every other error: "ploopfs[ COMMAND]: error: …"
        [line] = err.splitlines()
        assert line.startswith("ploopfs") and ": error: " in line and "--help" in line, err
    else:  # no command at all: the help
        assert err.startswith("usage: ploopfs"), err


def test_usage_error_one_line(corpus_case: Callable[[str], Path]) -> None:
    """Usage errors found after parsing are one line, like every other error."""
    f = corpus_case(VS)
    r = run_cli("export", f, "-", "--format", "ploop")
    assert r.returncode == ExitCode.USAGE
    assert r.stderr.decode().splitlines() == [
        "ploopfs: --format ploop cannot stream; '-' is only for raw output"]


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["export", "--help"], ["--version"]])
def test_help_and_version(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 0 and r.stderr == b""
    out = r.stdout.decode()
    assert out.startswith("ploopfs ") if args == ["--version"] else out.startswith("usage: ploopfs")


def test_exit_codes_documented() -> None:
    """docs/cli.md lists every exit code of ploopfs.errors.ExitCode with its number."""
    doc = (REPO / "docs" / "cli.md").read_text()
    section = doc.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ExitCode:
        assert f"`{int(code)}`" in section and code.name in section, code
