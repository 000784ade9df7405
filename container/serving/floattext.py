"""float64 arrays to the text Python's repr() gives each value, made with numpy for a whole array at once.

    rows([predictions, lower], [b"", b",", b""], b"\\n")            # CSV: repr() of each value
    rows([predictions], [b"", b""], b", ", last_separator=False)   # the inside of a JSON list
    reprs(values)                                        # (len, WIDTH) uint8: each repr, NUL-padded

What it promises: each value's text is exactly repr() of the Python float (float64) it is, for every
finite float64 (the caller refuses non-finite values first: codecs._checked), so the bytes equal those of
joining the reprs with the pieces in Python. Why: repr() costs ~0.4 us a value (CPython's dtoa works with big
integers), 40 ms of a 92,000-row answer, as much as the rest of the response and decoding together.

How: repr() writes the shortest digit string that reads back as the same float64, and of those the one
nearest the value (dtoa mode 0; ties go to repr() here). For a value whose repr is positional (1e-4 <=
|x| < 1e16: the common case, every price) this finds that string with exact integer arithmetic in
float64 and int64: x * 10^k as the unevaluated sum of two float64s (Dekker's exact product; 10^k is exact
for k <= 22), scaled so that x has 17 digits before the point; then the interval of numbers that round to
x (half an ulp either side, its ends included when x's last bit is even) in those units; the largest
power of ten with a multiple inside it gives the length, the multiple nearest x the digits. Each step is
checked where it could fail to be exact, and every value outside these cases (zero, powers of two, an
exponent form, an exact tie, an inexact step) is written by repr() itself. tests/serving/
test_floattext.py compares the two on millions of values: random bits, prices, round numbers, edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WIDTH = 24                  # the longest repr of a float64: "-2.2250738585072014e-308"
DIGITS = 17                 # significant digits that always tell float64 values apart
LOWEST, HIGHEST = -4, 15    # decimal exponents written positionally by repr (others: exponent form)
SPLIT = 134217729.0         # 2^27 + 1: Veltkamp's splitting constant for float64
POWERS = np.array([float(10 ** k) for k in range(23)])      # exact: 10^k, k <= 22
POWERS_HIGH = POWERS * SPLIT - (POWERS * SPLIT - POWERS)      # their Veltkamp halves, for _product
POWERS_LOW = POWERS - POWERS_HIGH
INT_POWERS = 10 ** np.arange(DIGITS + 1, dtype=np.int64)
ZERO, DOT, MINUS = b"0.-"
CHUNK = 16384   # rows written at a time: their ~60 temporaries stay in cache (all at once: up to twice the time)


def rows(columns: Sequence[np.ndarray], pieces: Sequence[bytes], separator: bytes, *,
         last_separator: bool = True) -> bytes:
    """Per row: pieces[0], repr() of columns[0]'s value, pieces[1], ..., repr() of the last column's value,
    pieces[-1], then `separator`, which the last row goes without unless `last_separator`. Columns: float64
    of one length, finite; pieces (len(columns) + 1) and separator: ASCII text without NUL."""
    if len(pieces) != len(columns) + 1 or any(b"\x00" in piece for piece in (*pieces, separator)):
        raise ValueError("one piece before, between and after the columns, without NUL")
    count = len(columns[0]) if columns else 0
    if any(len(column) != count for column in columns):
        raise ValueError("the columns differ in length")
    blocks: list[np.ndarray] = []
    for index, piece in enumerate((*pieces, separator)):
        if piece:
            blocks.append(np.broadcast_to(np.frombuffer(piece, dtype=np.uint8), (count, len(piece))))
        if index < len(columns):
            blocks.append(reprs(columns[index]))
    grid = np.concatenate(blocks, axis=1) if blocks else np.zeros((count, 0), dtype=np.uint8)
    if not last_separator and count and separator:
        grid[-1, grid.shape[1] - len(separator):] = 0
    flat = grid.ravel()
    text: bytes = flat[flat != 0].tobytes()   # the NULs padding each value drop out
    return text


def reprs(values: np.ndarray) -> np.ndarray:
    """(len(values), WIDTH) uint8: repr() of each value left to right, NULs where it has no character
    (scattered through the row, not only at its end: rows() drops them)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    out = np.zeros((len(x), WIDTH), dtype=np.uint8)
    done = np.zeros(len(x), dtype=bool)
    for start in range(0, len(x), CHUNK):
        end = start + CHUNK
        _positional(x[start:end], out[start:end], done[start:end])
    rest = np.flatnonzero(~done)
    if len(rest):
        texts = np.array([repr(value).encode() for value in x[rest].tolist()], dtype=f"S{WIDTH}")
        out[rest] = texts.view(np.uint8).reshape(len(rest), WIDTH)
    return out


def _positional(x: np.ndarray, out: np.ndarray, done: np.ndarray) -> None:
    """Writes the rows whose repr is positional and found exactly here, and marks them done."""
    size = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):   # zero; NaN never comes (the caller refuses it)
        guess = np.floor(np.log10(size))
    usable = (guess >= LOWEST - 1) & (guess <= HIGHEST + 1)
    size = np.where(usable, size, 1.0)   # the others are written by repr(): 1.0 keeps every step in range
    guess = np.where(usable, guess, 0.0)
    fraction, exponent = np.frexp(size)   # size = fraction * 2^exponent, fraction in [0.5, 1)
    usable &= fraction != 0.5   # a power of two: the interval below it is half as wide, left to repr()
    # the decimal exponent E of size: 10^E <= size < 10^(E+1), checked exactly on N = size * 10^(16-E)
    decimal = np.clip(guess, LOWEST, HIGHEST).astype(np.int64)
    high, low = _product(size, 16 - decimal)
    below = (high < 1e16) | ((high == 1e16) & (low < 0))
    above = (high > 1e17) | ((high == 1e17) & (low >= 0))
    if below.any() or above.any():   # log10 rounded across a power of ten: once more with the neighbour
        decimal = np.clip(decimal - below + above, LOWEST, HIGHEST)
        high, low = _product(size, 16 - decimal)
        below = (high < 1e16) | ((high == 1e16) & (low < 0))
        above = (high > 1e17) | ((high == 1e17) & (low >= 0))
    usable &= ~below & ~above
    # N = whole + part exactly, whole an integer (int64), part in [0, 1)
    floor_low = np.floor(low)
    whole = high.astype(np.int64) + floor_low.astype(np.int64)
    part = low - floor_low
    # half an ulp of size in the same units: 10^k * 2^(exponent - 54), a float64 exactly
    half = np.ldexp(POWERS[16 - decimal], exponent - 54)
    upper, upper_exact = _sum(part, half)
    lower, lower_exact = _sum(part, -half)
    usable &= upper_exact & lower_exact
    # the integers in units of N that read back as size: ends included when the mantissa is even
    odd = (np.ldexp(fraction, 53).astype(np.int64) & 1).astype(bool)
    top = whole + np.floor(upper).astype(np.int64) - ((upper == np.floor(upper)) & odd)
    bottom = whole + np.ceil(lower).astype(np.int64) + ((lower == np.ceil(lower)) & odd)
    # the largest power of ten with a multiple between bottom and top: the digits that can be dropped
    dropped = np.zeros(len(x), dtype=np.int64)
    for power in range(1, DIGITS):
        fits = (top // INT_POWERS[power]) * INT_POWERS[power] >= bottom
        if not fits.any():
            break
        dropped += fits   # a multiple of 10^p is one of 10^(p-1): the powers that fit are 1..dropped
    # the multiple of 10^dropped nearest N
    unit = INT_POWERS[dropped]
    quotient = whole // unit   # np.divmod takes ~20x as long
    remainder = whole - quotient * unit
    middle = unit // 2
    one = dropped == 0
    up = np.where(one, part > 0.5, (remainder > middle) | ((remainder == middle) & (part > 0)))
    tie = np.where(one, part == 0.5, (remainder == middle) & (part == 0))
    digits = (quotient + up) * unit
    usable &= ~tie & (digits >= bottom) & (digits <= top) & (digits < INT_POWERS[DIGITS])
    if usable.all():   # the common case: no row to pick out
        _write(out, slice(None), np.signbit(x), decimal, digits, DIGITS - dropped)
        done[:] = True
        return
    rows = np.flatnonzero(usable)
    if len(rows):
        _write(out, rows, np.signbit(x[rows]), decimal[rows], digits[rows], DIGITS - dropped[rows])
        done[rows] = True


def _write(out: np.ndarray, rows: np.ndarray | slice, negative: np.ndarray, decimal: np.ndarray, digits: np.ndarray,
           significant: np.ndarray) -> None:
    """Positional text: "-" or nothing, then for E >= 0 the first E+1 digits, ".", the rest down to the
    last significant one (at least one); for E < 0 "0.", -E-1 zeros, the significant digits. Built place
    by place, each place one contiguous array over the rows (row by row, numpy's per-row overhead on rows
    of a few bytes cost more than the arithmetic)."""
    count = len(digits)
    # a value below 1 is written as 0.000ddd: its digits shifted right by -E behind leading zeros, after
    # which every row is laid out as one with E >= 0
    decimal = decimal.astype(np.int8)   # the small numbers per row as bytes: 8x less memory to go through
    shift = np.maximum(-decimal, 0)
    places = DIGITS - LOWEST   # 17 digits and up to 4 leading zeros
    chars = np.zeros((places, count), dtype=np.uint8)
    high = (digits // 10 ** 9).astype(np.uint32)   # below 10^8, then the last nine digits: uint32 is cheap
    low = (digits - high.astype(np.int64) * 10 ** 9).astype(np.uint32)
    for place, part in ((range(DIGITS - 1, DIGITS - 10, -1), low), (range(DIGITS - 10, -1, -1), high)):
        for index in place:
            rest = part // np.uint32(10)
            chars[index] = part - rest * np.uint32(10)
            part = rest
    kept = np.where(decimal >= 0, np.maximum(significant, decimal + 2), significant).astype(np.int8)
    chars[:DIGITS] += np.uint8(ZERO)
    for index in range(int(kept.min()), DIGITS):   # a digit past the last significant one is no character
        chars[index] *= index < kept               # (but one stays after the point)
    if shift.any():
        for index in range(places - 1, -1, -1):
            moved = np.zeros(count, dtype=np.uint8)
            for by in range(1, -LOWEST + 1):
                if index >= by:
                    moved = np.where(shift == by, chars[index - by], moved)
            chars[index] = np.where(shift == 0, chars[index], np.where(index < shift, ZERO, moved))
    point = np.maximum(decimal, 0) + np.int8(2)   # the place of "." in the text
    first, last = int(point.min()), int(point.max())
    text = np.zeros((WIDTH, count), dtype=np.uint8)
    text[0] = np.where(negative, MINUS, 0)
    text[1:first] = chars[:first - 1]                      # before the point in every row
    text[last + 1:places + 2] = chars[last - 1:places]     # after it in every row
    for column in range(first, last + 1):                  # the point in some rows
        text[column] = np.where(column < point, chars[column - 1],
                                np.where(column == point, DOT, chars[column - 2]))
    if isinstance(rows, slice):
        out[:] = text.T
    else:
        out[rows] = text.T


def _product(a: np.ndarray, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a * 10^power as high + low exactly (Dekker's product; no overflow or underflow in this module's
    range)."""
    high = a * POWERS[power]
    a_big = a * SPLIT
    a_high = a_big - (a_big - a)
    a_low = a - a_high
    b_high, b_low = POWERS_HIGH[power], POWERS_LOW[power]
    low = ((a_high * b_high - high) + a_high * b_low + a_low * b_high) + a_low * b_low
    return high, low


def _sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b rounded, and whether that is exact (Knuth's two-sum: the rounding error is zero)."""
    total = a + b
    b_part = total - a
    error = (a - (total - b_part)) + (b - b_part)
    return total, error == 0
