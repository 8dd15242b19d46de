"""What every command module of ploopfs/cli/ shares: the parser class that turns usage errors
into exit 64, the one size parser, the options several commands take, each defined once so a
flag means the same everywhere (docs/cli.md), and the output helpers (JSON, warnings, the
progress bar, sizes as text). Imports no other module of the package, so each of them can
import it at the top."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

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


def add_source_args(p: argparse.ArgumentParser, snapshot: bool = True) -> None:
    """SOURCE, -s/--snapshot (unless `snapshot` is false) and the options to open it."""
    p.add_argument("source", metavar="SOURCE",
                   help="DiskDescriptor.xml, the folder holding it, a ploop image file, or a raw "
                        "file (with --cluster-size)")
    if snapshot:
        p.add_argument("-s", "--snapshot", metavar="GUID",
                       help="snapshot to read (default: the top); braces and case do not matter")
    add_open_options(p)


def add_open_options(p: argparse.ArgumentParser) -> None:
    """--cluster-size and --allow-outside-paths with their usual help: how open_disk opens."""
    add_cluster_size(p)
    add_allow_outside_paths(p)


def add_salvage(p: argparse.ArgumentParser) -> None:
    """--salvage[=zeros|older] of the readers (export, mount); recover has its own default."""
    p.add_argument("--salvage", nargs="?", const="zeros", choices=("zeros", "older"),
                   metavar="zeros|older",
                   help="do not fail on damaged clusters: serve them as zeros (the default of a "
                        "bare --salvage) or from the next lower delta (older), and record them "
                        "(docs/salvage.md)")


def open_disk(args: argparse.Namespace, source: str | None = None):
    """open_source of `source` (default: args.source) with the command's --cluster-size,
    --allow-outside-paths and, when it has one, --salvage."""
    from ploopfs.volume.source import OpenOptions, open_source

    return open_source(args.source if source is None else source,
                       OpenOptions(cluster_size=args.cluster_size,
                                   allow_outside_paths=args.allow_outside_paths,
                                   salvage=getattr(args, "salvage", None)))


def print_json(obj: Any, file: Any = None) -> None:
    """`obj` as indented JSON on stdout (or `file`), one newline after it."""
    import json

    out = sys.stdout if file is None else file
    json.dump(obj, out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def size_str(n: float) -> str:
    """A byte count as text in binary units: `512 B`, `1.5 MiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def warn(lines: Iterable[str]) -> None:
    for w in lines:
        print(f"ploopfs: warning: {w}", file=sys.stderr)


@contextmanager
def progress_bar(total: int | Callable[[], int], label: str,
                 enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on a terminal (stderr), nothing otherwise. `total` may be a function,
    called only when a bar is shown (diff's walks both block maps for it)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    if callable(total):
        total = total()
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=__import__("rich.console").console.Console(stderr=True),
                  transient=True) as prog:
        task = prog.add_task(label, total=total)
        yield lambda done: prog.update(task, completed=done)


def data_replaced(salvage: dict[str, Any] | None) -> bool:
    """Whether a salvage summary or recovery report has data that is not what the source held:
    ranges served as zeros or older data, or dropped (unreadable) levels. `shadowed` ranges
    (a valid higher level covers them) and a clean salvage read count as nothing replaced."""
    return bool(salvage and (salvage.get("substituted_ranges") or salvage.get("dropped_levels")))


def usage_exit_code(code: object) -> int:
    """The exit code for a SystemExit out of argparse: --help/--version 0, a usage error 64
    (also when some parser still exits with argparse's own 2)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(ExitCode.USAGE) if code == 2 else code
    print(code, file=sys.stderr)
    return int(ExitCode.USAGE)
