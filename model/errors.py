"""Errors the model raises about the data it is given, each naming the row and the column at fault.

The container package decides what they become (a failure file and exit code when training, an HTTP 400
when serving); this module only describes what is wrong. A message names the row and the column and quotes
at most the one offending value, through `shown`, so that no failure file or log line carries a data row.
"""

MAX_QUOTED = 40   # characters of one value a message may quote
SEPARATORS = (",", ";", "\t", "|", "\n")


class DataError(ValueError):
    """The data cannot be used as given: a wrong or missing column, a bad value, an empty table."""

    def __init__(self, message: str, *, row: str | None = None, column: str | None = None) -> None:
        self.row = row
        self.column = column
        where = ", ".join(part for part in (row, f"column {column!r}" if column else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


def shown(cell: object) -> str:
    """The value as a message may show it: quoted when it is short and holds no separator; otherwise only
    described, because a long value or one holding separators may be a whole row read as one value (a file
    separated by ';' read as CSV), and a row must never reach a log line or a failure file."""
    text = str(cell)
    separator = next((s for s in SEPARATORS if s in text), None)
    if separator is None and len(repr(cell)) <= MAX_QUOTED:
        return repr(cell)
    inside = f" containing {separator!r} (a whole row read as one value? check the separator)" if separator else ""
    return f"a {len(text)}-character value{inside}"
