"""Prediction intervals through the Flask test client: `X-Amzn-SageMaker-Custom-Attributes: intervals=L`
adds "lower" and "upper" in every response format, the predictions stay exactly the plain ones, and an
unusable level or an artifact without calibration answers 400 naming the attribute."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from flask.testing import FlaskClient

from container.serving.attributes import HEADER
from model import artifact
from model.regressor import Regressor
from tests.serving.conftest import ClientFactory
from tests.serving.requests_data import ROWS, bodies, csv_body

CSV_BODY = csv_body(ROWS)


def _post(client: FlaskClient, attributes: str | None, accept: str = "application/json",
          body: str = CSV_BODY, content_type: str = "text/csv") -> tuple[int, str]:
    headers = {"Accept": accept, **({HEADER: attributes} if attributes is not None else {})}
    response = client.post("/invocations", data=body, content_type=content_type, headers=headers)
    return response.status_code, response.get_data(as_text=True)


def _plain(client: FlaskClient) -> list[float]:
    status, text = _post(client, None)
    assert status == 200, text
    return [float(value) for value in json.loads(text)["predictions"]]


def _expected(model: Regressor, predictions: list[float], level: float) -> tuple[list[float], list[float]]:
    assert model.calibration is not None
    lower, upper = model.calibration.interval(np.asarray(predictions), level)
    return lower.tolist(), upper.tolist()


@pytest.mark.parametrize("form", ["csv", "json instances objects", "jsonlines lists"])
def test_json_response_carries_lower_and_upper(client: FlaskClient, mixed_model: Regressor, form: str) -> None:
    content_type, body = bodies(ROWS)[form]
    plain = _plain(client)
    status, text = _post(client, "intervals=0.9", body=body.decode(), content_type=content_type)
    assert status == 200, text
    document = json.loads(text)
    assert list(document) == ["predictions", "lower", "upper"]
    assert document["predictions"] == plain            # the predictions are unchanged
    assert (document["lower"], document["upper"]) == _expected(mixed_model, plain, 0.9)
    assert all(lo <= p <= up for lo, p, up in zip(document["lower"], plain, document["upper"], strict=True))


def test_jsonlines_records_carry_lower_and_upper(client: FlaskClient, mixed_model: Regressor) -> None:
    plain = _plain(client)
    status, text = _post(client, "trace=abc; intervals=0.8", accept="application/jsonlines")
    assert status == 200, text
    records = [json.loads(line) for line in text.split("\n")[:-1]]
    assert len(records) == len(ROWS) and all(list(record) == ["prediction", "lower", "upper"] for record in records)
    assert [record["prediction"] for record in records] == plain
    lower, upper = _expected(mixed_model, plain, 0.8)
    assert [record["lower"] for record in records] == lower and [record["upper"] for record in records] == upper


def test_csv_appends_lower_and_upper_columns(client: FlaskClient, mixed_model: Regressor) -> None:
    plain = _plain(client)
    status, text = _post(client, "intervals=0.9", accept="text/csv")
    assert status == 200, text
    assert text.endswith("\n")
    rows = [[float(cell) for cell in line.split(",")] for line in text.split("\n")[:-1]]
    assert [row[0] for row in rows] == plain
    lower, upper = _expected(mixed_model, plain, 0.9)
    assert [row[1] for row in rows] == lower and [row[2] for row in rows] == upper


def test_without_the_attribute_the_response_is_unchanged(client: FlaskClient) -> None:
    for attributes in (None, "trace=abc", ""):
        for accept in ("application/json", "text/csv", "application/jsonlines"):
            assert _post(client, attributes, accept) == _post(client, None, accept)


@pytest.mark.parametrize(("level", "says"), [
    ("abc", "must be a number in (0, 1)"), ("", "must be a number in (0, 1)"), ("0", "in (0, 1)"),
    ("1", "in (0, 1)"), ("1.5", "in (0, 1)"), ("-0.2", "in (0, 1)"), ("nan", "in (0, 1)"), ("inf", "in (0, 1)"),
    ("0.99", "needs at least 99 calibration rows and the model was calibrated on 60"),
])
def test_an_unusable_level_answers_400_naming_it(client: FlaskClient, level: str, says: str) -> None:
    for body in (CSV_BODY, "not,a,valid,body\n"):   # refused on the headers, before the body is read
        status, text = _post(client, f"intervals={level}", body=body)
        assert status == 400, text
        message = json.loads(text)["message"]
        assert f"{HEADER} intervals={level}" in message and says in message


def test_an_artifact_without_calibration_answers_400(client_for: ClientFactory, mixed_model: Regressor,
                                                     tmp_path: pathlib.Path) -> None:
    artifact.save(dataclasses.replace(mixed_model, calibration=None), tmp_path / "older")
    older = artifact.load(tmp_path / "older")   # metadata without the calibration key: as older artifacts
    assert older.calibration is None
    client = client_for(older)
    status, text = _post(client, "intervals=0.9")
    assert status == 400 and "trained with this version of hyperplane" in json.loads(text)["message"]
    assert _post(client, None)[0] == 200   # plain predictions still work
