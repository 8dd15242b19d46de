"""Coverage-guided fuzzing with atheris (issue #5, docs/fuzzing.md), on a bounded budget.

Each target in tools/fuzz/ runs in a subprocess from seeds made of real inputs (qemu-img images,
the sample corpus, rdiff signatures and deltas, tools/fuzz/seeds.py) for at most FUZZ_RUNS
inputs or FUZZ_SECONDS. The oracle (tools/fuzz/common.py): ploopfs returns or raises a
PloopfsError subclass; any other exception, a hang (-timeout), a memory blow-up (-rss_limit_mb,
address-space cap) or a read far beyond the file is a crash, and libFuzzer exits non-zero with
the input saved. Reproducers of past findings live in tests/fuzz_regressions/<target>/ and are
replayed one by one. Longer campaigns: `tools/fuzz/run TARGET SECONDS`.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CORPUS_ARCHIVE, REPO, sha256_file

FUZZ = REPO / "tools" / "fuzz"
PY = REPO / ".venv" / "bin" / "python"
# Inputs per target: the pure parsers run thousands per second, the file-backed targets a few
# hundred; FUZZ_SECONDS caps each either way. PLOOPFS_FUZZ_RUNS overrides them all.
RUNS = {"header": 50000, "descriptor": 20000, "rdiff_sig": 20000, "rdiff_delta": 50000,
        "image": 3000, "check": 3000, "read": 3000, "fs": 1000, "files": 2000, "overlay": 3000}
TARGETS = list(RUNS)
FUZZ_RUNS = os.environ.get("PLOOPFS_FUZZ_RUNS")
FUZZ_SECONDS = int(os.environ.get("PLOOPFS_FUZZ_SECONDS", "10"))
FUZZ_SEED = int(os.environ.get("PLOOPFS_FUZZ_SEED", "1"))  # fixed: the same inputs every run
REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz_regressions"
DICT = {t: FUZZ / "descriptor.dict" for t in ("descriptor", "check", "read")}

pytest.importorskip("atheris")


def fuzz(target: str, *args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(PY), str(FUZZ / f"fuzz_{target}.py"), *map(str, args), "-timeout=10",
           "-rss_limit_mb=2048", f"-artifact_prefix={cwd}/"]
    if target in DICT:
        cmd.append(f"-dict={DICT[target]}")
    # atheris prints the Python traceback on stdout, libFuzzer its report on stderr: one stream.
    return run_target(cmd, cwd)


def run_target(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The target's files go to a folder of this run, removed after it (the target's own
    clean-up does not run when libFuzzer ends the process)."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    base = tempfile.mkdtemp(prefix="ploopfs-fuzz-run-", dir=shm)
    try:
        return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300,
                              env={**os.environ, "PLOOPFS_FUZZ_WORKBASE": base})
    finally:
        shutil.rmtree(base, ignore_errors=True)


def report(proc: subprocess.CompletedProcess, cwd: Path) -> str:
    crashes = sorted(p.name for p in cwd.iterdir() if re.match(r"(crash|timeout|oom|leak)-", p.name))
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    return f"exit {proc.returncode}; saved inputs {crashes} in {cwd}\n{tail}"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed corpora of every target, made once from real inputs; the corpus archive they are made
    from is left unchanged."""
    before = sha256_file(CORPUS_ARCHIVE)
    out = tmp_path_factory.mktemp("fuzz-seeds")
    subprocess.run([str(PY), str(FUZZ / "seeds.py"), str(out)], check=True, timeout=300)
    assert sha256_file(CORPUS_ARCHIVE) == before
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target: str, seeds: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(seeds / target, corpus)
    n_seeds = len(list(corpus.iterdir()))
    assert n_seeds > 0, f"no seeds for {target}"
    runs = int(FUZZ_RUNS or RUNS[target])
    proc = fuzz(target, corpus, f"-runs={runs}", f"-max_total_time={FUZZ_SECONDS}",
                f"-seed={FUZZ_SEED}", cwd=tmp_path)
    assert proc.returncode == 0, report(proc, tmp_path)
    done = re.search(r"Done (\d+) runs", proc.stdout)
    assert done and int(done.group(1)) >= min(runs, n_seeds), report(proc, tmp_path)


def regression_inputs() -> list[tuple[str, Path]]:
    if not REGRESSIONS.is_dir():
        return []
    return [(t.name, p) for t in sorted(REGRESSIONS.iterdir()) if t.is_dir()
            for p in sorted(t.iterdir()) if p.is_file()]


KNOWN_OPEN: dict[str, str] = {
    # reproducer name -> why it still fails (xfail until the fix lands); none open now
}


@pytest.mark.parametrize(("target", "path"), regression_inputs(),
                         ids=[f"{t}/{p.name}" for t, p in regression_inputs()])
def test_fuzz_regression(target: str, path: Path, tmp_path: Path) -> None:
    """Replay one saved input: libFuzzer given a file (not a folder) runs just that input."""
    if path.name in KNOWN_OPEN:
        pytest.xfail(KNOWN_OPEN[path.name])
    proc = fuzz(target, path, cwd=tmp_path)
    assert proc.returncode == 0, report(proc, tmp_path)
    assert "Executed" in proc.stdout, proc.stdout[-2000:]


def test_oracle_catches_a_crash(tmp_path: Path) -> None:
    """The harness is not vacuous: an input that makes the read guard trip is reported as a
    crash (a throwaway target that preads as many MiB as its first bytes say)."""
    target = tmp_path / "fuzz_probe.py"
    target.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(FUZZ)!r})\n"
        "import common\n"
        "PATH = os.path.join(common.workdir(), 'f')\n"
        "def one(data):\n"
        "    common.write(PATH, data)\n"
        "    fd = os.open(PATH, os.O_RDONLY)\n"
        "    try:\n"
        "        os.pread(fd, int.from_bytes(data[:4].ljust(4, b'\\0'), 'little') << 20, 0)\n"
        "    finally:\n"
        "        os.close(fd)\n"
        "common.main(one)\n")
    probe = tmp_path / "input"
    probe.write_bytes((128).to_bytes(4, "little"))  # asks for 128 MiB of a 4-byte file
    proc = run_target([str(PY), str(target), str(probe), f"-artifact_prefix={tmp_path}/"],
                      tmp_path)
    assert proc.returncode != 0
    assert "Finding: pread of 134217728 bytes at 0 from a file of 4 bytes" in proc.stdout


def unpack_folder(path: Path, dest: Path) -> Path:
    """A container input (tools/fuzz/common.py pack: [u16le length][bytes]…) as a folder."""
    data, parts, pos = path.read_bytes(), [], 0
    while pos + 2 <= len(data):
        n = int.from_bytes(data[pos:pos + 2], "little")
        parts.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    dest.mkdir()
    (dest / "DiskDescriptor.xml").write_bytes(parts[0])
    for i, p in enumerate(parts[1:]):
        (dest / f"f{i}").write_bytes(p)
    return dest


def _limit_as() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_salvage_infer_reads_are_bounded_by_the_file(tmp_path: Path,
                                                     guard_sources: Callable[..., None]) -> None:
    """An 8 KiB image with a damaged signature under a descriptor claiming 4 GiB clusters
    (<Blocksize> 8388608): `export --salvage` infers the header and must finish, also when the
    process may not map gigabytes (1 GiB address space here; vm.overcommit_memory=2 hosts
    behave alike), not fail with an internal MemoryError (70). The cluster sizes disagree
    (format.md §4.2): strictly that is BAD_CHAIN (7); --salvage reads with the image's own
    cluster size and says so in a warning (the lenient reader's policy)."""
    src = unpack_folder(REGRESSIONS / "read" / "infer-huge-blocksize", tmp_path / "disk")
    guard_sources(*src.iterdir())
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ploopfs"), "export", "--salvage=zeros",
                           str(src), str(tmp_path / "out.raw")], capture_output=True, text=True,
                          preexec_fn=_limit_as, timeout=120)
    assert proc.returncode in (0, 15), proc.stderr
    assert "<Blocksize> 8388608" in proc.stderr
    strict = subprocess.run([str(REPO / ".venv" / "bin" / "ploopfs"), "export", str(src),
                             str(tmp_path / "strict.raw")], capture_output=True, text=True,
                            preexec_fn=_limit_as, timeout=120)
    assert strict.returncode in (4, 7), strict.stderr
