"""What every command line module shares (cli.py, cli_rdiff.py, cli_space.py, cli_restore.py,
cli_dedup.py): the parser class that turns usage errors into exit 64, the one size parser, and
the options several commands take, each defined once so a flag means the same everywhere
(docs/cli.md). Imports nothing of the other cli modules, so each of them can import it at the
top."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from ploopfs.errors import ExitCode

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad command line, which is also `check`'s "damaged but salvageable"
    verdict: here usage errors exit 64 (EX_USAGE), in one line like every other error. Sub-
    parsers are made with the class of their parent, so every command gets this."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """As argparse's, but an unknown option is reported by the command it was given to
        (`ploopfs info: error: unrecognized arguments: --bogus`), not by `ploopfs`."""
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self._command_parser(ns).error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def _command_parser(self, ns: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(ns, action.dest, None) or "")
                if isinstance(chosen, argparse.ArgumentParser):
                    return chosen
        return self


def parse_size(text: str) -> int:
    """`512`, `64K`, `1M`, `1MiB` → bytes (binary units)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512, 64K, 1M)")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def cluster_size_arg(text: str) -> int:
    n = parse_size(text)
    if n <= 0 or n % 512:
        raise argparse.ArgumentTypeError(f"cluster size {text!r} must be a positive multiple of 512")
    return n


def add_cluster_size(p: argparse.ArgumentParser,
                     help: str = "cluster size for a raw file source (e.g. 1M)") -> None:
    p.add_argument("--cluster-size", type=cluster_size_arg, metavar="SIZE", help=help)


def add_allow_outside_paths(
        p: argparse.ArgumentParser,
        help: str = "let <File> paths of the descriptor lead outside its folder") -> None:
    p.add_argument("--allow-outside-paths", action="store_true", help=help)


def add_force(p: argparse.ArgumentParser, what: str = "the output file") -> None:
    """The one overwrite flag, long only (-f is --format). fileio.create still replaces only an
    earlier ploopfs output, never a source or another file."""
    p.add_argument("--force", action="store_true",
                   help=f"replace {what} if it is an earlier ploopfs output (never anything else)")


def usage_exit_code(code: object) -> int:
    """The exit code for a SystemExit out of argparse: --help/--version 0, a usage error 64
    (also when some parser still exits with argparse's own 2)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(ExitCode.USAGE) if code == 2 else code
    print(code, file=sys.stderr)
    return int(ExitCode.USAGE)
