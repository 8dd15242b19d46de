#!/usr/bin/env python3
"""Build the demo's sample ploop disk: a 64 MiB GPT + ext4 disk with two snapshots.

Run with the project's venv: `.venv/bin/python tools/make_sample.py [WORKDIR]` (tools/demo does).

How it is made, without mounting anything and without the OpenVZ tools:

1. Three *versions* of the whole virtual disk are built as plain raw files
   (versions/v0.raw, v1.raw, v2.raw). The layout is what `ploop init` makes (format.md
   format.md §8.1): a GPT made by `sgdisk -n 1:START:END` with START = one cluster (LBA 2048) and the last
   cluster left for the backup GPT, and an ext4 filesystem in partition 1. The filesystem is
   made by `mkfs.ext4 -d DIR` and then changed between versions with `debugfs -w` (so, as in
   real life, most clusters stay the same from one version to the next).
2. The versions become a ploop chain (format.md §4.3): the base image root.hds holds every non-zero
   cluster of v0; each later delta holds the clusters that differ from the previous version
   (a cluster that became all-zero is written as zeros: ploop has no zero marker, format.md §11 trap 24).
   Snapshot GUIDs and delta file names follow ploop's conventions: the top carries the magic
   top GUID {5fbaabe3-…} (format.md §5.4); deltas are named root.hds.{file GUID}, a GUID unrelated to
   the snapshot's (format.md §4.3, §5.9).
3. manifest.json records the snapshots (GUID, version, SHA-256 of the raw version, a file that
   only that version has), so tools/demo can check that ploopfs reads back every version
   exactly.

Re-running rebuilds WORKDIR from scratch. WORKDIR is deleted first only if it is empty or was
made by this script (it holds the marker file .ploopfs-demo-sample).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from ploopfs.format.header import SECTOR, TOP_GUID
from ploopfs.native import is_zero
from ploopfs.volume.writer import ImageWriter, chain_descriptor, write_descriptor

MIB = 1 << 20
DISK_SIZE = 64 * MIB
CLUSTER = 1 * MIB  # ploop's default cluster size (<Blocksize>2048</Blocksize>)
MARKER = ".ploopfs-demo-sample"
LABEL = "ploopfs-demo"

# Fixed identifiers keep the GUIDs the same in every run and in docs/usage.md (ploop itself uses
# random ones). The image bytes still differ between runs (ext4 copies the source files' ctimes).
_NS = uuid.UUID("6c1b2d4e-8f1a-4c55-9a3e-0d2f6b7c8e91")


def fixed_uuid(name: str) -> str:
    return str(uuid.uuid5(_NS, name))


# e2fsprogs honour E2FSPROGS_FAKE_TIME for the timestamps they write (2023-11-14).
FAKE_TIME = 1700000000
FAKE_TIME_ENV = {**os.environ, "E2FSPROGS_FAKE_TIME": str(FAKE_TIME)}


def fixed_guid(name: str) -> str:
    return "{" + fixed_uuid(name) + "}"


# -- the three versions of the filesystem ----------------------------------------------------
@dataclass(frozen=True)
class Version:
    name: str  # v0, v1, v2
    description: str
    only_file: str  # a file that exists in this version and in no other
    debugfs: tuple[str, ...] = ()  # commands applied to the previous version (files in FILES)


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


FILES: dict[str, bytes] = {
    "readme-v1": b"ploopfs demo disk, version 1\n",
    "report-2024": b"".join(b"2024 line %04d: all systems nominal\n" % i for i in range(200)),
    "hostname-v2": b"demo-v2\n",
    "app-log": b"".join(b"2025-01-%02d app started\n" % (i % 28 + 1) for i in range(3000)),
    "photo-2": _blob(2, 1 * MIB + 12345),
}

VERSIONS = (
    Version("v0", "the base: as first installed", "/data/report-2023.txt"),
    Version("v1", "snapshot after a year: 2023 report deleted, 2024 report added", "/data/report-2024.txt",
            ("rm /README.txt", "write {readme-v1} /README.txt",
             "rm /data/report-2023.txt", "write {report-2024} /data/report-2024.txt")),
    Version("v2", "the current top: logs and a second photo", "/logs/app.log",
            ("rm /etc/hostname", "write {hostname-v2} /etc/hostname",
             "rm /data/report-2024.txt", "mkdir /logs", "write {app-log} /logs/app.log",
             "write {photo-2} /data/photo-2.bin")),
)


def populate_v0(root: Path) -> None:
    """The files of v0, given to `mkfs.ext4 -d`."""
    (root / "data").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "README.txt").write_bytes(b"ploopfs demo disk, version 0\n")
    (root / "etc" / "hostname").write_bytes(b"demo-v0\n")
    (root / "data" / "report-2023.txt").write_bytes(
        b"".join(b"2023 line %04d: quarterly figures\n" % i for i in range(200)))
    (root / "data" / "photo.bin").write_bytes(_blob(1, 3 * MIB + 777))
    # mkfs -d copies the times: stable dates in listings (ctimes still differ from run to run)
    for p in [root, *root.rglob("*")]:
        os.utime(p, (FAKE_TIME, FAKE_TIME))


# -- helpers ---------------------------------------------------------------------------------
def run(*cmd: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        sys.exit(f"make_sample: {' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def partition_sectors(size_bytes: int, cluster: int) -> tuple[int, int]:
    """(first, last) LBA of partition 1 as ploop's create_gpt_partition chooses them (format.md §8.1):
    start at one cluster, end at the last whole cluster boundary before the final cluster,
    rounded down to a multiple of 8, minus 1."""
    bs = cluster // SECTOR
    size = size_bytes // SECTOR
    end = (size - bs) // bs * bs
    return bs, end // 8 * 8 - 1


def prepare_workdir(work: Path) -> None:
    if work.exists():
        if not work.is_dir():
            sys.exit(f"make_sample: {work} exists and is not a folder")
        if any(work.iterdir()) and not (work / MARKER).exists():
            sys.exit(f"make_sample: {work} is not empty and was not made by this script; "
                     "refusing to delete it (choose another folder)")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by tools/make_sample.py; deleted and rebuilt on re-run\n")


def make_gpt_template(path: Path) -> tuple[int, int]:
    """A sparse DISK_SIZE file holding only the GPT (protective MBR, primary and backup)."""
    first, last = partition_sectors(DISK_SIZE, CLUSTER)
    with path.open("wb") as f:
        f.truncate(DISK_SIZE)
    run("sgdisk", "-o", "-n", f"1:{first}:{last}", "-t", "1:8300", "-c", f"1:{LABEL}",
        "-U", fixed_uuid("disk"), "-u", f"1:{fixed_uuid('partition-1')}", str(path))
    return first * SECTOR, (last + 1 - first) * SECTOR


def assemble_disk(out: Path, gpt: Path, part_img: Path, part_start: int) -> None:
    """out = the GPT template with the partition image written at `part_start`; zero
    clusters are left as holes, so the raw versions stay sparse."""
    shutil.copyfile(gpt, out)  # first and last cluster: the GPT; the rest is zero
    with part_img.open("rb") as src, out.open("r+b") as dst:
        pos = 0
        while chunk := src.read(CLUSTER):
            if not is_zero(chunk):
                dst.seek(part_start + pos)
                dst.write(chunk)
            pos += len(chunk)


def apply_debugfs(part_img: Path, commands: tuple[str, ...], files_dir: Path) -> None:
    names = {k: str(files_dir / k) for k in FILES}
    script = files_dir / "debugfs.cmds"
    script.write_text("".join(c.format(**names) + "\n" for c in commands))
    run("debugfs", "-w", "-f", str(script), str(part_img), env=FAKE_TIME_ENV)
    run("e2fsck", "-fn", str(part_img))  # every version must be a clean filesystem


# -- the ploop chain -------------------------------------------------------------------------
def write_image(path: Path, version: Path, previous: Path | None) -> int:
    """A v2 image holding the clusters of `version` that are non-zero (base) or that differ from
    `previous` (delta). Returns the number of clusters written."""
    written = 0
    with ImageWriter.create(path, DISK_SIZE, CLUSTER, 2) as w, version.open("rb") as cur:
        prev = previous.open("rb") if previous else None
        try:
            for vc in range(DISK_SIZE // CLUSTER):
                data = cur.read(CLUSTER)
                old = prev.read(CLUSTER) if prev else None
                changed = data != old if old is not None else not is_zero(data)
                if changed:
                    w.write_cluster(vc, data)
                    written += 1
        finally:
            if prev:
                prev.close()
    return written


def build(work: Path) -> dict:
    prepare_workdir(work)
    build_dir = work / "build"
    versions_dir = work / "versions"
    disk_dir = work / "disk"
    for d in (build_dir, versions_dir, disk_dir, work / "exports"):
        d.mkdir()

    files_dir = build_dir / "files"
    files_dir.mkdir()
    for name, data in FILES.items():
        (files_dir / name).write_bytes(data)
    tree = build_dir / "tree-v0"
    populate_v0(tree)

    gpt = build_dir / "gpt.raw"
    part_start, part_size = make_gpt_template(gpt)
    part_img = build_dir / "part.img"
    with part_img.open("wb") as f:
        f.truncate(part_size)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", LABEL, "-U", fixed_uuid("ext4"),
        "-E", f"hash_seed={fixed_uuid('hash-seed')}", "-d", str(tree), str(part_img), env=FAKE_TIME_ENV)

    raws: list[Path] = []
    for v in VERSIONS:
        if v.debugfs:
            apply_debugfs(part_img, v.debugfs, files_dir)
        raw = versions_dir / f"{v.name}.raw"
        assemble_disk(raw, gpt, part_img, part_start)
        raws.append(raw)

    # Image i holds version i; image GUIDs per format.md §4.3: older ones got fresh GUIDs when they were
    # snapshotted, the top is {5fbaabe3-…}.
    guids = [fixed_guid(f"snapshot-{v.name}") for v in VERSIONS[:-1]] + [TOP_GUID]
    files = ["root.hds"] + [f"root.hds.{fixed_guid(f'file-{v.name}')}" for v in VERSIONS[1:]]
    snapshots = []
    for i, (v, guid, fname, raw) in enumerate(zip(VERSIONS, guids, files, raws, strict=True)):
        n = write_image(disk_dir / fname, raw, raws[i - 1] if i else None)
        snapshots.append({
            "version": v.name, "guid": guid, "image": fname, "clusters": n,
            "description": v.description, "only_file": v.only_file,
            "raw": str(raw.relative_to(work)), "sha256": sha256_file(raw),
        })
    write_descriptor(disk_dir / "DiskDescriptor.xml",
                     chain_descriptor(files, DISK_SIZE, CLUSTER, guids=guids))
    shutil.rmtree(build_dir)

    manifest = {
        "descriptor": "disk/DiskDescriptor.xml",
        "size_bytes": DISK_SIZE,
        "cluster_size": CLUSTER,
        "partition": {"number": 1, "start": part_start, "size": part_size, "fs": "ext4"},
        "snapshots": snapshots,
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", nargs="?", default=os.environ.get("PLOOPFS_DEMO_DIR",
                                                                 "/tmp/ploopfs-demo"))
    args = ap.parse_args(argv)
    work = Path(args.workdir).absolute()
    manifest = build(work)
    print(f"sample disk: {work / manifest['descriptor']}")
    for s in manifest["snapshots"]:
        print(f"  {s['version']}  {s['guid']}  {s['image']:<48} {s['clusters']:>2} clusters  "
              f"({s['description']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
