"""Shared fixtures: the sample corpus, source-immutability guards, the CLI, qemu helpers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS_ARCHIVE = REPO / "tests" / "data" / "sample-corpus.tar.zst"
CORPUS_CASES = ["v2-single", "v1-chain2", "plain-base-chain3", "v2-dirty-inuse", "ext4-gpt-chain2"]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample corpus unpacked once per session (read-only master copy)."""
    if not CORPUS_ARCHIVE.exists():
        pytest.fail(f"sample corpus missing: {CORPUS_ARCHIVE} (it is committed in tests/data, "
                    "see tests/data/README.md)")
    dest = tmp_path_factory.mktemp("corpus")
    subprocess.run(f"zstd -dc '{CORPUS_ARCHIVE}' | tar -x -C '{dest}'", shell=True, check=True)
    return dest


@pytest.fixture
def corpus_case(corpus_root: Path, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`corpus_case(name)` copies a case to a temporary folder; at teardown every copied file
    must be unchanged (sources are never written)."""
    copies: list[tuple[Path, dict[str, str]]] = []

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(corpus_root / name, dst)
        copies.append((dst, tree_hashes(dst)))
        return dst

    yield make
    for dst, before in copies:
        assert tree_hashes(dst) == before, f"source files changed under {dst}"


def expected_hashes(case_dir: Path) -> dict[str, str]:
    out = {}
    for line in (case_dir / "expected.sha256").read_text().splitlines():
        h, name = line.split()
        out[name] = h
    return out


@pytest.fixture
def guard_sources() -> Iterator[Callable[..., None]]:
    """`guard_sources(path, ...)` records hashes of files (or all files under folders) now and
    asserts at teardown that they are unchanged."""
    recorded: dict[Path, str] = {}

    def guard(*paths: str | os.PathLike[str]) -> None:
        for p in map(Path, paths):
            files = [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]
            for f in files:
                recorded[f] = sha256_file(f)

    yield guard
    changed = [str(f) for f, h in recorded.items() if sha256_file(f) != h]
    assert not changed, f"source files were modified: {changed}"


PLOOPFS = REPO / ".venv" / "bin" / "ploopfs"


def run_cli(*args: str | os.PathLike[str], input: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run the installed CLI (falls back to `python -m ploopfs`)."""
    cmd = [str(PLOOPFS)] if PLOOPFS.exists() else [sys.executable, "-m", "ploopfs"]
    return subprocess.run([*cmd, *map(str, args)], input=input, capture_output=True,
                          timeout=timeout, check=False)


def cli_json(*args: str | os.PathLike[str]) -> dict:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def qemu_json_chain(files: Sequence[str | os.PathLike[str]], raw_base: bool = False) -> str:
    """A qemu `json:` filename for a parallels chain, base first (format.md, corpus README);
    with raw_base the base is a raw file."""
    spec: dict | None = None
    for i, f in enumerate(files):
        driver = "raw" if raw_base and i == 0 else "parallels"
        node: dict = {"driver": driver, "file": {"driver": "file", "filename": str(f)}}
        if spec is not None:
            node["backing"] = spec
        spec = node
    return "json:" + json.dumps(spec)


def qemu_to_raw(src: str, dst: str | os.PathLike[str], fmt: str = "parallels") -> None:
    """Independent reader: qemu-img convert to raw. `src` may be a json: chain."""
    args = ["qemu-img", "convert", "-O", "raw", src, str(dst)]
    if not src.startswith("json:"):
        args[2:2] = ["-f", fmt]
    subprocess.run(args, check=True, capture_output=True, timeout=600)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Any]:
    """Mounts for one test (tests/mounting.py): under tmp_path/m; at teardown every mount is
    gone and every process it started ended, by PID."""
    from mounting import Mounter

    root = tmp_path / "m"
    root.mkdir()
    m = Mounter(root)
    try:
        yield m
    finally:
        problems = m.cleanup()
    assert not problems, problems
