"""Conventions every command shares (docs/cli.md): usage errors exit 64 in one line, never 2
(`check`'s "damaged but salvageable"); a closed output pipe ends quietly with 141; salvage
commands that replaced data exit 15; one meaning per short flag; one overwrite flag, --force."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import damage as dm
import pytest
from conftest import PLOOPFS, run_cli

from ploopfs import cli
from ploopfs.cli import common, space
from ploopfs.errors import ExitCode

# Positional arguments that satisfy each command's parser, so that only the bogus option is wrong.
POSITIONALS = {
    "info": ["src"], "snapshots": ["src"], "export": ["src", "out"],
    "diff": ["old", "new", "-o", "out"], "mount": ["src", "mnt"], "umount": ["mnt"],
    "check": ["src"], "recover": ["src", "outdir"], "signature": ["basis", "sig"],
    "delta": ["sig", "new", "delta"], "patch": ["basis", "delta", "out"], "du": ["src"],
    "compact": ["src", "outdir"], "restore-descriptor": ["dir"],
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cmd() -> list[str]:
    return [str(PLOOPFS)] if PLOOPFS.exists() else [sys.executable, "-m", "ploopfs"]


def test_table_covers_every_command() -> None:
    assert set(POSITIONALS) == set(_subparsers())


# -- usage errors: 64, one line ----------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(POSITIONALS))
def test_bogus_option_exits_64_in_one_line(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main([command, *POSITIONALS[command], "--bogus"])
    out, err = capsys.readouterr()
    assert rc == ExitCode.USAGE == 64, err
    assert out == ""
    [line] = err.splitlines()
    assert line == (f"ploopfs {command}: error: unrecognized arguments: --bogus "
                    f"(see 'ploopfs {command} --help')")


@pytest.mark.parametrize("args", [
    ["src", "mnt", "--bogus"],  # the mount helper form (fstab type fuse.ploopfs)
    ["mount", "src", "mnt", "-f"],  # -f is no longer --foreground
    ["signature", "basis", "sig", "-f"],  # nor --force
    ["info"],  # a missing positional
    ["info", "src", "--cluster-size", "700"],  # a bad value
    ["export", "src", "out", "-f", "vmdk"],  # a bad choice
    ["frobnicate"],
], ids=["mount-helper", "mount-f", "signature-f", "missing", "bad-value", "bad-choice", "command"])
def test_usage_errors_exit_64_in_one_line(args: list[str]) -> None:
    r = run_cli(*args)
    err = r.stderr.decode()
    assert r.returncode == ExitCode.USAGE, err
    assert r.stdout == b"" and len(err.splitlines()) == 1 and ": error: " in err, err


def test_own_usage_error_exits_64() -> None:
    r = run_cli("du", "a", "b")  # several sources only with --dedup: found after parsing
    assert r.returncode == 64
    assert r.stderr.decode().splitlines() == [
        "ploopfs: du takes one SOURCE (several only with --dedup)"]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["export", "--help"]])
def test_help_and_version_exit_0(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 0 and r.stdout and r.stderr == b""


def test_check_damaged_still_exits_2(corpus_root: Path, guard_sources, tmp_path: Path) -> None:
    src = _damaged(corpus_root, tmp_path)
    guard_sources(src)
    r = run_cli("check", src)
    assert r.returncode == 2, r.stdout.decode()
    assert b"damaged but salvageable (exit 2)" in r.stdout


def _damaged(corpus_root: Path, tmp_path: Path) -> Path:
    """A copy of v2-single with one BAT entry set to the reserved 0xffffffff (BAT_RESERVED:
    damaged but salvageable)."""
    src = tmp_path / "damaged"
    shutil.copytree(corpus_root / "v2-single", src)
    first = min(dm.bat_entries(src / "root.hdd"))
    dm.bat_entry(src / "root.hdd", first, 0xFFFFFFFF)
    return src


# -- a closed output pipe: quiet, 141 ------------------------------------------------------------
@pytest.mark.parametrize("case", ["info", "export-stream", "help"])
def test_closed_pipe_is_quiet_141(corpus_case, case: str) -> None:
    src = corpus_case("v2-single")
    args = {"info": ["info", src], "export-stream": ["export", src, "-", "--no-progress"],
            "help": ["--help"]}[case]
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write, like `| head -0`
    try:
        p = subprocess.run([*_cmd(), *map(str, args)], stdout=w, stderr=subprocess.PIPE,
                           timeout=120, check=False)
    finally:
        os.close(w)
    assert p.returncode == ExitCode.CLOSED_PIPE == 141
    assert p.stderr == b""


def test_head_1_through_the_shell(corpus_case, tmp_path: Path) -> None:
    src = corpus_case("v2-single")
    cmd = " ".join(map(str, [*_cmd(), "info", src]))
    p = subprocess.run(["bash", "-c", f"{cmd} 2>err | head -1 >/dev/null; "
                                      "echo ${PIPESTATUS[0]}; cat err"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    code, *err = p.stdout.splitlines()
    assert code in ("0", "141") and err == [], p.stdout  # 0 when all fit before head left


# -- salvage: 15 when data was replaced ---------------------------------------------------------
def test_export_salvage_damaged_exits_15_clean_0(corpus_case, corpus_root: Path, guard_sources,
                                                 tmp_path: Path) -> None:
    clean = corpus_case("v2-single")
    r = run_cli("export", clean, tmp_path / "clean.raw", "--salvage", "--no-progress")
    assert r.returncode == 0, r.stderr.decode()
    src = _damaged(corpus_root, tmp_path)
    guard_sources(src)
    r = run_cli("export", src, tmp_path / "d.raw", "--salvage", "--no-progress")
    assert r.returncode == ExitCode.DATA_REPLACED == 15, r.stderr.decode()
    r = run_cli("export", src, "-", "--salvage=older", "--no-progress")
    assert r.returncode == 15 and len(r.stdout) == (tmp_path / "d.raw").stat().st_size


def test_recover_damaged_exits_15_clean_0(corpus_case, corpus_root: Path, guard_sources,
                                          tmp_path: Path) -> None:
    clean = corpus_case("v2-single")
    r = run_cli("recover", clean, tmp_path / "r0", "--no-progress")
    assert r.returncode == 0, r.stderr.decode()
    src = _damaged(corpus_root, tmp_path)
    guard_sources(src)
    for extra in ([], ["--flatten"]):
        r = run_cli("recover", src, tmp_path / f"r1{len(extra)}", "--no-progress", *extra)
        assert r.returncode == ExitCode.DATA_REPLACED, r.stderr.decode()


# -- flags -----------------------------------------------------------------------------------------
def test_one_meaning_per_short_flag() -> None:
    meaning: dict[str, set[str]] = {}
    for name, sp in _subparsers().items():
        for a in sp._actions:
            for o in a.option_strings:
                if not o.startswith("--") and not (name == "mount" and o == "-o"):
                    meaning.setdefault(o, set()).add(a.dest)
    # mount's -o is mount(8)'s options flag (mount.fuse3 passes it); elsewhere -o is --output
    assert {o: m for o, m in meaning.items() if len(m) > 1} == {}
    assert meaning["-f"] == {"format"} and meaning["-F"] == {"foreground"}


def test_short_flags_parse() -> None:
    p = cli.build_parser()
    assert p.parse_args(["export", "s", "o", "-f", "ploop"]).format == "ploop"
    assert p.parse_args(["diff", "a", "b", "-o", "x", "-f", "json"]).format == "json"
    a = p.parse_args(["mount", "s", "m", "-F"])
    assert a.foreground is True
    assert p.parse_args(["mount", "s", "m", "--foreground"]).foreground is True


def test_force_is_long_only_and_on_every_file_writer() -> None:
    subs = _subparsers()
    for name, sp in subs.items():
        for a in sp._actions:
            if "--force" in a.option_strings:
                assert a.option_strings == ["--force"], name
    have = {name for name, sp in subs.items()
            if any("--force" in a.option_strings for a in sp._actions)}
    assert have == {"export", "diff", "signature", "delta", "patch"}


def test_one_parse_size_and_source_options() -> None:
    assert cli.parse_size is common.parse_size is space.parse_size
    assert cli.cluster_size_arg is common.cluster_size_arg
    for name, sp in _subparsers().items():
        for a in sp._actions:
            if "--cluster-size" in a.option_strings:
                assert a.type is common.cluster_size_arg, name


def test_export_force_replaces_only_own_output(corpus_case, tmp_path: Path) -> None:
    src = corpus_case("v2-single")
    out = tmp_path / "x.raw"
    assert run_cli("export", src, out, "--no-progress").returncode == 0
    r = run_cli("export", src, out, "--no-progress")
    assert r.returncode == ExitCode.OUTPUT and b"--force" in r.stderr
    r = run_cli("export", src, out, "--no-progress", "--force")
    assert r.returncode == 0, r.stderr.decode()
    foreign = tmp_path / "foreign.raw"
    foreign.write_bytes(b"not ours")
    r = run_cli("export", src, foreign, "--no-progress", "--force")
    assert r.returncode == ExitCode.OUTPUT and b"not an earlier ploopfs output" in r.stderr
    assert foreign.read_bytes() == b"not ours"
    r = run_cli("export", src, tmp_path / "dir", "-f", "ploop", "--force")
    assert r.returncode == ExitCode.USAGE and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["rdiff", "json"])
def test_diff_force(corpus_case, tmp_path: Path, fmt: str) -> None:
    src = corpus_case("v1-chain2")
    out = tmp_path / f"d.{fmt}"
    args = ["diff", src, src, "-o", out, "-f", fmt, "--no-progress"]
    assert run_cli(*args).returncode == 0
    r = run_cli(*args)
    assert r.returncode == ExitCode.OUTPUT and b"--force" in r.stderr, r.stderr
    first = out.stat()
    r = run_cli(*args, "--force")
    assert r.returncode == 0, r.stderr.decode()
    assert out.stat().st_ino == first.st_ino and out.stat().st_mtime_ns > first.st_mtime_ns
    manifest = out if fmt == "json" else Path(str(out) + ".json")
    assert json.loads(manifest.read_bytes())["stats"]["changed_clusters"] == 0
