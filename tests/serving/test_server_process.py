"""The real `serve` process (gunicorn master + workers) on a free local port, without Docker: port bound
at once, /ping 503 until every worker is ready, SIGTERM drains an in-flight request, a broken artifact
or setting ends the process non-zero with one clear log line. About 10 s: each start imports torch."""

from __future__ import annotations

import pathlib
import signal
import socket
import threading
import time

import pytest
import requests

from tests.serving.process import StartServer
from tests.serving.requests_data import ROWS, csv_body


@pytest.fixture(scope="module")
def base_dir(mixed_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("opt-ml")
    (root / "model").symlink_to(mixed_model_dir)
    return root


def test_bound_at_once_503_until_ready_then_200_and_sigterm_drains(start: StartServer,
                                                                   base_dir: pathlib.Path) -> None:
    server = start(base_dir)
    while True:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.1).close()
            break
        except OSError:
            assert time.monotonic() - server.started < 1.5, "the port should be bound within a second"
            time.sleep(0.01)
    codes: list[int] = []
    while not codes or codes[-1] != 200:
        assert server.process.poll() is None, server.log()
        codes.append(requests.get(f"{server.url}/ping", timeout=10).status_code)
        time.sleep(0.02)
    assert set(codes) <= {503, 200}
    response = requests.post(f"{server.url}/invocations", data=csv_body(ROWS), headers={"Content-Type": "text/csv"})
    assert response.status_code == 200 and len(response.text.splitlines()) == len(ROWS)

    line = csv_body(ROWS[:1]).encode()
    over = line * (6 * 1024 * 1024 // len(line) + 1)   # just over the default 6 MiB, sent chunked
    response = requests.post(f"{server.url}/invocations", data=iter([over[:1 << 22], over[1 << 22:]]),
                             headers={"Content-Type": "text/csv"})
    assert response.status_code == 413, response.text

    body = csv_body(ROWS * 1200)   # ~2 MB, about a second of work
    answer: dict[str, object] = {}

    def post() -> None:
        response = requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": "text/csv"})
        answer.update(status=response.status_code, lines=len(response.text.splitlines()))

    client = threading.Thread(target=post)
    client.start()
    time.sleep(0.4)
    terminated = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    client.join(timeout=30)
    assert time.monotonic() - terminated < 30
    assert answer == {"status": 200, "lines": len(ROWS) * 1200}   # the request in flight was answered
    log = server.log()
    assert "hyperplane.access: method=POST path=/invocations status=200 rows=25" in log
    assert "path=/ping" not in log


def test_broken_artifact_exits_non_zero_with_a_clear_line(start: StartServer, tmp_path: pathlib.Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "hyperplane-regressor.pt").write_bytes(b"\x00garbage")
    server = start(tmp_path)
    assert server.process.wait(timeout=30) == 3
    log = server.log()
    assert "cannot serve: " in log and "hyperplane-regressor.pt is not a readable artifact" in log
    assert "Booting worker" not in log   # caught in the master, before any fork


def test_bad_setting_exits_2_naming_it(start: StartServer, base_dir: pathlib.Path) -> None:
    server = start(base_dir, SAGEMAKER_SAFE_PORT_RANGE="1-2")
    assert server.process.wait(timeout=30) == 2
    assert "SAGEMAKER_BIND_TO_PORT" in server.log()
