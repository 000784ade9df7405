"""Every input format x every Accept through the Flask test client: status, Content-Type, one record per
input row in order, and exactly the predictions Regressor.predict makes on the same rows."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from container.serving.app import LoadedPredictor, create_app
from container.serving.predictor import Predictor
from model.regressor import Regressor
from model.table import Table
from tests.serving.conftest import ClientFactory, make_settings
from tests.serving.requests_data import FEATURES, PARSERS, ROWS, bodies, csv_body, npy_body, shuffled

FORMATS = bodies(ROWS)
ACCEPTS = {None: None, "*/*": None, "text/csv": "text/csv", "application/json": "application/json",
           "application/jsonlines": "application/jsonlines"}


def expected(model: Regressor, rows: list[list[str]], features: list[str] = FEATURES) -> np.ndarray:
    return model.predict(Table.from_rows(features, rows))


def predictions(response: TestResponse, mimetype: str) -> np.ndarray:
    assert response.mimetype == mimetype
    return np.asarray(PARSERS[mimetype](response.get_data(as_text=True)), dtype=np.float64)


@pytest.mark.parametrize("accept", ACCEPTS, ids=lambda a: f"accept={a}")
@pytest.mark.parametrize("form", FORMATS)
def test_every_format_and_accept(client: FlaskClient, mixed_model: Regressor, form: str,
                                 accept: str | None) -> None:
    content_type, body = FORMATS[form]
    headers = {"Accept": accept} if accept else {}
    response = client.post("/invocations", data=body, content_type=content_type, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer_type = ACCEPTS[accept] or content_type   # no Accept or */*: the request's own format
    np.testing.assert_array_equal(predictions(response, answer_type), expected(mixed_model, ROWS))
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == \
        f"model_version={mixed_model.info['version']}"


@pytest.mark.parametrize("accept", [None, "*/*", "text/csv", "application/jsonlines"])
@pytest.mark.parametrize("shape", ["2-D", "1-D"])
def test_npy_for_an_all_numeric_model(numeric_client: FlaskClient, numeric_model: Regressor, shape: str,
                                      accept: str | None) -> None:
    features = numeric_model.feature_names
    rows = [[row[FEATURES.index(name)] or "0" for name in features] for row in ROWS]
    array = np.array(rows, dtype=np.float64)
    if shape == "1-D":
        array, rows = array[0], rows[:1]
    response = numeric_client.post("/invocations", data=npy_body(array), content_type="application/x-npy",
                                   headers={"Accept": accept} if accept else {})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer_type = accept if accept and accept != "*/*" else "application/json"   # x-npy: JSON by default
    np.testing.assert_array_equal(predictions(response, answer_type), expected(numeric_model, rows, features))


def test_every_text_format_works_for_the_numeric_model(numeric_client: FlaskClient,
                                                       numeric_model: Regressor) -> None:
    features = numeric_model.feature_names
    rows = [[row[FEATURES.index(name)] for name in features] for row in ROWS]
    for form, (content_type, body) in bodies(rows, features).items():
        response = numeric_client.post("/invocations", data=body, content_type=content_type)
        assert response.status_code == 200, (form, response.get_data(as_text=True))
        np.testing.assert_array_equal(predictions(response, content_type), expected(numeric_model, rows, features))


@pytest.mark.parametrize(("accept", "answer"), [
    ("text/csv;q=0.5, application/json", "application/json"),
    ("application/jsonlines;q=0.9, text/csv;q=0.2", "application/jsonlines"),
    ("application/xml, text/*;q=0.1", "text/csv"),
    ("application/json; charset=utf-8", "application/json"),
    ("APPLICATION/JSON", "application/json"),
    ("*/*;q=0.1, text/csv", "text/csv"),
])
def test_accept_q_values_wildcards_and_parameters(client: FlaskClient, accept: str, answer: str) -> None:
    content_type, body = FORMATS["json instances lists"]
    response = client.post("/invocations", data=body, content_type=content_type, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.mimetype == answer


@pytest.mark.parametrize("content_type", ["Text/CSV; Charset=UTF-8", "text/csv;charset=utf-8",
                                          "text/csv; charset=latin-1", "TEXT/CSV"])
def test_content_type_parameters_and_case(client: FlaskClient, mixed_model: Regressor, content_type: str) -> None:
    response = client.post("/invocations", data=csv_body(ROWS).encode(), content_type=content_type)
    assert response.status_code == 200
    np.testing.assert_array_equal(predictions(response, "text/csv"), expected(mixed_model, ROWS))


def test_json_charset_parameter(client: FlaskClient, mixed_model: Regressor) -> None:
    _, body = FORMATS["json instances objects"]
    response = client.post("/invocations", data=body, content_type="application/json; charset=utf-8")
    assert response.status_code == 200
    np.testing.assert_array_equal(predictions(response, "application/json"), expected(mixed_model, ROWS))


@pytest.mark.parametrize("header", ["present", "Present", "absent"])
def test_csv_header_parameter(client: FlaskClient, mixed_model: Regressor, header: str) -> None:
    body = csv_body(ROWS, shuffled(FEATURES) if header.lower() == "present" else None)
    response = client.post("/invocations", data=body, content_type=f"text/csv; header={header}")
    assert response.status_code == 200, response.get_data(as_text=True)
    np.testing.assert_array_equal(predictions(response, "text/csv"), expected(mixed_model, ROWS))


def test_csv_with_header_in_training_order_and_crlf(client: FlaskClient, mixed_model: Regressor) -> None:
    body = csv_body(ROWS, FEATURES).replace("\n", "\r\n")
    response = client.post("/invocations", data=body, content_type="text/csv")
    np.testing.assert_array_equal(predictions(response, "text/csv"), expected(mixed_model, ROWS))


def test_multi_record_batch_gives_one_line_per_input_line_in_order(client: FlaskClient,
                                                                   mixed_model: Regressor) -> None:
    rows = ROWS * 40   # 1000 records, as a MultiRecord batch transform mini-batch sends them
    for content_type, body, accept in [("text/csv", csv_body(rows), "text/csv"),
                                       ("application/jsonlines", bodies(rows)["jsonlines lists"][1],
                                        "application/jsonlines")]:
        response = client.post("/invocations", data=body, content_type=content_type, headers={"Accept": accept})
        text = response.get_data(as_text=True)
        assert text.count("\n") == len(rows) == len(text.splitlines())
        np.testing.assert_array_equal(predictions(response, accept), expected(mixed_model, rows))


def test_missing_values_are_imputed(client: FlaskClient, mixed_model: Regressor) -> None:
    empty = [[""] * len(FEATURES)]
    body = json.dumps({"instances": [dict.fromkeys(FEATURES)]})
    by_json = client.post("/invocations", data=body, content_type="application/json")
    by_csv = client.post("/invocations", data=csv_body(empty), content_type="text/csv")
    assert by_json.status_code == by_csv.status_code == 200
    assert by_json.json == {"predictions": [float(expected(mixed_model, empty)[0])]}
    assert float(by_csv.get_data(as_text=True)) == by_json.json["predictions"][0]


def test_execution_parameters(client_for: ClientFactory, mixed_model: Regressor) -> None:
    client = client_for(mixed_model, workers=3, max_payload_mb=20)
    response = client.get("/execution-parameters")
    assert response.status_code == 200
    assert response.json == {"MaxConcurrentTransforms": 3, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 20}


@pytest.mark.parametrize("mimetype", ["text/csv", "application/jsonlines"])
def test_a_batch_transform_response_leaves_the_last_newline_to_sagemaker(
        tmp_path: pathlib.Path, mixed_model: Regressor, mimetype: str) -> None:
    """SAGEMAKER_BATCH: AssembleWith=Line appends a newline after each mini-batch's response, so the
    response itself must not end with one, or the output gets an empty line per mini-batch."""
    batch = create_app(make_settings(tmp_path, batch=True),
                       LoadedPredictor(Predictor(mixed_model, batch=True))).test_client()
    online = create_app(make_settings(tmp_path), LoadedPredictor(Predictor(mixed_model))).test_client()
    body = csv_body(ROWS[:3])
    answers = [client.post("/invocations", data=body, content_type="text/csv", headers={"Accept": mimetype})
               .get_data(as_text=True) for client in (batch, online)]
    assert answers[1] == answers[0] + "\n"
    assert len(answers[0].split("\n")) == 3 and all(answers[0].split("\n"))
