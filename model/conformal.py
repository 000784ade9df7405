"""Split-conformal prediction intervals: calibrated once on held-out residuals, asked at any level later.

    calibration = calibrate(regressor.predict(validation_features), validation_truth, "log")
    lower, upper = calibration.interval(predictions, 0.9)

Calibration keeps the sorted absolute residuals of the validation split (rows the weights were not fitted
on) in the space the model learns in:
- target_transform=log: |log(y) - log(prediction)|, so an interval is relative to the prediction,
  [prediction * exp(-q), prediction * exp(q)] (a price's error grows with the price);
- target_transform=none: |y - prediction| in the target's units, [prediction - q, prediction + q].
The half-width q at level L is the k-th smallest residual with k = ceil((n + 1) * L), the split-conformal
quantile: for a new row exchangeable with the calibration rows the interval covers its target with
probability at least L (and below L + 1/(n + 1)). A level needs k <= n, that is L <= n / (n + 1): a
calibration set of n rows cannot promise more.

Caveat: the MLPs pick their best epoch on the validation loss, so their residuals there are very slightly
optimistic; the linear model is solved on the training rows alone, so for it the guarantee is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SPACES = {"log": "log", "none": "absolute"}   # target_transform -> the space residuals are measured in
_ROUNDING = 1e-9   # (n + 1) * L computed in floats: 0.9 * 10 is 9.000000000000002, whose ceil is 10, not 9


class LevelError(ValueError):
    """The level is not a number in (0, 1), or needs more calibration rows than there are."""


@dataclass(frozen=True)
class Calibration:
    space: str                        # "log" (relative intervals) or "absolute" (target units)
    residuals: tuple[float, ...]      # sorted ascending, absolute residuals in `space`

    @property
    def max_level(self) -> float:
        """The highest level these residuals can give: n / (n + 1)."""
        n = len(self.residuals)
        return n / (n + 1)

    def half_width(self, level: float) -> float:
        """q: the ceil((n + 1) * level)-th smallest residual; LevelError when the level is unusable."""
        if not (isinstance(level, float | int) and 0 < level < 1):
            raise LevelError(f"the interval level must be a number in (0, 1), got {level!r}")
        n = len(self.residuals)
        k = math.ceil((n + 1) * level - _ROUNDING)
        if k > n:
            needed = math.ceil(level / (1 - level) - _ROUNDING)   # ceil((n + 1) * level) <= n
            raise LevelError(f"the interval level {level!r} needs at least {needed} calibration rows and the "
                             f"model was calibrated on {n}; the highest level it can give is "
                             f"{self.max_level:.4f}")
        return self.residuals[max(k, 1) - 1]

    def interval(self, predictions: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), float64, one pair per prediction; LevelError for an unusable level."""
        q = self.half_width(level)
        values = np.asarray(predictions, dtype=np.float64)
        if self.space == "log":
            return values * math.exp(-q), values * math.exp(q)
        return values - q, values + q

    def to_dict(self) -> dict[str, Any]:
        return {"method": "split-conformal", "space": self.space, "residuals": list(self.residuals)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("method") != "split-conformal" or data.get("space") not in SPACES.values():
            raise ValueError(f"unknown calibration {data.get('method')!r} in {data.get('space')!r} space")
        residuals = tuple(float(r) for r in data["residuals"])
        if not residuals or list(residuals) != sorted(residuals):
            raise ValueError("the calibration residuals must be a non-empty ascending list")
        return cls(data["space"], residuals)


def calibrate(predictions: np.ndarray, truth: np.ndarray, target_transform: str) -> Calibration:
    """The calibration of a model from its predictions on held-out rows and their true targets."""
    space = SPACES[target_transform]
    predicted, actual = np.asarray(predictions, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    # log: the targets are positive (training checks it) and so are exp-decoded predictions
    errors = np.log(actual) - np.log(predicted) if space == "log" else actual - predicted
    return Calibration(space, tuple(np.sort(np.abs(errors)).tolist()))
