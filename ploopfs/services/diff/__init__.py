"""`ploopfs diff`: what changed between two versions of a disk (docs/diff.md).

engine.py finds the changed clusters (block maps, windows, the two workers, the scan),
sinks.py turns them into JSON ranges, a librsync delta or a ploop delta image, and command.py
opens the sides, runs the scan into the chosen sink and writes the report. The names used
elsewhere are re-exported here."""

from ploopfs.services.diff.command import (
    FORMATS,
    Sides,
    diff,
    diff_json,
    diff_ploop,
    diff_rdiff,
    in_use_images,
    open_sides,
    work_bytes,
)
from ploopfs.services.diff.engine import (
    DEFAULT_HASH,
    HASHES,
    DiffOptions,
    DiffStats,
    Runs,
    Scan,
    candidate_runs,
    scan,
)
from ploopfs.services.diff.sinks import PloopSink, RangesSink, RdiffSink

__all__ = ["DEFAULT_HASH", "FORMATS", "HASHES", "DiffOptions", "DiffStats", "PloopSink", "RangesSink",
           "RdiffSink", "Runs", "Scan", "Sides", "candidate_runs", "diff", "diff_json", "diff_ploop",
           "diff_rdiff", "in_use_images", "open_sides", "scan", "work_bytes"]
