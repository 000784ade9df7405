"""Faults around the workers, without Docker: what /ping says while a dead worker is replaced (the
readiness board and the loader, then the real `serve` with a worker SIGKILLed under load), /ping's own
lane under saturation (worker.py), and a keep-alive connection that outlives a refused body (app.py).
The container versions are in tests/container/test_serve_faults.py. About 15 s: `serve` imports torch."""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from container.serving.predictor import ModelLoader
from container.serving.readiness import SERVED, ReadinessBoard
from tests.serving.conftest import make_settings
from tests.serving.load import Body, PingProbe, ping, run_load
from tests.serving.process import Server
from tests.serving.requests_data import ROWS, csv_body

MIB = 1024 * 1024


def test_ping_needs_every_worker_at_start_and_one_after(tmp_path: pathlib.Path) -> None:
    board = ReadinessBoard(tmp_path / "ready")
    board.reset()
    board.register(11)
    board.register(12)
    board.mark_ready(11)
    assert not board.serving(2) and not board.has_served()   # starting: every worker must be ready
    board.forget(12)                                          # a worker dying during start-up
    assert not board.serving(2)
    board.register(13)
    board.mark_ready(13)
    assert board.serving(2) and board.has_served() and (tmp_path / "ready" / SERVED).exists()
    board.forget(13)                                          # killed once the server has served
    board.register(14)                                        # its replacement is loading
    assert board.serving(2) and not board.all_ready(2)        # 200: worker 11 answers meanwhile
    board.forget(11)
    assert not board.serving(2)                               # no worker ready: 503
    board.mark_ready(14)
    assert board.serving(2)
    board.reset()                                             # a new start begins strict again
    assert not board.has_served()


def test_a_replacement_worker_holds_requests_until_its_model_is_loaded(tmp_path: pathlib.Path,
                                                                        mixed_model_dir: pathlib.Path) -> None:
    settings = make_settings(tmp_path, model_dir=mixed_model_dir, workers=1, torch_threads=1)
    board = ReadinessBoard(settings.readiness_dir)
    board.reset()
    board.register(os.getpid())
    starting = ModelLoader(settings, board, on_failure=lambda: pytest.fail("the model should load"))
    assert starting.current() is None   # while the server starts, at once (the route answers 503)
    starting.start(worker_index=0).join(timeout=30)
    assert starting.ready() and board.has_served()
    board.forget(os.getpid())           # this worker "died"; its replacement registers
    board.register(os.getpid())
    replacement = ModelLoader(settings, board, on_failure=lambda: pytest.fail("the model should load"))
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.append(replacement.current()))
    waiting.start()
    time.sleep(0.3)
    assert waiting.is_alive() and not got   # the request waits for the model instead of a 503
    replacement.start(worker_index=0).join(timeout=30)
    waiting.join(timeout=5)
    assert got and got[0] is not None and got[0] is replacement.current()


@pytest.fixture(scope="module")
def server(mixed_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("opt-ml")
    (root / "model").symlink_to(mixed_model_dir)
    # WARNING: no access lines, which would fill the unread stdout pipe under load
    started = Server(root, tmp_path_factory.mktemp("tmp"), LOG_LEVEL="WARNING")
    deadline = time.monotonic() + 60
    while ping(started.port, timeout_s=2).status != 200:
        assert started.process.poll() is None and time.monotonic() < deadline, started.log()
        time.sleep(0.1)
    yield started
    started.stop()


def workers(server: Server) -> set[int]:
    """The gunicorn master's children."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == server.process.pid:
                found.add(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_keep_alive_connections_survive_refused_bodies(server: Server) -> None:
    """gunicorn closes a connection whose unread body exceeds 64 KiB without saying so; app.py reads it."""
    line = csv_body(ROWS[:1]).encode()
    refused = [("text/csv", line * (7 * MIB // len(line)), 413), ("text/plain", line * (MIB // len(line)), 415),
               ("text/csv", b"1," * (3 * MIB // 2), 413)]
    with requests.Session() as session:
        for content_type, body, status in refused * 3:
            assert session.post(f"{server.url}/invocations", data=body, headers={"Content-Type": content_type},
                                timeout=60).status_code == status
            response = session.post(f"{server.url}/invocations", data=line, headers={"Content-Type": "text/csv"},
                                    timeout=60)
            assert response.status_code == 200


def test_ping_has_its_own_lane_under_saturation(server: Server) -> None:
    """32 clients keep both workers' thread pools full of ~10,000-row requests (each ~0.1-0.3 s of work):
    in plain gthread /ping queued behind them for seconds (docs/reliability.md)."""
    with PingProbe(server.port, every_s=0.1, timeout_s=10) as probe:
        result = run_load(server.port, [Body.csv(ROWS * 400)], total=10_000, concurrency=32, deadline_s=5)
    assert result.outcomes and all(o.ok for o in result.outcomes), result.statuses()
    assert probe.statuses()[200] == len(probe.pings) >= 20
    assert probe.worst() < 1.0, sorted(p.latency for p in probe.pings)[-5:]


def test_a_killed_worker_is_replaced_while_ping_stays_200(server: Server) -> None:
    before = workers(server)
    assert len(before) == 2
    victim = min(before)
    kill: dict[str, float] = {}

    def kill_at(sent: int) -> None:
        if sent == 300:
            os.kill(victim, signal.SIGKILL)
            kill["done"] = time.monotonic()

    with PingProbe(server.port, every_s=0.02, timeout_s=5) as probe:
        result = run_load(server.port, [Body.csv(ROWS[:2]), Body.json(ROWS[2:5])], total=1200, concurrency=8,
                          deadline_s=120, on_progress=kill_at, progress_every=300)
        deadline = time.monotonic() + 30
        while len(workers(server) - before) != 1 or not _ready(server, workers(server) - before):
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.05)
    assert "done" in kill and victim not in workers(server)
    assert all(o.ok for o in result.outcomes if o.status is not None), result.statuses()
    assert len(result.failures) <= 8 and all(o.started <= kill["done"] + 0.5 for o in result.failures)
    unanswered = [p for p in probe.pings if p.status is None]
    assert probe.statuses()[503] == 0 and len(unanswered) <= 1, probe.statuses()
    assert all(p.at <= kill["done"] + 0.5 for p in unanswered)


def _ready(server: Server, pids: set[int]) -> bool:
    """The workers have loaded the model: their files in the readiness folder (readiness.py) say so."""
    folder = server.tmp_dir / f"hyperplane-readiness-{server.process.pid}"
    return bool(pids) and all((folder / f"{pid}.ready").exists() for pid in pids)
