"""ploopfs: read, mount, diff and rescue OpenVZ/Virtuozzo ploop disk images in userspace."""

__version__ = "0.1.0"
