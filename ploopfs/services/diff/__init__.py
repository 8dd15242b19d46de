"""`ploopfs diff`: what changed between two versions of a disk (docs/diff.md).

engine.py compares the two sides; the names used elsewhere are re-exported here."""

from ploopfs.services.diff.engine import (
    DEFAULT_HASH,
    FORMATS,
    HASHES,
    DiffOptions,
    DiffStats,
    PloopSink,
    RangesSink,
    RdiffSink,
    Runs,
    Sides,
    candidate_runs,
    diff,
    in_use_images,
    open_sides,
    scan,
    work_bytes,
)

__all__ = ["DEFAULT_HASH", "FORMATS", "HASHES", "DiffOptions", "DiffStats", "PloopSink", "RangesSink",
           "RdiffSink", "Runs", "Sides", "candidate_runs", "diff", "in_use_images", "open_sides", "scan",
           "work_bytes"]
