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

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.errors import DataError, shown
from model.schema import Kind, Schema, as_float_column, canonical_category, is_missing
from model.table import Table

TARGET_TRANSFORMS = ("none", "log")


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

    def encode(self, table: Table) -> np.ndarray:
        """The (rows, n_inputs) float32 matrix for `table`, which must hold every feature column."""
        blocks = []
        for feature in self.schema.features:
            if feature.kind is Kind.NUMERIC:
                mean, std = self.numeric[feature.name]
                values = as_float_column(table, feature.name)
                scaled = np.where(np.isnan(values), 0.0, (values - mean) / std)
                blocks.append(scaled[:, None])
            else:
                levels = self.categories[feature.name]
                index = {level: slot for slot, level in enumerate(levels, start=1)}
                slots = np.array([0 if is_missing(cell) else index.get(canonical_category(cell), 0)
                                  for cell in table.columns[feature.name]], dtype=np.int64)
                blocks.append(np.eye(1 + len(levels), dtype=np.float64)[slots])
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def encode_target(self, table: Table) -> np.ndarray:
        return ((self._transform(target_values(table, self.schema.target, self.target_transform))
                 - self.target_scale[0]) / self.target_scale[1]).astype(np.float32)

    def decode_target(self, scaled: np.ndarray) -> np.ndarray:
        values = scaled.astype(np.float64) * self.target_scale[1] + self.target_scale[0]
        return np.exp(values) if self.target_transform == "log" else values

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


def target_values(table: Table, target: str, transform: str = "none") -> np.ndarray:
    """The target column as float64; a missing, non-numeric or (for log) non-positive value fails by row."""
    if target not in table.columns:
        raise DataError(f"the target column {target!r} is missing; the columns are {', '.join(table.names)}")
    values = table.columns[target]
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
            levels = {canonical_category(c) for c in table.columns[feature.name] if not is_missing(c)}
            categories[feature.name] = tuple(sorted(levels))
    target = target_values(table, schema.target, target_transform)
    transformed = np.log(target) if target_transform == "log" else target
    std = float(transformed.std())
    return Preprocessor(schema, numeric, categories, target_transform,
                        (float(transformed.mean()), std if std > 0 else 1.0))
