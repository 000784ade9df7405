"""What a request asks of the built-in model beyond predictions, read from its custom attributes.

    options = request_options(request.attributes, regressor.calibration, regressor.baseline is not None)

    intervals=<level>   split-conformal prediction intervals at that level, a number in (0, 1)
                        (model/conformal.py): "lower" and "upper" beside each prediction
    explain=true        per-feature attributions (model/explanation.py) beside each prediction; JSON and
                        JSON Lines responses only (false, or no key: none)

Other attribute keys are left alone: clients use CustomAttributes for their own tracing too. A request
without attributes costs one emptiness test (NO_OPTIONS). Every refusal is a 400 that names the attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from container.serving.attributes import HEADER
from container.serving.errors import InvalidInput
from model.conformal import Calibration, LevelError

INTERVALS = "intervals"
EXPLAIN = "explain"
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class RequestOptions:
    interval_level: float | None = None   # None: no intervals asked for
    explain: bool = False


NO_OPTIONS = RequestOptions()


def request_options(attributes: Mapping[str, str], calibration: Calibration | None,
                    explainable: bool) -> RequestOptions:
    """The options in `attributes`, checked against the model (its calibration; `explainable`: it has an
    explanation baseline); InvalidInput (400) for an unusable one. NO_OPTIONS when none is asked for."""
    if not attributes or (INTERVALS not in attributes and EXPLAIN not in attributes):
        return NO_OPTIONS
    level = _interval_level(attributes[INTERVALS], calibration) if INTERVALS in attributes else None
    explain = _explain(attributes[EXPLAIN], explainable) if EXPLAIN in attributes else False
    return RequestOptions(level, explain) if level is not None or explain else NO_OPTIONS


def _explain(raw: str, explainable: bool) -> bool:
    where = f"{HEADER} {EXPLAIN}={raw}"
    if raw.lower() not in (*_TRUE, *_FALSE):
        raise InvalidInput(f"{where}: explain must be true or false")
    if raw.lower() in _TRUE and not explainable:
        raise InvalidInput(f"{where}: explanations need a model trained with this version of hyperplane; this "
                           "artifact was trained before explanation baselines were added (retrain it)")
    return raw.lower() in _TRUE


def _interval_level(raw: str, calibration: Calibration | None) -> float:
    where = f"{HEADER} {INTERVALS}={raw}"
    if calibration is None:
        raise InvalidInput(f"{where}: intervals need a model trained with this version of hyperplane; this "
                           "artifact was trained before conformal calibration was added (retrain it)")
    try:
        level = float(raw)
    except ValueError:
        raise InvalidInput(f"{where}: the interval level must be a number in (0, 1), e.g. intervals=0.9") \
            from None
    try:
        calibration.half_width(level)   # refuses nan, out-of-range and too-high levels now, before the body
    except LevelError as error:
        raise InvalidInput(f"{where}: {error}") from None
    return level
