"""Errors the model raises about the data it is given, each naming the row and the column at fault.

The container package decides what they become (a failure file and exit code when training, an HTTP 400
when serving); this module only describes what is wrong.
"""


class DataError(ValueError):
    """The data cannot be used as given: a wrong or missing column, a bad value, an empty table."""

    def __init__(self, message: str, *, row: str | None = None, column: str | None = None) -> None:
        self.row = row
        self.column = column
        where = ", ".join(part for part in (row, f"column {column!r}" if column else None) if part)
        super().__init__(f"{where}: {message}" if where else message)
