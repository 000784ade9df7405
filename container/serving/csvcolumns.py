"""A CSV body split into columns with numpy, no Python object per cell: the decoder for large requests.

    fields = split(body)                   # None: not a plain CSV this reads (the caller takes csv.reader)
    fields.line(0)                         # the first line's cells, as str (the header check)
    fields.numbers(column, first_row=1)    # float64, or None where a cell is not a plain number
    fields.strings(column, first_row=1)    # object array of str, one str object per distinct value

What it promises: for every body it accepts, the cells are exactly the ones Python's csv.reader (strict,
the codecs' dialect) yields after the codec's `text.rstrip("\\r\\n")`: the same rows, the same strings,
and numbers equal bit for bit to float() of those strings. It accepts only what it can promise that for,
and answers None for anything else, so the caller's csv-module path keeps every behaviour and error
message: no quote character (so no quoting rules), ASCII only (no byte order mark, no charset question),
no NUL, line ends "\\n" or "\\r\\n" only, no empty line, and every line with the same number of fields.

Why: the csv module makes one str per cell and a list per row; a 6 MiB used-car batch (92k rows, 24
columns) spent ~0.5 s there and lifted a worker's RSS by hundreds of MiB. Here a cell costs a few
vectorised byte operations: field boundaries come from one scan for separators; a numeric column is read
digit by digit as integers (exact below 10^15) and divided once by a power of ten, which is how float()
rounds such a decimal too (both operands exact, one correctly rounded IEEE division); other numbers (an
exponent, more digits, spaces, "1_000") go through numpy's bytes-to-float conversion, which calls the
same parser as float(); a string column is made of one str per distinct value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMA, NEWLINE, QUOTE, DOT, MINUS, PLUS, SPACE, ZERO, NINE = b',\n".-+ 09'
MAX_CELL_BYTES = 256            # a longer cell (never a number or a category) leaves it to csv.reader
MAX_PADDED_BYTES = 64 << 20     # the most one column's padded (rows, longest cell) byte matrix may take
EXACT_DIGITS = 15               # integers below 10^15 are exact in float64, and so are 10^0..10^22
INTEGER_POWERS = 10 ** np.arange(EXACT_DIGITS + 1, dtype=np.int64)
POWERS_OF_TEN = np.array([float(10 ** k) for k in range(EXACT_DIGITS + 1)])   # exact, from Python ints


@dataclass(frozen=True)
class Fields:
    data: np.ndarray     # the body's bytes (uint8), without its trailing line ends, then MAX_CELL_BYTES NULs
    starts: np.ndarray   # (lines, width): where each cell begins in data
    ends: np.ndarray     # (lines, width): where it ends (exclusive)

    @property
    def lines(self) -> int:
        return int(self.starts.shape[0])

    @property
    def width(self) -> int:
        return int(self.starts.shape[1])

    def line(self, index: int) -> list[str]:
        start, end = int(self.starts[index, 0]), int(self.ends[index, -1])
        return self.data[start:end].tobytes().decode("ascii").split(",")

    def _cells(self, column: int, first_row: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, longest) bytes of a column, each cell left-aligned and padded with NUL, and its lengths."""
        starts, ends = self.starts[first_row:, column], self.ends[first_row:, column]
        lengths = ends - starts
        longest = int(lengths.max()) if len(lengths) else 0
        if longest > MAX_CELL_BYTES or len(lengths) * max(longest, 1) > MAX_PADDED_BYTES:
            return None
        width = max(longest, 1)
        # each cell's bytes and what follows it (data ends in MAX_CELL_BYTES NULs), the rest zeroed
        grid: np.ndarray = np.lib.stride_tricks.sliding_window_view(self.data, width)[starts]
        grid[np.arange(width) >= lengths[:, None]] = 0
        return grid, lengths

    def strings(self, column: int, first_row: int = 0) -> np.ndarray | None:
        cells = self._cells(column, first_row)
        if cells is None:
            return None
        grid, _ = cells
        values, inverse = np.unique(grid.view(f"S{grid.shape[1]}").ravel(), return_inverse=True)
        texts = np.empty(len(values), dtype=object)
        texts[:] = [value.decode("ascii") for value in values.tolist()]
        out: np.ndarray = texts[inverse.ravel()]
        return out

    def numbers(self, column: int, first_row: int = 0) -> np.ndarray | None:
        """float64, equal to float() of each cell; None when a cell is missing (empty or blank: the caller
        then reads the column as strings, which preprocessing reads as it always has) or does not read as a
        finite number (the caller's csv-module path then raises what it always has)."""
        cells = self._cells(column, first_row)
        if cells is None:
            return None
        grid, lengths = cells
        if (lengths == 0).any():
            return None
        if int(lengths.max()) <= EXACT_DIGITS:
            # the common column, unsigned integers only: each digit's place value from its position
            shifted = grid - np.uint8(ZERO)   # wraps below "0": only digits stay under 10
            digit = shifted < 10
            if (digit | (grid == 0)).all():
                places = lengths[:, None] - 1 - np.arange(grid.shape[1])
                whole: np.ndarray = (np.where(digit, shifted, 0) * INTEGER_POWERS[np.maximum(places, 0)]).sum(axis=1)
                return whole.astype(np.float64)
        digit = (grid >= ZERO) & (grid <= NINE)
        dot = grid == DOT
        sign = ((grid[:, 0] == MINUS) | (grid[:, 0] == PLUS))
        padding = grid == 0
        ndigits = digit.sum(axis=1)
        plain = ((digit | dot | padding).all(axis=1) | (sign & (digit | dot | padding)[:, 1:].all(axis=1))) \
            & (dot.sum(axis=1) <= 1) & (ndigits >= 1) & (ndigits <= EXACT_DIGITS)
        # the place value of each digit: 10 ** (digits to its right)
        right: np.ndarray = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - digit
        powers = 10 ** np.minimum(right, EXACT_DIGITS).astype(np.int64)
        mantissa = np.where(digit, (grid.astype(np.int64) - ZERO) * powers, 0).sum(axis=1)
        after_dot = np.where(dot.any(axis=1), (digit & (np.cumsum(dot, axis=1) > 0)).sum(axis=1), 0)
        values = mantissa.astype(np.float64) / POWERS_OF_TEN[np.minimum(after_dot, EXACT_DIGITS)]
        values = np.where(grid[:, 0] == MINUS, -values, values)
        other = np.flatnonzero(~plain)
        if len(other):
            blank = ((grid[other] == SPACE) | (grid[other] == 0)).all(axis=1)
            if blank.any():
                return None
            try:   # numpy's bytes-to-float cast parses as float() does, "1e5", " 7 ", "1_000" included
                values[other] = grid[other].view(f"S{grid.shape[1]}").ravel().astype(np.float64)
            except ValueError:
                return None
        if not np.isfinite(values).all():
            return None
        out: np.ndarray = values
        return out


def split(body: bytes) -> Fields | None:
    """The body's cells, or None when it is not a CSV this module can read exactly as csv.reader does."""
    if not body.isascii() or b'"' in body or b"\x00" in body:
        return None
    if b"\r" in body:
        if body.count(b"\r") != body.count(b"\r\n"):   # a lone CR is a line end to csv.reader
            return None
        body = body.replace(b"\r\n", b"\n")
    content = body.rstrip(b"\n")
    if not content or content.startswith(b"\n") or b"\n\n" in content:   # an empty line: a row of no cells
        return None
    padded = np.frombuffer(content + bytes(MAX_CELL_BYTES), dtype=np.uint8)
    data = padded[:len(content)]
    separators = np.flatnonzero((data == COMMA) | (data == NEWLINE))
    line_ends = data[separators] == NEWLINE
    lines = int(line_ends.sum()) + 1
    if (len(separators) + 1) % lines:
        return None
    width = (len(separators) + 1) // lines
    ends = np.append(separators, len(data)).reshape(lines, width)
    is_line_end = np.append(line_ends, True).reshape(lines, width)
    if not is_line_end[:, -1].all() or is_line_end[:, :-1].any():   # some line has another field count
        return None
    starts = np.empty_like(ends)
    starts.flat[0] = 0
    starts.flat[1:] = ends.flat[:-1] + 1
    return Fields(padded, starts, ends)
