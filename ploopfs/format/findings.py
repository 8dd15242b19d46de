"""What the lenient decoders report besides values: anomalies with a stable code and a severity.

The format layer decodes leniently and says what is wrong; the layers above apply a policy:
a strict open raises the first anomaly at or above DAMAGED, salvage reads on and records, and
`check` reports them all (docs/check.md lists the codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    INFO = 0
    WARNING = 1
    DAMAGED = 2  # readable with --salvage
    FATAL = 3  # not readable as a disk at all


@dataclass(frozen=True)
class Anomaly:
    code: str
    severity: Severity
    message: str
    file: str | None = None
    offset: int | None = None  # byte offset in `file`
    element: str | None = None  # DiskDescriptor.xml element


def worst(anomalies: list[Anomaly], at_least: Severity = Severity.DAMAGED) -> Anomaly | None:
    """The first anomaly at or above `at_least`: what a strict reader refuses."""
    return next((a for a in anomalies if a.severity >= at_least), None)
