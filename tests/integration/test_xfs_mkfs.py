"""format/xfs.py on filesystems made by mkfs.xfs (into a file, no root): every superblock, AGF
and AGI field ploopfs uses equals what xfs_db prints, the CRCs verify, and each AG's free extents
from the bnobt are xfs_db's `freesp -d` less the AGFL's blocks (which xfs_db lists as free and
ploopfs counts as used metadata, as the kernel's AGFL is)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ploopfs.format import xfs

pytestmark = pytest.mark.skipif(shutil.which("mkfs.xfs") is None or shutil.which("xfs_db") is None,
                                reason="needs xfsprogs (mkfs.xfs, xfs_db)")

# mkfs.xfs refuses filesystems under 300 MiB unless these are set, as fstests sets them.
SMALL_OK = {"TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}

LAYOUTS = {  # name: (MiB, mkfs options)
    "v5-default": (64, []),
    "v5-1k-agcount1": (40, ["-b", "size=1024", "-d", "agcount=1"]),
    "v5-4k-sectors-8ag": (200, ["-s", "size=4096", "-d", "agcount=8"]),
    "v5-rmapbt-short-last-ag": (71, ["-m", "rmapbt=1", "-d", "agsize=16m"]),
    "v4": (64, ["-m", "crc=0"]),
    "v4-512-blocks": (48, ["-m", "crc=0", "-b", "size=512", "-d", "agcount=2"]),
}


def mkfs(tmp: Path, name: str) -> Path:
    mib, opts = LAYOUTS[name]
    img = tmp / f"{name}.img"
    with open(img, "wb") as f:
        f.truncate(mib << 20)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-L", name[:12], *opts, str(img)], check=True,
                   capture_output=True, env={**os.environ, **SMALL_OK}, timeout=120)
    return img


def db(img: Path, *cmds: str) -> str:
    args = ["xfs_db", "-r"]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run([*args, str(img)], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def fields(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(" = ")
        if sep:
            out[k.strip()] = v.strip()
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_matches_xfs_db(tmp_path: Path, name: str) -> None:
    img = mkfs(tmp_path, name)
    data = img.read_bytes()
    sb = xfs.parse_superblock(data[:xfs.SB_READ], limit=len(data))
    f = fields(db(img, "sb 0", "p"))
    for key in ("blocksize", "dblocks", "logstart", "agblocks", "agcount", "logblocks",
                "sectsize", "inodesize", "inopblock", "agblklog", "imax_pct", "icount", "ifree",
                "fdblocks"):
        assert getattr(sb, key) == int(f[key], 0), key
    assert sb.uuid_str == f["uuid"]
    assert sb.label == name[:12]
    assert sb.version == int(f["versionnum"], 16) & 0xF
    if sb.has_crc:
        assert f["crc"].endswith("(correct)")
    for agno in range(sb.agcount):
        fa = fields(db(img, f"agf {agno}", "p"))
        fi = fields(db(img, f"agi {agno}", "p"))
        agf = xfs.parse_agf(data[sb.agf_byte(agno):], sb, agno)
        agi = xfs.parse_agi(data[sb.agi_byte(agno):], sb, agno)
        assert (agf.length, agf.bno_root, agf.bno_level, agf.flcount, agf.freeblks, agf.longest,
                agf.btreeblks) == tuple(int(fa[k]) for k in (
                    "length", "bnoroot", "bnolevel", "flcount", "freeblks", "longest",
                    "btreeblks"))
        assert (agi.count, agi.freecount) == (int(fi["count"]), int(fi["freecount"]))

        def block(agbno: int, agno: int = agno) -> bytes:
            off = sb.block_byte(agno, agbno)
            return data[off:off + sb.blocksize]

        s, c = xfs.free_extents(sb, agf, block)
        ours = set(zip(s.tolist(), c.tolist(), strict=True))
        theirs = {(int(m[2]), int(m[3])) for m in re.finditer(
            r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", db(img, f"freesp -d -a {agno}"), re.M)}
        agfl = agfl_blocks(img, agno)
        assert len(agfl) == agf.flcount
        assert ours == theirs - {(b, 1) for b in agfl}, agno


def agfl_blocks(img: Path, agno: int) -> list[int]:
    """The blocks on AG agno's free list, as xfs_db prints them (v4 lists every slot)."""
    text = db(img, f"agf {agno}", "p flfirst fllast flcount", f"agfl {agno}", "p bno")
    f = fields(text)
    first, last, count = int(f["flfirst"]), int(f["fllast"]), int(f["flcount"])
    slots = {int(k): v for k, v in re.findall(r"(\d+):(\w+)", text.split("bno", 1)[1])}
    n = len(slots)
    out = []
    i = first
    for _ in range(count):
        out.append(int(slots[i]))
        i = (i + 1) % n
    assert not count or (i - 1) % n == last
    return out


def test_ag_headers_of_the_wrong_ag_are_refused(tmp_path: Path) -> None:
    img = mkfs(tmp_path, "v5-default")
    data = img.read_bytes()
    sb = xfs.parse_superblock(data[:xfs.SB_READ])
    with pytest.raises(xfs.XfsFormatError, match="AG 1 AGF: agf_seqno 0"):
        xfs.parse_agf(data[sb.agf_byte(0):], sb, 1)
