"""Returning a large request's memory to the system, so a worker's RSS settles back after it.

    body = ReleasingBody(answer_iterable)   # fastpath.py, for requests of RELEASE_BYTES or more
    # gunicorn calls body.close() after the last byte is sent; then free memory goes back (malloc_trim)

Why: decoding and predicting a 6 MiB batch allocates a few hundred MiB of short-lived buffers (numpy
arrays, torch activations). glibc keeps freed heap memory for reuse, and it raises its mmap threshold after
freeing large blocks, so later buffers of the same size come from the heap too: without a trim, one large
request left a worker at 390-670 MiB where it had started at 181 MiB. malloc_trim(0) hands the free pages
of every arena back (a few milliseconds, after the response is sent, so no client waits for it). Where the
C library has no malloc_trim (musl, macOS) this does nothing.
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
