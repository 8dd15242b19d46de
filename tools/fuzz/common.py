"""Shared harness of the atheris fuzz targets (docs/fuzzing.md).

The oracle of every target: for any input, ploopfs either returns or raises a
`ploopfs.errors.PloopfsError` subclass (a documented error with its own exit code). Anything
else is a finding: another exception (the target lets it escape, atheris writes the input to
`-artifact_prefix` and exits non-zero), a hang (libFuzzer's `-timeout=`), a memory blow-up
(`-rss_limit_mb=`, plus an address-space limit so that one huge allocation fails at once instead
of being overcommitted), or a read far larger than the file it reads from (`guard_reads`).

Files a target writes live in one private folder per process under /dev/shm (tmpfs) when it
exists, so an iteration costs no disk I/O; inputs are capped at `MAX_LEN` bytes.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import resource
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable

import atheris

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy is imported by a target

MAX_LEN = 64 * 1024  # fuzz inputs, and so every file a target writes, stay below this
ADDRESS_SPACE_EXTRA = 1 << 30  # bytes of address space a target may grow by after startup
# A pread may ask for this much more than the file holds: one cluster of the largest size ploop
# writes (64 MiB), since a reader may ask for a cluster before it knows the file is short.
# Anything more, sized from a header or descriptor field, is a finding.
READ_SLACK = 64 << 20
MAX_FILES = 4  # image files in a fuzzed folder (container format, `unpack`)


class Finding(AssertionError):
    """An oracle violation other than an exception ploopfs raised by itself."""


def workdir() -> str:
    """This process's folder, under $PLOOPFS_FUZZ_WORKBASE when set (the test suite's, which
    it removes after the run: libFuzzer ends the process with exit(), so atexit handlers do
    not run at the end of a run, only when the target is used without libFuzzer's loop)."""
    base = os.environ.get("PLOOPFS_FUZZ_WORKBASE") or (
        "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
    d = tempfile.mkdtemp(prefix="ploopfs-fuzz-", dir=base)
    atexit.register(shutil.rmtree, d, True)
    return d


def clear(folder: str) -> None:
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


# -- container: a descriptor and up to MAX_FILES image files in one input ----------------------
def pack(parts: list[bytes]) -> bytes:
    """[u16le length][bytes] per part: descriptor first, then files f0, f1, … (seeds.py)."""
    return b"".join(struct.pack("<H", len(p)) + p for p in parts)


def unpack(data: bytes) -> list[bytes]:
    """Inverse of pack, lenient: a short last part takes what is left; at most 1 + MAX_FILES."""
    parts: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(parts) < 1 + MAX_FILES:
        (n,) = struct.unpack_from("<H", data, pos)
        parts.append(data[pos + 2: pos + 2 + n])
        pos += 2 + n
    return parts


def write_folder(folder: str, data: bytes) -> int:
    """Unpack a container input into `folder` (cleared first) as DiskDescriptor.xml + f0…;
    returns the number of image files written."""
    clear(folder)
    parts = unpack(data)
    if not parts:
        return 0
    write(os.path.join(folder, "DiskDescriptor.xml"), parts[0])
    for i, p in enumerate(parts[1:]):
        write(os.path.join(folder, f"f{i}"), p)
    return len(parts) - 1


def basis_bytes() -> bytes:
    """The fixed basis file of the rdiff targets (seeds.py makes its deltas against it): 8 KiB
    of pseudo-random bytes with a zero run in the middle."""
    out = b"".join(hashlib.sha256(b"ploopfs-fuzz-%d" % i).digest() for i in range(256))
    return out[:3072] + bytes(1024) + out[4096:]


# -- resource guards ----------------------------------------------------------------------------
def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def limit_memory() -> None:
    """Cap the address space at its size after imports + ADDRESS_SPACE_EXTRA: a request for
    gigabytes (say a buffer sized from a header field) fails with MemoryError, a finding, even
    where Linux would overcommit it and RSS would never show it."""
    cap = _vm_size() + ADDRESS_SPACE_EXTRA
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def guard_reads() -> None:
    """Make os.pread refuse a length beyond the file's size + READ_SLACK: on inputs of a few
    KiB, a read sized from a header field instead of the file is a finding (the bytes object is
    allocated before the kernel returns a short read)."""
    real = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        st = os.fstat(fd)
        if length > st.st_size + READ_SLACK and st.st_size < (1 << 30):
            raise Finding(f"pread of {length} bytes at {offset} from a file of {st.st_size} bytes")
        return real(fd, length, offset)

    os.pread = pread


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Set the guards up and hand over to libFuzzer (argv: corpus folders and -flags)."""
    guard_reads()
    limit_memory()
    argv = list(sys.argv)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.append(f"-max_len={MAX_LEN}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


# -- the overlay target's source (fuzz_overlay.py, and seeds.py makes its deltas against it) ----
OVERLAY_SIZE = 4 << 20  # 4 MiB of 4 KiB clusters: header + BAT of a delta take 8 KiB of MAX_LEN
OVERLAY_CLUSTER = 4096
OVERLAY_STORED = (0, 1, 2, 9, 255, 256, 700, 1023)  # clusters the source image holds


def overlay_source(folder: str, version: int = 2) -> str:
    """Make the fixed source of the overlay target in `folder` (new): DiskDescriptor.xml over
    one ploop image root.hdd holding OVERLAY_STORED, each cluster a pseudo-random pattern.
    ploopfs is imported here, not at the top: a target instruments it after importing this."""
    from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

    os.makedirs(folder)
    with ImageWriter.create(os.path.join(folder, "root.hdd"), OVERLAY_SIZE, OVERLAY_CLUSTER,
                            version=version) as w:
        for v in OVERLAY_STORED:
            block = b"".join(hashlib.sha256(b"ploopfs-overlay-%d-%d" % (v, i)).digest()
                             for i in range(OVERLAY_CLUSTER // 32))
            w.write_cluster(v, block)
    write_descriptor(os.path.join(folder, "DiskDescriptor.xml"),
                     chain_descriptor(["root.hdd"], OVERLAY_SIZE, OVERLAY_CLUSTER))
    return folder
