"""Hostile shapes of a disk: deep and wide snapshot trees, a zero <Blocksize>, symlink loops.
Each gets one line and a documented exit code in bounded time, never exit 70, and a mount that
fails leaves nothing mounted."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from conftest import PLOOPFS, run_cli, sha256_file, tree_hashes
from mounting import Mounter, is_mounted

from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

LIMIT_S = 20
LIMIT_AS = 1 << 30


def _limited(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[bytes], float]:
    def lim() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))

    t0 = time.monotonic()
    r = subprocess.run([str(PLOOPFS), *map(str, args)], capture_output=True, timeout=LIMIT_S,
                       preexec_fn=lim, check=False)
    return r, time.monotonic() - t0


def _one_line(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode().strip()
    assert r.returncode != 70 and "Traceback" not in err, err
    return err


def _deep_chain(folder: Path, n: int) -> None:
    """A descriptor with a chain of `n` levels: one real base, the deltas symlinks to it."""
    folder.mkdir()
    ImageWriter.create(folder / "base.hds", 1 << 20, 65536, 2).close()
    files = ["base.hds"]
    for i in range(1, n):
        os.symlink("base.hds", folder / f"d{i}.hds")
        files.append(f"d{i}.hds")
    write_descriptor(folder / "DiskDescriptor.xml", chain_descriptor(files, 1 << 20, 65536))


def _wide_tree(folder: Path, n: int) -> list[str]:
    """A base with `n` child snapshots (a descriptor rewritten so every delta is a child of
    the base); returns the GUIDs."""
    _deep_chain(folder, 2)
    dd = folder / "DiskDescriptor.xml"
    from ploopfs.format.descriptor import ImageEntry, Shot, render_descriptor
    from ploopfs.format.descriptor_scan import parse_descriptor
    from ploopfs.volume.writer import new_guid

    d = parse_descriptor(dd.read_bytes())
    base = d.chain()[0].guid
    for i in range(n):
        g = new_guid()
        os.symlink("base.hds", folder / f"w{i}.hds")
        d.images.append(ImageEntry(g, f"w{i}.hds", "Compressed"))
        d.shots.append(Shot(g, base))
    dd.unlink()
    dd.write_bytes(render_descriptor(d))
    return [im.guid for im in d.images]


def test_deep_chain_is_a_clear_refusal(tmp_path: Path) -> None:
    disk = tmp_path / "deep"
    _deep_chain(disk, 2000)
    before = tree_hashes(disk)
    for args, code in ((["info", disk], 7), (["export", disk, tmp_path / "o.raw"], 7),
                       (["du", disk], 7), (["check", disk], 3)):
        r, took = _limited(*args)
        err = _one_line(r)
        assert r.returncode == code, (args, err)
        assert "levels" in (err + r.stdout.decode()), args
        assert took < LIMIT_S
    r, _ = _limited("snapshots", "--json", disk)
    assert r.returncode == 0, r.stderr.decode()
    shots = json.loads(r.stdout)["snapshots"]
    assert len(shots) == 2000 and shots[-1]["depth"] == 1999
    assert tree_hashes(disk) == before


def test_zero_blocksize(corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    d = corpus_case("v1-chain2")
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in d.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    dd = bad / "DiskDescriptor.xml"
    text = dd.read_text()
    assert "<Blocksize>" in text
    import re

    dd.write_text(re.sub(r"<Blocksize>\d+</Blocksize>", "<Blocksize>0</Blocksize>", text))
    r = run_cli("info", bad)
    err = _one_line(r)
    assert r.returncode == 6 and "Blocksize" in err and "--salvage" in err
    r = run_cli("check", "--json", bad)
    assert r.returncode == 2
    assert "DESCRIPTOR_BLOCKSIZE" in [f["code"] for f in json.loads(r.stdout)["findings"]]
    out, ref = tmp_path / "salvaged.raw", tmp_path / "ref.raw"
    r = run_cli("export", bad, out, "--salvage")
    assert r.returncode in (0, 15), r.stderr.decode()
    assert run_cli("export", d, ref).returncode == 0
    assert sha256_file(out) == sha256_file(ref)


def test_symlink_loops_are_named(corpus_case: Callable[[str], Path], tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    r = run_cli("info", loop)
    assert r.returncode == 3 and b"symbolic link loop" in r.stderr
    d = corpus_case("v1-chain2")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "DiskDescriptor.xml").write_bytes((d / "DiskDescriptor.xml").read_bytes())
    for p in d.iterdir():
        if p.name.startswith("root.hdd.") or p.name == "DiskDescriptor.xml":
            (bad / p.name).write_bytes(p.read_bytes())
    (bad / "root.hdd").symlink_to("root.hdd")
    r = run_cli("info", bad)
    assert r.returncode == 3 and b"symbolic link loop" in r.stderr, r.stderr




def test_mount_wide_tree_and_deep_chain(tmp_path: Path, mounter: Mounter) -> None:
    """1,100 snapshots in one mount (file descriptors past 1023 while waiting for readiness);
    a chain too deep to read fails the mount with nothing mounted."""
    wide = tmp_path / "wide"
    guids = _wide_tree(wide, 1100)
    m = mounter.mount(wide)
    names = os.listdir(m / "snapshots")
    assert len(names) == len(guids)
    want = sha256_file(m / "disk")
    assert sha256_file(m / "snapshots" / names[-1] / "disk") == want  # all alike: one base
    deep = tmp_path / "deep"
    _deep_chain(deep, 300)
    mnt = mounter.mountpoint("deepmnt")
    r = mounter.run("mount", deep, mnt)
    assert r.returncode == 7 and "levels" in r.stderr, r.stderr
    assert not is_mounted(mnt)
