"""Custom attributes, the readiness board, the background model loader and the request log."""

from __future__ import annotations

import logging
import os
import pathlib

import pytest
from flask.testing import FlaskClient
from werkzeug.exceptions import BadRequest

from container.serving.app import create_app
from container.serving.attributes import HEADER, parse_custom_attributes
from container.serving.predictor import ModelLoader
from container.serving.readiness import ReadinessBoard
from model.regressor import Regressor
from tests.serving.conftest import ClientFactory, make_settings
from tests.serving.requests_data import ROWS, csv_body


@pytest.mark.parametrize(("value", "parsed"), [
    (None, {}),
    ("", {}),
    ("a=1", {"a": "1"}),
    ("a=1,b=2", {"a": "1", "b": "2"}),
    (" a = 1 ; b=x=y, flag ,", {"a": "1", "b": "x=y", "flag": ""}),
    ("trace_id=abc;trace_id=def", {"trace_id": "def"}),
])
def test_parse_custom_attributes(value: str | None, parsed: dict[str, str]) -> None:
    assert parse_custom_attributes(value) == parsed


def test_custom_attributes_longer_than_1024_are_refused(client: FlaskClient) -> None:
    assert parse_custom_attributes("a=" + "x" * 1022) == {"a": "x" * 1022}
    with pytest.raises(BadRequest, match="1025 characters"):
        parse_custom_attributes("a=" + "x" * 1023)
    response = client.post("/invocations", data=csv_body(ROWS[:1]), content_type="text/csv",
                           headers={HEADER: "a=" + "x" * 2000})
    assert response.status_code == 400
    assert HEADER in response.json["message"]   # type: ignore[index]


def test_custom_attributes_are_kept_on_the_request(client: FlaskClient, mixed_model: Regressor) -> None:
    seen = {}

    @client.application.after_request
    def capture(response: object) -> object:
        from flask import g
        seen.update(g.custom_attributes)
        return response

    response = client.post("/invocations", data=csv_body(ROWS[:1]), content_type="text/csv",
                           headers={HEADER: "a=1; b=2", "X-Amzn-SageMaker-Inference-Id": "42", "X-Other": "y"})
    assert response.status_code == 200
    assert seen == {"a": "1", "b": "2"}
    assert response.headers[HEADER] == f"model_version={mixed_model.info['version']}"


def test_readiness_board(tmp_path: pathlib.Path) -> None:
    board = ReadinessBoard(tmp_path / "ready")
    assert not board.all_ready(1)           # no folder yet
    board.reset()
    board.register(11)
    board.register(12)
    assert not board.all_ready(2)
    board.mark_ready(11)
    assert not board.all_ready(2)           # 12 still loading
    board.mark_ready(12)
    assert board.all_ready(2)
    assert not board.all_ready(3)           # a worker not forked yet
    board.forget(12)                        # reaped; its replacement registers and loads
    board.register(13)
    assert not board.all_ready(2)
    board.mark_ready(13)
    assert board.all_ready(2)
    board.remove()
    assert not (tmp_path / "ready").exists()


def test_loader_loads_warms_up_and_marks_ready(tmp_path: pathlib.Path, mixed_model_dir: pathlib.Path) -> None:
    settings = make_settings(tmp_path, model_dir=mixed_model_dir, workers=1, torch_threads=1)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    board.register(os.getpid())
    loader = ModelLoader(settings, board, on_failure=lambda: pytest.fail("the model should load"))
    client = create_app(settings, loader).test_client()
    assert client.get("/ping").status_code == 503
    loader.start(worker_index=0).join(timeout=30)
    assert loader.current() is not None and loader.ready()
    assert client.get("/ping").status_code == 200
    response = client.post("/invocations", data=csv_body(ROWS), content_type="text/csv")
    assert response.status_code == 200
    assert len(response.get_data(as_text=True).splitlines()) == len(ROWS)


def test_loader_failure_stops_the_worker(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "hyperplane-regressor.pt").write_bytes(b"not a model")
    settings = make_settings(tmp_path, workers=1)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    board.register(os.getpid())
    failures = []
    loader = ModelLoader(settings, board, on_failure=lambda: failures.append(True))
    with caplog.at_level(logging.ERROR, logger="hyperplane.serve"):
        loader.start(worker_index=0).join(timeout=30)
    assert failures == [True]
    assert loader.current() is None and not loader.ready()
    assert "cannot load the model" in caplog.text


def test_gpu_round_robin_and_cpu_fallback(tmp_path: pathlib.Path) -> None:
    loader = ModelLoader(make_settings(tmp_path, gpus=4), ReadinessBoard(tmp_path))
    assert [loader._device(i, cuda_available=True) for i in range(6)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert loader._device(2, cuda_available=False) == "cpu"
    assert ModelLoader(make_settings(tmp_path), ReadinessBoard(tmp_path))._device(3, cuda_available=True) == "cpu"


def test_one_log_line_per_request_without_payload(client_for: ClientFactory, mixed_model: Regressor,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(mixed_model)
    with caplog.at_level(logging.INFO, logger="hyperplane.access"):
        client.get("/ping")
        client.post("/invocations", data=csv_body(ROWS), content_type="text/csv", headers={"Accept": "*/*"})
        client.post("/invocations", data="secret-value", content_type="text/csv")
    lines = [record.getMessage() for record in caplog.records if record.name == "hyperplane.access"]
    assert len(lines) == 2                  # /ping is not logged by default
    assert lines[0].startswith("method=POST path=/invocations status=200 rows=25 latency_ms=")
    assert "content_type=text/csv" in lines[0] and "response_type=text/csv" in lines[0]
    assert "status=400" in lines[1] and "secret" not in lines[1]


def test_ping_lines_when_asked(client_for: ClientFactory, mixed_model: Regressor,
                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hyperplane.access"):
        client_for(mixed_model, log_ping=True).get("/ping")
    assert any("path=/ping status=200" in record.getMessage() for record in caplog.records)
