"""Error types shared by every layer, each tied to one documented exit code (docs/cli.md).

An error names *where* the problem is (file, byte offset or XML element) and *what* is wrong, so
the CLI can print it as one line. Lower layers raise these; only the front ends turn them into
messages and exit codes.
"""

from __future__ import annotations

import os
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # 1 is left to commands whose result is a verdict (e.g. `check`: warnings found), 2 to
    # `check` alone (damaged but salvageable); no error exits 2.
    NOT_FOUND = 3  # a source, image file or snapshot that does not exist
    BAD_IMAGE = 4  # not a ploop image, or a header that cannot be read
    CORRUPT = 5  # a readable header with inconsistent metadata (BAT past EOF, into the header…)
    BAD_DESCRIPTOR = 6  # DiskDescriptor.xml malformed, unsafe, or missing required elements
    BAD_CHAIN = 7  # snapshot tree: cycles, several roots, unknown GUIDs, mixed cluster sizes
    UNSAFE_PATH = 8  # an image path outside the descriptor's folder (see --allow-outside-paths)
    UNSUPPORTED = 9  # a valid input this version cannot handle (e.g. qcow2-mode disks)
    IO = 10  # reading a source failed at the OS level
    OUTPUT = 11  # writing the output failed (exists, no space, …)
    MOUNT = 12  # the mount could not be set up
    BAD_SIGNATURE = 13  # an rdiff signature file that is malformed or truncated
    BAD_DELTA = 14  # an rdiff delta file that is malformed or truncated, or does not fit the basis
    DATA_REPLACED = 15  # recover / export --salvage done, but data was replaced or lost (report)
    USAGE = 64  # bad command line (EX_USAGE; argparse's own 2 would read as a `check` verdict)
    INTERRUPTED = 130  # Ctrl-C
    CLOSED_PIPE = 141  # stdout closed early (`| head`): quiet, as coreutils killed by SIGPIPE
    INTERNAL = 70  # a bug in ploopfs: reported in one line, details with --debug


class PloopfsError(Exception):
    """Base class: `where` is a file path (optionally with an offset or element), `what` the problem."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, what: str, where: str | os.PathLike[str] | None = None,
                 *, offset: int | None = None, element: str | None = None,
                 code: str | None = None) -> None:
        self.what = what
        self.where = os.fspath(where) if where is not None else None
        self.offset = offset
        self.element = element
        # A stable finding code (docs/check.md) where one fits, so callers that sort errors
        # ask the code, never the wording.
        self.code = code
        super().__init__(self.message())

    def message(self) -> str:
        loc = self.where or ""
        if self.offset is not None:
            loc += f" at offset {self.offset}" if loc else f"offset {self.offset}"
        if self.element is not None:
            loc += f" in <{self.element}>" if loc else f"<{self.element}>"
        return f"{loc}: {self.what}" if loc else self.what


class NotFoundError(PloopfsError):
    exit_code = ExitCode.NOT_FOUND


class BadImageError(PloopfsError):
    exit_code = ExitCode.BAD_IMAGE


class CorruptImageError(PloopfsError):
    exit_code = ExitCode.CORRUPT


class BadDescriptorError(PloopfsError):
    exit_code = ExitCode.BAD_DESCRIPTOR


class BadChainError(PloopfsError):
    exit_code = ExitCode.BAD_CHAIN


class UnsafePathError(PloopfsError):
    exit_code = ExitCode.UNSAFE_PATH


class UnsupportedError(PloopfsError):
    exit_code = ExitCode.UNSUPPORTED


class SourceIOError(PloopfsError):
    exit_code = ExitCode.IO


class OutputError(PloopfsError):
    exit_code = ExitCode.OUTPUT


class UsageError(PloopfsError):
    exit_code = ExitCode.USAGE


class MountError(PloopfsError):
    exit_code = ExitCode.MOUNT


class BadSignatureError(PloopfsError):
    exit_code = ExitCode.BAD_SIGNATURE


class BadDeltaError(PloopfsError):
    exit_code = ExitCode.BAD_DELTA
