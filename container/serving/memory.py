"""Returning a large request's memory to the system, so a worker's RSS settles back after it.

    body = ReleasingBody(answer_iterable)   # fastpath.py, for requests of RELEASE_BYTES or more
    # gunicorn calls body.close() after the last byte is sent; then free memory goes back (malloc_trim)

Why: decoding and predicting a 6 MiB batch allocates a few hundred MiB of short-lived buffers (numpy
arrays, torch activations). glibc keeps freed heap memory for reuse, and it raises its mmap threshold after
freeing large blocks, so later buffers of the same size come from the heap too: without a trim, one large
request left a worker at 390-670 MiB where it had started at 181 MiB. malloc_trim(0) hands the free pages
of every arena back (a few milliseconds, after the response is sent, so no client waits for it). Where the
C library has no malloc_trim (musl, macOS) this does nothing.

    limit_arenas()                          # serve.py, in gunicorn's master before any worker exists

glibc also gives each thread that allocates its own arena (up to 8 per CPU), and the trim does not bring
those back to where they started: with large requests answered by a worker's 8 request threads in turn,
each thread's arena kept 10-30 MiB (a worker grew from 245 to 400 MiB over 16 such requests, in process,
tests/serving/test_memory.py). Two arenas are plenty where the GIL serialises nearly every allocation:
the same requests then leave the worker at ~290 MiB and flat. (MALLOC_ARENA_MAX=2 does the same from the
environment; mallopt makes it hold wherever the server is started.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterable, Iterator

RELEASE_BYTES = 1 << 20   # requests from this size (or of unknown size) release memory when done


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


M_ARENA_MAX = -8   # glibc's mallopt parameter number (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Caps glibc's malloc arenas for this process and the processes it forks (threads made later share
    them); False where the C library has no mallopt or refuses."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def release() -> bool:
    """Hands free heap memory back to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class ReleasingBody:
    """A WSGI response iterable that releases memory when the server closes it (PEP 3333: close() is
    called once the response is sent, also when sending failed)."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            release()
