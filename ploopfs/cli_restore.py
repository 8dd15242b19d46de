"""`ploopfs restore-descriptor` (issue #5): rebuild a lost DiskDescriptor.xml from the image
files alone, kept apart from cli.py so that file only gains one call."""

from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    """Not built yet: registers nothing."""
