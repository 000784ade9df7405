"""The serving image under load, faults and abuse (short versions of what scripts/reliability measures;
docs/reliability.md, "Serving faults and load" and "Abuse"):

  * 2,000 requests from 32 keep-alive clients with a worker SIGKILLed a quarter of the way in: every
    answer a complete 200, /ping 200 and under 2 s throughout (a replaced worker does not turn the
    health check red), the worker replaced; the only failures are the requests (and at most one /ping)
    that the killed worker held;
  * SIGTERM under the same load: every request sent before it is answered, exit 0 within 30 s;
  * 2,000 malformed bodies (tests/serving/malformed.py, seed 0): never a 5xx, no worker restarted, the
    container running and /ping 200 afterwards.

Each test starts its own container (2 workers) from the model the training image trained
(tests/container/conftest.py). Needs a Docker engine (`pytest -m docker`); about 30 s with the starts.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from tests.container.serve_container import ServeContainer
from tests.serving.load import Body, LoadResult, PingProbe, ping, run_load
from tests.serving.malformed import malformed_requests
from tests.serving.requests_data import ROWS

pytestmark = pytest.mark.docker
WORKERS = 2
CONCURRENCY = 32
REQUESTS = 2000
PING_LIMIT_S = 2.0    # SageMaker's health check waits 2 s for /ping
BODIES = [Body.csv(ROWS[:1]), Body.json(ROWS[1:4]), Body.jsonlines(ROWS[4:6]), Body.csv(ROWS[6:16])]


@pytest.fixture
def container(serve_image: str, trained_model_dir: pathlib.Path) -> Iterator[ServeContainer]:
    started = ServeContainer.start(trained_model_dir, workers=WORKERS)
    yield started
    started.remove()


def _summary(result: LoadResult, probe: PingProbe) -> str:
    return (f"{len(result.outcomes)} requests in {result.ended - result.started:.1f} s ({result.rate:.0f}/s), "
            f"statuses {dict(result.statuses())}, p50 {result.latency(0.5) * 1000:.0f} ms, "
            f"p99 {result.latency(0.99) * 1000:.0f} ms; {len(probe.pings)} pings {dict(probe.statuses())}, "
            f"worst {probe.worst() * 1000:.0f} ms")


def test_load_with_a_worker_killed(container: ServeContainer) -> None:
    before = set(container.workers())
    victim = min(before)
    kill: dict[str, float] = {}

    def kill_a_quarter_in(sent: int) -> None:
        if sent == REQUESTS // 4:
            container.kill_worker(victim)
            kill["done"] = time.monotonic()

    with PingProbe(container.port, every_s=0.05, timeout_s=5) as probe:
        result = run_load(container.port, BODIES, total=REQUESTS, concurrency=CONCURRENCY, deadline_s=180,
                          on_progress=kill_a_quarter_in, progress_every=REQUESTS // 4)
        replacement = _replacement(container, before, victim)   # while the probe still pings
    print(f"{_summary(result, probe)}; worker {victim} killed, {replacement} took its place")
    assert "done" in kill and len(result.outcomes) == REQUESTS
    answered = [o for o in result.outcomes if o.status is not None]
    assert all(o.ok for o in answered), Counter(o.status for o in answered if not o.ok)
    # only requests the killed worker held may fail: sent before the kill, and without an HTTP answer
    assert len(result.failures) <= CONCURRENCY, result.statuses()
    assert all(o.started <= kill["done"] + 0.5 for o in result.failures), result.failures
    # never a 503; a ping the killed worker had accepted is lost with it, like any request it held
    unanswered = [p for p in probe.pings if p.status is None]
    # the probe pinged all through the load (2,000 requests take about a second, more on a busy machine)
    assert probe.statuses()[200] + len(unanswered) == len(probe.pings) >= 10, probe.statuses()
    assert len(unanswered) <= 1 and all(p.at <= kill["done"] + 0.5 for p in unanswered), unanswered
    assert max(p.latency for p in probe.pings if p.status == 200) < PING_LIMIT_S
    assert f"Worker (pid:{victim}) was sent SIGKILL" in container.logs()
    assert set(container.workers()) == (before - {victim}) | {replacement}


def _replacement(container: ServeContainer, before: set[int], victim: int) -> int:
    """The pid of the worker that took `victim`'s place, once it has logged that it is ready."""
    deadline = time.monotonic() + 30
    while True:
        pids = set(container.workers())
        new = pids - before
        if victim not in pids and len(new) == 1 and f"worker {min(new)} ready" in container.logs():
            return min(new)
        assert time.monotonic() < deadline, f"worker {victim} was not replaced:\n{container.logs()[-3000:]}"
        time.sleep(0.2)


def test_sigterm_under_load_answers_every_request_sent_before(container: ServeContainer) -> None:
    stop = threading.Event()
    results: list[LoadResult] = []
    load = threading.Thread(target=lambda: results.append(run_load(
        container.port, [Body.csv(ROWS * 8)], total=100_000, concurrency=CONCURRENCY, deadline_s=90, stop=stop)))
    load.start()
    time.sleep(2)
    terminated = time.monotonic()
    container.terminate()
    exit_code = container.wait_exit(timeout_s=40)
    exited = time.monotonic()
    stop.set()   # through Docker's port proxy a stopped server looks like connections closed at once
    load.join(timeout=120)
    result = results[0]
    before = [o for o in result.outcomes if o.started < terminated]
    in_flight = [o for o in before if o.ended > terminated]
    print(f"SIGTERM to exit {exited - terminated:.2f} s; {len(before)} requests sent before it, "
          f"{len(in_flight)} of them in flight; statuses after it "
          f"{dict(Counter(o.status or o.error for o in result.outcomes if o.started >= terminated))}")
    assert exit_code == 0, container.logs()[-3000:]
    assert exited - terminated < 30
    assert before and all(o.ok for o in before), Counter(o.status or o.error for o in before if not o.ok)
    assert in_flight   # the drain answered requests the server held when SIGTERM came
    assert all(o.ok or o.status is None for o in result.outcomes)   # never a 5xx, never a cut answer
    assert "Traceback" not in container.logs()


def test_malformed_bodies_never_5xx(container: ServeContainer) -> None:
    workers = set(container.workers())
    cases = malformed_requests(count=2000, seed=0)
    seen: Counter[tuple[str, int | str]] = Counter()
    started = time.monotonic()
    with requests.Session() as session:
        for case in cases:
            try:
                status: int | str = session.post(f"{container.url}/invocations", data=case.body,
                                                 headers=case.headers(), timeout=60).status_code
            except requests.ConnectionError as error:
                status = type(error).__name__
            seen[(case.family, status)] += 1
    elapsed = time.monotonic() - started
    statuses = Counter(status for (_, status), count in seen.items() for _ in range(count))
    print(f"{len(cases)} malformed requests in {elapsed:.1f} s: {dict(sorted(statuses.items(), key=str))}")
    assert sum(statuses.values()) == len(cases) >= 2000
    assert all(isinstance(status, int) and 400 <= status < 500 for status in statuses), seen
    assert container.running() and container.restart_count() == 0
    assert set(container.workers()) == workers   # no worker died or was replaced
    logs = container.logs()
    assert logs.count("Booting worker with pid") == WORKERS and "Traceback" not in logs, logs[-3000:]
    assert ping(container.port).status == 200
