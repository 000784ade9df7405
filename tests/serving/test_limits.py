"""Request limits besides the payload size: rows per request and bytes per line (413, naming the variable),
their settings, and the columns a request may name (bounded by the model's features, in linear time)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flask.testing import FlaskClient

from container.serving.errors import TooLarge
from container.serving.limits import RequestLimits, longest_line
from container.serving.settings import DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_ROWS, ServingSettings, SettingsError
from model.regressor import Regressor
from tests.serving.conftest import ClientFactory
from tests.serving.requests_data import FEATURES, ROWS, csv_body, npy_body, typed

MIB = 1024 * 1024


def from_env(**environ: str) -> ServingSettings:
    return ServingSettings.from_environ(environ, cpus=2, gpus=0)


def test_defaults_and_variables() -> None:
    s = from_env()
    assert (s.max_rows, s.max_line_bytes) == (DEFAULT_MAX_ROWS, DEFAULT_MAX_LINE_BYTES) == (500_000, MIB)
    assert RequestLimits.from_settings(s) == RequestLimits() == RequestLimits(500_000, MIB)
    s = from_env(HYPERPLANE_MAX_ROWS="1000", HYPERPLANE_MAX_LINE_BYTES="4096")
    assert RequestLimits.from_settings(s) == RequestLimits(1000, 4096)
    s = from_env(HYPERPLANE_MAX_ROWS="0", HYPERPLANE_MAX_LINE_BYTES="0")
    assert RequestLimits.from_settings(s) == RequestLimits(None, None)   # 0 turns a limit off
    for name in ("HYPERPLANE_MAX_ROWS", "HYPERPLANE_MAX_LINE_BYTES"):
        for value in ("-1", "lots", "1.5"):
            with pytest.raises(SettingsError, match=name):
                from_env(**{name: value})


@pytest.mark.parametrize(("body", "longest"), [
    (b"", (1, 0)), (b"abc", (1, 3)), (b"abc\n", (1, 3)), (b"a\nbcd\nef", (2, 3)), (b"\n\n" + b"x" * 9, (3, 9)),
])
def test_longest_line(body: bytes, longest: tuple[int, int]) -> None:
    assert longest_line(body) == longest


def test_line_and_row_counting() -> None:
    limits = RequestLimits(max_rows=3, max_line_bytes=10)
    limits.check_lines(b"1\n2\n3\n\n\r\n", "text/csv")            # trailing newlines end rows, add none
    limits.check_lines(b"h\n1\n2\n3\n", "text/csv")               # one more line for a CSV header
    limits.check_lines(b"1\n2\n3\n4\n5\n" + b"x" * 99, "application/json")   # not a line format
    with pytest.raises(Exception, match="5 lines, more than the 3 rows") as refused:
        limits.check_lines(b"h\n1\n2\n3\n4", "text/csv")
    assert getattr(refused.value, "code", None) == 413
    with pytest.raises(Exception, match="4 lines"):
        limits.check_lines(b"[1]\n[2]\n[3]\n[4]\n", "application/jsonlines")
    with pytest.raises(Exception, match=r"line 2 is 11 bytes long, more than the 10 .*HYPERPLANE_MAX_LINE_BYTES"):
        limits.check_lines(b"1\n" + b"2" * 11 + b"\n3", "text/csv")
    limits.check_rows(3)
    with pytest.raises(Exception, match=r"4 rows, more than the 3 .*HYPERPLANE_MAX_ROWS"):
        limits.check_rows(4)


@pytest.mark.parametrize("max_line_bytes", [None, 4, 1000])
def test_line_counting_is_the_same_whether_or_not_the_body_is_scanned_for_long_lines(
        max_line_bytes: int | None) -> None:
    """A body longer than the line limit is counted from its newlines' positions (one scan for both
    checks); the answer is the one bytes.count gives."""
    limits = RequestLimits(max_rows=3, max_line_bytes=max_line_bytes)
    for body in (b"1\n2\n3\n\n\r\n", b"1\n2\n3" + b"\n" * 600, b"1\r\n2\r\n3\r\n", b"\n" * 700, b""):
        limits.check_lines(body, "application/jsonlines")
    for body, lines in ((b"1\n2\n3\n4", 4), (b"1\n2\n\n3\n" + b"\r\n" * 300, 4), (b"1\n2\n3\n4\n5\n" + b"\n" * 300, 5)):
        with pytest.raises(TooLarge, match=f"holds {lines} lines"):
            limits.check_lines(body, "application/jsonlines")


def _too_large(response: object, *words: str) -> None:
    assert getattr(response, "status_code", None) == 413, getattr(response, "data", b"")[:300]
    body = json.loads(getattr(response, "data", b"{}"))
    assert body["error"] == "Request Entity Too Large" and all(word in body["message"] for word in words), body


def test_a_single_huge_line_is_413(client: FlaskClient) -> None:
    for content_type, body in (("text/csv", b"1," * (3 * MIB)), ("application/jsonlines", b"[" + b"1," * MIB + b"1]"),
                               ("text/csv", csv_body(ROWS[:2]).encode() + b"9" * (MIB + 1) + b"\n")):
        _too_large(client.post("/invocations", data=body, content_type=content_type), "HYPERPLANE_MAX_LINE_BYTES")
    assert client.post("/invocations", data=csv_body(ROWS), content_type="text/csv").status_code == 200


def _bodies(rows: list[list[str]]) -> list[tuple[str, str]]:
    lists = [[typed(cell) for cell in row] for row in rows]
    return [("text/csv", csv_body(rows)), ("text/csv", csv_body(rows, FEATURES)),
            ("application/jsonlines", "".join(json.dumps(row) + "\n" for row in lists)),
            ("application/json", json.dumps({"instances": lists}))]


def test_rows_beyond_the_limit_are_413_in_every_format(client_for: ClientFactory, mixed_model: Regressor,
                                                      numeric_model: Regressor) -> None:
    rows = (ROWS * 5)[:101]
    client = client_for(mixed_model, max_rows=100)
    for content_type, body in _bodies(rows):
        _too_large(client.post("/invocations", data=body, content_type=content_type), "more than the 100",
                   "HYPERPLANE_MAX_ROWS")
    for content_type, body in _bodies(rows[:100]):   # exactly the limit passes
        response = client.post("/invocations", data=body, content_type=content_type)
        assert response.status_code == 200, response.data[:300]
    numeric = client_for(numeric_model, max_rows=100)
    array = np.ones((101, len(numeric_model.feature_names)))
    _too_large(numeric.post("/invocations", data=npy_body(array), content_type="application/x-npy"), "101 rows")
    assert numeric.post("/invocations", data=npy_body(array[:100]), content_type="application/x-npy").status_code == 200


def test_a_full_batch_transform_mini_batch_passes(client: FlaskClient) -> None:
    """6 MiB of used-car rows, as SageMaker's MultiRecord strategy fills a mini-batch: ~100,000 rows."""
    line = csv_body(ROWS[:1]).encode()
    body = line * (6 * MIB // len(line))
    response = client.post("/invocations", data=body, content_type="text/csv")
    assert response.status_code == 200
    assert response.data.count(b"\n") == body.count(b"\n") > 90_000


@pytest.mark.parametrize("form", ["csv header", "dataframe_split"])
def test_naming_far_more_columns_than_features_is_a_quick_400(client: FlaskClient, form: str) -> None:
    """Before, Table.from_rows looked for duplicates in quadratic time: 16,000 names took 2 s and 100,000
    would take over a minute, holding the worker."""
    names = [f"c{i}" for i in range(100_000)]
    if form == "csv header":
        body, content_type = ",".join(names) + "\n" + ",".join("1" for _ in names) + "\n", "text/csv; header=present"
    else:
        body, content_type = json.dumps({"dataframe_split": {"columns": names, "data": [[1] * len(names)]}}), \
            "application/json"
    started = time.perf_counter()
    response = client.post("/invocations", data=body, content_type=content_type)
    assert time.perf_counter() - started < 2.0
    assert response.status_code == 400 and response.json is not None
    assert response.json["feature"] == "c0" and "unknown feature 'c0'" in response.json["message"]


def test_extra_columns_keep_their_precise_errors(client: FlaskClient) -> None:
    header = [*FEATURES, "KM"]   # one more name than features: a duplicate
    response = client.post("/invocations", data=",".join(header) + "\n" + ",".join([*ROWS[0], "1"]) + "\n",
                           content_type="text/csv")
    assert response.status_code == 400 and response.json is not None
    assert response.json["feature"] == "KM" and "named twice" in response.json["message"]


@pytest.mark.parametrize("number", ["9" * 5_000, "1" + "0" * 400, "-" + "9" * 4_000])
def test_integers_beyond_float_are_a_400(client: FlaskClient, number: str) -> None:
    row = [json.dumps(typed(cell)) for cell in ROWS[0]]
    row[FEATURES.index("KM")] = number
    for content_type, body in (("application/json", '{"instances": [[' + ",".join(row) + "]]}"),
                               ("application/jsonlines", "[" + ",".join(row) + "]\n")):
        response = client.post("/invocations", data=body, content_type=content_type)
        assert response.status_code == 400, response.data[:300]
