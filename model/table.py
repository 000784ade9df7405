"""Table: named columns of raw cell values, the one shape every reader and codec produces.

Cells stay raw (str, int, float, bool or None) until preprocessing interprets them with the schema, so
a reader never has to guess types and an error can quote the value it rejected. Each row can carry a
label ("train/cars.csv line 18") that error messages use to point at the source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.errors import DataError

Cell = str | int | float | bool | None


@dataclass(frozen=True)
class Table:
    """Columns in order; every column is a 1-D object array of the same length."""

    columns: dict[str, np.ndarray]
    row_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = {len(values) for values in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns differ in length: {sorted(lengths)}")

    @classmethod
    def from_rows(cls, names: Sequence[str], rows: Sequence[Sequence[Cell]],
                  row_labels: Sequence[str] | None = None) -> Table:
        """Builds a table from positional rows; every row must have exactly len(names) cells."""
        for name in names:
            if list(names).count(name) > 1:   # a dict of columns would silently keep only the last one
                raise DataError(f"the column {name!r} is named twice", column=name)
        width = len(names)
        for index, row in enumerate(rows):
            if len(row) != width:
                label = row_labels[index] if row_labels is not None else f"row {index + 1}"
                raise DataError(f"expected {width} values, found {len(row)}", row=label)
        grid = np.empty((len(rows), width), dtype=object)
        if rows:
            grid[:] = rows
        labels = np.asarray(row_labels, dtype=object) if row_labels is not None else None
        return cls({name: grid[:, i] for i, name in enumerate(names)}, labels)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Cell]],
                     row_labels: Sequence[str] | None = None) -> Table:
        """Builds a table from mappings; a key absent from a record reads as a missing value."""
        names: dict[str, None] = {}
        for record in records:
            names.update(dict.fromkeys(record))
        rows = [[record.get(name) for name in names] for record in records]
        return cls.from_rows(list(names), rows, row_labels)

    @classmethod
    def concat(cls, tables: Iterable[Table]) -> Table:
        """Stacks tables that have the same columns in the same order."""
        parts = list(tables)
        names = list(parts[0].columns)
        columns = {name: np.concatenate([part.columns[name] for part in parts]) for name in names}
        labels = np.concatenate([part.labels() for part in parts])
        return cls(columns, labels)

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def labels(self) -> np.ndarray:
        """One label per row: the source position if known, else 'row N' (1-based)."""
        if self.row_labels is not None:
            return self.row_labels
        return _row_numbers(np.arange(self.n_rows))

    def label(self, index: int) -> str:
        return str(self.row_labels[index]) if self.row_labels is not None else f"row {index + 1}"

    def take(self, indices: np.ndarray) -> Table:
        # without source labels, only the taken rows' "row N" labels are made (not all rows' first)
        labels = self.row_labels[indices] if self.row_labels is not None else _row_numbers(
            np.arange(self.n_rows)[indices])
        return Table({name: values[indices] for name, values in self.columns.items()}, labels)

    def select(self, names: Sequence[str]) -> Table:
        return Table({name: self.columns[name] for name in names}, self.row_labels)

    def without(self, name: str) -> Table:
        return Table({key: values for key, values in self.columns.items() if key != name}, self.row_labels)

    def fingerprint(self) -> str:
        """sha256 of the column names and cell values, independent of row labels and file layout.

        A column of cells (an object array: what every reader gives) is hashed as repr(cell) + 0x1e per
        cell; model/streaming.py hashes streamed columns with the same bytes. A numeric array (bool, int or
        float: built in code) is hashed as its dtype and raw values: formatting every number with repr
        took ~75% of fitting the linear model on 1M rows."""
        digest = hashlib.sha256()
        for name, values in self.columns.items():
            digest.update(name.encode() + b"\x1f")
            if values.dtype.kind in "biuf":
                digest.update(b"\x1d" + values.dtype.str.encode() + b"\x1d")
                digest.update(np.ascontiguousarray(values).data)
                continue
            # joined first: one update per column, not one per cell
            cells = values if values.dtype == object else values.tolist()
            digest.update(("\x1e".join(map(repr, cells)) + "\x1e" if len(cells) else "").encode())
        return digest.hexdigest()


def _row_numbers(indices: np.ndarray) -> np.ndarray:
    """The labels "row N" (1-based) of 0-based row indices, as an object array."""
    labels = np.empty(len(indices), dtype=object)
    labels[:] = list(map("row {}".format, (indices + 1).tolist()))
    return labels
