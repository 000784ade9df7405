"""The buffered log handler (container/serving/logbuffer.py): one line per record, in order, INFO lines
written in batches, warnings at once with everything before them, nothing lost at close, fork or a
SIGTERM to the real server. No timing is asserted: the handlers here wait an hour before writing on
their own, so what is written when is decided by the calls the tests make."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest
import requests

from container.serving.logbuffer import BufferedStreamHandler, buffered_handler_of, info_later
from tests.serving.process import StartServer
from tests.serving.requests_data import ROWS, csv_body

FORMAT = "[%(levelname)s] %(name)s: %(message)s"


class CountingStream(io.StringIO):
    """Records each write, so a test can tell a batch from a line at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, BufferedStreamHandler, CountingStream]]:
    stream = CountingStream()
    handler = BufferedStreamHandler(stream, interval_s=3600)
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger("hyperplane.test-buffer")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    yield log, handler, stream
    log.removeHandler(handler)
    handler.close()


def test_info_lines_wait_and_come_out_in_one_write_in_order(
        logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, handler, stream = logger
    for number in range(50):
        log.info("request %d", number)
    assert stream.writes == []   # batched, not one write per line
    handler.flush()
    assert len(stream.writes) == 1
    assert stream.getvalue().splitlines() == [f"[INFO] hyperplane.test-buffer: request {n}" for n in range(50)]


def test_a_warning_is_written_at_once_after_what_came_before(
        logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, _, stream = logger
    log.info("first")
    log.debug("second")
    log.error("broken")
    assert stream.getvalue().splitlines() == ["[INFO] hyperplane.test-buffer: first",
                                              "[DEBUG] hyperplane.test-buffer: second",
                                              "[ERROR] hyperplane.test-buffer: broken"]
    assert len(stream.writes) == 1


def test_an_exception_keeps_its_traceback_lines(
        logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, _, stream = logger
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert text.startswith("[ERROR] hyperplane.test-buffer: failed\nTraceback") and "ValueError: bad value" in text


def test_close_and_logging_shutdown_write_everything_pending(
        logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, handler, stream = logger
    log.info("pending")
    handler.close()
    assert stream.getvalue() == "[INFO] hyperplane.test-buffer: pending\n"
    log.info("after close")   # at interpreter shutdown: written at once, not lost
    assert stream.getvalue().endswith("after close\n")


def test_a_large_batch_is_written_without_waiting(
        logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, _, stream = logger
    for _ in range(2000):
        log.info("x" * 100)
    assert stream.writes and all(len(write) <= 70_000 for write in stream.writes)


def test_the_writer_thread_writes_on_its_own() -> None:
    stream = CountingStream()
    handler = BufferedStreamHandler(stream, interval_s=0.01)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("hyperplane.access", logging.INFO, __file__, 1, "one", None, None)
    handler.handle(record)
    deadline = time.monotonic() + 30
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "one\n"
    handler.close()


def test_a_forked_child_does_not_repeat_its_parents_lines(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = BufferedStreamHandler(stream, interval_s=3600)
        handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
        log = logging.getLogger("hyperplane.test-fork")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(handler)
        try:
            log.info("before fork")
            pid = os.fork()
            if pid == 0:   # the child: its own line, flushed as logging.shutdown would, then leave at once
                try:
                    log.info("in child")
                    handler.flush()
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            log.info("in parent")
            handler.flush()
        finally:
            log.removeHandler(handler)
            handler.close()
    lines = [line.split(" ", 1)[1] for line in path.read_text().splitlines()]
    assert sorted(lines) == ["before fork", "in child", "in parent"]
    assert lines.index("before fork") < lines.index("in parent")


@pytest.fixture(scope="module")
def base_dir(mixed_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("opt-ml")
    (root / "model").symlink_to(mixed_model_dir)
    return root


def test_every_access_line_arrives_in_order_when_the_server_is_stopped(start: StartServer,
                                                                       base_dir: pathlib.Path) -> None:
    """One worker, so one process orders all the lines; SIGTERM right after the last answer, while its
    line is still in the buffer: the worker's exit writes it."""
    server = start(base_dir, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    deadline = time.monotonic() + 60
    while True:
        assert server.process.poll() is None and time.monotonic() < deadline, "the server did not start"
        try:
            if requests.get(f"{server.url}/ping", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    counts = [1 + number % len(ROWS) for number in range(40)]
    with requests.Session() as session:
        for count in counts:
            response = session.post(f"{server.url}/invocations", data=csv_body(ROWS[:count]),
                                    headers={"Content-Type": "text/csv"})
            assert response.status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    lines = [line for line in server.log().splitlines() if "hyperplane.access: " in line]
    assert [int(line.split(" rows=")[1].split()[0]) for line in lines] == counts
    assert all("method=POST path=/invocations status=200" in line for line in lines)


@pytest.fixture
def access_logger() -> Iterator[tuple[logging.Logger, BufferedStreamHandler, CountingStream]]:
    """A logger under a parent whose only handler is a BufferedStreamHandler: serve.py's set-up, moved off
    the root logger (pytest keeps handlers of its own there)."""
    stream = CountingStream()
    handler = BufferedStreamHandler(stream, interval_s=3600)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S %z"))
    parent = logging.getLogger("hyperplane-test-later")
    parent.propagate = False
    parent.setLevel(logging.INFO)
    parent.addHandler(handler)
    yield logging.getLogger("hyperplane-test-later.access"), handler, stream
    parent.removeHandler(handler)
    handler.close()


def only(handler: BufferedStreamHandler) -> None:
    """Leaves `handler` the only one on its logger: pytest adds capture handlers of its own when a test
    starts, and a logger with another handler gets logger.info itself (tested below)."""
    logging.getLogger("hyperplane-test-later").handlers = [handler]


def test_a_line_logged_later_is_the_line_logger_info_writes_in_its_place(
        access_logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log, handler, stream = access_logger
    only(handler)
    assert buffered_handler_of(log) is handler
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)   # both records made at the same instant
    log.info("first")
    info_later(log, "rows=%s latency_ms=%.1f accept=%s", 3, 0.1234, '"a, b"')
    log.info("rows=%s latency_ms=%.1f accept=%s", 3, 0.1234, '"a, b"')
    log.info("last")
    assert stream.writes == []   # queued with the others, not written at once
    handler.flush()
    first, later, direct, last = stream.getvalue().splitlines()
    assert later == direct and later.endswith('hyperplane-test-later.access: rows=3 latency_ms=0.1 accept="a, b"')
    assert first.endswith(": first") and last.endswith(": last")


def test_a_line_logged_later_keeps_its_place_before_a_warning(
        access_logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, handler, stream = access_logger
    only(handler)
    info_later(log, "request %d", 1)
    log.warning("broken")
    assert [line.split("] ", 3)[-1] for line in stream.getvalue().splitlines()] == [
        "hyperplane-test-later.access: request 1", "hyperplane-test-later.access: broken"]


def test_another_handler_or_a_filter_gets_the_record_itself(
        access_logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, handler, stream = access_logger
    only(handler)
    seen: list[logging.LogRecord] = []
    capture = logging.Handler()
    capture.emit = seen.append   # type: ignore[method-assign]
    log.addHandler(capture)
    try:
        assert buffered_handler_of(log) is None
        info_later(log, "request %d", 2)
    finally:
        log.removeHandler(capture)
    assert [record.getMessage() for record in seen] == ["request 2"]
    handler.flush()
    assert stream.getvalue().endswith("hyperplane-test-later.access: request 2\n")   # propagated as usual
    log.addFilter(lambda record: False)
    try:
        assert buffered_handler_of(log) is None
        info_later(log, "request %d", 3)
    finally:
        log.filters.clear()
    handler.flush()
    assert "request 3" not in stream.getvalue()


def test_a_disabled_logger_writes_nothing_later(
        access_logger: tuple[logging.Logger, BufferedStreamHandler, CountingStream]) -> None:
    log, handler, stream = access_logger
    only(handler)
    log.disabled = True
    try:
        info_later(log, "request %d", 4)
    finally:
        log.disabled = False
    handler.flush()
    assert stream.getvalue() == ""


SERVE_FORMAT = ("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S %z")


@pytest.mark.parametrize(("fmt", "datefmt", "style", "per_second"), [
    (*SERVE_FORMAT, "%", True),
    ("%(levelname)-8s|%(name)s|%(message)s [pid %(process)d, %(asctime)s]", "%H:%M:%S", "%", True),
    ("%(asctime)s %(message)s", None, "%", False),                   # the default datefmt adds milliseconds
    ("%(asctime)s.%(msecs)03d %(threadName)s %(message)s", "%H:%M:%S", "%", False),
    ("{asctime} {name}: {message}", "%H:%M:%S", "{", False),
])
def test_a_deferred_line_is_what_the_formatter_makes_of_the_record(
        fmt: str, datefmt: str | None, style: str, per_second: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred lines are made a second's prefix at a time where the format allows it, and from a LogRecord
    where it does not: the same text either way, across second boundaries and for odd arguments."""
    handler = BufferedStreamHandler(io.StringIO(), interval_s=3600)
    formatter = logging.Formatter(fmt, datefmt, style)   # type: ignore[arg-type]
    handler.setFormatter(formatter)
    cases = [(1_700_000_000.999, "rows=%s latency_ms=%.1f", (1, 0.25)), (1_700_000_001.0, "rows=%s", (2,)),
             (1_700_000_001.5, "100%% of %(what)s", ({"what": "rows"},)), (1_700_000_061.0, "no args", ()),
             (1_700_000_061.2, "%s", ("50% done",))]
    for created, message, args in cases:
        monkeypatch.setattr(time, "time", lambda created=created: created)
        record = logging.LogRecord("hyperplane.access", logging.INFO, "", 0, message, args, None)
        monkeypatch.undo()
        assert handler._line(("hyperplane.access", created, message, args)) == formatter.format(record) + "\n"
        assert handler._prefixes.usable is per_second   # the faster way is taken where it applies
    handler.close()
