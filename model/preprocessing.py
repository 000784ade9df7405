"""Turns a table into the float matrix the network sees, and the target into what it learns.

Everything here is fitted on the training split only and saved in the artifact, so serving needs
nothing else. The encoding, in schema order:
- numeric feature: (x - mean) / std; a missing value becomes the training mean (0 after scaling);
- categorical feature: one-hot over the levels seen in training, plus a first "unknown" slot that takes
  missing values and levels never seen in training;
- target: optional log (prices are positive and their errors multiplicative), then standardised;
  `decode_target` inverts both, so predictions come out in the target's own units.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import DataError, shown
from model.schema import Kind, Schema, as_float_column, canonical_category, category_levels, is_missing
from model.table import Cell, Table

TARGET_TRANSFORMS = ("none", "log")
FLOAT32_MAX = float(np.finfo(np.float32).max)
EXP_SAFE = 709.0   # exp of a float64 below it is finite: no overflow to guard against


@dataclass(frozen=True)
class Preprocessor:
    schema: Schema
    numeric: dict[str, tuple[float, float]]        # name -> (mean, std)
    categories: dict[str, tuple[str, ...]]          # name -> levels; slot 0 is "unknown"
    target_transform: str
    target_scale: tuple[float, float]               # (mean, std) after the transform

    @property
    def n_inputs(self) -> int:
        return sum(1 if f.kind is Kind.NUMERIC else 1 + len(self.categories[f.name])
                   for f in self.schema.features)

    @property
    def one_hot_blocks(self) -> tuple[tuple[int, int], ...]:
        """Each categorical feature's columns in encode's matrix as (first column, width): every row has
        exactly one 1 there, in the unknown slot or its level's."""
        return tuple((position, 1 + len(slots)) for _, position, slots in self._encoding.categorical)

    def encode(self, table: Table) -> np.ndarray:
        """The (rows, n_inputs) float32 matrix for `table`, which must hold every feature column.

        Written into one preallocated matrix: the numeric columns converted and scaled together (one
        conversion for all of them; a column that fails it, or holds a missing value, goes through
        as_float_column on its own, in schema order, so errors come out as they always have), and each
        categorical column as one 1 per row set by index (a per-call identity matrix np.eye(levels) cost
        time that grew with the levels). Each distinct cell is looked up once per call, so a large
        request pays per row only a dict lookup. Same values, bit for bit, as the block-by-block
        encoding this replaced (tests/model/test_preprocessing.py keeps that encoding as the reference).
        """
        plan = self._encoding
        rows = table.n_rows
        out = np.zeros((rows, plan.width), dtype=np.float32)
        if plan.numeric_names:
            # a finite value beyond float32's range becomes inf here, and its prediction a non-finite number
            # that serving refuses with the row (container/serving): no warning needed on the way
            with np.errstate(over="ignore"):
                out[:, plan.numeric_positions] = self._scaled_numbers(table, plan)
        every_row = np.arange(rows)
        for name, position, index in plan.categorical:
            out[every_row, position + _slots(table.columns[name], index)] = 1.0
        return out

    def encode_compact(self, table: Table) -> tuple[np.ndarray, np.ndarray]:
        """encode's matrix in two parts, for rows that keep their one-hot blocks as column numbers
        (model/onehot_rows.py): the numeric columns' values, (rows, numeric features) float32, and per
        categorical feature the column of the row's 1, (rows, categorical features) int64. The same values
        as encode's, and the same errors."""
        plan = self._encoding
        rows = table.n_rows
        numbers = np.zeros((rows, len(plan.numeric_names)), dtype=np.float32)
        if plan.numeric_names:
            with np.errstate(over="ignore"):   # as in encode
                numbers[:] = self._scaled_numbers(table, plan)
        hot = np.empty((rows, len(plan.categorical)), dtype=np.int64)
        for j, (name, position, index) in enumerate(plan.categorical):
            hot[:, j] = position + _slots(table.columns[name], index)
        return numbers, hot

    def encode_row(self, cells: Sequence[Cell]) -> list[float] | None:
        """What `encode` makes of a one-row table holding `cells` (one per feature, in schema order): a list
        of n_inputs floats that are encode's bits once rounded to float32 (`np.array([values], np.float32)`;
        Regressor.predict_row takes the list itself). Or None for a row that needs encode's general
        handling: a numeric cell that is missing, not a finite number, or beyond float32 once scaled; a
        category not spelled exactly as a training level (unknown, missing, or another spelling such as
        " 1" or 1.0). The caller builds a Table for a None.

        Plain Python arithmetic, no numpy call: float() accepts and rounds exactly what encode's numpy
        conversion of the same cells does (it calls float() on each), and float64 subtraction and division
        round the same in Python as in numpy. A single-row request spends ~7 us here where encode and its
        Table cost ~25 us; more in a serving worker, where a dozen numpy calls run from cold caches."""
        plan = self._encoding
        vector = [0.0] * plan.width
        for index, position, mean, std in plan.numeric_cells:
            try:
                scaled = (float(cells[index]) - mean) / std   # type: ignore[arg-type]  # None: TypeError
            except (TypeError, ValueError, OverflowError):
                return None
            if not -FLOAT32_MAX <= scaled <= FLOAT32_MAX:   # nan and inf too
                return None
            vector[position] = scaled
        for index, position, slots in plan.exact_levels:
            cell = cells[index]
            slot = slots.get(cell) if isinstance(cell, str) else None
            if slot is None:
                return None
            vector[position + slot] = 1.0
        return vector

    def _scaled_numbers(self, table: Table, plan: _EncodingPlan) -> np.ndarray:
        """(rows, numeric features) float64, scaled; a missing value is 0 (the training mean)."""
        names = plan.numeric_names
        try:   # one conversion for all columns: the same float() per cell as as_float_column's astype
            values = np.array([table.columns[name] for name in names], dtype=np.float64).T
            if np.isfinite(values).all():
                scaled: np.ndarray = (values - plan.means) / plan.stds
                return scaled
        except (TypeError, ValueError, OverflowError):   # as_float_column below raises what it always did
            pass
        values = np.stack([as_float_column(table, name) for name in names], axis=1)
        return np.where(np.isnan(values), 0.0, (values - plan.means) / plan.stds)

    @functools.cached_property
    def _encoding(self) -> _EncodingPlan:
        """Where each feature's columns start, and each category's slot; made on first use and kept."""
        numeric_names, numeric_cells, numeric_positions, categorical, exact_levels = [], [], [], [], []
        position = 0
        for index, feature in enumerate(self.schema.features):
            if feature.kind is Kind.NUMERIC:
                numeric_names.append(feature.name)
                numeric_cells.append((index, position, *self.numeric[feature.name]))
                numeric_positions.append(position)
                position += 1
            else:
                levels = self.categories[feature.name]
                slots = {level: slot for slot, level in enumerate(levels, start=1)}
                categorical.append((feature.name, position, slots))
                # the spellings _slot maps to a level unchanged: a level is stored in its canonical form
                exact_levels.append((index, position, {level: slot for level, slot in slots.items()
                                                       if canonical_category(level) == level}))
                position += 1 + len(levels)
        return _EncodingPlan(position, tuple(numeric_names), np.array(numeric_positions, dtype=np.int64),
                             np.array([self.numeric[name][0] for name in numeric_names], dtype=np.float64),
                             np.array([self.numeric[name][1] for name in numeric_names], dtype=np.float64),
                             tuple(categorical), tuple(numeric_cells), tuple(exact_levels))

    def encode_target(self, table: Table) -> np.ndarray:
        return ((self._transform(target_values(table, self.schema.target, self.target_transform))
                 - self.target_scale[0]) / self.target_scale[1]).astype(np.float32)

    def decode_target(self, scaled: np.ndarray) -> np.ndarray:
        if scaled.shape == (1,) and (one := self._decode_one(float(scaled[0]))) is not None:
            return one
        return self._decode_array(scaled)

    def decode_one(self, scaled: float) -> np.ndarray:
        """decode_target of the one float32 value `scaled` (as a Python float), the same bits: shape (1,)."""
        one = self._decode_one(scaled)
        return one if one is not None else self._decode_array(np.array((scaled,), np.float32))

    def _decode_array(self, scaled: np.ndarray) -> np.ndarray:
        values = scaled.astype(np.float64) * self.target_scale[1] + self.target_scale[0]
        with np.errstate(over="ignore"):   # inf, as above: the caller judges non-finite predictions
            return np.exp(values) if self.target_transform == "log" else values

    def _decode_one(self, scaled: float) -> np.ndarray | None:
        """decode_target of one value (a single-row request), or None where exp could overflow (the array
        form guards that). The same float64 multiply and add in Python floats, where the array form costs
        four numpy calls and an errstate; exp stays numpy's (math.exp rounds differently in ~5% of cases),
        called on the Python float: ~0.1 us where exp over a one-value array costs ~0.6, and the same bits
        (tests/model/test_preprocessing.py)."""
        value = scaled * self.target_scale[1] + self.target_scale[0]
        if self.target_transform != "log":
            return np.array((value,))
        if not value < EXP_SAFE:   # nan too
            return None
        return np.array((np.exp(value),))

    def _transform(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.target_transform == "log" else values

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(),
                "numeric": {k: list(v) for k, v in self.numeric.items()},
                "categories": {k: list(v) for k, v in self.categories.items()},
                "target_transform": self.target_transform, "target_scale": list(self.target_scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(Schema.from_dict(data["schema"]),
                   {k: (float(v[0]), float(v[1])) for k, v in data["numeric"].items()},
                   {k: tuple(v) for k, v in data["categories"].items()},
                   data["target_transform"], (float(data["target_scale"][0]), float(data["target_scale"][1])))


@dataclass(frozen=True)
class _EncodingPlan:
    """Preprocessor.encode's layout: matrix width; numeric names, columns, means, stds; per categorical
    feature its name, first column (the unknown slot) and level -> slot. For encode_row: per numeric
    feature its place in schema order, column, mean and std, and per categorical feature its place, first
    column and the exact spellings that are levels."""

    width: int
    numeric_names: tuple[str, ...]
    numeric_positions: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    categorical: tuple[tuple[str, int, dict[str, int]], ...]
    numeric_cells: tuple[tuple[int, int, float, float], ...]
    exact_levels: tuple[tuple[int, int, dict[str, int]], ...]


def _slots(column: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """Every cell's slot; each distinct cell is looked up once, so a row costs only a dict lookup."""
    memo = {cell: _slot(cell, index) for cell in dict.fromkeys(column.tolist())}
    return np.fromiter(map(memo.__getitem__, column.tolist()), dtype=np.int64, count=len(column))


def _slot(cell: Any, index: dict[str, int]) -> int:
    """A categorical cell's slot: 0 (unknown) for a missing value or a level not seen in training."""
    return 0 if is_missing(cell) else index.get(canonical_category(cell), 0)


def target_values(table: Table, target: str, transform: str = "none") -> np.ndarray:
    """The target column as float64; a missing, non-numeric or (for log) non-positive value fails by row."""
    if target not in table.columns:
        raise DataError(f"the target column {target!r} is missing; the columns are {', '.join(table.names)}")
    values = table.columns[target]
    try:   # fast path: every cell is a finite number, so none is missing (None, "" and " " all fail it)
        numbers = values.astype(np.float64)
        finite = bool(np.isfinite(numbers).all())
    except (TypeError, ValueError):
        finite = False
    if not finite:   # find the culprit: a missing value first, then a word, NaN or infinity
        for i, cell in enumerate(values):
            if is_missing(cell):
                raise DataError("the target value is missing; every training row needs one",
                                row=table.label(i), column=target)
        numbers = as_float_column(table, target)
    if transform == "log" and (numbers <= 0).any():
        first = int(np.argmax(numbers <= 0))
        raise DataError(f"target_transform=log needs positive targets, got {shown(values[first])}",
                        row=table.label(first), column=target)
    return numbers


def fit_preprocessor(table: Table, schema: Schema, target_transform: str) -> Preprocessor:
    if target_transform not in TARGET_TRANSFORMS:
        raise ValueError(f"target_transform must be one of {TARGET_TRANSFORMS}, got {target_transform!r}")
    numeric: dict[str, tuple[float, float]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    for feature in schema.features:
        if feature.kind is Kind.NUMERIC:
            values = as_float_column(table, feature.name)
            present = values[~np.isnan(values)]
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 0.0
            numeric[feature.name] = (mean, std if std > 0 else 1.0)   # a constant column scales to 0
        else:
            categories[feature.name] = tuple(sorted(category_levels(table.columns[feature.name])))
    target = target_values(table, schema.target, target_transform)
    transformed = np.log(target) if target_transform == "log" else target
    std = float(transformed.std())
    return Preprocessor(schema, numeric, categories, target_transform,
                        (float(transformed.mean()), std if std > 0 else 1.0))
