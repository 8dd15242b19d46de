"""`ploopfs du --dedup DISK...` (issue #6): block-level deduplication and compression estimate
across disks. Engine: ploopfs/services/dedup.py."""

from __future__ import annotations

import argparse

from ploopfs.errors import UnsupportedError


def add_dedup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dedup", action="store_true",
                   help="estimate deduplication and compression savings across the SOURCEs")


def run_dedup(args: argparse.Namespace) -> int:
    raise UnsupportedError("du --dedup is not implemented yet")
