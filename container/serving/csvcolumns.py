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
vectorised byte operations: field boundaries come from one scan for separators, kept column by column
(a column's positions contiguous: reading them strided from a row-major matrix cost 3-10x as much); a
column of unsigned integers (the common one) is read right to left, one gathered byte per digit place,
accumulated exactly (below 10^15); other numbers are read digit by digit as integers and divided once by
a power of ten, which is how float() rounds such a decimal too (both operands exact, one correctly
rounded IEEE division); the rest (an exponent, more digits, spaces, "1_000") go through numpy's
bytes-to-float conversion, which calls the same parser as float(); a string column is made of one str
per distinct value, found by sorting the cells as integers where they fit in eight bytes. The 6 MiB
batch: ~10 ms to split, ~12 ms for its 23 columns (the row-major version before took ~100 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMA, NEWLINE, QUOTE, DOT, MINUS, PLUS, SPACE, ZERO, NINE = b',\n".-+ 09'
MAX_CELL_BYTES = 256            # a longer cell (never a number or a category) leaves it to csv.reader
PAD = MAX_CELL_BYTES            # NULs on both sides of the content: a cell's window never leaves data
MAX_PADDED_BYTES = 64 << 20     # the most one column's padded (rows, longest cell) byte matrix may take
EXACT_DIGITS = 15               # integers below 10^15 are exact in float64, and so are 10^0..10^22
KEY_BYTES = 8                   # string cells this short are told apart as one uint64 each
LOW_BYTES = np.array([(1 << 8 * n) - 1 for n in range(KEY_BYTES + 1)], dtype="<u8")   # keeps n bytes
POWERS_OF_TEN = np.array([float(10 ** k) for k in range(EXACT_DIGITS + 1)])   # exact, from Python ints


@dataclass(frozen=True)
class Fields:
    data: np.ndarray     # uint8: PAD NULs, the body's bytes without its trailing line ends, PAD NULs
    ends: np.ndarray     # (width, lines), each column contiguous: where each cell ends in data (exclusive)

    @property
    def lines(self) -> int:
        return int(self.ends.shape[1])

    @property
    def width(self) -> int:
        return int(self.ends.shape[0])

    def line(self, index: int) -> list[str]:
        start = int(self.ends[-1, index - 1]) + 1 if index else PAD
        end = int(self.ends[-1, index])
        return self.data[start:end].tobytes().decode("ascii").split(",")

    def _starts(self, column: int, first_row: int) -> np.ndarray:
        """Where the column's cells begin: one past the separator before each (kept as ends only, as a
        request's memory is mostly these position arrays)."""
        starts: np.ndarray
        if column:
            starts = self.ends[column - 1, first_row:] + 1
            return starts
        if first_row:
            starts = self.ends[-1, first_row - 1:-1] + 1
            return starts
        starts = np.empty_like(self.ends[0])
        starts[0] = PAD
        np.add(self.ends[-1, :-1], 1, out=starts[1:])
        return starts

    def _cells(self, column: int, first_row: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, longest) bytes of a column, each cell left-aligned and padded with NUL, and its lengths."""
        starts = self._starts(column, first_row)
        lengths = self.ends[column, first_row:] - starts
        longest = int(lengths.max()) if len(lengths) else 0
        if longest > MAX_CELL_BYTES or len(lengths) * max(longest, 1) > MAX_PADDED_BYTES:
            return None
        width = max(longest, 1)
        # each cell's bytes and what follows it (data ends in PAD NULs), the rest zeroed
        grid: np.ndarray = np.lib.stride_tricks.sliding_window_view(self.data, width)[starts]
        if int(lengths.min()) < width:
            grid *= np.arange(width) < lengths[:, None]
        return grid, lengths

    def strings(self, column: int, first_row: int = 0) -> np.ndarray | None:
        starts = self._starts(column, first_row)
        lengths = self.ends[column, first_row:] - starts
        if len(lengths) and int(lengths.max()) <= KEY_BYTES:
            # each cell as one integer: the KEY_BYTES bytes from its start, those past its end zeroed
            # (sorting integers is ~10x faster than sorting byte strings); no cell holds a NUL, so the S
            # type's dropping of trailing NULs gives back each cell
            words = np.ndarray((len(self.data) - KEY_BYTES + 1,), "<u8", self.data, 0, (1,))
            keys, inverse = np.unique(words[starts] & LOW_BYTES[lengths], return_inverse=True)
            values = keys.astype("<u8").view(f"S{KEY_BYTES}")
        else:
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
        ends = self.ends[column, first_row:]
        lengths = ends - self._starts(column, first_row)
        if not len(lengths) or int(lengths.min()) == 0:
            return None
        longest = int(lengths.max())
        if longest <= EXACT_DIGITS:
            whole = self._unsigned(ends, lengths, longest)
            if whole is not None:
                return whole
        return self._decimals(column, first_row)

    def _unsigned(self, ends: np.ndarray, lengths: np.ndarray, longest: int) -> np.ndarray | None:
        """The column read as unsigned integers of at most EXACT_DIGITS digits, or None if it is not one:
        the digits right-aligned at each cell's end, the highest place first (Horner's rule, every step an
        exact integer in float64)."""
        values: np.ndarray | None = None
        shortest = int(lengths.min())
        for place in range(longest, 0, -1):
            digit = self.data[ends - place] - np.uint8(ZERO)   # wraps below "0": only digits stay under 10
            if place > shortest:
                digit *= lengths >= place   # a shorter cell has no digit here (the byte is not its own)
            if not (digit < 10).all():
                return None
            if values is None:
                values = digit.astype(np.float64)
            else:
                values *= 10
                values += digit
        return values

    def _decimals(self, column: int, first_row: int) -> np.ndarray | None:
        """numbers() for a column with a sign, a decimal point or anything float() reads."""
        cells = self._cells(column, first_row)
        if cells is None:
            return None
        grid, _ = cells
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
    size = _stripped_size(body)
    if not size:
        return None
    # one copy of the body, with the pads (rstrip and + would make three)
    data = np.frombuffer(b"".join((bytes(PAD), memoryview(body)[:size], bytes(PAD))), dtype=np.uint8)
    is_separator = data == COMMA
    is_separator |= data == NEWLINE
    separators = np.flatnonzero(is_separator)   # the pads hold neither
    line_ends = data[separators] == NEWLINE
    lines = int(np.count_nonzero(line_ends)) + 1
    if (len(separators) + 1) % lines:
        return None
    width = (len(separators) + 1) // lines
    # every line has `width` fields: the lines - 1 newlines are exactly the separators ending a line
    if not line_ends[width - 1::width].all():
        return None
    # the cell ends column by column (a column's positions contiguous), int32 where the body allows (cast
    # before the transposing copy, which then moves 4-byte items: half the time of casting within it)
    if len(data) < 1 << 31:
        separators = separators.astype(np.int32)
    ends = np.empty((width, lines), dtype=separators.dtype)
    whole = (lines - 1) * width   # the separators of every line but the last, which ends at the content's end
    ends[:, :-1] = separators[:whole].reshape(lines - 1, width).T
    ends[:-1, -1] = separators[whole:]
    ends[-1, -1] = PAD + size
    # an empty line is a row of no cells to csv.reader: with more columns the field count refused it above
    if width == 1 and (int(ends[0, 0]) == PAD or (np.diff(ends[0]) == 1).any()):
        return None
    return Fields(data, ends)


def _stripped_size(body: bytes) -> int:
    """len(body.rstrip(b"\\n")), looking at the end only (no copy of the body)."""
    tail = body[-PAD:].rstrip(b"\n")
    if tail or len(body) <= PAD:
        return len(body) - min(len(body), PAD) + len(tail)
    return len(body.rstrip(b"\n"))   # more than PAD newlines at the end
