"""Response numbers written a column at a time (container/serving/floattext.py, codecs.encode) against what
Python writes: repr() of every float64, and the bodies the per-value json.dumps/repr encoder made before
(kept here as the reference), for every output type, with extras, in batch mode, and the same 400 for a
non-finite value."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from container.serving import codecs, floattext
from container.serving.errors import InvalidInput

RNG_SEEDS = range(3)


def _reference(values: np.ndarray) -> bytes:
    return "".join(f"{value!r}\n" for value in values.tolist()).encode()


def _same_as_repr(values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    got = floattext.rows([values], [b"", b""], b"\n")
    if got != _reference(values):
        wrong = [(a, b) for a, b in zip(got.split(b"\n"), _reference(values).split(b"\n"), strict=False) if a != b]
        raise AssertionError(f"{len(wrong)} values differ, e.g. {wrong[:5]}")


def _edges() -> np.ndarray:
    tens, twos = 10.0 ** np.arange(-30, 30), 2.0 ** np.arange(-70, 70)
    around = np.concatenate([tens, twos, np.arange(1, 1000) / 8, np.arange(1, 1000) / 10, [1 / 3, 2 / 3, 0.1, 0.3]])
    named = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308,
             1e16, 9999999999999998.0, 1e-4, 9.999999999999999e-05, 0.30000000000000004, 123456789012345678.0,
             0.5, 1.5, 2.5, 1e15 + 0.5, 2.0 ** 53, 2.0 ** 53 + 2, 4503599627370496.5]
    return np.concatenate([around, np.nextafter(around, 0), np.nextafter(around, np.inf), -around, named])


def test_edges_and_round_numbers_read_as_repr() -> None:
    _same_as_repr(_edges())


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_random_values_of_every_kind_read_as_repr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = 40_000
    _same_as_repr(rng.integers(0, 2 ** 64, count, dtype=np.uint64).view(np.float64))   # any bits
    _same_as_repr(rng.uniform(1_000, 40_000, count))                                      # prices
    _same_as_repr(np.sign(rng.uniform(-1, 1, count)) * 10 ** rng.uniform(-6, 18, count))  # any scale
    short = np.array([round(value, digits) for value, digits in
                      zip(rng.uniform(0, 1e6, count).tolist(), rng.integers(0, 9, count).tolist(), strict=True)])
    _same_as_repr(short)                                   # few digits, and the values next to them
    _same_as_repr(np.nextafter(short, np.inf))
    _same_as_repr(np.nextafter(short, 0))
    _same_as_repr(rng.integers(-10 ** 17, 10 ** 17, count).astype(np.float64))
    _same_as_repr(rng.uniform(-1, 1, count).astype(np.float32))   # float32 predictions widen exactly


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=50))
def test_any_finite_floats_read_as_repr(values: list[float]) -> None:
    _same_as_repr(np.array(values, dtype=np.float64))


def test_pieces_separators_and_the_last_separator() -> None:
    a, b = np.array([1.0, -0.5, 1e-7]), np.array([2.5, 3.0, 1e22])
    assert floattext.rows([a, b], [b"<", b",", b">"], b";\n") == b"<1.0,2.5>;\n<-0.5,3.0>;\n<1e-07,1e+22>;\n"
    assert floattext.rows([a], [b"", b""], b", ", last_separator=False) == b"1.0, -0.5, 1e-07"
    assert floattext.rows([a[:0]], [b"", b""], b"\n") == b""
    with pytest.raises(ValueError, match="differ in length"):
        floattext.rows([a, b[:2]], [b"", b",", b""], b"\n")
    with pytest.raises(ValueError, match="one piece before"):
        floattext.rows([a], [b""], b"\n")


# ---------- codecs.encode against the encoder it replaced ----------

_JSON_LISTS = {"explanation": "explanations"}


def _old_encode(predictions: np.ndarray, mimetype: str, *, final_newline: bool = True,
                extras: Mapping[str, np.ndarray | Sequence[Mapping[str, Any]]] | None = None) -> bytes:
    def finite(numbers: np.ndarray, name: str) -> list[float]:
        array = np.asarray(numbers, dtype=np.float64)
        values: list[float] = array.tolist()
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise InvalidInput(f"the {name} is {value} (the input lies far outside the training data)",
                                   row=index + 1)
        return values

    values = finite(predictions, "prediction")
    columns: dict[str, list[Any]] = {name: finite(items, name) if isinstance(items, np.ndarray) else list(items)
                                     for name, items in (extras or {}).items()}
    if mimetype == codecs.JSON:
        return json.dumps({"predictions": values,
                           **{_JSON_LISTS.get(name, name): items for name, items in columns.items()}}).encode()
    if mimetype == codecs.CSV:
        if not all(isinstance(items, np.ndarray) for items in (extras or {}).values()):
            raise ValueError("a CSV response holds numbers only")
        lines = [",".join(f"{value!r}" for value in row) for row in zip(values, *columns.values(), strict=True)] \
            if columns else list(map(repr, values))
    else:
        lines = [json.dumps({"prediction": value, **{name: numbers[index] for name, numbers in columns.items()}})
                 for index, value in enumerate(values)]
    return ("\n".join(lines) + ("\n" if final_newline else "")).encode()


def _outcome(encoder: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        return ("ok", encoder(*args, **kwargs))
    except InvalidInput as error:
        return ("invalid", error.description, getattr(error, "row", None))
    except ValueError as error:
        return ("bug", type(error).__name__)


@pytest.mark.parametrize("mimetype", codecs.OUTPUT_TYPES)
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("rows", [0, 1, 7, 3000])
@pytest.mark.parametrize("vector_from", [1, codecs.FLOATTEXT_MIN_ROWS], ids=["floattext", "default"])
def test_encode_writes_what_the_per_value_encoder_wrote(mimetype: str, final_newline: bool, rows: int,
                                                        vector_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "FLOATTEXT_MIN_ROWS", vector_from)
    rng = np.random.default_rng(rows)
    predictions = rng.uniform(1_000, 40_000, rows)
    predictions[: rows // 3] = np.round(predictions[: rows // 3], 2)
    lower, upper = predictions - rng.uniform(0, 500, rows), (predictions + 0.1).astype(np.float32)
    explanations = [{"base": 1.5, "attributions": {"KM": float(value)}} for value in predictions]
    for extras in (None, {}, {"lower": lower, "upper": upper}, {"lower": lower, "explanation": explanations}):
        for values in (predictions, predictions.astype(np.float32)):
            old = _outcome(_old_encode, values, mimetype, final_newline=final_newline, extras=extras)
            new = _outcome(codecs.encode, values, mimetype, final_newline=final_newline, extras=extras)
            assert new == old, (mimetype, extras and list(extras))


@pytest.mark.parametrize("mimetype", codecs.OUTPUT_TYPES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_the_same_400_naming_its_row(mimetype: str, bad: float) -> None:
    predictions = np.array([1.0, 2.0, bad, bad, 5.0])
    lower = np.array([0.5, bad, 1.0, 1.0, 1.0])
    for values, extras in ((predictions, None), (np.array([1.0, 2.0, 3.0, 4.0, 5.0]), {"lower": lower}),
                           (predictions, {"lower": lower})):
        old = _outcome(_old_encode, values, mimetype, extras=extras)
        assert old[0] == "invalid"
        assert _outcome(codecs.encode, values, mimetype, extras=extras) == old


def test_a_few_json_predictions_are_what_json_dumps_writes() -> None:
    """Below FLOATTEXT_MIN_ROWS a JSON body is joined from repr(); json.dumps writes floats the same way."""
    values = _edges()
    values = values[np.isfinite(values)]
    for value in values:
        assert codecs.encode(np.array([value]), codecs.JSON) == json.dumps({"predictions": [float(value)]}).encode()
    some = values[:codecs.FLOATTEXT_MIN_ROWS - 1]
    assert codecs.encode(some, codecs.JSON) == json.dumps({"predictions": some.tolist()}).encode()
