"""A small load generator and /ping probe for the fault and load tests and scripts/reliability; only ever
pointed at 127.0.0.1, and bounded in requests and in time.

    bodies = [Body.csv(ROWS[:1]), Body.json(ROWS[:3])]
    with PingProbe(port, every_s=0.1) as probe:
        result = run_load(port, bodies, total=2000, concurrency=32, deadline_s=120)
    result.statuses(), result.failures, result.latency(0.5), probe.worst()

Each client is a thread with its own keep-alive connection (http.client: a fraction of the CPU requests
needs, which matters when client and server share two cores). Like urllib3, a client checks before each
request whether the server has closed its idle connection (a killed worker's connections are closed by
the kernel) and reconnects instead of failing. A request that gets no complete answer is a failure with
the exception's name, and its client pauses FAILURE_PAUSE_S; a refused connection (the server is gone)
ends that client. (Through Docker's port proxy a stopped server looks like a connection reset instead:
set `stop`.) A 200 counts as
`ok` only when the response holds exactly one prediction per row sent.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from tests.serving.requests_data import csv_body, typed

HOST = "127.0.0.1"
FAILURE_PAUSE_S = 0.05   # after a failed request, so that clients of a stopped server do not spin


@dataclass(frozen=True)
class Body:
    content_type: str
    data: bytes
    rows: int

    @classmethod
    def csv(cls, rows: list[list[str]]) -> Body:
        return cls("text/csv", csv_body(rows).encode(), len(rows))

    @classmethod
    def json(cls, rows: list[list[str]]) -> Body:
        records = [[typed(cell) for cell in row] for row in rows]
        return cls("application/json", json.dumps({"instances": records}).encode(), len(rows))

    @classmethod
    def jsonlines(cls, rows: list[list[str]]) -> Body:
        lines = "".join(json.dumps([typed(cell) for cell in row]) + "\n" for row in rows)
        return cls("application/jsonlines", lines.encode(), len(rows))

    def answered(self, status: int, payload: bytes) -> bool:
        """A 200 holding one prediction per row (the response is in the request's format)."""
        if status != 200:
            return False
        if self.content_type == "application/json":
            return len(json.loads(payload)["predictions"]) == self.rows
        return payload.count(b"\n") == self.rows


@dataclass(frozen=True)
class Outcome:
    started: float            # time.monotonic()
    ended: float
    status: int | None        # None: no HTTP answer (see error)
    ok: bool
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    def statuses(self) -> Counter[int | str]:
        return Counter(o.status if o.status is not None else (o.error or "error") for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def rate(self) -> float:
        return len(self.outcomes) / max(self.ended - self.started, 1e-9)

    def latency(self, quantile: float) -> float:
        latencies = sorted(o.latency for o in self.outcomes if o.ok)
        return latencies[min(len(latencies) - 1, int(quantile * len(latencies)))] if latencies else float("nan")


def run_load(port: int, bodies: Sequence[Body], *, total: int, concurrency: int, deadline_s: float,
             on_progress: Callable[[int], None] | None = None, progress_every: int = 1000,
             stop: threading.Event | None = None, timeout_s: float = 60) -> LoadResult:
    """Sends `total` POST /invocations (bodies in turn) from `concurrency` clients, stopping early at
    `deadline_s` or when `stop` is set; `on_progress(n)` is called by the client about to send request n,
    for every n divisible by `progress_every`."""
    result = LoadResult(started=time.monotonic())
    deadline = result.started + deadline_s
    lock = threading.Lock()
    counter = iter(range(total))
    stop = stop or threading.Event()

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < deadline and not stop.is_set():
            with lock:
                index = next(counter, None)
            if index is None:
                break
            if on_progress is not None and index % progress_every == 0:
                on_progress(index)
            body = bodies[index % len(bodies)]
            if connection is not None and _dropped(connection):
                connection.close()
                connection = None
            connection = connection or http.client.HTTPConnection(HOST, port, timeout=timeout_s)
            started = time.monotonic()
            try:
                connection.request("POST", "/invocations", body.data, {"Content-Type": body.content_type})
                response = connection.getresponse()
                payload = response.read()
                outcome = Outcome(started, time.monotonic(), response.status, body.answered(response.status, payload))
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                outcome = Outcome(started, time.monotonic(), None, False, type(error).__name__)
                connection.close()
                connection = None
            with lock:
                result.outcomes.append(outcome)
            if outcome.error == "ConnectionRefusedError":
                break   # nothing listens any more
            if outcome.error is not None:
                time.sleep(FAILURE_PAUSE_S)
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, name=f"load-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + timeout_s)
    result.ended = time.monotonic()
    return result


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """True when the server has closed (or reset) this idle connection: its socket reads as ready."""
    sock = connection.sock
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


@dataclass(frozen=True)
class Ping:
    at: float                 # time.monotonic() when sent
    status: int | None        # None: no answer within the timeout, or no connection
    latency: float


class PingProbe:
    """GET /ping every `every_s` on a new connection each time (as a health checker does), on a thread,
    while the block runs; `pings` holds every answer."""

    def __init__(self, port: int, every_s: float = 0.1, timeout_s: float = 5) -> None:
        self.port = port
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.pings: list[Ping] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ping-probe", daemon=True)

    def __enter__(self) -> PingProbe:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.pings.append(ping(self.port, self.timeout_s))
            self._stop.wait(self.every_s)

    def worst(self) -> float:
        return max((p.latency for p in self.pings), default=float("nan"))

    def statuses(self) -> Counter[int | None]:
        return Counter(p.status for p in self.pings)


def ping(port: int, timeout_s: float = 5) -> Ping:
    started = time.monotonic()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        response.read()
        status: int | None = response.status
    except (OSError, http.client.HTTPException):
        status = None
    finally:
        connection.close()
    return Ping(started, status, time.monotonic() - started)
