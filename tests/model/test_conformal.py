"""Split-conformal intervals: the quantile rule, the artifact round trip, and empirical coverage on held-out
rows within 3 points of nominal on the used cars and on a synthetic, heteroscedastic data set."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from model import artifact
from model.config import TrainingConfig
from model.conformal import Calibration, LevelError, calibrate
from model.preprocessing import target_values
from model.table import Table
from model.training import fit
from tests.conftest import read_cars

SPLITS = range(10)   # seeded train/test splits pooled per case: one split's coverage swings by +-2 points


def _split(table: Table, seed: int, share: float = 0.3) -> tuple[Table, Table]:
    order = np.random.default_rng(seed).permutation(table.n_rows)
    cut = round(table.n_rows * (1 - share))
    return table.take(np.sort(order[:cut])), table.take(np.sort(order[cut:]))


def synthetic(rows: int = 3000, seed: int = 0) -> Table:
    """y = linear in three numerics + a per-group offset + noise whose scale grows with x2."""
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=rows), rng.uniform(0, 10, rows), rng.normal(size=rows)
    group = rng.choice(["a", "b", "c", "d"], size=rows)
    offset = np.select([group == "b", group == "c", group == "d"], [3.0, -2.0, 5.0], 0.0)
    y = 2 * x1 + 0.5 * x2 - x3 + offset + rng.normal(size=rows) * (0.5 + 0.3 * x2)
    cells = [[float(a), float(b), float(c), float(d), str(g)]
             for a, b, c, d, g in zip(y, x1, x2, x3, group, strict=True)]
    return Table.from_rows(["y", "x1", "x2", "x3", "group"], cells)


CASES = {
    "cars-linear-log": (lambda: read_cars(), "Price", TrainingConfig(target="Price", hidden_layers=())),
    "synthetic-linear-none": (synthetic, "y", TrainingConfig(target="y", hidden_layers=(), target_transform="none")),
    "synthetic-mlp-none": (synthetic, "y", TrainingConfig(target="y", hidden_layers=(8,), ensemble_size=1,
                                                          epochs=5, target_transform="none")),
}


@pytest.mark.parametrize("case", CASES)
def test_coverage_is_within_three_points_of_nominal(case: str) -> None:
    make, target, config = CASES[case]
    table = make()
    covered: dict[float, list[bool]] = {0.8: [], 0.9: []}
    for seed in SPLITS if "mlp" not in case else range(3):
        train, test = _split(table, seed)
        settings = TrainingConfig.from_dict({**config.to_dict(), "seed": seed, "validation_fraction": 0.4})
        regressor = fit(train, settings).regressor
        assert regressor.calibration is not None
        truth, predicted = target_values(test, target), regressor.predict(test.without(target))
        for level, hits in covered.items():
            lower, upper = regressor.calibration.interval(predicted, level)
            assert np.all(lower <= predicted) and np.all(predicted <= upper)
            hits.extend((lower <= truth) & (truth <= upper))
    for level, hits in covered.items():
        assert abs(np.mean(hits) - level) <= 0.03, (case, level, np.mean(hits))


def test_the_quantile_is_the_ceil_n_plus_1_level_th_residual() -> None:
    calibration = Calibration("absolute", tuple(float(r) for r in range(1, 10)))   # n = 9
    assert calibration.half_width(0.5) == 5.0      # ceil(10 * 0.5) = 5
    assert calibration.half_width(0.9) == 9.0      # ceil(10 * 0.9) = 9, not 10 through float rounding
    assert calibration.half_width(0.01) == 1.0
    with pytest.raises(LevelError, match="needs at least 19 calibration rows"):
        calibration.half_width(0.95)               # ceil(10 * 0.95) = 10 > 9
    for bad in (0.0, 1.0, -0.5, 1.5, math.nan):
        with pytest.raises(LevelError, match="in \\(0, 1\\)"):
            calibration.half_width(bad)


def test_log_space_intervals_are_relative_and_absolute_ones_symmetric() -> None:
    relative = calibrate(np.array([100.0, 200.0]), np.array([110.0, 200.0]), "log")
    lower, upper = relative.interval(np.array([1000.0]), 0.6)   # ceil(3 * 0.6) = 2: q = log(1.1)
    assert lower[0] == pytest.approx(1000 / 1.1) and upper[0] == pytest.approx(1100.0)
    absolute = calibrate(np.array([1.0, 2.0]), np.array([4.0, 2.0]), "none")
    assert absolute.residuals == (0.0, 3.0)
    lower, upper = absolute.interval(np.array([10.0]), 0.6)
    assert (lower[0], upper[0]) == (7.0, 13.0)


def test_calibration_round_trips_through_the_artifact(small_cars: Table, tmp_path: pathlib.Path) -> None:
    regressor = fit(small_cars, TrainingConfig(hidden_layers=())).regressor
    assert regressor.calibration is not None and len(regressor.calibration.residuals) == 60
    artifact.save(regressor, tmp_path)
    assert artifact.load(tmp_path).calibration == regressor.calibration
