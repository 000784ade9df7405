"""The serving image run for real, as SageMaker runs it:

    docker run -d -p 127.0.0.1:<port>:8080 -v <model dir>:/opt/ml/model:ro hyperplane-serve:latest serve

/ping (503 until every worker is ready, fast under load), every input and output format with exactly
the predictions the model makes in-process, the errors, SAGEMAKER_BIND_TO_PORT, a broken artifact, no
command, SIGTERM with a request in flight, and the training image serving too. Every container is
removed by the fixture that started it. Needs a Docker engine (`pytest -m docker`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests

from model import artifact
from model.regressor import Regressor
from model.table import Table
from tests.container.docker import docker
from tests.serving.process import free_port
from tests.serving.requests_data import FEATURES, PARSERS, ROWS, bodies, csv_body

pytestmark = pytest.mark.docker
WORKERS = 2
START_TIMEOUT_S = 120


class Container:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.pings: list[int | None] = []   # every /ping answer while waiting; None = no HTTP answer

    def ping(self, timeout: float = 5) -> int | None:
        try:
            return requests.get(f"{self.url}/ping", timeout=timeout).status_code
        except requests.RequestException:
            return None

    def wait_ready(self) -> Container:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.pings or self.pings[-1] != 200:
            assert time.monotonic() < deadline, f"no /ping 200 in {START_TIMEOUT_S} s:\n{self.logs()}"
            assert self.running(), f"the container stopped:\n{self.logs()}"
            self.pings.append(self.ping())
            time.sleep(0.1)
        return self

    def running(self) -> bool:
        result = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def wait_exit(self, timeout: float) -> int:
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def post(self, body: str | bytes, content_type: str, accept: str | None = None,
             **headers: str) -> requests.Response:
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {}), **headers}
        return requests.post(f"{self.url}/invocations", data=body, headers=headers, timeout=60)


Start = Callable[..., Container]


@pytest.fixture(scope="module")
def start_container() -> Iterator[Start]:
    """start(image, model_dir, *command, env={...}, container_port=8080, user=None) -> a detached container."""
    names: list[str] = []

    def start(image: str, model_dir: pathlib.Path, *command: str, env: dict[str, str] | None = None,
              container_port: int = 8080, user: str | None = None) -> Container:
        name = f"hyperplane-serve-test-{uuid.uuid4().hex[:10]}"
        port = free_port()
        args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{container_port}",
                "-v", f"{model_dir}:/opt/ml/model:ro", *(["--user", user] if user else [])]
        for key, value in {"SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS), **(env or {})}.items():
            args += ["-e", f"{key}={value}"]
        names.append(name)
        docker(*args, image, *command)
        return Container(name, port)

    yield start
    for name in names:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def model(trained_model_dir: pathlib.Path) -> Regressor:
    return artifact.load(trained_model_dir)


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def server(start_container: Start, serve_image: str, trained_model_dir: pathlib.Path) -> Iterator[Container]:
    before = _snapshot(trained_model_dir)
    yield start_container(serve_image, trained_model_dir, "serve").wait_ready()
    assert _snapshot(trained_model_dir) == before   # the read-only model folder was never written


def expected(model: Regressor, rows: list[list[str]]) -> np.ndarray:
    return model.predict(Table.from_rows(FEATURES, rows))


def answered(response: requests.Response, mimetype: str) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].split(";")[0] == mimetype
    return np.array(PARSERS[mimetype](response.text))


def test_ping_is_503_until_every_worker_is_ready(server: Container) -> None:
    assert server.pings[-1] == 200
    assert set(server.pings[:-1]) <= {None, 503}      # never 200 before the model is loaded
    for _ in range(20):                               # every worker logged "ready" before the first 200
        if server.logs().count("ready: model") >= WORKERS:
            break
        time.sleep(0.1)
    assert server.logs().count("ready: model") == WORKERS


FORMATS = bodies(ROWS)


@pytest.mark.parametrize("accept", [None, "*/*", "text/csv", "application/json", "application/jsonlines"])
@pytest.mark.parametrize("form", FORMATS)
def test_every_format(server: Container, model: Regressor, form: str, accept: str | None) -> None:
    content_type, body = FORMATS[form]
    response = server.post(body, content_type, accept)
    answer_type = accept if accept and accept != "*/*" else content_type
    # in-process and in-container predictions may differ in the last bits (thread counts change the
    # order of float sums), nothing more
    np.testing.assert_allclose(answered(response, answer_type), expected(model, ROWS), rtol=1e-6)
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == f"model_version={model.info['version']}"


def test_content_type_parameters_and_q_values(server: Container, model: Regressor) -> None:
    response = server.post(csv_body(ROWS), "Text/CSV; charset=utf-8",
                           "application/json;q=0.4, application/jsonlines;q=0.9")
    np.testing.assert_allclose(answered(response, "application/jsonlines"), expected(model, ROWS), rtol=1e-6)


def test_multi_record_batch_one_line_per_line(server: Container, model: Regressor) -> None:
    rows = ROWS * 200
    cases: list[tuple[str, str | bytes]] = [("text/csv", csv_body(rows)),
                                             ("application/jsonlines", bodies(rows)["jsonlines lists"][1])]
    for content_type, body in cases:
        response = server.post(body, content_type, content_type)
        assert response.text.count("\n") == len(rows)
        np.testing.assert_allclose(answered(response, content_type), expected(model, rows), rtol=1e-6)


def test_execution_parameters(server: Container) -> None:
    response = requests.get(f"{server.url}/execution-parameters", timeout=5)
    assert response.json() == {"MaxConcurrentTransforms": WORKERS, "BatchStrategy": "MULTI_RECORD",
                               "MaxPayloadInMB": 6}


def _error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "message"} and "Traceback" not in response.text
    return body


def test_errors(server: Container) -> None:
    bad = list(ROWS[0])
    bad[FEATURES.index("KM")] = "lots"
    error = _error(server.post(csv_body([ROWS[0], bad]), "text/csv"), 400)
    assert (error["row"], error["feature"]) == (2, "KM") and "'lots'" in error["message"]
    error = _error(server.post(json.dumps({"instances": [{"Doorz": 3}]}), "application/json"), 400)
    assert (error["row"], error["feature"]) == (1, "Doorz")
    assert "found 22" in _error(server.post(csv_body([ROWS[0][1:]]), "text/csv"), 400)["message"]
    assert "empty" in _error(server.post(b"", "text/csv"), 400)["message"]
    assert "malformed JSON" in _error(server.post("{", "application/json"), 400)["message"]
    assert "text/csv" in _error(server.post(b"1", "application/octet-stream"), 415)["message"]
    assert "text/csv" in _error(server.post(csv_body(ROWS), "text/csv", "application/xml"), 406)["message"]
    line = csv_body(ROWS[:1]).encode()
    too_big = line * (6 * 1024 * 1024 // len(line) + 1)
    assert "6 MiB" in _error(server.post(too_big, "text/csv"), 413)["message"]
    assert _error(server.post(b"", "text/csv", **{"X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}), 400)
    assert server.ping() == 200   # errors never take the server down


def test_ping_stays_fast_while_saturated(server: Container) -> None:
    line = csv_body(ROWS[:1]).encode()
    big = line * (6 * 1024 * 1024 // len(line))   # a full 6 MiB request, a quarter second of work or more
    statuses: list[int] = []
    saturating = threading.Event()
    saturating.set()

    def client() -> None:   # full requests back to back, two per worker, for as long as the pings go on
        while saturating.is_set():
            statuses.append(server.post(big, "text/csv").status_code)

    clients = [threading.Thread(target=client) for _ in range(2 * WORKERS)]
    for thread in clients:
        thread.start()
    latencies = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        started = time.monotonic()
        assert server.ping(timeout=2) == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    saturating.clear()
    for thread in clients:
        thread.join()
    assert len(statuses) >= 2 * WORKERS and set(statuses) == {200}
    assert len(latencies) >= 15 and max(latencies) < 1.0, latencies


def test_bind_to_port(start_container: Start, serve_image: str, trained_model_dir: pathlib.Path) -> None:
    env = {"SAGEMAKER_BIND_TO_PORT": "9090", "SAGEMAKER_SAFE_PORT_RANGE": "9000-9999"}
    container = start_container(serve_image, trained_model_dir, "serve", env=env, container_port=9090)
    assert container.wait_ready().ping() == 200


def test_bind_to_port_outside_the_safe_range(start_container: Start, serve_image: str,
                                             trained_model_dir: pathlib.Path) -> None:
    env = {"SAGEMAKER_BIND_TO_PORT": "9090", "SAGEMAKER_SAFE_PORT_RANGE": "1111-2222"}
    container = start_container(serve_image, trained_model_dir, "serve", env=env, container_port=9090)
    assert container.wait_exit(timeout=60) != 0
    assert "SAGEMAKER_BIND_TO_PORT=9090 lies outside SAGEMAKER_SAFE_PORT_RANGE" in container.logs()


def test_no_command_serves(start_container: Start, serve_image: str, trained_model_dir: pathlib.Path,
                           model: Regressor) -> None:
    container = start_container(serve_image, trained_model_dir).wait_ready()
    response = container.post(csv_body(ROWS), "text/csv")
    np.testing.assert_allclose(answered(response, "text/csv"), expected(model, ROWS), rtol=1e-6)


def test_model_folder_with_tarball_and_other_files(start_container: Start, serve_image: str,
                                                   trained_model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """SDK local mode mounts the folder model.tar.gz was extracted in; extra files must not matter (a
    code/ folder without the handler module included: code/inference.py would be the user's handlers,
    tests/container/test_handlers_image.py)."""
    folder = tmp_path / "model"
    shutil.copytree(trained_model_dir, folder)
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        tar.add(trained_model_dir / artifact.ARTIFACT_NAME, arcname=artifact.ARTIFACT_NAME)
    (folder / "code").mkdir()
    (folder / "code" / "notes.py").write_text("# not the handler module\n")
    container = start_container(serve_image, folder, "serve").wait_ready()
    assert container.post(csv_body(ROWS[:3]), "text/csv").status_code == 200


@pytest.mark.parametrize(("content", "words"), [
    (b"\x00 definitely not a model", "is not a readable artifact"),
    (None, "no user code (inference.py in /opt/ml/model/code) and no hyperplane artifact in /opt/ml/model"),
])
def test_broken_artifact_exits_non_zero_naming_the_problem(start_container: Start, serve_image: str,
                                                           tmp_path: pathlib.Path, content: bytes | None,
                                                           words: str) -> None:
    (tmp_path / "model").mkdir()
    if content is not None:
        (tmp_path / "model" / artifact.ARTIFACT_NAME).write_bytes(content)
    container = start_container(serve_image, tmp_path / "model", "serve")
    assert container.wait_exit(timeout=60) != 0
    logs = container.logs()
    assert "cannot serve: " in logs and words in logs, logs
    assert "Booting worker" not in logs


def test_sigterm_finishes_the_request_in_flight(start_container: Start, serve_image: str,
                                                trained_model_dir: pathlib.Path) -> None:
    container = start_container(serve_image, trained_model_dir, "serve").wait_ready()
    line = csv_body(ROWS[:1]).encode()
    big = line * (6 * 1024 * 1024 // len(line))
    answer: dict[str, Any] = {}

    def post() -> None:
        response = container.post(big, "text/csv")
        answer.update(status=response.status_code, lines=response.text.count("\n"))

    client = threading.Thread(target=post)
    client.start()
    time.sleep(0.5)
    terminated = time.monotonic()
    docker("kill", "-s", "TERM", container.name)
    exit_code = container.wait_exit(timeout=40)
    client.join(timeout=30)
    assert time.monotonic() - terminated < 30
    assert exit_code == 0, container.logs()
    assert answer == {"status": 200, "lines": len(big) // len(line)}


def test_the_training_image_serves_too(start_container: Start, train_image: str,
                                       trained_model_dir: pathlib.Path, model: Regressor) -> None:
    container = start_container(train_image, trained_model_dir, "serve").wait_ready()
    response = container.post(json.dumps({"instances": ROWS}), "application/json")
    np.testing.assert_allclose(answered(response, "application/json"), expected(model, ROWS), rtol=1e-6)
    assert "HYPERPLANE_IMAGE_ROLE=train" in docker("image", "inspect", "-f", "{{.Config.Env}}", train_image).stdout, \
        "Dockerfile.train should set ENV HYPERPLANE_IMAGE_ROLE=train (the server reads it to log the note below)"
    assert "deploy the slimmer hyperplane-serve image in production" in container.logs()



def test_serves_as_an_unprivileged_user(start_container: Start, serve_image: str, trained_model_dir: pathlib.Path,
                                        model: Regressor) -> None:
    # pytest's tmp_path sits below a 0700 folder that uid 1000 cannot enter: use a world-readable one.
    folder = pathlib.Path(tempfile.mkdtemp(prefix="hyperplane-serve-user-", dir="/tmp"))
    try:
        shutil.copytree(trained_model_dir, folder, dirs_exist_ok=True)
        for path in (folder, *folder.rglob("*")):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        container = start_container(serve_image, folder, "serve", user="1000:1000").wait_ready()
        assert docker("exec", container.name, "id", "-u").stdout.strip() == "1000"
        response = container.post(csv_body(ROWS), "text/csv")
        np.testing.assert_allclose(answered(response, "text/csv"), expected(model, ROWS), rtol=1e-6)
    finally:
        shutil.rmtree(folder)
