"""Every error the server answers: status, JSON body {"error", "message"[, "row", "feature"]}, and for
400s the row and the feature at fault; 500 only for bugs, with the traceback in the log, not the body."""

from __future__ import annotations

import io
import json
import logging
import pathlib
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from container.serving.app import create_app
from container.serving.predictor import Predictor
from model.regressor import Regressor
from tests.serving.conftest import ClientFactory, make_settings
from tests.serving.requests_data import FEATURES, ROWS, csv_body, npy_body, records

KM = FEATURES.index("KM")


def _row(**changes: str) -> list[str]:
    row = list(ROWS[0])
    for name, value in changes.items():
        row[FEATURES.index(name)] = value
    return row


def _error(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = json.loads(response.get_data(as_text=True))
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert "Traceback" not in body["message"]
    return body


BAD_INPUTS: dict[str, tuple[str, str | bytes, int | None, str | None, str]] = {
    # name: (content type, body, row, feature, words in the message)
    "csv too few columns": ("text/csv", csv_body([ROWS[0], ROWS[1][:-1]]), 2, None, "expected 23 values, found 22"),
    "csv too many columns": ("text/csv", csv_body([ROWS[0] + ["1"]]), 1, None, "found 24"),
    "csv non-numeric": ("text/csv", csv_body([ROWS[0], ROWS[1], _row(KM="lots")]), 3, "KM", "'lots'"),
    "csv NaN": ("text/csv", csv_body([_row(HP="nan")]), 1, "HP", "not a finite number"),
    "csv infinity": ("text/csv", csv_body([ROWS[0], _row(Weight="inf")]), 2, "Weight", "not a finite number"),
    "csv unknown feature": ("text/csv", "Age_08_04,Colour\n23,Blue\n", None, "Colour", "unknown feature 'Colour'"),
    "csv missing feature": ("text/csv", csv_body(ROWS[:2], FEATURES[:-1]), None, "Tow_Bar",
                            "missing feature 'Tow_Bar'"),
    "csv target in header": ("text/csv", "Price," + ",".join(FEATURES) + "\n1," + ",".join(ROWS[0]) + "\n", None,
                             "Price", "it is the target"),
    "csv duplicate header": ("text/csv", ",".join([*FEATURES[:-1], "KM"]) + "\n" + csv_body(ROWS[:1]), None,
                             "KM", "twice"),
    "csv unterminated quote": ("text/csv", csv_body(ROWS[:2]) + '23,"46986\n', 3, None, "malformed CSV"),
    "csv empty line in the middle": ("text/csv", csv_body(ROWS[:1]) + "\n" + csv_body(ROWS[:1]), 2, None,
                                     "found 0"),
    "csv header only": ("text/csv", ",".join(FEATURES) + "\n", None, None, "no rows"),
    "csv bad header parameter": ("text/csv; header=maybe", csv_body(ROWS[:1]), None, None, "header='maybe'"),
    "csv not utf-8": ("text/csv", b"23,\xff\xfe\n", None, None, "not valid utf-8"),
    "empty body": ("text/csv", b"", None, None, "empty"),
    "blank body": ("application/json", b"  \n ", None, None, "empty"),
    "json malformed": ("application/json", '{"instances": [[1, 2]', None, None, "malformed JSON"),
    "json wrong form": ("application/json", '{"rows": []}', None, None, "'rows'"),
    "json two forms": ("application/json", '{"instances": [], "dataframe_records": []}', None, None,
                       "dataframe_split"),
    "json scalar": ("application/json", "42", None, None, "a JSON int"),
    "json no instances": ("application/json", '{"instances": []}', None, None, "no rows"),
    "json short list": ("application/json", json.dumps({"instances": [ROWS[0], ROWS[1][:5]]}), 2, None,
                        "expected 23 values"),
    "json scalar instance": ("application/json", '{"instances": [1.5]}', 1, None, "list of values"),
    "json unknown key": ("application/json", json.dumps({"instances": [{**records(ROWS[:1])[0], "Doorz": 3}]}),
                         1, "Doorz", "unknown feature 'Doorz'"),
    "json target key": ("application/json", json.dumps({"instances": [{**records(ROWS[:1])[0], "Price": 1}]}),
                        1, "Price", "it is the target"),
    "json missing key": ("application/json",
                         json.dumps({"instances": [records(ROWS[:1])[0],
                                                   {k: v for k, v in records(ROWS[:1])[0].items() if k != "CC"}]}),
                         2, "CC", "missing feature 'CC'"),
    "json nested value": ("application/json", json.dumps({"instances": [{**records(ROWS[:1])[0], "HP": [90]}]}),
                          1, "HP", "expected a number, a string or null"),
    "json non-numeric": ("application/json", json.dumps({"instances": [ROWS[0], _row(KM="many")]}), 2, "KM",
                         "'many'"),
    "json NaN": ("application/json", '{"instances": [[NaN, ' + json.dumps(ROWS[0][1:])[1:] + "]}", 1, "Age_08_04",
                 "not a finite number"),
    "json Infinity": ("application/json", '{"instances": [[-Infinity, ' + json.dumps(ROWS[0][1:])[1:] + "]}", 1,
                      "Age_08_04", "not a finite number"),
    "dataframe_split unknown column": ("application/json",
                                       json.dumps({"dataframe_split": {"columns": ["Age", *FEATURES[1:]],
                                                                       "data": [ROWS[0]]}}),
                                       None, "Age", "unknown feature 'Age'"),
    "dataframe_split duplicate column": ("application/json",
                                         json.dumps({"dataframe_split": {"columns": [*FEATURES[:-1], "KM"],
                                                                         "data": [ROWS[0]]}}),
                                         None, "KM", "named twice"),
    "dataframe_split ragged": ("application/json",
                               json.dumps({"dataframe_split": {"columns": FEATURES, "data": [ROWS[0], ROWS[1][1:]]}}),
                               2, None, "expected 23 values"),
    "dataframe_split no data": ("application/json", '{"dataframe_split": {"columns": []}}', None, None,
                                '"data"'),
    "dataframe_records not objects": ("application/json", json.dumps({"dataframe_records": [ROWS[0]]}), 1, None,
                                      "object keyed by feature name"),
    "jsonlines malformed line": ("application/jsonlines", json.dumps(ROWS[0]) + "\n{oops\n", 2, None,
                                 "malformed JSON"),
    "jsonlines empty line": ("application/jsonlines", json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]), 2, None,
                             "empty"),
    "jsonlines non-numeric": ("application/jsonlines", json.dumps(ROWS[0]) + "\n" + json.dumps(_row(CC="big")),
                              2, "CC", "'big'"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_400_naming_row_and_feature(client: FlaskClient, case: str) -> None:
    content_type, body, row, feature, words = BAD_INPUTS[case]
    error = _error(client.post("/invocations", data=body, content_type=content_type), 400)
    assert error["error"] == "Bad Request"
    assert words in error["message"]
    assert error.get("row") == row
    assert error.get("feature") == feature
    if row is not None:
        assert f"row {row}" in error["message"]


NPY_FEATURES = 21


@pytest.mark.parametrize(("body", "words", "row", "feature"), [
    (npy_body(np.ones((2, 5))), "shape (2, 5)", None, None),
    (npy_body(np.ones((2, 3, NPY_FEATURES))), "2-D array", None, None),
    (npy_body(np.array(["a"] * NPY_FEATURES)), "numeric array", None, None),
    (npy_body(np.array([[1.0] * NPY_FEATURES, [np.nan] * NPY_FEATURES])), "not a finite number", 2, "Age_08_04"),
    (npy_body(np.array([{"a": 1}], dtype=object)), "without pickles", None, None),
    (b"\x93NUMPY garbage", ".npy", None, None),
    (npy_body(np.ones((0, NPY_FEATURES))), "no rows", None, None),
])
def test_bad_npy_is_400(numeric_client: FlaskClient, body: bytes, words: str, row: int | None,
                        feature: str | None) -> None:
    error = _error(numeric_client.post("/invocations", data=body, content_type="application/x-npy"), 400)
    assert words in error["message"]
    assert (error.get("row"), error.get("feature")) == (row, feature)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", "application/x-npy",
                                          "application/x-recordio-protobuf", None])
def test_unsupported_content_type_is_415_listing_the_supported(client: FlaskClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    error = _error(client.post("/invocations", data=b"1,2", headers=headers), 415)
    assert "text/csv, application/json, application/jsonlines" in error["message"]
    if content_type == "application/x-npy":   # this model has categorical features
        assert "all numeric" in error["message"]


def test_npy_is_listed_for_a_numeric_model(numeric_client: FlaskClient) -> None:
    error = _error(numeric_client.post("/invocations", data=b"x", content_type="text/html"), 415)
    assert "application/x-npy" in error["message"]


@pytest.mark.parametrize("accept", ["application/x-npy", "application/xml", "text/html, image/*",
                                    "application/json;q=0"])
def test_unsupported_accept_is_406_listing_the_supported(client: FlaskClient, accept: str) -> None:
    response = client.post("/invocations", data=csv_body(ROWS[:1]), content_type="text/csv",
                           headers={"Accept": accept})
    error = _error(response, 406)
    assert "text/csv, application/json, application/jsonlines" in error["message"]


def test_payload_over_the_limit_is_413(client_for: ClientFactory, mixed_model: Regressor) -> None:
    client = client_for(mixed_model, max_payload_mb=1)
    line = ",".join(ROWS[0]) + "\n"
    fits = line * (1024 * 1024 // len(line))
    assert client.post("/invocations", data=fits, content_type="text/csv").status_code == 200
    error = _error(client.post("/invocations", data=fits + line, content_type="text/csv"), 413)
    assert "1 MiB" in error["message"] and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in error["message"]


def test_chunked_payload_is_limited_too(client_for: ClientFactory, mixed_model: Regressor) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the body must not be cut silently at the limit."""
    client = client_for(mixed_model, max_payload_mb=1)
    line = (",".join(ROWS[0]) + "\n").encode()
    fits = line * (1024 * 1024 // len(line))
    headers = {"Content-Type": "text/csv", "Transfer-Encoding": "chunked"}
    response = client.post("/invocations", input_stream=io.BytesIO(fits), headers=headers)
    assert response.status_code == 200
    assert response.get_data(as_text=True).count("\n") == len(fits) // len(line)
    _error(client.post("/invocations", input_stream=io.BytesIO(fits + line), headers=headers), 413)


def test_unlimited_payload(client_for: ClientFactory, mixed_model: Regressor) -> None:
    client = client_for(mixed_model, max_payload_mb=0)
    response = client.post("/invocations", data=csv_body(ROWS * 300), content_type="text/csv")
    assert response.status_code == 200


def test_a_bug_is_a_logged_500_without_traceback_in_the_body(client: FlaskClient, mixed_model: Regressor,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Regressor, encoded: object) -> None:
        raise RuntimeError("secret internal detail")

    # where every request's rows are computed: one plain row, and everything else
    monkeypatch.setattr(Regressor, "predict_row", broken)
    monkeypatch.setattr(Regressor, "predict_encoded", broken)
    with caplog.at_level(logging.ERROR, logger="hyperplane.serve"):
        error = _error(client.post("/invocations", data=csv_body(ROWS[:1]), content_type="text/csv"), 500)
    assert "secret" not in json.dumps(error)
    assert any(record.exc_info and "secret internal detail" in str(record.exc_info[1]) for record in caplog.records)


def test_loading_model_is_503_and_ping_too(tmp_path: pathlib.Path) -> None:
    class Loading:
        def current(self) -> Predictor | None:
            return None

        def ready(self) -> bool:
            return False

    client = create_app(make_settings(tmp_path), Loading()).test_client()
    assert _error(client.get("/ping"), 503)["message"] == "the model is loading"
    assert "loading" in _error(client.post("/invocations", data=b"1", content_type="text/csv"), 503)["message"]
    assert client.get("/execution-parameters").status_code == 200   # static: answers at once


def test_ping_when_ready(client: FlaskClient) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.get_data() == b""


def test_other_routes_and_methods_are_json_errors(client: FlaskClient) -> None:
    assert _error(client.get("/nothing"), 404)["error"] == "Not Found"
    response = client.get("/invocations")
    assert _error(response, 405)["error"] == "Method Not Allowed"
    assert "POST" in response.headers["Allow"]
    assert _error(client.get("/ping/"), 404)


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", "[" * 100_000 + "]" * 100_000),
    ("application/json", '{"instances": ' + "[" * 50_000 + "]" * 50_000 + "}"),
    ("application/jsonlines", "[1]\n" + "[" * 50_000 + "]" * 50_000 + "\n"),
])
def test_json_nested_beyond_reason_is_a_400(client: FlaskClient, content_type: str, body: str) -> None:
    error = _error(client.post("/invocations", data=body, content_type=content_type), 400)
    assert "nested too deeply" in error["message"]
    assert client.post("/invocations", data=csv_body(ROWS[:1]), content_type="text/csv").status_code == 200
