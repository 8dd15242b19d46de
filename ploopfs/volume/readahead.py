"""One read ahead: the next piece is read on a helper thread while the caller works on the
current one. Reads that release the GIL (preadv, pread) then overlap the caller's work."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Iterable[T], read: Callable[[T], R], name: str = "ploopfs-read"
               ) -> Iterator[R]:
    """read(item) of each item, in order, the next one already being read while the caller
    holds the current one: at most two results are alive at once (callers may alternate
    between two buffers). Errors of a read are raised where its result is asked for."""
    from concurrent.futures import ThreadPoolExecutor  # here: with logging, 8 ms of a start

    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:
        fut = next((pool.submit(read, x) for x in it), None)
        while fut is not None:
            cur = fut.result()
            fut = next((pool.submit(read, x) for x in it), None)
            yield cur
