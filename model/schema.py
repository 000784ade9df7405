"""Which columns are features, and of what kind: inferred from the training table, stored in the artifact.

A column whose every present value reads as a number is numeric; any other column is categorical, and
`categorical_columns` forces a column to be categorical (0/1 flags, integer codes). A column that is
mostly numbers with a few stray words is almost always a data error, so it fails with the first bad row
rather than silently turning into a category.

Missing values are None, an empty string or whitespace: they are allowed in features (see
preprocessing.py for what they become) and never in the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from model.errors import DataError, shown
from model.table import Cell, Table


class Kind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind


@dataclass(frozen=True)
class Schema:
    """The target and the features in training column order (the order positional inputs follow)."""

    target: str
    features: tuple[Feature, ...]

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target,
                "features": [{"name": f.name, "kind": f.kind.value} for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        return cls(data["target"], tuple(Feature(f["name"], Kind(f["kind"])) for f in data["features"]))


def is_missing(cell: Cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def parse_number(cell: Cell) -> float | None:
    """The cell as a float, or None when it is not a number (missing cells are not numbers either)."""
    if isinstance(cell, bool | int | float):
        return float(cell)
    if isinstance(cell, str):
        try:
            return float(cell)
        except ValueError:
            return None
    return None


def canonical_category(cell: Cell) -> str:
    """One spelling per category, so that 1, 1.0, "1" and " 1 " from CSV or JSON are the same level."""
    number = parse_number(cell)
    if number is not None and math.isfinite(number):
        return str(int(number)) if number.is_integer() else repr(number)
    return str(cell).strip()


def category_levels(values: np.ndarray) -> set[str]:
    """The canonical spellings of a column's present cells. Each distinct cell is spelled once: a
    postcode-like column of 200k rows holds a few hundred."""
    return {canonical_category(cell) for cell in dict.fromkeys(values.tolist()) if not is_missing(cell)}


def infer_schema(table: Table, target: str | None, categorical_columns: Sequence[str] = (),
                 drop_columns: Sequence[str] = (), infer_kinds: bool = True) -> Schema:
    """Schema of `table`; `target` defaults to the first column (SageMaker's headerless-CSV convention).
    With infer_kinds=False only the roles are checked: columns not forced categorical are called numeric
    (model/agreed.py then decides their kinds from every process's rows)."""
    names = table.names
    if not names:
        raise DataError("the training data has no columns")
    target = names[0] if target is None else target
    for role, wanted in (("target", [target]), ("categorical_columns", categorical_columns),
                         ("drop_columns", drop_columns)):
        for name in wanted:
            if name not in table.columns:
                raise DataError(f"{role} names column {name!r}, which is not in the data; the columns are "
                                f"{', '.join(names)}")
    features = []
    for name in names:
        if name == target or name in drop_columns:
            continue
        forced = name in categorical_columns
        kind = Kind.CATEGORICAL if forced else _infer_kind(table, name) if infer_kinds else Kind.NUMERIC
        features.append(Feature(name, kind))
    if not features:
        raise DataError(f"no feature columns left besides the target {target!r}")
    return Schema(target, tuple(features))


def _infer_kind(table: Table, name: str) -> Kind:
    values = table.columns[name]
    try:   # fast path: every cell converts to a float (missing None included), so none is a word
        values.astype(np.float64)
        return Kind.NUMERIC
    except (TypeError, ValueError):
        pass
    missing = _missing_cells(values)
    try:   # a numeric column with gaps: its present cells convert together
        values[~missing].astype(np.float64)
        return Kind.NUMERIC
    except (TypeError, ValueError):
        pass
    present = np.flatnonzero(~missing).tolist()
    words = [i for i in present if parse_number(values[i]) is None]
    if not words:
        return Kind.NUMERIC
    if len(words) * 2 < len(present):
        # Mostly numbers: a stray word is a typo or a unit ("12 km"), not a category.
        first = words[0]
        raise DataError(f"non-numeric value {shown(values[first])} in a column that is otherwise numeric "
                        f"({len(present) - len(words)} of {len(present)} values are numbers); fix the value "
                        "or list the column in categorical_columns", row=table.label(first), column=name)
    return Kind.CATEGORICAL


def as_float_column(table: Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for missing cells; rejects words, NaN and infinity by row."""
    values = table.columns[name]
    try:   # fast path: every cell converts and is finite; otherwise the loop below finds the culprit
        fast = values.astype(np.float64)
        if np.isfinite(fast).all():   # None converts to NaN, so missing cells also take the slow path
            return fast
    except (TypeError, ValueError):
        pass
    missing = _missing_cells(values)
    try:   # a column with gaps: the present cells convert together, the missing ones are NaN
        present = values[~missing].astype(np.float64)
        if np.isfinite(present).all():
            out = np.full(len(values), np.nan)
            out[~missing] = present
            return out
    except (TypeError, ValueError):
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, cell in enumerate(values):
        if is_missing(cell):
            out[i] = np.nan
            continue
        number = parse_number(cell)
        if number is None:
            raise DataError(f"expected a number, got {shown(cell)}", row=table.label(i), column=name)
        if not math.isfinite(number):
            raise DataError(f"{shown(cell)} is not a finite number (NaN and infinity are refused; leave the value "
                            "empty to mark it missing)", row=table.label(i), column=name)
        out[i] = number
    return out


def _missing_cells(values: np.ndarray) -> np.ndarray:
    """is_missing of every cell, as a boolean array."""
    return np.fromiter(map(is_missing, values.tolist()), dtype=bool, count=len(values))
