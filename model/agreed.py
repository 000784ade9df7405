"""The schema and the preprocessing statistics of data spread over several processes, agreed by all of them.

    schema = agreed_schema(shard, config, group)
    preprocessor = agreed_preprocessor(shard, schema, config.target_transform, group)

Each rank holds a part of the training rows; every rank must encode identically, so the column kinds, the
categorical levels and the standardisation statistics are computed over all parts together: kinds and
levels with an all-gather, means and standard deviations with two all-reduced float64 sums (the mean
first, then the squared deviations from it: the two-pass formula fit_preprocessor() uses, not the
cancellation-prone sum of squares). With one process these are exactly infer_schema() and
fit_preprocessor(); with several, the result equals theirs on the concatenated rows up to float rounding.
The rules are schema.py's: a column whose present values are all numbers is numeric; one that is mostly
numbers with a few words fails with the first word's row (the lowest rank that has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.config import TrainingConfig
from model.distributed import Group
from model.errors import DataError, shown
from model.preprocessing import Preprocessor, fit_preprocessor, target_values
from model.schema import (
    Feature,
    Kind,
    Schema,
    as_float_column,
    category_levels,
    infer_schema,
    is_missing,
    parse_number,
)
from model.table import Table


@dataclass(frozen=True)
class _Evidence:
    """What one rank saw of one column: present values, words among them, and the first word."""

    present: int
    words: int
    first_word: tuple[str, str] | None   # (row label, the value as a message may show it)


def agreed_schema(table: Table, config: TrainingConfig, group: Group) -> Schema:
    if not group.distributed:
        return infer_schema(table, config.target, config.categorical_columns, config.drop_columns)
    names = group.gather(table.names)
    for rank, theirs in enumerate(names):
        if theirs != names[0]:
            raise DataError(f"{group.names[rank]} read columns {', '.join(theirs)} but {group.names[0]} read "
                            f"{', '.join(names[0])}; every host's data must have the same columns")
    # The roles (target, drop_columns, ...) are checked on one table: every rank has the same columns.
    reference = group.agree(lambda: infer_schema(table, config.target, config.categorical_columns,
                                                  config.drop_columns, infer_kinds=False))
    evidence = group.gather({f.name: _evidence(table, f.name) for f in reference.features
                             if f.kind is not Kind.CATEGORICAL})
    features = []
    for feature in reference.features:
        if feature.kind is Kind.CATEGORICAL:   # forced by categorical_columns
            features.append(feature)
            continue
        seen = [rank_evidence[feature.name] for rank_evidence in evidence]
        present, words = sum(e.present for e in seen), sum(e.words for e in seen)
        if words and words * 2 < present:
            rank, (label, value) = next((rank, e.first_word) for rank, e in enumerate(seen) if e.first_word)
            raise DataError(f"non-numeric value {value} in a column that is otherwise numeric ({present - words} "
                            f"of {present} values are numbers); fix the value or list the column in "
                            "categorical_columns", row=f"{group.names[rank]}: {label}", column=feature.name)
        features.append(Feature(feature.name, Kind.CATEGORICAL if words else Kind.NUMERIC))
    return Schema(reference.target, tuple(features))


def agreed_preprocessor(table: Table, schema: Schema, target_transform: str, group: Group) -> Preprocessor:
    if not group.distributed:
        return fit_preprocessor(table, schema, target_transform)
    numeric_names = [f.name for f in schema.features if f.kind is Kind.NUMERIC]
    columns = group.agree(lambda: [as_float_column(table, name) for name in numeric_names])
    target = group.agree(lambda: target_values(table, schema.target, target_transform))
    transformed = np.log(target) if target_transform == "log" else target
    present = [values[~np.isnan(values)] for values in columns] + [transformed]
    counts_sums = group.sum(np.array([[v.size, v.sum()] for v in present], dtype=np.float64).reshape(-1, 2))
    means = np.divide(counts_sums[:, 1], counts_sums[:, 0], out=np.zeros(len(present)),
                      where=counts_sums[:, 0] > 0)
    squares = group.sum(np.array([((v - mean) ** 2).sum() for v, mean in zip(present, means, strict=True)]))
    stds = np.sqrt(np.divide(squares, counts_sums[:, 0], out=np.zeros(len(present)), where=counts_sums[:, 0] > 0))
    scale = [(float(mean), float(std) if std > 0 else 1.0) for mean, std in zip(means, stds, strict=True)]
    categorical = [f.name for f in schema.features if f.kind is Kind.CATEGORICAL]
    levels = group.gather({name: category_levels(table.columns[name]) for name in categorical})
    categories = {name: tuple(sorted(set().union(*(rank_levels[name] for rank_levels in levels))))
                  for name in categorical}
    return Preprocessor(schema, dict(zip(numeric_names, scale[:-1], strict=True)), categories, target_transform,
                        scale[-1])


def _evidence(table: Table, name: str) -> _Evidence:
    values = table.columns[name]
    present = [i for i, cell in enumerate(values) if not is_missing(cell)]
    words = [i for i in present if parse_number(values[i]) is None]
    first = (table.label(words[0]), shown(values[words[0]])) if words else None
    return _Evidence(len(present), len(words), first)
