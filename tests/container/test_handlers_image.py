"""The user's inference handlers in the images, as SageMaker and SDK local mode lay them out: code mounted
at /opt/ml/code with SAGEMAKER_SUBMIT_DIRECTORY (local mode), or repacked into the model at
/opt/ml/model/code (AWS), with a requirements.txt (training image: installed at start; serving image: a
clear refusal). One container per behaviour; the handler contract itself is tested in-process
(tests/serving/test_handlers.py) and with the real server (tests/serving/test_handlers_server.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.container.docker import docker
from tests.container.test_script_mode_image import tiny_wheel
from tests.container.test_serve_image import Container
from tests.jobs import SMALL_CARS
from tests.serving.process import free_port

pytestmark = pytest.mark.docker
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "script-mode"
# A car from the data, its numeric features in training order (train.py's columns without Fuel_Type, Color).
CAR_CSV = "23,46986,90,1,0,2000,3,5,210,1165,0,0,0,1,3,0,1,1,0,0,0"


@pytest.fixture(scope="module")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """model.pt from the example's train.py, run directly (script mode itself is tested elsewhere)."""
    root = tmp_path_factory.mktemp("example")
    (root / "data").mkdir()
    (root / "data/cars.csv").write_text(SMALL_CARS)
    env = {**os.environ, "SM_MODEL_DIR": str(root / "model"), "SM_CHANNEL_TRAIN": str(root / "data"),
           "SM_OUTPUT_DATA_DIR": str(root / "output")}
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--epochs", "30"], env=env, check=True,
                   capture_output=True, timeout=120)
    return root / "model"


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-f", name, check=False)


def start(names: list[str], image: str, *volumes: str, env: dict[str, str] | None = None) -> Container:
    name = f"hyperplane-handlers-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-e", "SAGEMAKER_MODEL_SERVER_WORKERS=2"]
    for volume in volumes:
        args += ["-v", volume]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    names.append(name)
    docker(*args, image, "serve")
    return Container(name, port)


def test_the_serving_image_serves_the_example_handlers_from_opt_ml_code(
        serve_image: str, example_model: pathlib.Path, containers: list[str]) -> None:
    server = start(containers, serve_image, f"{example_model}:/opt/ml/model:ro", f"{EXAMPLE}:/opt/ml/code:ro",
                   env={"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/code"}).wait_ready()
    assert set(server.pings[:-1]) <= {None, 503}
    assert "serving user handlers inference from /opt/ml/code" in server.logs()

    by_csv = server.post(CAR_CSV + "\n", "text/csv", accept="text/csv")
    assert by_csv.status_code == 200 and by_csv.headers["Content-Type"].startswith("text/csv")
    by_json = server.post('{"instances": [[' + CAR_CSV + "]]}", "application/json; charset=utf-8")
    assert by_json.status_code == 200, by_json.text
    assert by_json.json()["predictions"] == [pytest.approx(float(by_csv.text), rel=1e-6)]
    assert 5_000 < float(by_csv.text) < 30_000                       # a used Corolla's price in euros
    assert by_csv.headers["X-Amzn-SageMaker-Custom-Attributes"] == "model_version=user:inference"

    broken = server.post('{"instances": [[1, 2', "application/json")  # the example's input_fn raises
    assert broken.status_code == 500
    assert broken.json() == {"error": "Internal Server Error",
                             "message": "JSONDecodeError: Expecting ',' delimiter: line 1 column 21 (char 20)"}
    assert "Traceback" not in broken.text
    refused = server.post("<car/>", "application/xml")             # a toolkit error with its own status
    assert refused.status_code == 415 and "application/json or text/csv" in refused.json()["message"]
    assert server.ping() == 200 and server.post(CAR_CSV, "text/csv").status_code == 200
    assert "Traceback (most recent call last)" in server.logs()    # the traceback went to the log


def test_the_training_image_installs_requirements_and_finds_code_in_the_model(
        train_image: str, example_model: pathlib.Path, containers: list[str], tmp_path: pathlib.Path) -> None:
    """As on AWS: SageMaker unpacks model.tar.gz with the repacked source_dir under code/."""
    model = tmp_path / "model"
    shutil.copytree(example_model, model)
    shutil.copytree(EXAMPLE, model / "code", ignore=shutil.ignore_patterns("__pycache__"))
    (model / "code/requirements.txt").write_text(f"./{tiny_wheel(model / 'code')}\n")
    with (model / "code/inference.py").open("a") as handlers:   # proof that the requirement is importable
        handlers.write("\nimport hyperplane_tiny  # noqa: E402\nassert hyperplane_tiny.VALUE == 42\n")
    server = start(containers, train_image, f"{model}:/opt/ml/model",
                   env={"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}).wait_ready()
    logs = server.logs()
    assert "Successfully installed hyperplane-tiny-0.1" in logs
    assert "serving user handlers inference from /opt/ml/model/code" in logs
    response = requests.post(f"{server.url}/invocations", data=CAR_CSV, headers={"Content-Type": "text/csv"},
                             timeout=30)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 1


def test_the_serving_image_refuses_requirements_it_cannot_install(
        serve_image: str, example_model: pathlib.Path, containers: list[str], tmp_path: pathlib.Path) -> None:
    code = tmp_path / "code"
    shutil.copytree(EXAMPLE, code, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "requirements.txt").write_text("hyperplane-tiny==0.1\n")
    server = start(containers, serve_image, f"{example_model}:/opt/ml/model:ro", f"{code}:/opt/ml/code:ro",
                   env={"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/code"})
    assert server.wait_exit(timeout=60) == 3
    cannot = [line for line in server.logs().splitlines() if "cannot serve:" in line]
    assert len(cannot) == 1 and "requirements.txt" in cannot[0], server.logs()
