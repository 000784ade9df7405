"""A data-quality baseline of the training features, in the two files SageMaker Model Monitor reads.

    statistics, constraints = data_quality_baseline(table, regressor.feature_names)

Promises (the schemas are the developer guide's "Schema for Statistics (statistics.json file)" and
"Schema for Constraints (constraints.json file)", version 0):
- Only the columns named, in that order: pass the model's features, so the target (absent from inference
  requests) and drop_columns (ids, personal data) never enter a baseline.
- Each column's `inferred_type` is what a monitoring job infers from the raw values, not how the model uses
  them: Integral when every present value is a whole number, Fractional when every present value is a finite
  number, String otherwise (so a 0/1 flag listed in categorical_columns is still Integral, as the requests
  that carry it will be). A value is missing as the model reads it: null, absent or empty.
- Numeric columns: num_present, num_missing, mean, sum, std_dev (population, ddof=0), min, max, and a KLL
  distribution: 10 equal-width buckets between min and max with exact counts (the last bucket includes
  max), and a KLL sketch (k=2048, c=0.64, the parameters Model Monitor writes): below k values every value
  sits, exactly, in level 0; above it levels are compacted as KLL does (sort, keep every other item from a
  seeded random offset, promote to the next level, where each item weighs 2**level).
- String columns: num_present, num_missing, distinct_count and the count of every distinct value.
- constraints.json: name, inferred_type, completeness (share of present values), `is_non_negative` for
  numeric columns (min >= 0), and the observed values as `domains` for string columns of at most
  MAX_DOMAIN_VALUES distinct values; monitoring_config holds the documented defaults.
Everything written is an aggregate of a column; no row appears in either file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.schema import canonical_category, is_missing, parse_number
from model.table import Table

KLL_K = 2048
KLL_C = 0.64
HISTOGRAM_BUCKETS = 10
MAX_DOMAIN_VALUES = 20
MONITORING_CONFIG = {
    "evaluate_constraints": "Enabled",
    "emit_metrics": "Enabled",
    "datatype_check_threshold": 1.0,
    "domain_content_threshold": 1.0,
    "distribution_constraints": {"perform_comparison": "Enabled", "comparison_threshold": 0.1,
                                 "comparison_method": "Robust"},
}


def data_quality_baseline(table: Table, columns: Sequence[str], seed: int = 0) -> tuple[dict[str, Any],
                                                                                         dict[str, Any]]:
    """(statistics.json, constraints.json) of `columns` of `table`."""
    statistics = [_column_statistics(name, table.columns[name], seed) for name in columns]
    constraints = [_column_constraints(entry, table.n_rows) for entry in statistics]
    return ({"version": 0, "dataset": {"item_count": table.n_rows}, "features": statistics},
            {"version": 0, "features": constraints, "monitoring_config": MONITORING_CONFIG})


def _column_statistics(name: str, cells: np.ndarray, seed: int) -> dict[str, Any]:
    present = [cell for cell in cells if not is_missing(cell)]
    common = {"num_present": len(present), "num_missing": len(cells) - len(present)}
    numbers = [parse_number(cell) for cell in present]
    if present and all(number is not None and math.isfinite(number) for number in numbers):
        values = np.array(numbers, dtype=np.float64)
        integral = bool(np.all(values == np.round(values)))
        return {"name": name, "inferred_type": "Integral" if integral else "Fractional",
                "numerical_statistics": {
                    "common": common, "mean": float(values.mean()), "sum": float(values.sum()),
                    "std_dev": float(values.std()), "min": float(values.min()), "max": float(values.max()),
                    "distribution": {"kll": {"buckets": _buckets(values),
                                             "sketch": {"parameters": {"c": KLL_C, "k": float(KLL_K)},
                                                        "data": kll_levels(values, seed=seed)}}}}}
    counts = Counter(canonical_category(cell) for cell in present)
    ranked = sorted(counts, key=lambda value: (-counts[value], value))
    return {"name": name, "inferred_type": "String",
            "string_statistics": {"common": common, "distinct_count": len(counts),
                                  "distribution": {"categorical": {
                                      "buckets": [{"value": value, "count": counts[value]} for value in ranked]}}}}


def _column_constraints(statistics: dict[str, Any], item_count: int) -> dict[str, Any]:
    kind = statistics["inferred_type"]
    numeric = kind != "String"
    stats = statistics["numerical_statistics" if numeric else "string_statistics"]
    present = stats["common"]["num_present"]
    entry: dict[str, Any] = {"name": statistics["name"], "inferred_type": kind,
                             "completeness": present / item_count if item_count else 0.0}
    if numeric:
        entry["num_constraints"] = {"is_non_negative": stats["min"] >= 0}
    elif 0 < stats["distinct_count"] <= MAX_DOMAIN_VALUES:
        values = [bucket["value"] for bucket in stats["distribution"]["categorical"]["buckets"]]
        entry["string_constraints"] = {"domains": sorted(values)}
    return entry


def _buckets(values: np.ndarray) -> list[dict[str, float]]:
    low, high = float(values.min()), float(values.max())
    if low == high:
        return [{"lower_bound": low, "upper_bound": high, "count": float(len(values))}]
    edges = np.linspace(low, high, HISTOGRAM_BUCKETS + 1)
    counts, _ = np.histogram(values, bins=edges)   # numpy's last bin is closed: it holds max
    return [{"lower_bound": float(edges[i]), "upper_bound": float(edges[i + 1]), "count": float(counts[i])}
            for i in range(HISTOGRAM_BUCKETS)]


def kll_levels(values: np.ndarray, k: int = KLL_K, c: float = KLL_C, seed: int = 0) -> list[list[float]]:
    """A KLL sketch's compactor levels, level 0 first; an item at level h stands for 2**h values.

    Starts from every value in level 0 and compacts the lowest level over its capacity until none is: the
    top level holds up to k items and each level below c times as many as the one above (at least 2)."""
    rng = np.random.default_rng(seed)
    levels: list[np.ndarray] = [np.sort(values)]
    while True:
        height = len(levels)
        capacities = [max(2, math.ceil(k * c ** (height - 1 - level))) for level in range(height)]
        full = next((level for level in range(height) if len(levels[level]) > capacities[level]), None)
        if full is None:
            return [[float(v) for v in level] for level in levels]
        items = np.sort(levels[full])
        kept = items[len(items) - len(items) % 2:]   # an odd item out stays where it is
        paired = items[: len(items) - len(items) % 2]
        promoted = paired[int(rng.integers(2))::2]
        levels[full] = kept
        if full + 1 == height:
            levels.append(promoted)
        else:
            levels[full + 1] = np.sort(np.concatenate([levels[full + 1], promoted]))
