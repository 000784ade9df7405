"""evaluation.py: regression metrics, their bootstrap standard errors, and slices with the worst one flagged."""

from __future__ import annotations

import numpy as np
import pytest

from model.evaluation import (
    BOOTSTRAP_RESAMPLES,
    MAX_LEVELS,
    MIN_SLICE_ROWS,
    OTHER_LEVELS,
    bootstrap_deviations,
    describe_worst,
    feature_slices,
    regression_metrics,
    worst_slice,
)
from model.schema import Feature, Kind, Schema
from model.table import Table


def _slices(columns: dict[str, list[object]], kinds: dict[str, Kind], truth: np.ndarray,
            predicted: np.ndarray) -> list[dict[str, object]]:
    table = Table({name: np.array(values, dtype=object) for name, values in columns.items()})
    schema = Schema("y", tuple(Feature(name, kind) for name, kind in kinds.items()))
    return feature_slices(table, schema, truth, predicted)


def test_metrics_are_the_usual_formulas() -> None:
    truth, predicted = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0])
    metrics = regression_metrics(truth, predicted)
    assert metrics["mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert metrics["mae"] == pytest.approx(2.5 / 4)
    assert metrics["r2"] == pytest.approx(1 - 2.25 / 5.0)


def test_standard_deviation_is_the_seeded_bootstrap_standard_error() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(100, 10, 400)
    predicted = truth + rng.normal(0, 5, 400)
    deviations = bootstrap_deviations(truth, predicted, seed=7)
    assert deviations == bootstrap_deviations(truth, predicted, seed=7)   # same seed, same file
    draws = np.random.default_rng(7)
    rmses = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        rows = draws.integers(0, 400, 400)
        rmses.append(regression_metrics(truth[rows], predicted[rows])["rmse"])
    assert deviations["rmse"] == pytest.approx(np.std(rmses, ddof=1))
    # The standard error of a mean of 400 squared errors: about their spread / sqrt(400).
    assert deviations["mse"] == pytest.approx(np.std((predicted - truth) ** 2) / 20, rel=0.25)
    assert bootstrap_deviations(truth[:1], predicted[:1], seed=0)["r2"] == "NaN"


def test_the_level_with_the_largest_errors_is_the_worst_slice() -> None:
    levels = ["A"] * 40 + ["B"] * 40 + ["C"] * 20 + ["D"] * 3
    truth = np.arange(len(levels), dtype=np.float64)
    error = np.where(np.array(levels) == "C", 30.0, 1.0)
    error[-3:] = 500.0   # D: far worse, but only 3 rows: too few to be judged (or flagged)
    slices = _slices({"level": levels}, {"level": Kind.CATEGORICAL}, truth, truth + error)
    by_name = {entry["slice"]: entry for entry in slices}
    assert by_name["D"] == {"feature": "level", "kind": "categorical", "slice": "D", "rows": 3, "too_small": True}
    assert by_name["C"]["rmse"] == pytest.approx(30.0) and by_name["C"]["bias"] == pytest.approx(30.0)
    overall = regression_metrics(truth, truth + error)["rmse"]
    worst = worst_slice(slices, overall)
    assert worst is not None and (worst["feature"], worst["slice"], worst["rows"]) == ("level", "C", 20)
    assert worst["gap"] == pytest.approx(30.0 - overall) and worst["ratio"] == pytest.approx(30.0 / overall)
    assert by_name["C"]["worst"] is True and "worst" not in by_name["A"]
    line = describe_worst({"worst_slice": worst, "evaluation": {"split": "test"}})
    assert "split=test worst_slice feature=level slice='C' rows=20" in line and "worst_slice_gap=" in line


def test_numeric_features_are_cut_at_their_quartiles_and_flags_per_value() -> None:
    x = [float(v) for v in range(1, 101)] + [None] * 12
    flag = [0, 1] * 56
    truth = np.zeros(len(x))
    slices = _slices({"x": x, "flag": flag}, {"x": Kind.NUMERIC, "flag": Kind.NUMERIC}, truth, truth + 1)
    assert [(s["slice"], s["rows"]) for s in slices if s["feature"] == "x"] == [
        ("[1, 25.75]", 25), ("(25.75, 50.5]", 25), ("(50.5, 75.25]", 25), ("(75.25, 100]", 25), ("(missing)", 12)]
    assert [(s["slice"], s["rows"]) for s in slices if s["feature"] == "flag"] == [("= 0", 56), ("= 1", 56)]


def test_rare_levels_beyond_the_limit_are_pooled() -> None:
    levels = [f"L{i:02d}" for i in range(MAX_LEVELS + 5) for _ in range(MIN_SLICE_ROWS)] + [None]
    truth = np.zeros(len(levels))
    slices = _slices({"level": levels}, {"level": Kind.CATEGORICAL}, truth, truth)
    assert len(slices) == MAX_LEVELS + 2
    assert slices[-2]["slice"] == OTHER_LEVELS and slices[-2]["rows"] == 5 * MIN_SLICE_ROWS
    assert slices[-1]["slice"] == "(missing)" and slices[-1]["too_small"] is True
    assert worst_slice([s for s in slices if s.get("too_small")], 1.0) is None
