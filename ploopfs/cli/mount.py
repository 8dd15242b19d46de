"""`ploopfs mount` (also as the mount helper of fstab type fuse.ploopfs) and `ploopfs umount`.
Engine: ploopfs/fuse/mount.py (docs/mount.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ploopfs.cli.common import add_salvage, add_source_args, warn


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mount", help="mount a snapshot read-only through FUSE (disk, partN, snapshots/, info.json)",
        description="Mount the virtual disk of a snapshot, its partitions, every other snapshot "
                    "and info.json read-only under MOUNTPOINT (or, with --files, the files of the "
                    "ext2/3/4 or XFS filesystem inside). Returns once the mount is ready; the server runs "
                    "in the background. fstab: SOURCE MOUNTPOINT fuse.ploopfs ro,snapshot=GUID 0 0")
    add_source_args(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty directory")
    p.add_argument("--files", action="store_true",
                   help="show the container's files (ext2/3/4 or XFS) at MOUNTPOINT instead of "
                        "the raw disks")
    p.add_argument("--overlay", metavar="DIR",
                   help="make disk and partN writable: writes go to a new ploop delta in DIR (new "
                        "or empty, or an earlier overlay of the same SOURCE and snapshot, which is "
                        "continued); SOURCE is never written (docs/overlay.md)")
    p.add_argument("-F", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated options: FUSE ones (allow_other, …) and uid=, gid=, "
                        "snapshot=, files, readahead=KB, direct_io, page_cache, "
                        "salvage[=zeros|older], "
                        "overlay=DIR")
    p.add_argument("--readahead", type=int, metavar="KB", default=None,
                   help="kernel readahead for the mount, as root (default 1024; 0 = kernel default)")
    p.add_argument("--direct-io", action="store_true",
                   help="serve every file past the page cache, the files of --files too "
                        "(disk and partN always are, unless --page-cache)")
    p.add_argument("--page-cache", action="store_true",
                   help="serve disk and partN through the page cache (kernel readahead, cached "
                        "re-reads, shared mmap) instead of direct I/O; see docs/mount.md")
    p.add_argument("--pid-file", metavar="FILE", help="write the server's PID here")
    p.add_argument("--log-file", metavar="FILE", help="log here (default: syslog in background)")
    add_salvage(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a ploopfs mount (both layers with --files)",
                       description="Unmount MOUNTPOINT and wait for its server to finish.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach even if busy)")
    p.set_defaults(func=cmd_umount)


def cmd_mount(args: argparse.Namespace) -> int:
    from ploopfs.fuse.mount import MountOptions, apply_o_options, mount

    opts = MountOptions(snapshot=args.snapshot, files=args.files, foreground=args.foreground,
                        direct_io=args.direct_io, page_cache=args.page_cache,
                        pid_file=args.pid_file, log_file=args.log_file,
                        allow_outside_paths=args.allow_outside_paths,
                        cluster_size=args.cluster_size, salvage=args.salvage,
                        overlay=args.overlay)
    warn(apply_o_options(opts, args.options))
    if args.readahead is not None:
        opts.readahead_kb = args.readahead
    for attr in ("pid_file", "log_file", "overlay"):
        if getattr(opts, attr):
            setattr(opts, attr, os.path.abspath(getattr(opts, attr)))
    return mount(args.source, args.mountpoint, opts)


def cmd_umount(args: argparse.Namespace) -> int:
    from ploopfs.fuse.mount import umount

    umount(args.mountpoint, lazy=args.lazy)
    return 0
