"""Command line front end. Knows argument parsing and presentation; everything else is in the
services and volume layers. Errors become one line on stderr and a documented exit code
(docs/cli.md)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from ploopfs import __version__
from ploopfs.cli.common import (
    Parser,
    add_allow_outside_paths,
    add_cluster_size,
    add_force,
    add_salvage,
    add_source_args,
    cluster_size_arg,
    data_replaced,
    open_disk,
    parse_size,
    print_json,
    progress_bar,
    usage_exit_code,
    warn,
)
from ploopfs.errors import ExitCode, PloopfsError, SourceIOError, UsageError

__all__ = ["build_parser", "cluster_size_arg", "main", "parse_size", "progress_bar", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ploopfs",
        description="Read OpenVZ/Virtuozzo ploop disks (DiskDescriptor.xml + images) without the "
                    "OpenVZ kernel. Sources are only ever opened read-only.",
        epilog="Exit codes are listed in docs/cli.md.")
    parser.add_argument("--version", action="version", version=f"ploopfs {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="disk size, images, headers, snapshot tree, partitions",
                       description="Describe a ploop disk: every image and header field, the "
                                   "snapshot tree, the partition table and filesystems inside.")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("snapshots", help="the snapshot tree (like `ploop snapshot-list`)",
                       description="List the snapshots of a descriptor as a tree; * marks the top.")
    add_source_args(p, snapshot=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser("export", help="flatten a snapshot to a raw file or a new ploop disk",
                       description="Write the virtual disk of a snapshot as a sparse raw file "
                                   "(OUTPUT '-' streams to stdout) or as a new single-image v2 "
                                   "ploop disk in the folder OUTPUT. Exit 0, or with --salvage 15 "
                                   "when damaged data was served as zeros or older data (listed "
                                   "in the report; docs/salvage.md).")
    add_source_args(p)
    p.add_argument("output", metavar="OUTPUT", help="file (raw), '-' (raw to stdout) or folder")
    p.add_argument("-f", "--format", choices=("raw", "ploop"), default="raw",
                   help="output format (default: raw)")
    add_force(p, "the raw OUTPUT file (a ploop OUTPUT folder must be new or empty)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_salvage(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "diff", help="changed clusters between two disks: rdiff delta, ploop delta or json",
        description="Compare OLD and NEW (any SOURCE, e.g. two snapshots of one descriptor) cluster "
                    "by cluster. rdiff: a librsync delta OUT that `rdiff patch OLD.raw OUT NEW.raw` "
                    "applies, plus the manifest OUT.json; ploop: a folder OUT with a delta image of "
                    "the changed clusters and a DiskDescriptor.xml stacking it on OLD (open it with "
                    "--allow-outside-paths); json: the changed cluster ranges ('-' = stdout).")
    p.add_argument("old", metavar="OLD", help="the earlier disk (SOURCE)")
    p.add_argument("new", metavar="NEW", help="the later disk (SOURCE)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="delta file (rdiff), new folder (ploop) or JSON file (json, '-' = stdout)")
    p.add_argument("--old-snapshot", metavar="GUID", help="snapshot of OLD (default: its top)")
    p.add_argument("--new-snapshot", metavar="GUID", help="snapshot of NEW (default: its top)")
    p.add_argument("-f", "--format", choices=("rdiff", "ploop", "json"), default="rdiff",
                   help="output format (default: rdiff)")
    p.add_argument("--hash", choices=("blake3", "sha256", "blake2b", "none"), default="blake3",
                   help="hash of the whole OLD and NEW disks, the delta and each range (default "
                        "blake3); 'none' reads only clusters the block maps cannot prove unchanged")
    p.add_argument("--full-compare", action="store_true",
                   help="ignore the block maps: read and compare every cluster")
    p.add_argument("--no-mmap", action="store_true",
                   help="copy with preadv instead of mapping the image files (slower; a source "
                        "truncated during the diff then gives an error, not SIGBUS)")
    add_cluster_size(p, "cluster size of raw sources (default: the other side's; 1M when both "
                        "are raw)")
    add_allow_outside_paths(p, "let <File> paths of the descriptors lead outside their folders")
    add_force(p, "OUT (rdiff: and OUT.json; json) (a ploop OUT folder must be new or empty)")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "mount", help="mount a snapshot read-only through FUSE (disk, partN, snapshots/, info.json)",
        description="Mount the virtual disk of a snapshot, its partitions, every other snapshot "
                    "and info.json read-only under MOUNTPOINT (or, with --files, the files of the "
                    "ext2/3/4 filesystem inside). Returns once the mount is ready; the server runs "
                    "in the background. fstab: SOURCE MOUNTPOINT fuse.ploopfs ro,snapshot=GUID 0 0")
    add_source_args(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument("--files", action="store_true",
                   help="show the container's files (ext2/3/4 via fuse2fs) instead of raw disks")
    p.add_argument("-F", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated options: FUSE ones (allow_other, …) and uid=, gid=, "
                        "snapshot=, files, readahead=KB, direct_io, salvage[=zeros|older]")
    p.add_argument("--readahead", type=int, metavar="KB", default=None,
                   help="kernel readahead for the mount, as root (default 1024; 0 = kernel default)")
    p.add_argument("--direct-io", action="store_true",
                   help="bypass the page cache (for streaming copies, loop devices)")
    p.add_argument("--pid-file", metavar="FILE", help="write the server's PID here")
    p.add_argument("--log-file", metavar="FILE", help="log here (default: syslog in background)")
    add_salvage(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a ploopfs mount (both layers with --files)",
                       description="Unmount MOUNTPOINT and wait for its server to finish.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach even if busy)")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("check", help="read-only diagnosis of a (possibly damaged) disk",
                       description="Check headers, BATs, the descriptor, the chain and the "
                                   "partition table without writing anything. Exit: 0 clean, "
                                   "1 warnings, 2 damaged but salvageable, 3 unreadable "
                                   "(docs/check.md).")
    add_source_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--deep", action="store_true",
                   help="also read every referenced cluster (I/O errors, holes, shadowed copies)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("recover", help="a clean ploop disk from a damaged one, plus recovery.json",
                       description="Read SOURCE with a salvage policy and write a new, clean ploop "
                                   "disk into the folder OUTDIR: one v2 delta per readable image, "
                                   "same GUIDs and snapshot tree (or, with --flatten, one image of "
                                   "the chosen snapshot), with recovery.json listing every lost or "
                                   "substituted range (docs/salvage.md). Exit 0, or 15 when data "
                                   "was replaced or lost: see recovery.json.")
    add_source_args(p)
    p.add_argument("outdir", metavar="OUTDIR",
                   help="a new or empty folder (never replaced: there is no --force)")
    p.add_argument("--salvage", choices=("zeros", "older"), default="older",
                   help="serve damaged ranges from the next lower delta (older, default) or as "
                        "zeros")
    p.add_argument("--flatten", action="store_true",
                   help="write the snapshot (-s, default the top) as one image instead of keeping "
                        "the snapshot tree")
    p.add_argument("--json", action="store_true", help="print recovery.json on stdout too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_recover)

    from ploopfs.cli import rdiff, restore, space

    rdiff.register(sub)  # signature, delta, patch (rdiff drop-in)
    space.register(sub)  # du (with --dedup), compact
    restore.register(sub)  # restore-descriptor
    return parser


# -- commands -----------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from ploopfs.services.info import disk_info, format_info

    with open_disk(args) as disk:
        info = disk_info(disk, args.snapshot)
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from ploopfs.services.info import format_snapshot_list, snapshot_tree

    with open_disk(args) as disk:
        shots = snapshot_tree(disk)
        warn(disk.warnings)
    if args.json:
        print_json({"top_guid": disk.descriptor.top_guid, "snapshots": shots})
    else:
        print(format_snapshot_list(shots))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ploopfs.services.export import export_ploop, export_raw, export_work

    if args.format == "ploop" and args.output == "-":
        raise UsageError("--format ploop writes a folder; '-' is only for raw output")
    if args.force and (args.format == "ploop" or args.output == "-"):
        raise UsageError("--force replaces a raw output file; a ploop folder must be new or empty")
    with open_disk(args) as disk:
        vol = disk.volume(args.snapshot)
        total = vol.size if args.output == "-" else export_work(vol)
        with progress_bar(total, "export", not args.no_progress) as prog:
            if args.format == "raw":
                report = export_raw(disk, args.output, args.snapshot, prog, replace=args.force)
            else:
                report = export_ploop(disk, args.output, args.snapshot, prog)
        warn(disk.warnings)
        if disk.salvage_log is not None:
            warn([disk.salvage_log.summary_line()])
    if args.json:
        print_json(report.to_json())
    return ExitCode.DATA_REPLACED if data_replaced(report.salvage) else ExitCode.OK


def cmd_recover(args: argparse.Namespace) -> int:
    from ploopfs.services.recover import REPORT_NAME, Recovery

    with open_disk(args) as disk:
        rec = Recovery(disk, args.outdir, args.snapshot, flatten=args.flatten)
        with progress_bar(rec.work, "recover", not args.no_progress) as prog:
            out = rec.run(prog)
        warn(disk.warnings)
        warn([f"recover: {len(out.get('dropped_levels', []))} unreadable image(s) left out "
               f"(their data is lost); see {os.path.join(args.outdir, REPORT_NAME)}"]
              if out.get("dropped_levels") else [])
        warn([f"salvage ({out['policy']}): {out['substituted_ranges']} damaged range(s), "
               f"{out['substituted_bytes']} bytes served as "
               f"{'zeros' if out['policy'] == 'zeros' else 'older data or zeros'} "
               f"({out['bat_entries']} bad BAT entries, {out['read_errors']} read errors); see "
               f"{os.path.join(args.outdir, REPORT_NAME)}"])
    if args.json:
        print_json(out)
    return ExitCode.DATA_REPLACED if data_replaced(out) else ExitCode.OK


def cmd_diff(args: argparse.Namespace) -> int:
    from ploopfs.services.diff import DiffOptions, diff, open_sides, work_bytes
    from ploopfs.volume.source import OpenOptions

    if args.json and args.format == "json" and args.output == "-":
        raise UsageError("--json and '-o -' both write to stdout; choose one")
    if args.force and args.format == "ploop":
        raise UsageError("--force replaces an output file; a ploop folder must be new or empty")
    opts = DiffOptions(hash=None if args.hash == "none" else args.hash,
                       full_compare=args.full_compare, mmap=not args.no_mmap)
    sides = open_sides(args.old, args.new, args.old_snapshot, args.new_snapshot,
                       OpenOptions(cluster_size=args.cluster_size,
                                   allow_outside_paths=args.allow_outside_paths))
    try:
        with progress_bar(lambda: work_bytes(sides, opts), "diff", not args.no_progress) as prog:
            opts.progress = prog
            report = diff(sides, args.output, args.format, opts, replace=args.force)
        warn(sides.old_disk.warnings + [w for w in sides.new_disk.warnings
                                         if w not in sides.old_disk.warnings])
    finally:
        sides.close()
    if args.json:
        print_json(report)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from ploopfs.fuse.mount import MountOptions, apply_o_options, mount

    opts = MountOptions(snapshot=args.snapshot, files=args.files, foreground=args.foreground,
                        direct_io=args.direct_io, pid_file=args.pid_file, log_file=args.log_file,
                        allow_outside_paths=args.allow_outside_paths,
                        cluster_size=args.cluster_size, salvage=args.salvage)
    warn(apply_o_options(opts, args.options))
    if args.readahead is not None:
        opts.readahead_kb = args.readahead
    for attr in ("pid_file", "log_file"):
        if getattr(opts, attr):
            setattr(opts, attr, os.path.abspath(getattr(opts, attr)))
    return mount(args.source, args.mountpoint, opts)


def cmd_umount(args: argparse.Namespace) -> int:
    from ploopfs.fuse.mount import umount

    umount(args.mountpoint, lazy=args.lazy)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ploopfs.services.check import check

    report = check(args.source, args.snapshot, args.deep,
                   allow_outside_paths=args.allow_outside_paths, raw_cluster_size=args.cluster_size)
    if args.json:
        print_json(report.to_json())
    else:
        for f in report.findings:
            print(f.line())
        print(report.summary_line())
    return report.exit_code


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._subparsers._group_actions  # type: ignore[union-attr]
            for name in getattr(action, "choices", None) or ()}


def _mount_helper_form(argv: list[str], commands: set[str]) -> list[str]:
    """mount.fuse3 runs `ploopfs SOURCE MOUNTPOINT -o OPTIONS` (fstab type fuse.ploopfs)."""
    if len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-"):
        return ["mount", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = _mount_helper_form(list(sys.argv[1:] if argv is None else argv), _commands(parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help/--version exit 0, usage errors 64 (Parser.error)
        try:
            sys.stdout.flush()  # `ploopfs --help | head -1`
        except BrokenPipeError:
            return _closed_pipe()
        return usage_exit_code(e.code)
    except BrokenPipeError:
        return _closed_pipe()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met below and not at exit
        return rc
    except PloopfsError as e:
        print(f"ploopfs: {e.message()}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print("ploopfs: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as e:
        err = SourceIOError(e.strerror or str(e), e.filename)
        print(f"ploopfs: {err.message()}", file=sys.stderr)
        return int(err.exit_code)
    except Exception as e:  # a bug: one line, details on request
        if args.debug:
            raise
        print(f"ploopfs: internal error: {type(e).__name__}: {e} (run with --debug for details)",
              file=sys.stderr)
        return ExitCode.INTERNAL


def _closed_pipe() -> int:
    """stdout was closed early (`ploopfs info disk | head -1`): end quietly, as coreutils do when
    SIGPIPE kills them (the shell shows 141). What is still buffered for stdout goes to
    /dev/null, so the interpreter's flush at exit finds no broken pipe to complain about."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no usable stdout at all: nothing left to flush into it
        sys.stdout = None  # type: ignore[assignment]
    return ExitCode.CLOSED_PIPE


def run() -> None:
    """The console script (and `python -m ploopfs`): main(), then exit without the
    interpreter's final full garbage collection. gc.freeze() puts every object left out of the
    collector's sight; the process ends anyway, and that last pass walked every object of numpy
    and the modules loaded: 15-25 ms of each short command (perf of `ploopfs diff`).

    The collector's first generation runs every 50000 allocations instead of 700: importing
    numpy and the services allocates some 10^5 objects, hardly any of them garbage, and the
    51 collections that set off took 10 ms of each `ploopfs diff` (gc.callbacks; 0 with this).
    A long-running mount still collects, every 50000 allocations."""
    gc.set_threshold(50_000)
    rc = main()
    gc.freeze()
    sys.exit(rc)

