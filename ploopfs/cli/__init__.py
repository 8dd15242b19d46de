"""Command line front end: argument parsing and presentation; everything else is in the
services and volume layers. One module per command (or group of commands) in this package,
each with register(sub) adding its sub-parsers and cmd_* functions that call one service and
print; common.py holds what they share. Here: the parser, the mount-helper form, and the one
place where errors become one line on stderr and a documented exit code (docs/cli.md)."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

from ploopfs import __version__
from ploopfs.cli.common import Parser, cluster_size_arg, parse_size, progress_bar, usage_exit_code
from ploopfs.errors import ExitCode, PloopfsError, SourceIOError

__all__ = ["build_parser", "cluster_size_arg", "main", "parse_size", "progress_bar", "run"]

# The command modules of this package, in the order `ploopfs --help` lists their commands. A
# new command is one module with register(sub) and one line here. Each is imported only when
# the parser is built and imports only ploopfs.cli.common at its top (services inside its
# cmd_* functions), so that `--help` and every command's start stay fast.
COMMANDS = (
    "info",  # info, snapshots
    "export",
    "diff",
    "mount",  # mount, umount
    "check",
    "recover",
    "rdiff",  # signature, delta, patch (the rdiff drop-in)
    "space",  # du (with --dedup), compact
    "restore",  # restore-descriptor
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ploopfs",
        description="Read OpenVZ/Virtuozzo ploop disks (DiskDescriptor.xml + images) without the "
                    "OpenVZ kernel. Sources are only ever opened read-only.",
        epilog="Exit codes are listed in docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"ploopfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._subparsers._group_actions  # type: ignore[union-attr]
            for name in getattr(action, "choices", None) or ()}


def _mount_helper_form(argv: list[str], commands: set[str]) -> list[str]:
    """mount.fuse3 runs `ploopfs SOURCE MOUNTPOINT -o OPTIONS` (fstab type fuse.ploopfs)."""
    if len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-"):
        return ["mount", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = _mount_helper_form(list(sys.argv[1:] if argv is None else argv), _commands(parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors 64 (Parser.error)
        try:
            sys.stdout.flush()  # `ploopfs --help | head -1`
        except BrokenPipeError:
            return _closed_pipe()
        return usage_exit_code(e.code)
    except BrokenPipeError:
        return _closed_pipe()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met below and not at exit
        return rc
    except PloopfsError as e:
        print(f"ploopfs: {e.message()}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("ploopfs: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as e:
        err = SourceIOError(e.strerror or str(e), e.filename)
        print(f"ploopfs: {err.message()}", file=sys.stderr)
        return int(err.exit_code)
    except Exception as e:  # a bug: one line, details on request
        if args.debug:
            raise
        print(f"ploopfs: internal error: {type(e).__name__}: {e} (run with --debug for details)",
              file=sys.stderr)
        return ExitCode.INTERNAL


def _closed_pipe() -> int:
    """stdout was closed early (`ploopfs info disk | head -1`): end quietly, as coreutils do when
    SIGPIPE kills them (the shell shows 141). What is still buffered for stdout goes to
    /dev/null, so the interpreter's flush at exit finds no broken pipe to complain about."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no usable stdout at all: nothing left to flush into it
        sys.stdout = None  # type: ignore[assignment]
    return ExitCode.CLOSED_PIPE


def run() -> None:
    """The console script (and `python -m ploopfs`): main(), then exit without the
    interpreter's final full garbage collection. gc.freeze() puts every object left out of the
    collector's sight; the process ends anyway, and that last pass walked every object of numpy
    and the modules loaded: 15-25 ms of each short command (perf of `ploopfs diff`).

    The collector's first generation runs every 50000 allocations instead of 700: importing
    numpy and the services allocates some 10^5 objects, hardly any of them garbage, and the
    51 collections that set off took 10 ms of each `ploopfs diff` (gc.callbacks; 0 with this).
    A long-running mount still collects, every 50000 allocations."""
    gc.set_threshold(50_000)
    rc = main()
    gc.freeze()
    sys.exit(rc)

