"""Handler mode in process: the user's inference module (sagemaker-inference's contract) behind the Flask
app: the four functions, transform_fn, context, the safe defaults (no pickles, 415/400/406), Accept and
Content-Type handling, errors without tracebacks, load failures, and the loader's readiness."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import pathlib
import pickle
from typing import Any

import numpy as np
import pytest
from sagemaker_inference import decoder
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import NotAcceptable
from werkzeug.http import parse_accept_header
from werkzeug.test import TestResponse

from container.serving.app import create_app
from container.serving.attributes import HEADER
from container.serving.handlers import ENCODER_TYPES, UserHandlers, resolve_accept
from container.serving.predictor import ModelLoader
from container.serving.readiness import ReadinessBoard
from container.serving.servable import LoadError
from tests.serving.conftest import ClientFactory, HandlersWriter

FOUR_FUNCTIONS = """
    import json, os

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "scale.txt")) as f:
            return {"scale": float(f.read())}

    def input_fn(body, content_type):
        assert content_type == "application/json", content_type
        return json.loads(body)["values"]

    def predict_fn(data, model):
        return [value * model["scale"] for value in data]

    def output_fn(prediction, accept):
        return json.dumps({"scaled": prediction, "accept": accept})
"""

# predict_fn only: the toolkit's default input_fn/output_fn (as SafeInferenceHandler has them) around it
DOUBLING = """
    import numpy as np

    def model_fn(model_dir):
        return 2.0

    def predict_fn(data, model):
        return np.asarray(data, dtype=float) * model
"""

# output_fn shows what the handlers saw
ECHO = """
    import json

    def model_fn(model_dir):
        return None

    def input_fn(body, content_type):
        return {"body": body if isinstance(body, str) else body.decode("latin-1"), "content_type": content_type}

    def predict_fn(data, model):
        return data

    def output_fn(prediction, accept):
        return json.dumps({**prediction, "accept": accept}), "application/json"
"""

RAISING = """
    from sagemaker_inference.errors import GenericInferenceToolkitError

    def model_fn(model_dir):
        return "model"

    def transform_fn(model, body, content_type, accept):
        if body == "teapot":
            raise GenericInferenceToolkitError(418, "short and stout", "teapot")
        if body == "bug":
            raise ValueError("bad value")
        return "fine"
"""


def _json(response: TestResponse, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return json.loads(response.get_data(as_text=True))


def test_four_functions(handlers_for: ClientFactory, tmp_path: pathlib.Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "scale.txt").write_text("3")
    client = handlers_for(FOUR_FUNCTIONS)
    response = client.post("/invocations", json={"values": [1, 2.5]}, headers={"Accept": "text/plain"})
    assert response.status_code == 200
    assert response.content_type == "text/plain"          # output_fn returned a str: the Accept it was given
    assert json.loads(response.get_data(as_text=True)) == {"scaled": [3.0, 7.5], "accept": "text/plain"}
    assert response.headers[HEADER] == "model_version=user:inference"


def test_transform_fn_with_its_content_type_and_a_utf8_str(handlers_for: ClientFactory) -> None:
    client = handlers_for("""
        def model_fn(model_dir):
            return "café"

        def transform_fn(model, body, content_type, accept):
            return f"{model} {body.decode()} {content_type}", "text/plain; charset=utf-8"
    """)
    response = client.post("/invocations", data=b"au lait", content_type="application/octet-stream")
    assert response.status_code == 200
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.get_data() == "café au lait application/octet-stream".encode()


def test_handlers_taking_context(handlers_for: ClientFactory, tmp_path: pathlib.Path) -> None:
    client = handlers_for("""
        import json

        def model_fn(model_dir, context):
            return {"model_dir": context.system_properties["model_dir"],
                    "gpu_id": context.system_properties["gpu_id"]}

        def input_fn(body, content_type, context):
            return {"trace": context.get_request_header(0, "x-trace"),
                    "headers": sorted(context.request_processor[0].get_request_properties())}

        def predict_fn(data, model, context):
            return {**data, **model}

        def output_fn(prediction, accept, context):
            context.set_response_status(201)
            return json.dumps(prediction), "application/vnd.result+json"
    """)
    response = client.post("/invocations", json={}, headers={"X-Trace": "abc"})
    assert response.status_code == 201
    assert response.content_type == "application/vnd.result+json"
    seen = json.loads(response.get_data(as_text=True))
    assert seen["trace"] == "abc" and seen["model_dir"] == str(tmp_path / "model") and seen["gpu_id"] is None
    assert {"Accept", "Content-Type", "X-Trace"} <= set(seen["headers"])


def test_default_input_and_output_functions(handlers_for: ClientFactory) -> None:
    client = handlers_for(DOUBLING)
    assert _json(client.post("/invocations", json=[[1, 2], [3, 4]]), 200) == [[2.0, 4.0], [6.0, 8.0]]
    response = client.post("/invocations", data="1,2\n3,4\n", content_type="text/csv", headers={"Accept": "text/csv"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.get_data(as_text=True).split() == ["2.0,4.0", "6.0,8.0"]
    sent = io.BytesIO()
    np.save(sent, np.arange(6, dtype=np.float32).reshape(2, 3))
    response = client.post("/invocations", data=sent.getvalue(), content_type="application/x-npy",
                           headers={"Accept": "application/x-npy"})
    assert response.status_code == 200 and response.mimetype == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.get_data()), allow_pickle=False),
                                  np.arange(6).reshape(2, 3) * 2.0)


def test_default_predict_fn_runs_a_torch_module(handlers_for: ClientFactory) -> None:
    client = handlers_for("""
        import torch

        def model_fn(model_dir):
            linear = torch.nn.Linear(2, 1)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor([[1.0, 10.0]]))
                linear.bias.fill_(0.5)
            # in training mode the dropout would zero or scale the outputs: the default predict_fn sets eval
            return torch.nn.Sequential(linear, torch.nn.Dropout(0.9)).train()
    """)
    assert _json(client.post("/invocations", json=[[1, 2], [3, 4]])) == [[21.5], [43.5]]
    error = _json(client.post("/invocations", json=[["a", "b"]]), 400)
    assert "not an array of numbers" in error["message"]


def test_default_predict_fn_without_a_torch_model_is_a_500_naming_it(handlers_for: ClientFactory) -> None:
    client = handlers_for("def model_fn(model_dir):\n    return object()\n")
    error = _json(client.post("/invocations", json=[1]), 500)
    assert error["message"].startswith("NotImplementedError: Please provide a predict_fn implementation")


class Planted:
    """Unpickling this creates the file `marker`: proof that a pickle ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_pickled_npy_body_is_refused_and_never_unpickled(handlers_for: ClientFactory,
                                                           tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "unpickled"
    body = io.BytesIO()
    np.save(body, np.array([Planted(marker)], dtype=object), allow_pickle=True)
    # the default input_fn, and a user's input_fn that calls the toolkit's decoder itself
    users_decoder = ("from sagemaker_inference import decoder\n"
                     "def model_fn(model_dir):\n    return None\n"
                     "def input_fn(body, content_type):\n    return decoder.decode(body, content_type)\n"
                     "def predict_fn(data, model):\n    return data\n")
    for client in (handlers_for(DOUBLING), handlers_for(users_decoder)):
        for payload in (body.getvalue(), pickle.dumps(Planted(marker))):
            error = _json(client.post("/invocations", data=payload, content_type="application/x-npy"), 400)
            assert "pickle" in error["message"]
            assert not marker.exists()
    decoder._npy_to_numpy(body.getvalue())   # the toolkit's own NPY reader would have run it
    assert marker.exists()


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"values": [1, '),
    ("text/csv", b"1,2\n3\n"),
    ("application/x-npy", b"not an array"),
    ("application/x-npz", b"not an archive"),
    ("application/json", b""),
    ("application/json", b"[1, \xff]"),
])
def test_unreadable_bodies_are_400(handlers_for: ClientFactory, content_type: str, body: bytes) -> None:
    error = _json(handlers_for(DOUBLING).post("/invocations", data=body, content_type=content_type), 400)
    assert error["error"] == "Bad Request" and "Traceback" not in error["message"]


def test_unsupported_content_type_is_415_from_the_default_input_fn(handlers_for: ClientFactory) -> None:
    client = handlers_for(DOUBLING)
    error = _json(client.post("/invocations", data=b"\x89PNG", content_type="image/png"), 415)
    assert "'image/png' is not supported" in error["message"]
    assert "application/json, text/csv, application/x-npy, application/x-npz" in error["message"]
    assert "no Content-Type" in _json(client.post("/invocations", data=b"[1]"), 415)["message"]


def test_content_type_parameters_and_charsets(handlers_for: ClientFactory) -> None:
    client = handlers_for(ECHO)
    seen = _json(client.post("/invocations", data='{"a": "é"}'.encode(),
                             headers={"Content-Type": "Application/JSON; charset=UTF-8"}))
    assert seen["content_type"] == "application/json" and seen["body"] == '{"a": "é"}'
    seen = _json(client.post("/invocations", data="x,café\n".encode("latin-1"),
                             headers={"Content-Type": "text/csv; charset=latin-1; header=absent"}))
    assert seen["content_type"] == "text/csv" and seen["body"] == "x,café\n"   # transcoded to UTF-8
    assert _json(client.post("/invocations", data=b"x", headers={"Content-Type": "text/csv; charset=nope"}),
                 415)
    assert "not valid utf-8" in _json(client.post("/invocations", data=b"\xff", content_type="text/csv"),
                                      400)["message"]


@pytest.mark.parametrize(("accept", "default", "given"), [
    (None, "application/json", "application/json"),
    ("*/*", "application/json", "application/json"),
    (None, "text/csv", "text/csv"),                   # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    ("text/csv;q=0.5, application/x-npy;q=0.9", "application/json", "application/x-npy"),
    ("text/csv, */*", "application/json", "text/csv"),
    ("application/*", "application/json", "application/json"),
    ("image/*", "application/json", "image/*"),        # the user's output_fn decides
    ("Text/Plain; charset=utf-8", "application/json", "text/plain"),
])
def test_accept_given_to_the_users_output_fn(handlers_for: ClientFactory, accept: str | None, default: str,
                                            given: str) -> None:
    client = handlers_for(ECHO, default_accept=default)
    headers = {"Accept": accept} if accept else {}
    assert _json(client.post("/invocations", json=1, headers=headers))["accept"] == given


def test_the_default_output_fn_negotiates_its_types_or_answers_406(handlers_for: ClientFactory) -> None:
    client = handlers_for(DOUBLING)
    response = client.post("/invocations", json=[1], headers={"Accept": "image/png, text/csv;q=0.1"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    error = _json(client.post("/invocations", json=[1], headers={"Accept": "image/png, text/html"}), 406)
    assert "application/json, text/csv, application/x-npy" in error["message"]


def test_resolve_accept() -> None:
    def parsed(value: str) -> MIMEAccept:
        return parse_accept_header(value, MIMEAccept)

    assert resolve_accept(MIMEAccept(), "text/csv", ENCODER_TYPES) == "text/csv"
    assert resolve_accept(MIMEAccept(), "application/jsonlines", ENCODER_TYPES) == "application/json"
    assert resolve_accept(parsed("*/*"), "text/csv", ENCODER_TYPES) == "text/csv"
    assert resolve_accept(parsed("application/json;q=0.2, text/csv;q=0"), "text/csv", None) == "application/json"
    with pytest.raises(NotAcceptable, match="'text/csv'"):
        resolve_accept(parsed("text/csv;q=0"), "text/csv", ENCODER_TYPES)


def test_toolkit_error_answers_its_status_and_message(handlers_for: ClientFactory) -> None:
    error = _json(handlers_for(RAISING).post("/invocations", data="teapot", content_type="text/csv"), 418)
    assert error == {"error": "I'm a teapot", "message": "short and stout"}


def test_a_handler_bug_is_a_500_without_traceback_and_the_worker_goes_on(
        handlers_for: ClientFactory, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    client = handlers_for(RAISING)
    with caplog.at_level(logging.ERROR, logger="hyperplane.serve"):
        response = client.post("/invocations", data="bug", content_type="text/csv")
    error = _json(response, 500)
    assert error == {"error": "Internal Server Error", "message": "ValueError: bad value"}
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and str(tmp_path) not in text and ".py" not in text
    assert any(isinstance(record.exc_info and record.exc_info[1], ValueError) for record in caplog.records)
    response = client.post("/invocations", data="ok", content_type="text/csv")
    assert response.status_code == 200 and response.get_data() == b"fine"


def test_a_handler_returning_neither_bytes_nor_str_is_a_500(handlers_for: ClientFactory) -> None:
    client = handlers_for("def model_fn(d):\n    return 1\n\ndef transform_fn(m, b, c, a):\n    return {'a': 1}\n")
    assert "returned dict" in _json(client.post("/invocations", data=b"1", content_type="text/csv"), 500)["message"]


def test_payload_limit_is_413(handlers_for: ClientFactory) -> None:
    client = handlers_for(ECHO, max_payload_mb=1)
    assert _json(client.post("/invocations", data=b"1" * (1024 * 1024 + 1), content_type="text/csv"), 413)
    assert client.post("/invocations", data=b"1" * 1024, content_type="text/csv").status_code == 200
    assert _json(client.get("/execution-parameters"))["MaxPayloadInMB"] == 1


def test_one_access_line_per_request_without_payload(handlers_for: ClientFactory,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    client = handlers_for(ECHO)
    with caplog.at_level(logging.INFO, logger="hyperplane.access"):
        client.post("/invocations", data=b"secret-value", content_type="text/csv")
    lines = [record.getMessage() for record in caplog.records if record.name == "hyperplane.access"]
    assert len(lines) == 1 and "status=200 rows=-" in lines[0] and "secret" not in lines[0]


@pytest.mark.parametrize(("source", "line"), [
    ("def model_fn(model_dir):\n    raise RuntimeError('no weights\\nhere')\n",
     "model_fn raised RuntimeError: no weights here"),
    ("def predict_fn(data, model):\n    return data\n",
     "model_fn raised NotImplementedError: Please provide a model_fn implementation."),
    ("import not_a_module_anywhere\n", "raised ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    ("def model_fn(d):\n    return 1\n\ndef transform_fn(m, b, c, a):\n    return b\n\ndef input_fn(b, c):\n"
     "    return b\n", "checking the handlers of inference raised ValueError: Cannot use transform_fn"),
    ("import sys\n\ndef model_fn(model_dir):\n    sys.exit(4)\n", "model_fn raised SystemExit: 4"),
])
def test_load_failures_say_which_function_raised_what(write_handlers: HandlersWriter, source: str,
                                                      line: str) -> None:
    settings = write_handlers(source)
    with pytest.raises(LoadError) as raised:
        UserHandlers.load(settings, gpu_id=None)
    assert line in str(raised.value) and "\n" not in str(raised.value)


def test_loader_in_handler_mode(write_handlers: HandlersWriter, caplog: pytest.LogCaptureFixture) -> None:
    settings = write_handlers(RAISING, workers=1)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    board.register(os.getpid())
    loader = ModelLoader(settings, board, on_failure=lambda: pytest.fail("the handlers should load"))
    client = create_app(settings, loader).test_client()
    assert client.get("/ping").status_code == 503
    loader.start(worker_index=0).join(timeout=30)
    assert client.get("/ping").status_code == 200
    assert client.post("/invocations", data="bug", content_type="text/csv").status_code == 500
    assert client.get("/ping").status_code == 200          # a handler's error leaves the worker serving
    assert client.post("/invocations", data="ok", content_type="text/csv").get_data() == b"fine"


def test_loader_failure_in_handler_mode_stops_the_worker(write_handlers: HandlersWriter,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    settings = write_handlers("def model_fn(model_dir):\n    raise OSError('weights missing')\n", workers=1)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    board.register(os.getpid())
    failures: list[bool] = []
    loader = ModelLoader(settings, board, on_failure=lambda: failures.append(True))
    with caplog.at_level(logging.ERROR, logger="hyperplane.serve"):
        loader.start(worker_index=0).join(timeout=30)
    assert failures == [True] and not loader.ready()
    assert "cannot serve: model_fn raised OSError: weights missing" in caplog.text
    assert "Traceback" in caplog.text                      # the user's traceback is logged


def test_only_the_first_failing_worker_stops_the_server(write_handlers: HandlersWriter,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # gunicorn ends with code 1, not 3, when a second worker exits 3 while it is already halting
    settings = write_handlers("def model_fn(model_dir):\n    raise OSError('weights missing')\n", workers=2)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    failures: list[int] = []
    for worker in (0, 1):
        loader = ModelLoader(settings, board, on_failure=functools.partial(failures.append, worker))
        with caplog.at_level(logging.ERROR, logger="hyperplane.serve"):
            loader.start(worker_index=worker).join(timeout=30)
    assert failures == [0]
    assert caplog.text.count("cannot serve: ") == 1
    assert "cannot load the model either (LoadError); the server is stopping" in caplog.text
