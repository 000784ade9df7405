"""Handler mode in the real `serve` process (gunicorn master + 2 workers): /ping stays 503 until the user's
model_fn has returned in every worker; a model_fn that raises, an explicit SAGEMAKER_PROGRAM found nowhere,
neither code nor artifact, or a requirements.txt the image cannot install end `serve` with exit code 3
and one `cannot serve:` line. A few seconds each (the workers import torch)."""

from __future__ import annotations

import pathlib
import signal
import sys
import textwrap
import time

import requests

from tests.serving.process import StartServer

SLOW = """
    import os, pathlib, time

    HERE = pathlib.Path(__file__).parent

    def model_fn(model_dir):
        try:    # the first worker to get here loads fast, the other one slowly
            os.close(os.open(HERE / "first", os.O_CREAT | os.O_EXCL))
            delay = 0.5
        except FileExistsError:
            delay = 3.0
        time.sleep(delay)
        with open(HERE / "loaded", "a") as f:
            f.write(f"{os.getpid()}\\n")
        return 2.0

    def predict_fn(data, model):
        return data * model
"""


def _code(base_dir: pathlib.Path, source: str, *, requirements: str | None = None) -> pathlib.Path:
    folder = base_dir / "model" / "code"
    folder.mkdir(parents=True)
    (folder / "inference.py").write_text(textwrap.dedent(source))
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


def test_ping_is_503_until_model_fn_returned_in_every_worker(start: StartServer, tmp_path: pathlib.Path) -> None:
    folder = _code(tmp_path, SLOW)
    server = start(tmp_path)
    loaded_before_ready: list[int] = []
    while True:
        assert server.process.poll() is None, server.log()
        assert time.monotonic() - server.started < 30, "the workers should be ready within seconds"
        loaded = (folder / "loaded").read_text().split() if (folder / "loaded").exists() else []
        try:
            status = requests.get(f"{server.url}/ping", timeout=5).status_code
        except requests.ConnectionError:
            status = 0   # not bound yet
        if status == 200:
            break
        assert status in (0, 503)
        loaded_before_ready.append(len(loaded))
        time.sleep(0.05)
    assert len((folder / "loaded").read_text().split()) == 2   # both model_fn calls returned first
    assert 1 in loaded_before_ready                            # one worker ready is not enough for 200
    response = requests.post(f"{server.url}/invocations", json=[1, 2.5])
    assert response.status_code == 200 and response.json() == [2.0, 5.0]
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == "model_version=user:inference"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    log = server.log()
    assert (f"serving user handlers inference from {folder} (SAGEMAKER_PROGRAM=inference.py, found in the "
            "model's code/ folder)") in log
    assert "hyperplane.access: method=POST path=/invocations status=200" in log


def test_a_model_fn_that_raises_ends_serve_with_exit_3(start: StartServer, tmp_path: pathlib.Path) -> None:
    _code(tmp_path, "def model_fn(model_dir):\n    raise FileNotFoundError('model.pth is not in model_dir')\n")
    server = start(tmp_path)
    assert server.process.wait(timeout=30) == 3
    log = server.log()
    assert "cannot serve: model_fn raised FileNotFoundError: model.pth is not in model_dir" in log
    assert "Traceback" in log


def test_requirements_without_pip_end_serve_before_forking(start: StartServer, tmp_path: pathlib.Path) -> None:
    _code(tmp_path, "def model_fn(model_dir):\n    return 1\n", requirements="six\n")
    # the serving image has no pip: importlib.util.find_spec("pip") is None when sys.modules says so
    no_pip = [sys.executable, "-c", "import sys; sys.modules['pip'] = None; from container.serve import main; "
              "sys.exit(main())"]
    server = start(tmp_path, command=no_pip)
    assert server.process.wait(timeout=30) == 3
    log = server.log()
    assert "cannot serve: " in log and "requirements.txt lists requirements, but this serving image has no pip" in log
    assert "Booting worker" not in log


def test_nothing_to_serve_ends_serve_with_exit_3(start: StartServer, tmp_path: pathlib.Path) -> None:
    (tmp_path / "model").mkdir()
    server = start(tmp_path, SAGEMAKER_SUBMIT_DIRECTORY=str(tmp_path / "code"))
    assert server.process.wait(timeout=30) == 3
    assert (f"cannot serve: no user code (inference.py in {tmp_path / 'model' / 'code'}) and no hyperplane "
            f"artifact in {tmp_path / 'model'}") in server.log()
    server = start(tmp_path, SAGEMAKER_PROGRAM="predict.py")
    assert server.process.wait(timeout=30) == 3
    assert (f"cannot serve: SAGEMAKER_PROGRAM=predict.py not found: looked for predict.py in "
            f"{tmp_path / 'model' / 'code'}") in server.log()
