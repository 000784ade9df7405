"""evaluate_split(): a fitted Regressor measured on one table, in SageMaker Pipelines' regression format,
overall and per slice of every feature.

    report = evaluate_split(regressor, table, "test", seed=0)
    report["regression_metrics"]["rmse"]    # {"value": ..., "standard_deviation": ...}
    report["worst_slice"]                   # the slice with the highest rmse, and its gap to the overall rmse

Promises:
- `regression_metrics` holds mse, rmse, mae and r2, each `{"value", "standard_deviation"}`: the layout of
  SageMaker's model-quality metrics, which a Pipelines ConditionStep reads with
  `JsonGet(..., json_path="regression_metrics.rmse.value")` and ModelMetrics shows. The values are computed
  exactly as training.evaluate() computes them, so rmse equals metrics.json's for the same split.
- `standard_deviation` is the bootstrap standard error of the metric: the standard deviation (ddof=1) of the
  metric over BOOTSTRAP_RESAMPLES resamples of the rows, drawn with replacement from a generator seeded with
  `seed`, so the same job writes the same file. It says how much the value would move on another sample of
  the same size (SageMaker's own example uses the residuals' spread for every metric, which is not on the
  metric's scale). With fewer than 2 rows there is nothing to resample: it is the string "NaN", as Model
  Monitor writes it.
- `slices`: one entry per level of each categorical feature and per quantile bin of each numeric feature,
  with rows, rmse, mae and bias (mean of prediction - truth). Numeric bins are the quartiles of the measured
  table's own present values (so each holds about a quarter of its rows; ties can make them uneven), closed
  on the right, the first also on the left; a numeric feature with at most NUMERIC_BINS distinct values
  (0/1 flags, door counts) gets one slice per value. Missing values form the slice "(missing)". A
  categorical feature lists at most MAX_LEVELS levels, the most frequent, and pools the rest as
  "(other levels)".
- A slice of fewer than MIN_SLICE_ROWS rows keeps its row count but gets no metrics (`"too_small": true`):
  an error over a handful of rows is noise, and over one row it is that one row's error.
- `worst_slice` is the eligible slice with the highest rmse (its entry in `slices` is marked
  `"worst": true`), with `gap` (its rmse minus the overall rmse) and `ratio` (its rmse over the overall);
  null when no slice has enough rows.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from model.config import TrainingConfig
from model.preprocessing import target_values
from model.regressor import Regressor
from model.schema import Kind, Schema, as_float_column, canonical_category, is_missing
from model.table import Table
from model.training import holdout  # the one definition of the hold-out: fit() draws it the same way

BOOTSTRAP_RESAMPLES = 200
MIN_SLICE_ROWS = 10
NUMERIC_BINS = 4      # quartiles
MAX_LEVELS = 30       # per categorical feature; the rest are pooled
MISSING = "(missing)"
OTHER_LEVELS = "(other levels)"

Metrics = dict[str, float]


def evaluation_split(train: Table, config: TrainingConfig, validation: Table | None,
                     test: Table | None) -> tuple[str, Table]:
    """The split to report: test when there is one, else validation, which without a validation channel is
    the same seeded hold-out of the training rows that fit() used."""
    if test is not None:
        return "test", test
    if validation is not None:
        return "validation", validation
    return "validation", holdout(train, config)[1]


def evaluate_split(regressor: Regressor, table: Table, split: str, seed: int = 0) -> dict[str, Any]:
    """The evaluation report of `regressor` on `table` (which holds the target); see the module docstring."""
    truth = target_values(table, regressor.target)
    predicted = regressor.predict(table.select(regressor.feature_names))
    overall = regression_metrics(truth, predicted)
    deviations = bootstrap_deviations(truth, predicted, seed)
    slices = feature_slices(table, regressor.preprocessor.schema, truth, predicted)
    worst = worst_slice(slices, overall["rmse"])
    return {
        "regression_metrics": {name: {"value": overall[name], "standard_deviation": deviations[name]}
                               for name in ("mse", "rmse", "mae", "r2")},
        "evaluation": {"split": split, "rows": table.n_rows,
                       "standard_deviation": f"bootstrap standard error over {BOOTSTRAP_RESAMPLES} resamples "
                                             f"of the rows (seed {seed})",
                       "slices": f"per categorical level (at most {MAX_LEVELS}, the rest pooled) and per "
                                 f"quartile bin of numeric features; under {MIN_SLICE_ROWS} rows: no metrics",
                       "min_slice_rows": MIN_SLICE_ROWS},
        "slices": slices,
        "worst_slice": worst,
    }


def regression_metrics(truth: np.ndarray, predicted: np.ndarray) -> Metrics:
    """mse, rmse, mae and r2, with training.evaluate()'s formulas (r2 is 0 for a constant truth)."""
    error = predicted - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    return {"mse": float(np.mean(error ** 2)),
            "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
            "mae": float(np.abs(error).mean()),
            "r2": 1 - float((error ** 2).sum()) / total if total > 0 else 0.0}


def bootstrap_deviations(truth: np.ndarray, predicted: np.ndarray, seed: int,
                         resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, float | str]:
    """Each metric's bootstrap standard error; "NaN" (Model Monitor's spelling) below 2 rows."""
    if len(truth) < 2:
        return dict.fromkeys(("mse", "rmse", "mae", "r2"), "NaN")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"mse": [], "rmse": [], "mae": [], "r2": []}
    for _ in range(resamples):   # one resample at a time: memory stays O(rows) for any test set
        rows = rng.integers(0, len(truth), len(truth))
        for name, value in regression_metrics(truth[rows], predicted[rows]).items():
            draws[name].append(value)
    return {name: float(np.std(values, ddof=1)) for name, values in draws.items()}


def feature_slices(table: Table, schema: Schema, truth: np.ndarray, predicted: np.ndarray) -> list[dict[str, Any]]:
    """One entry per slice of every feature, in schema order."""
    entries = []
    for feature in schema.features:
        groups = (_numeric_groups if feature.kind is Kind.NUMERIC else _categorical_groups)(table, feature.name)
        for label, mask in groups:
            entries.append({"feature": feature.name, "kind": feature.kind.value, "slice": label,
                            **_slice_metrics(truth[mask], predicted[mask])})
    return entries


def worst_slice(slices: list[dict[str, Any]], overall_rmse: float) -> dict[str, Any] | None:
    """The eligible slice with the highest rmse, marked `worst` in `slices`; None when none is eligible."""
    eligible = [entry for entry in slices if not entry.get("too_small")]
    if not eligible:
        return None
    worst = max(eligible, key=lambda entry: entry["rmse"])   # ties: the first in schema order
    worst["worst"] = True
    return {"feature": worst["feature"], "slice": worst["slice"], "rows": worst["rows"], "rmse": worst["rmse"],
            "overall_rmse": overall_rmse, "gap": worst["rmse"] - overall_rmse,
            "ratio": worst["rmse"] / overall_rmse if overall_rmse > 0 else None}


def describe_worst(report: dict[str, Any]) -> str:
    """One key=value log line about the worst slice (category levels and bin edges only, never a row)."""
    worst = report["worst_slice"]
    split = report["evaluation"]["split"]
    if worst is None:
        return f"evaluation split={split} worst_slice=none (no slice has {MIN_SLICE_ROWS} rows or more)"
    ratio = "n/a" if worst["ratio"] is None else f"{worst['ratio']:.3g}"
    return (f"evaluation split={split} worst_slice feature={worst['feature']} slice={worst['slice']!r} "
            f"rows={worst['rows']} rmse={worst['rmse']:.6g} overall_rmse={worst['overall_rmse']:.6g} "
            f"worst_slice_gap={worst['gap']:.6g} ratio={ratio}")


def _slice_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    if len(truth) < MIN_SLICE_ROWS:
        return {"rows": len(truth), "too_small": True}
    metrics = regression_metrics(truth, predicted)
    return {"rows": len(truth), "rmse": metrics["rmse"], "mae": metrics["mae"],
            "bias": float(np.mean(predicted - truth))}


Groups = list[tuple[str, np.ndarray]]   # (slice label, boolean row mask)


def _categorical_groups(table: Table, name: str) -> Groups:
    labels = np.array([MISSING if is_missing(cell) else canonical_category(cell) for cell in table.columns[name]],
                      dtype=object)
    counts = Counter(label for label in labels if label != MISSING)
    ranked = sorted(counts, key=lambda level: (-counts[level], level))
    kept, pooled = ranked[:MAX_LEVELS], set(ranked[MAX_LEVELS:])
    groups = [(level, labels == level) for level in kept]
    if pooled:
        groups.append((OTHER_LEVELS, np.isin(labels, list(pooled))))
    return _with_missing(groups, labels == MISSING)


def _numeric_groups(table: Table, name: str) -> Groups:
    values = as_float_column(table, name)
    present = ~np.isnan(values)
    distinct = np.unique(values[present])
    if len(distinct) <= NUMERIC_BINS:
        groups = [(f"= {_number(v)}", values == v) for v in distinct]
    else:
        edges = np.unique(np.quantile(values[present], np.linspace(0, 1, NUMERIC_BINS + 1)))
        # side="left": a value equal to an inner edge belongs to the bin that edge closes, (a, b].
        bins = np.searchsorted(edges[1:-1], values, side="left")
        groups = [(_interval(edges, index), present & (bins == index)) for index in range(len(edges) - 1)]
    return _with_missing(groups, ~present)


def _with_missing(groups: Groups, missing: np.ndarray) -> Groups:
    return [*groups, (MISSING, missing)] if missing.any() else groups


def _interval(edges: np.ndarray, index: int) -> str:
    opening = "[" if index == 0 else "("
    return f"{opening}{_number(edges[index])}, {_number(edges[index + 1])}]"


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)

