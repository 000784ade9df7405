"""monitoring.py: statistics.json and constraints.json follow Model Monitor's schemas and count the data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from model.monitoring import KLL_K, data_quality_baseline, kll_levels
from model.table import Table

NUMERIC_KEYS = {"common", "mean", "sum", "std_dev", "min", "max", "distribution"}


def _check_statistics_schema(statistics: dict[str, Any]) -> None:
    assert statistics["version"] == 0 and set(statistics["dataset"]) == {"item_count"}
    for feature in statistics["features"]:
        assert isinstance(feature["name"], str)
        if feature["inferred_type"] in ("Integral", "Fractional"):
            stats = feature["numerical_statistics"]
            assert set(stats) == NUMERIC_KEYS
            assert all(isinstance(stats[key], float) for key in ("mean", "sum", "std_dev", "min", "max"))
            kll = stats["distribution"]["kll"]
            assert all(set(b) == {"lower_bound", "upper_bound", "count"} for b in kll["buckets"])
            assert set(kll["sketch"]) == {"parameters", "data"} and set(kll["sketch"]["parameters"]) == {"c", "k"}
            assert all(isinstance(level, list) for level in kll["sketch"]["data"])
        else:
            assert feature["inferred_type"] == "String"
            stats = feature["string_statistics"]
            assert set(stats) == {"common", "distinct_count", "distribution"}
            assert all(set(b) == {"value", "count"} for b in stats["distribution"]["categorical"]["buckets"])
        assert set(stats["common"]) == {"num_present", "num_missing"}


def test_the_baseline_counts_the_training_features(small_cars: Table) -> None:
    features = [name for name in small_cars.names if name not in ("Price", "Color")]
    statistics, constraints = data_quality_baseline(small_cars, features)
    _check_statistics_schema(statistics)
    assert statistics["dataset"]["item_count"] == small_cars.n_rows
    assert [f["name"] for f in statistics["features"]] == features   # no target, no dropped column
    by_name = {f["name"]: f for f in statistics["features"]}
    km = np.array(small_cars.columns["KM"], dtype=np.float64)
    stats = by_name["KM"]["numerical_statistics"]
    assert by_name["KM"]["inferred_type"] == "Integral"
    assert stats["common"] == {"num_present": small_cars.n_rows, "num_missing": 0}
    assert (stats["sum"], stats["min"], stats["max"]) == (km.sum(), km.min(), km.max())
    assert stats["mean"] == pytest.approx(km.mean()) and stats["std_dev"] == pytest.approx(km.std())
    assert sum(b["count"] for b in stats["distribution"]["kll"]["buckets"]) == small_cars.n_rows
    assert stats["distribution"]["kll"]["sketch"]["data"] == [sorted(km.tolist())]   # exact below k values
    fuel = by_name["Fuel_Type"]["string_statistics"]
    levels = set(small_cars.columns["Fuel_Type"])
    assert fuel["distinct_count"] == len(levels)
    assert sum(b["count"] for b in fuel["distribution"]["categorical"]["buckets"]) == small_cars.n_rows

    assert constraints["version"] == 0 and set(constraints["monitoring_config"]) >= {
        "evaluate_constraints", "emit_metrics", "datatype_check_threshold", "domain_content_threshold",
        "distribution_constraints"}
    rules = {f["name"]: f for f in constraints["features"]}
    assert [f["name"] for f in constraints["features"]] == features
    assert rules["KM"] == {"name": "KM", "inferred_type": "Integral", "completeness": 1.0,
                           "num_constraints": {"is_non_negative": True}}
    assert rules["Fuel_Type"]["string_constraints"] == {"domains": sorted(levels)}


def test_types_missing_values_and_negative_numbers() -> None:
    table = Table.from_records([{"f": -1.5, "i": "3", "s": "a"}, {"f": 2.0, "i": "", "s": "b"},
                                {"f": 0.5, "i": None, "s": None}, {"f": 1, "i": 4}])
    statistics, constraints = data_quality_baseline(table, ["f", "i", "s"])
    _check_statistics_schema(statistics)
    kinds = [f["inferred_type"] for f in statistics["features"]]
    assert kinds == ["Fractional", "Integral", "String"]
    assert statistics["features"][1]["numerical_statistics"]["common"] == {"num_present": 2, "num_missing": 2}
    rules = constraints["features"]
    assert rules[0]["num_constraints"] == {"is_non_negative": False}
    assert [rule["completeness"] for rule in rules] == [1.0, 0.5, 0.5]


def test_a_large_column_is_compacted_into_a_valid_kll_sketch() -> None:
    values = np.random.default_rng(0).normal(size=100_000)
    levels = kll_levels(values, seed=3)
    assert len(levels) > 1 and all(level == sorted(level) for level in levels)
    assert len(levels[-1]) <= KLL_K and sum(map(len, levels)) < 4 * KLL_K
    weight = sum(len(level) * 2 ** height for height, level in enumerate(levels))
    assert abs(weight - len(values)) <= 2 ** len(levels)   # each level's odd item out moves the total a little
    # The weighted items estimate the median within a fraction of a percent of the rank.
    items = sorted((v, 2 ** h) for h, level in enumerate(levels) for v in level)
    below = sum(w for v, w in items if v <= 0.0) / weight
    assert math.isclose(below, float(np.mean(values <= 0.0)), abs_tol=0.01)
