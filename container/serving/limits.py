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

Both checks are linear scans in C (bytes.count, numpy), a few milliseconds for 6 MiB, and they run before
the worker's lock is taken; a body no longer than the line limit is not scanned for its longest line.
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
        if self.max_rows is not None:
            content = body.rstrip(b"\r\n")   # trailing newlines end the last record, they hold none
            lines = content.count(b"\n") + 1 if content else 0
            allowed = self.max_rows + (1 if mimetype == "text/csv" else 0)
            if lines > allowed:
                raise TooLarge(f"the request holds {lines} lines, more than the {self.max_rows} rows one "
                               f"request may hold (HYPERPLANE_MAX_ROWS); {_SPLIT}")
        if self.max_line_bytes is not None and len(body) > self.max_line_bytes:
            number, length = longest_line(body)
            if length > self.max_line_bytes:
                raise TooLarge(f"line {number} is {length} bytes long, more than the {self.max_line_bytes} "
                               "bytes one line may hold (HYPERPLANE_MAX_LINE_BYTES); a line holds one record")

    def check_rows(self, rows: int) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise TooLarge(f"the request holds {rows} rows, more than the {self.max_rows} one request may "
                           f"hold (HYPERPLANE_MAX_ROWS); {_SPLIT}")


_SPLIT = "split it into smaller requests (batch transform: a smaller MaxPayloadInMB)"


def longest_line(body: bytes) -> tuple[int, int]:
    """(1-based line number, length in bytes without its newline) of the first longest line."""
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == NEWLINE)
    lengths = np.diff(np.concatenate(([-1], ends, [len(body)]))) - 1
    index = int(np.argmax(lengths))
    return index + 1, int(lengths[index])
