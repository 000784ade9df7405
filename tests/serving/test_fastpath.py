"""The speed work must not change an answer: the fused ensemble computes the members' mean, and the WSGI
fast path (fastpath.py) answers exactly what Flask's route answers, byte for byte, errors included."""

from __future__ import annotations

import json
import logging
import pathlib
import re

import numpy as np
import pytest
import torch
from flask import Flask

from container.serving.app import LoadedPredictor, create_app
from container.serving.fastpath import FastPath
from container.serving.limits import RequestLimits
from container.serving.predictor import Predictor
from model.network import FusedEnsemble, build_network, predict_mean
from model.regressor import Regressor
from model.table import Table
from tests.serving.conftest import make_settings
from tests.serving.requests_data import FEATURES, ROWS, bodies, csv_body, typed


@pytest.mark.parametrize(("hidden", "members", "dropout"), [((16, 8), 5, 0.1), ((12,), 3, 0.0), ((), 1, 0.0)])
@pytest.mark.parametrize("rows", [1, 3, FusedEnsemble.BLOCK_ROWS * 2 + 5])
def test_the_fused_ensemble_equals_the_module_by_module_mean(hidden: tuple[int, ...], members: int,
                                                             dropout: float, rows: int) -> None:
    torch.manual_seed(0)
    network = build_network(7, hidden, dropout, members).eval()
    fused = FusedEnsemble.of(network)
    assert fused is not None
    inputs = torch.randn(rows, 7)
    with torch.inference_mode():
        ours, reference = fused(inputs), predict_mean(network, inputs)
    assert ours.shape == reference.shape == (rows,)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0, atol=1e-6)


def test_other_networks_have_no_fused_copy() -> None:
    network = build_network(4, (8,), members=2)
    assert FusedEnsemble.of(torch.nn.Sequential(torch.nn.Linear(4, 1))) is None
    network.members[1] = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    assert FusedEnsemble.of(network) is None


def test_predict_follows_weights_changed_after_a_prediction(mixed_model: Regressor) -> None:
    """Regressor.predict keeps the fused copy only while the weights it was made from are unchanged."""
    regressor = Regressor(mixed_model.preprocessor, build_network(mixed_model.preprocessor.n_inputs, (8,), 0.0, 3),
                          mixed_model.config)
    table = Table.from_rows(FEATURES, ROWS)
    before = regressor.predict(table)
    with torch.no_grad():
        for parameter in regressor.network.parameters():
            parameter.add_(0.05)
    after = regressor.predict(table)
    assert not np.allclose(before, after)
    regressor.network.eval()
    with torch.inference_mode():
        scaled = predict_mean(regressor.network, torch.from_numpy(regressor.preprocessor.encode(table)))
    np.testing.assert_allclose(after, regressor.preprocessor.decode_target(scaled.numpy()), rtol=1e-5)
    assert not regressor.network.training


def test_predict_leaves_the_network_in_eval_mode(mixed_model: Regressor) -> None:
    regressor = Regressor(mixed_model.preprocessor, build_network(mixed_model.preprocessor.n_inputs, (8,), 0.5, 2),
                          mixed_model.config)
    regressor.network.train()
    table = Table.from_rows(FEATURES, ROWS[:3])
    first = regressor.predict(table)
    assert not regressor.network.training
    np.testing.assert_array_equal(first, regressor.predict(table))   # dropout is off


# Requests the fast path may take (and ones it must hand on), each answered twice below.
CSV_ROW = csv_body(ROWS[:1]).encode()
JSON_ROW = json.dumps({"instances": [[typed(cell) for cell in ROWS[0]]]}).encode()
BAD_NUMBER = csv_body([["abc", *ROWS[0][1:]]]).encode()
REQUESTS: dict[str, tuple[str, dict[str, str], bytes]] = {
    "csv row": ("/invocations", {"Content-Type": "text/csv"}, CSV_ROW),
    "csv row, accept */*": ("/invocations", {"Content-Type": "text/csv", "Accept": "*/*"}, CSV_ROW),
    "csv row, accept json": ("/invocations", {"Content-Type": "text/csv", "Accept": "application/json"}, CSV_ROW),
    "csv row, accept jsonlines": ("/invocations", {"Content-Type": "text/csv", "Accept": "application/jsonlines"},
                                  CSV_ROW),
    "csv rows": ("/invocations", {"Content-Type": "text/csv"}, csv_body(ROWS).encode()),
    "json row": ("/invocations", {"Content-Type": "application/json"}, JSON_ROW),
    "json row, accept csv": ("/invocations", {"Content-Type": "application/json", "Accept": "text/csv"}, JSON_ROW),
    **{f"{form}": ("/invocations", {"Content-Type": content_type}, body)
       for form, (content_type, body) in bodies(ROWS).items() if content_type != "application/x-npy"},
    "missing values": ("/invocations", {"Content-Type": "text/csv"}, b"," * (len(FEATURES) - 1) + b"\n"),
    "with parameters": ("/invocations", {"Content-Type": "text/csv; header=absent"}, CSV_ROW),
    "with attributes": ("/invocations", {"Content-Type": "text/csv",
                                         "X-Amzn-SageMaker-Custom-Attributes": "intervals=0.9"}, CSV_ROW),
    "bad number": ("/invocations", {"Content-Type": "text/csv"}, BAD_NUMBER),
    "too few values": ("/invocations", {"Content-Type": "text/csv"}, b"1,2,3\n"),
    "header only": ("/invocations", {"Content-Type": "text/csv"}, ",".join(FEATURES).encode()),
    "blank body": ("/invocations", {"Content-Type": "text/csv"}, b" \n"),
    "malformed json": ("/invocations", {"Content-Type": "application/json"}, b'{"instances": [1,'),
    "json unknown feature": ("/invocations", {"Content-Type": "application/json"},
                             b'{"instances": [{"Price": 1}]}'),
    "not acceptable": ("/invocations", {"Content-Type": "text/csv", "Accept": "image/png"}, CSV_ROW),
    "unsupported type": ("/invocations", {"Content-Type": "text/plain"}, CSV_ROW),
    "too many lines": ("/invocations", {"Content-Type": "text/csv"}, csv_body(ROWS * 3).encode()),
    "too large": ("/invocations", {"Content-Type": "text/csv"}, CSV_ROW * 40000),
    "bad utf-8": ("/invocations", {"Content-Type": "text/csv"}, b"\xff\xfe" + CSV_ROW),
    "ping": ("/ping", {}, b""),
}


@pytest.fixture
def apps(mixed_model: Regressor, tmp_path: pathlib.Path) -> tuple[Flask, Flask]:
    """Two apps on the same model: one whose fast path is on, one that never learns its servable."""
    settings = make_settings(tmp_path, max_rows=60, max_payload_mb=1)
    made = []
    for fast in (True, False):
        app = create_app(settings, LoadedPredictor(Predictor(mixed_model,
                                                             limits=RequestLimits.from_settings(settings))))
        if not fast:
            app.wsgi_app.learn = lambda servable: None  # type: ignore[attr-defined]
        app.test_client().post("/invocations", data=CSV_ROW, content_type="text/csv")   # learns (or not)
        made.append(app)
    return made[0], made[1]


@pytest.mark.parametrize("name", REQUESTS)
def test_the_fast_path_answers_exactly_what_the_route_answers(apps: tuple[Flask, Flask], name: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path, headers, body = REQUESTS[name]
    answers, lines = [], []
    for app in apps:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hyperplane.access"):
            method = app.test_client().get if path == "/ping" else app.test_client().post
            response = method(path, data=body, headers=headers)
        answers.append((response.status_code, sorted(response.headers.items()), response.get_data()))
        lines.append([re.sub(r"latency_ms=\S+", "", r.getMessage()) for r in caplog.records
                      if r.name == "hyperplane.access"])
    assert answers[0] == answers[1]
    assert lines[0] == lines[1]


def test_plain_requests_skip_flask(apps: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    fast_app, _ = apps
    fast = fast_app.wsgi_app
    assert isinstance(fast, FastPath)
    def refuse(environ: object, start_response: object) -> list[bytes]:
        raise AssertionError("reached Flask")
    monkeypatch.setattr(fast, "app", refuse)
    for name in ("csv row", "csv row, accept */*", "json row, accept csv", "csv rows", "json instances lists"):
        path, headers, body = REQUESTS[name]
        assert fast_app.test_client().post(path, data=body, headers=headers).status_code == 200, name
