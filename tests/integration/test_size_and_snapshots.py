"""The disk size as ploop shows it (format.md §1.4), and how a snapshot is named on the command
line (a GUID, a unique prefix, an index)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli

MiB = 1 << 20


def _set_disk_size(dd: Path, sectors: int) -> None:
    text = dd.read_text()
    new, n = re.subn(r"<Disk_size>\d+</Disk_size>", f"<Disk_size>{sectors}</Disk_size>", text)
    assert n == 1
    dd.write_text(new)


@pytest.mark.parametrize("delta_mib", [-3, 2])
def test_descriptor_disk_size_wins(corpus_case: Callable[[str], Path], tmp_path: Path,
                                   delta_mib: int) -> None:
    """With a descriptor the disk is <Disk_size>, smaller or larger than the top image says;
    every command warns, and check reports DESCRIPTOR_DISK_SIZE. The bytes are qemu's (which
    reads the chain by its headers) up to the smaller of the two sizes, zeros beyond."""
    d = corpus_case("v2-single")
    info = json.loads(run_cli("info", "--json", d).stdout)
    img_size = info["disk"]["size_bytes"]
    want_size = img_size + delta_mib * MiB
    work = tmp_path / "edited"
    work.mkdir()
    for p in d.iterdir():
        (work / p.name).write_bytes(p.read_bytes())
    _set_disk_size(work / "DiskDescriptor.xml", want_size // 512)
    r = run_cli("info", "--json", work)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert doc["disk"]["size_bytes"] == want_size
    assert any("<Disk_size>" in w and "as ploop shows it" in w for w in doc["warnings"])
    out = tmp_path / "disk.raw"
    assert run_cli("export", work, out).returncode == 0
    got = out.read_bytes()
    assert len(got) == want_size
    image = next(p for p in work.iterdir() if p.name.startswith("root.hd"))
    ref = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "parallels", "-O", "raw", image, ref],
                   check=True)
    qemu = ref.read_bytes()
    n = min(len(got), len(qemu))
    assert got[:n] == qemu[:n]
    assert got[n:] == bytes(len(got) - n)
    r = run_cli("check", "--json", work)
    codes = [f["code"] for f in json.loads(r.stdout)["findings"]]
    assert "DESCRIPTOR_DISK_SIZE" in codes


def test_snapshot_by_prefix_index_and_case(corpus_case: Callable[[str], Path]) -> None:
    d = corpus_case("plain-base-chain3")
    shots = json.loads(run_cli("snapshots", "--json", d).stdout)["snapshots"]
    guids = [s["guid"] for s in shots]
    assert [s["index"] for s in shots] == [0, 1, 2]
    assert all(s["file_size"] and s["mtime"] for s in shots)
    assert shots[0]["clusters"] is None and shots[1]["clusters"] == 2  # raw base; a delta

    def selected(arg: str) -> str:
        r = run_cli("info", "--json", "-s", arg, d)
        assert r.returncode == 0, (arg, r.stderr.decode())
        return json.loads(r.stdout)["snapshot"]

    for i, g in enumerate(guids):
        assert selected(str(i)) == g
        assert selected(str(i - len(guids))) == g  # -1 = top, -2 its parent, …
        assert selected(g.strip("{}")[:6].upper()) == g
        assert selected("{" + g.strip("{}")[:8]) == g
    r = run_cli("info", "-s", "zzz", d)
    err = r.stderr.decode()
    assert r.returncode == 3 and all(g in err for g in guids)  # lists the valid ones
    assert len(err.strip().splitlines()) == 1


def test_snapshot_named_by_its_file_name(corpus_case: Callable[[str], Path]) -> None:
    """The GUID in `root.hdd.{X}` is not a snapshot GUID: say which snapshot that file holds."""
    d = corpus_case("plain-base-chain3")
    shots = json.loads(run_cli("snapshots", "--json", d).stdout)["snapshots"]
    delta = shots[1]
    file_guid = delta["file"].rsplit(".", 1)[1].strip("{}")
    r = run_cli("export", "-s", file_guid, d, "-")
    err = r.stderr.decode()
    assert r.returncode == 3
    assert delta["guid"] in err and "file name" in err and "index 1" in err


def test_container_folder_dirty_warning_and_lone_delta(corpus_case: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    """A container's private area (root.hdd/ inside) opens like the disk folder; a dirty image
    warns on every command that reads it; a delta opened alone next to its descriptor says it
    is one layer of a chain."""
    d = corpus_case("v2-dirty-inuse")
    ct = tmp_path / "101"
    ct.mkdir()
    (ct / "root.hdd").symlink_to(d)
    want = json.loads(run_cli("info", "--json", d).stdout)["disk"]["size_bytes"]
    for args in (["info", "--json", ct], ["snapshots", ct], ["export", ct, tmp_path / "o.raw"],
                 ["du", ct], ["signature", ct, tmp_path / "o.sig"],
                 ["diff", ct, ct, "-o", tmp_path / "o.delta"]):
        r = run_cli(*args)
        assert r.returncode == 0, (args, r.stderr.decode())
        out = r.stderr + r.stdout
        assert b"marked in use" in out, args
    assert (tmp_path / "o.raw").stat().st_size == want
    r = run_cli("check", ct)
    assert r.returncode == 1 and b"DIRTY" in r.stdout
    c = corpus_case("v1-chain2")
    lone = run_cli("info", c / "root.hdd")
    assert lone.returncode == 0
    assert b"one image of the disk described by" in lone.stdout + lone.stderr
