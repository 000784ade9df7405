"""The single-row shortcut must not change an answer: a body of one plain row (plainrow.py) encoded by
Preprocessor.encode_row answers exactly what codecs.decode, a Table and Regressor.predict answer, and any
other body goes that general way, errors included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import HTTPException

from container.serving import codecs
from container.serving.plainrow import plain_row
from container.serving.predictor import Predictor
from model.network import FusedEnsemble, build_network
from model.regressor import Regressor
from model.table import Table
from tests.serving.requests_data import FEATURES, ROWS, typed

PLAIN = ROWS[0]   # a used car with every feature present


class GeneralPredictor(Predictor):
    """The reference: every body through codecs.decode and a Table, as before the shortcut."""

    def _plain_row(self, body: bytes, mimetype: str) -> np.ndarray | None:
        return None


def outcome(predictor: Predictor, body: bytes, mimetype: str) -> tuple[str, bytes | str]:
    try:
        return "answer", predictor.answer(body, mimetype, {}, mimetype).body
    except HTTPException as error:   # InvalidInput (400), a row limit (413)
        return f"error {error.code}", str(error)


def test_a_plain_row_is_read_without_the_codecs(mixed_model: Regressor) -> None:
    schema = Predictor(mixed_model).schema
    assert plain_row((",".join(PLAIN) + "\n").encode(), codecs.CSV, schema) == PLAIN
    as_json = [typed(cell) for cell in PLAIN]
    assert plain_row(json.dumps({"instances": [as_json]}).encode(), codecs.JSON, schema) == as_json
    assert plain_row(json.dumps([dict(zip(FEATURES, as_json, strict=True))]).encode(), codecs.JSON,
                     schema) == as_json
    assert plain_row(json.dumps(as_json).encode() + b"\n", codecs.JSONLINES, schema) == as_json


@pytest.mark.parametrize(("body", "mimetype"), [
    (",".join(FEATURES).encode(), codecs.CSV),                         # a header alone
    ((",".join(FEATURES) + "\n" + ",".join(PLAIN)).encode(), codecs.CSV),   # a header and a row
    (("\ufeff" + ",".join(PLAIN)).encode(), codecs.CSV),               # a byte order mark
    (",".join(f'"{cell}"' for cell in PLAIN).encode(), codecs.CSV),    # quoted fields
    (",".join(PLAIN[:-1]).encode(), codecs.CSV),                       # a field short
    ((",".join(PLAIN) + "\n" + ",".join(PLAIN)).encode(), codecs.CSV),  # two rows
    (json.dumps({"instances": [[typed(c) for c in PLAIN]] * 2}).encode(), codecs.JSON),
    (json.dumps({"instances": [[typed(c) for c in PLAIN]], "extra": 1}).encode(), codecs.JSON),
    (json.dumps({"instances": [[[1]] * len(PLAIN)]}).encode(), codecs.JSON),   # nested values
    (b"{not json", codecs.JSON),
])
def test_anything_else_goes_through_the_codecs(mixed_model: Regressor, body: bytes, mimetype: str) -> None:
    assert plain_row(body, mimetype, Predictor(mixed_model).schema) is None


def test_the_answer_is_the_general_paths(mixed_model: Regressor) -> None:
    fast, general = Predictor(mixed_model), GeneralPredictor(mixed_model)
    body = (",".join(PLAIN) + "\n").encode()
    assert fast._plain_row(body, codecs.CSV) is not None   # the shortcut is taken ...
    assert outcome(fast, body, codecs.CSV) == outcome(general, body, codecs.CSV)   # ... to the same bytes
    table = Table.from_rows(FEATURES, [PLAIN])
    assert fast.answer(body, codecs.CSV, {}, codecs.JSON).body == json.dumps(
        {"predictions": mixed_model.predict(table).tolist()}).encode()


# Cells a client might send for a used car: the training spellings and their near misses.
NUMBER_TEXT = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(repr),
                        st.sampled_from(["", " ", " 12", "12 ", "1_000", "1e400", "-1e400", "nan", "inf", "0x10",
                                         "12.", ".5", "1e38", "3.5e38", "-3.5e38", "1e308"]))
LEVEL_TEXT = st.sampled_from(["Petrol", "Diesel", "CNG", "Blue", "Grey", "Red", "Silver", " Petrol", "petrol",
                              "Violet", "", "1", "1.0", "12"])


@st.composite
def rows(draw: st.DrawFn) -> list[str]:
    row = list(PLAIN)
    for index in draw(st.lists(st.integers(0, len(row) - 1), max_size=4)):
        row[index] = draw(LEVEL_TEXT if FEATURES[index] in ("Fuel_Type", "Color") else NUMBER_TEXT)
    return row


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=rows(), form=st.sampled_from(["csv", "json", "jsonlines", "json records"]))
def test_generated_rows_answer_as_the_general_path(mixed_model: Regressor, row: list[str], form: str) -> None:
    if form == "csv":
        body, mimetype = ",".join(row).encode(), codecs.CSV
    else:
        values = [typed(cell) if FEATURES[i] not in ("Fuel_Type", "Color") and cell.strip() == cell else cell
                  for i, cell in enumerate(row)]
        instance = dict(zip(FEATURES, values, strict=True)) if form == "json records" else values
        body = json.dumps(instance if form == "jsonlines" else {"instances": [instance]}).encode()
        mimetype = codecs.JSONLINES if form == "jsonlines" else codecs.JSON
    assert outcome(Predictor(mixed_model), body, mimetype) == outcome(GeneralPredictor(mixed_model), body, mimetype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=rows())
def test_encode_row_is_encode_bit_for_bit_or_declines(mixed_model: Regressor, row: list[str]) -> None:
    values = mixed_model.preprocessor.encode_row(row)
    if values is not None:
        encoded = np.array([values], np.float32)
        reference = mixed_model.preprocessor.encode(Table.from_rows(FEATURES, [row]))
        assert encoded.dtype == reference.dtype and encoded.tobytes() == reference.tobytes()


def test_plain_training_spellings_are_encoded_by_encode_row(mixed_model: Regressor) -> None:
    """The shortcut is not a stub: the rows clients send most take it."""
    assert all(mixed_model.preprocessor.encode_row(row) is not None for row in ROWS if "" not in row)


@pytest.mark.parametrize(("hidden", "members"), [((16, 8, 4), 5), ((16, 8), 5), ((12,), 3), ((), 1)])
@pytest.mark.parametrize("rows", [1, 3, FusedEnsemble.NUMPY_ROWS])
def test_the_numpy_route_is_the_fused_mean(hidden: tuple[int, ...], members: int, rows: int) -> None:
    torch.manual_seed(0)
    fused = FusedEnsemble.of(build_network(7, hidden, 0.1, members).eval())
    assert fused is not None
    inputs = torch.randn(rows, 7)
    with torch.inference_mode():
        reference = fused(inputs).numpy()
    ours = fused.numpy_mean(inputs.numpy())
    assert ours.shape == (rows,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_a_frozen_regressor_answers_as_before(mixed_model: Regressor) -> None:
    regressor = Regressor(mixed_model.preprocessor, build_network(mixed_model.preprocessor.n_inputs, (8,), 0.0, 3),
                          mixed_model.config)
    table = Table.from_rows(FEATURES, ROWS[:2])
    before = regressor.predict(table)
    np.testing.assert_array_equal(regressor.freeze().predict(table), before)
    assert not regressor.network.training
