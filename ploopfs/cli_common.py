"""What every command line module shares (cli.py, cli_rdiff.py, cli_space.py, cli_restore.py,
cli_dedup.py): the one size parser and the options several commands take, each defined once so
a flag means the same everywhere (docs/cli.md). Imports nothing of the other cli modules, so
each of them can import it at the top."""

from __future__ import annotations

import argparse
import re

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)


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
