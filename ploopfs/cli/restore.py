"""`ploopfs restore-descriptor`: rebuild a lost DiskDescriptor.xml from the image files alone.
Engine: ploopfs/services/restore.py, whose result --json prints; the text report is rendered
here (docs/restore.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ploopfs.cli.common import add_cluster_size, print_json, warn

if TYPE_CHECKING:
    from ploopfs.services.restore import Restored


def register(sub: Any) -> None:
    p = sub.add_parser(
        "restore-descriptor", help="rebuild a lost DiskDescriptor.xml from the image files",
        description="Infer the snapshot chain (or tree) of the image files in DIR from their "
                    "names, headers, dirty flags, mtimes and copy-on-write content, explain the "
                    "evidence, and write a new descriptor: DIR/DiskDescriptor.xml if it does not "
                    "exist, else the new file given with -o. Nothing is ever overwritten. Exit 0: "
                    "written, high confidence; 1: written, but the evidence is ambiguous; 15 "
                    "(--salvage): written from what could be read, the output says what it "
                    "could not decide (docs/restore.md).")
    p.add_argument("folder", metavar="DIR", help="the folder holding the image files")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write here instead (must not exist: never replaced, there is no "
                        "--force); <File> paths are made relative to its folder")
    p.add_argument("--json", action="store_true", help="print the evidence as JSON")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="only print the inferred tree and the evidence; write nothing")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="compare at most N shared clusters (default 1024, 0 = all)")
    old = p.add_mutually_exclusive_group()
    old.add_argument("--old-descriptor", metavar="FILE",
                     help="a damaged descriptor to take image GUIDs, parent links and the top "
                          "from, as far as they can be read (default: DIR/DiskDescriptor.xml if "
                          "it exists)")
    old.add_argument("--ignore-old", action="store_true",
                     help="do not use DIR/DiskDescriptor.xml as evidence")
    p.add_argument("--salvage", action="store_true",
                   help="rebuild from what is readable: infer damaged headers from their BAT "
                        "(as the readers' --salvage does), drop unreadable BAT entries, leave "
                        "out images that cannot be used, and say what that leaves undecided "
                        "(exit 15 when anything was)")
    add_cluster_size(p, "cluster size when DIR holds only a raw disk (default: as ploop picks it)")
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    from ploopfs.services.restore import DEFAULT_SAMPLE, check_args, restore

    sample = DEFAULT_SAMPLE if args.sample is None else args.sample
    check_args(sample)
    res = restore(args.folder, output=args.output, sample=sample, cluster_size=args.cluster_size,
                  write=not args.dry_run,
                  old_descriptor=False if args.ignore_old else args.old_descriptor or True,
                  salvage=args.salvage)
    if args.json:
        print_json(res.to_json())
    else:
        print(format_restored(res))
    if res.partial:
        warn([f"partial: {damage_summary(res)}; see 'could not decide'"])
    if res.confidence != "high":
        warn(["low confidence: the evidence does not settle every link; see the [low] lines"])
    return res.exit_code


# -- text -----------------------------------------------------------------------------------------
def format_restored(res: Restored) -> str:
    """The chain found, each link with its deciding evidence, notes, files ignored or left out,
    what could not be decided, and the verdict with where the descriptor went."""
    d = res.descriptor
    lines = [f"restore-descriptor {res.folder}: "
             + " -> ".join(im.file for im in d.chain()) + "  (base -> top)"]
    branches = [im.file for im in d.images if im.file not in {e.file for e in d.chain()}]
    if branches:
        lines.append("  off the top chain: " + ", ".join(branches))
    for L in res.links:
        lines.append(f"  [{L['confidence']}] {L['text']}")
    for x in res.decisions:
        if x.what.startswith("top") or x.what == "disk size":
            lines.append(f"  [{x.confidence}] {x.text}")
    for n in res.notes:
        lines.append(f"  note: {n}")
    for ig in res.ignored:
        lines.append(f"  ignored {ig['file']}: {ig['reason']}")
    for lo in res.left_out:
        lines.append(f"  left out {lo['file']}: {lo['reason']}")
    for u in res.undecided:
        lines.append(f"  could not decide: {u}")
    verdict = ("high confidence" if res.confidence == "high" else
               "LOW CONFIDENCE: the evidence is ambiguous; check the links marked [low]")
    if res.partial:
        verdict = f"PARTIAL: {damage_summary(res)}; see 'could not decide'; {verdict}"
    where = (f"written to {res.output}" if res.written else
             f"not written{' (would be ' + res.output + ')' if res.output else ''}")
    lines.append(f"result: {verdict}; {where}")
    return "\n".join(lines)


def damage_summary(res: Restored) -> str:
    """What --salvage had to do without, in one clause."""
    d = res.damage
    return (f"rebuilt from what could be read ({d.get('left_out', 0)} image(s) left out, "
            f"{d.get('inferred', 0)} header(s) inferred, {d.get('bad_bat_entries', 0)} "
            "unreadable BAT entries)")
