"""RequestLimits: how many rows one request may hold and how long one line may be; 413 beyond either.

    limits = RequestLimits.from_settings(settings)   # HYPERPLANE_MAX_ROWS, HYPERPLANE_MAX_LINE_BYTES
    limits.check_lines(body, mimetype)   # CSV and JSON Lines, before decoding, in both modes (app.py)
    limits.check_rows(table.n_rows)      # built-in mode, after decoding: JSON instances, x-npy rows

Why two limits besides the payload size (SAGEMAKER_MAX_PAYLOAD_IN_MB, 413 in app.py): a decoded row costs
a worker memory and time whatever its bytes (about 1.8 kB and 7 us for a used-car row, 0.3 kB and 2 us
for a row of two numbers), so the row count bounds a request's cost on its own, also where the payload
limit was raised; and a line of megabytes is never one record, it is a column count in the millions.
The defaults let a full 6 MiB batch-transform mini-batch through (90,000 used-car rows; any rows of 13
bytes or more) and refuse a single line over 1 MiB (a record of some 100,000 numbers would still fit).

Both checks are linear scans in C (bytes.count, numpy), ~2 ms for 6 MiB, and they run before the
worker's lock is taken; a body no longer than the line limit is not scanned for its longest line, and a
longer one is scanned once, for its newlines' positions, which give both the line count and the longest.
The messages name the variable that raises the limit. Columns need no limit of their own: a request
naming more columns than the model has features is refused by the codecs (codecs.py) before any table
is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from container.serving.errors import TooLarge
from container.serving.settings import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_ROWS

if TYPE_CHECKING:
    from container.serving.settings import ServingSettings

LINE_TYPES = ("text/csv", "application/jsonlines")   # one record per line
NEWLINE = 0x0A
TAIL = 256   # the trailing line ends of a body are looked for in its last TAIL bytes first


@dataclass(frozen=True)
class RequestLimits:
    max_rows: int | None = DEFAULT_MAX_ROWS                # None: no limit
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> RequestLimits:
        return cls(settings.max_rows or None, settings.max_line_bytes or None)

    def check_lines(self, body: bytes, mimetype: str) -> None:
        """413 when a CSV or JSON Lines body holds more lines than rows allowed (plus one CSV header
        line) or a line longer than allowed; other types pass unchecked."""
        if mimetype not in LINE_TYPES:
            return
        if self.max_line_bytes is not None and len(body) > self.max_line_bytes:
            self._check_long(body, mimetype, self.max_line_bytes)
        elif self.max_rows is not None:
            content = body.rstrip(b"\r\n")   # trailing newlines end the last record, they hold none
            self._check_count(content.count(b"\n") + 1 if content else 0, mimetype)

    def _check_long(self, body: bytes, mimetype: str, max_line_bytes: int) -> None:
        """check_lines for a body that may hold a long line: one scan, for where its newlines are, gives
        both the line count and the longest line."""
        newlines = _newlines(body)
        if self.max_rows is not None:
            end = _content_end(body)
            self._check_count(int(np.searchsorted(newlines, end)) + 1 if end else 0, mimetype)
        number, length = _longest(newlines, len(body))
        if length > max_line_bytes:
            raise TooLarge(f"line {number} is {length} bytes long, more than the {max_line_bytes} "
                           "bytes one line may hold (HYPERPLANE_MAX_LINE_BYTES); a line holds one record")

    def _check_count(self, lines: int, mimetype: str) -> None:
        if self.max_rows is not None and lines > self.max_rows + (1 if mimetype == "text/csv" else 0):
            raise TooLarge(f"the request holds {lines} lines, more than the {self.max_rows} rows one "
                           f"request may hold (HYPERPLANE_MAX_ROWS); {_SPLIT}")

    def check_rows(self, rows: int) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise TooLarge(f"the request holds {rows} rows, more than the {self.max_rows} one request may "
                           f"hold (HYPERPLANE_MAX_ROWS); {_SPLIT}")


_SPLIT = "split it into smaller requests (batch transform: a smaller MaxPayloadInMB)"


def longest_line(body: bytes) -> tuple[int, int]:
    """(1-based line number, length in bytes without its newline) of the first longest line."""
    return _longest(_newlines(body), len(body))


def _newlines(body: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == NEWLINE)


def _longest(newlines: np.ndarray, size: int) -> tuple[int, int]:
    lengths = np.diff(newlines, prepend=-1, append=size) - 1
    index = int(np.argmax(lengths))
    return index + 1, int(lengths[index])


def _content_end(body: bytes) -> int:
    """len(body.rstrip(b"\r\n")), without copying the body (rstrip copies all that it keeps)."""
    tail = body[-TAIL:]
    kept = tail.rstrip(b"\r\n")
    if kept or len(body) <= TAIL:
        return len(body) - len(tail) + len(kept)
    return len(body.rstrip(b"\r\n"))   # more line ends than the tail holds
