"""`ploopfs recover`: a clean, self-consistent ploop disk from a damaged one, plus an account
of what was lost (docs/salvage.md). Never writes to the source.

This version flattens the chosen snapshot, read with a salvage policy, into one v2 image and a
DiskDescriptor.xml (export_ploop), and writes recovery.json listing every damaged range and what
was served in its place. The snapshot structure is not kept.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ploopfs.errors import OutputError
from ploopfs.services.export import Progress, export_ploop
from ploopfs.volume.source import Disk

REPORT_NAME = "recovery.json"


def recover(disk: Disk, outdir: str, snapshot: str | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """`disk` must be opened with OpenOptions.salvage set. Returns the recovery.json object."""
    if disk.salvage_log is None:
        raise ValueError("recover needs a disk opened with a salvage policy")
    report = export_ploop(disk, outdir, snapshot, progress)
    out: dict[str, Any] = {
        "source": disk.source,
        "snapshot": report.snapshot,
        "output": outdir,
        "descriptor": os.path.join(outdir, "DiskDescriptor.xml"),
        "size_bytes": report.size_bytes,
        "data_bytes_written": report.data_bytes_written,
        "snapshots_kept": False,  # flattened: one image holding the chosen snapshot
        "warnings": list(disk.warnings),
        **(report.salvage or {}),
    }
    path = os.path.join(outdir, REPORT_NAME)
    try:
        with open(path, "x") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror}", path) from None
    return out
