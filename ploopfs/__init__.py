"""ploopfs: read, mount, diff and rescue OpenVZ/Virtuozzo ploop disk images in userspace."""

import os as _os

# numpy's OpenBLAS starts one busy-polling thread per core at import; ploopfs does no linear
# algebra, and those threads took 2-3 % of the CPU from the hashing threads (perf of
# `du --dedup`). Set before anything imports numpy; a user's own setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
