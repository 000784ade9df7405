"""Explanations through the Flask test client: `explain=true` in X-Amzn-SageMaker-Custom-Attributes adds
one {"base", "attributions"} object per row, keyed by the feature names, summing to the prediction; CSV,
an unknown value and an artifact without a baseline answer 400."""

from __future__ import annotations

import dataclasses
import json

import pytest
from flask.testing import FlaskClient

from container.serving.attributes import HEADER
from model.regressor import Regressor
from tests.serving.conftest import ClientFactory
from tests.serving.requests_data import ROWS, csv_body

CSV_BODY = csv_body(ROWS)
FLOAT32 = 1e-5   # relative rounding of a float32 network's prediction, an upper bound


def _post(client: FlaskClient, attributes: str | None, accept: str = "application/json") -> tuple[int, str]:
    headers = {"Accept": accept, **({HEADER: attributes} if attributes is not None else {})}
    response = client.post("/invocations", data=CSV_BODY, content_type="text/csv", headers=headers)
    return response.status_code, response.get_data(as_text=True)


def _complete(model: Regressor, prediction: float, explanation: dict[str, object]) -> None:
    attributions = explanation["attributions"]
    assert isinstance(attributions, dict) and list(attributions) == model.feature_names   # one per feature
    base = float(explanation["base"])  # type: ignore[arg-type]
    # 1% of the change, plus float32 rounding of the served prediction (explanations run in float64)
    assert abs(base + sum(attributions.values()) - prediction) <= 0.01 * abs(prediction - base) + FLOAT32 * prediction


def test_json_carries_one_explanation_per_row(client: FlaskClient, mixed_model: Regressor) -> None:
    plain = json.loads(_post(client, None)[1])["predictions"]
    status, text = _post(client, "explain=true")
    assert status == 200, text
    document = json.loads(text)
    assert list(document) == ["predictions", "explanations"] and document["predictions"] == plain
    assert len(document["explanations"]) == len(ROWS)
    for prediction, explanation in zip(plain, document["explanations"], strict=True):
        assert list(explanation) == ["base", "attributions"]
        _complete(mixed_model, prediction, explanation)


def test_jsonlines_and_intervals_together(client: FlaskClient, mixed_model: Regressor) -> None:
    status, text = _post(client, "intervals=0.8, explain=TRUE", accept="application/jsonlines")
    assert status == 200, text
    records = [json.loads(line) for line in text.split("\n")[:-1]]
    assert len(records) == len(ROWS)
    for record in records:
        assert list(record) == ["prediction", "lower", "upper", "explanation"]
        _complete(mixed_model, record["prediction"], record["explanation"])


def test_explain_false_changes_nothing(client: FlaskClient) -> None:
    assert _post(client, "explain=false") == _post(client, None)


@pytest.mark.parametrize(("attributes", "accept", "says"), [
    ("explain=true", "text/csv", "explanations are answered in JSON or JSON Lines"),
    ("explain=maybe", "application/json", "explain must be true or false"),
])
def test_refusals_answer_400(client: FlaskClient, attributes: str, accept: str, says: str) -> None:
    status, text = _post(client, attributes, accept)
    assert status == 400 and says in json.loads(text)["message"], text


def test_an_artifact_without_baseline_answers_400(client_for: ClientFactory, mixed_model: Regressor) -> None:
    client = client_for(dataclasses.replace(mixed_model, baseline=None))
    status, text = _post(client, "explain=true")
    assert status == 400 and "trained with this version of hyperplane" in json.loads(text)["message"]
