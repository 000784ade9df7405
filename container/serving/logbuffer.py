"""BufferedStreamHandler: log lines written in batches, so a request's access line costs no system call.

    handler = BufferedStreamHandler(sys.stderr)       # container/serve.py configure_logging
    logging.basicConfig(handlers=[handler], ...)

What it promises:
- every record becomes exactly one line, formatted as a StreamHandler would, written in the order the
  records were emitted (one lock orders the buffer and the writes);
- INFO and DEBUG lines (the `hyperplane.access` line of every request) are kept in memory and written
  together, in one write and one flush, at most FLUSH_INTERVAL_S after the first of them, or at once when
  BATCH_BYTES have gathered;
- a WARNING or worse is written at once, after everything emitted before it, so errors appear promptly;
- flush() and close() write whatever is pending: logging.shutdown() (at interpreter exit, in gunicorn's
  worker_exit hook before its os._exit, gunicorn_app.py, and in predictor._exit_worker) loses nothing on
  a graceful stop. Only a process killed outright (SIGKILL) loses up to FLUSH_INTERVAL_S of INFO lines;
- after fork the child starts with an empty buffer and no writer thread (the parent writes what it had
  pending), so a forked gunicorn worker never writes its master's lines twice.

    info_later(access_log, "method=%s status=%d ...", *values)   # app.py: the access line
    handler = buffered_handler_of(access_log)                      # fastpath.py: found once, then
    handler.later(access_log.name, message, values)                #   per request (when enabled)

info_later is logger.info for a line whose arguments are plain values (numbers, strings): where the
logger's records reach one BufferedStreamHandler and nothing else (no filters, no other handler on the
way: how serve.py configures logging; buffered_handler_of finds it), it queues the message, its arguments
and the time, and the record is made and formatted when its batch is written, with that time as its
`created`; for a format like serve.py's, whose fields but the message are the same for a whole second,
the writer makes that prefix once a second and no record at all (_InfoPrefixes). The line is the one
logger.info would have written, in the same place among the others; only `thread` and `threadName` are
the writer's. Any other configuration (a test's caplog, a user's handler) gets logger.info itself.

Why: on 2 cores behind Docker's log pipeline, one unbuffered stderr write per request cost about a third
of single-row throughput (docs/benchmarks.md, "Serving and training speed"). And in a serving worker,
where a request's code runs from cold caches, making and formatting the access line's LogRecord cost
~30 us of CPU a request (~6 us in a hot loop); made together in the batch they cost a fraction of that.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TextIO

# short enough that a batch's deferred lines (info_later) are formatted in well under a millisecond while
# the writer holds the GIL and the lock (~50 lines a worker at 2,500 requests/s), long enough to batch
FLUSH_INTERVAL_S = 0.02
BATCH_BYTES = 64 * 1024   # written at once beyond this: bounds the memory and the size of one write
LATER_CHARS = 200         # what a queued info_later line counts towards BATCH_BYTES (an access line's size)

_HANDLERS: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def info_later(logger: logging.Logger, message: str, *args: object) -> None:
    """logger.info(message, *args), its record made when written (see the module's docstring). `args`
    must be values that do not change afterwards."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = buffered_handler_of(logger)
    if handler is None:
        logger.info(message, *args)
    else:
        handler.later(logger.name, message, args)


def buffered_handler_of(logger: logging.Logger) -> BufferedStreamHandler | None:
    """The one handler the logger's INFO records reach, when it is a BufferedStreamHandler that would take
    them and no filter stands on the way; else None."""
    found: BufferedStreamHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not BufferedStreamHandler or handler.filters \
                    or handler.level > logging.INFO:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


class BufferedStreamHandler(logging.Handler):
    terminator = "\n"

    def __init__(self, stream: TextIO, interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self.stream = stream
        self.interval_s = interval_s
        self._reset()
        _HANDLERS.add(self)

    def _reset(self) -> None:
        # formatted lines, and (logger name, time, message, args) of the records `later` queued
        self._pending: list[str | tuple[str, float, str, tuple[object, ...]]] = []
        self._prefixes = _InfoPrefixes(None)   # made for the formatter on first use; the pid is the child's
        self._pending_chars = 0
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        # Handler.handle holds self.lock here, so the buffer and the writes keep emission order
        self._queue(line, len(line), record.levelno >= logging.WARNING)

    def later(self, name: str, message: str, args: tuple[object, ...]) -> None:
        """Queues the INFO record logging.getLogger(name).info(message, *args) would make now, to be made
        and formatted when its batch is written; the caller has checked that the logger is enabled."""
        with self.lock:   # type: ignore[union-attr]   # made in Handler.__init__
            self._queue((name, time.time(), message, args), LATER_CHARS, False)

    def _queue(self, item: str | tuple[str, float, str, tuple[object, ...]], chars: int, at_once: bool) -> None:
        """Caller holds self.lock."""
        self._pending.append(item)
        self._pending_chars += chars
        if at_once or self._pending_chars >= BATCH_BYTES or self._closed:
            self._write_pending()
        elif not self._wake.is_set():
            self._ensure_writer()
            self._wake.set()

    def flush(self) -> None:
        with self.lock:   # type: ignore[union-attr]   # made in Handler.__init__
            self._write_pending()

    def close(self) -> None:
        with self.lock:   # type: ignore[union-attr]
            self._write_pending()
            self._closed = True   # a record emitted later (at shutdown) is written at once
        self._wake.set()
        super().close()

    def _write_pending(self) -> None:
        """Caller holds self.lock."""
        if not self._pending:
            return
        data = "".join([item if isinstance(item, str) else self._line(item) for item in self._pending])
        self._pending.clear()
        self._pending_chars = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):   # stderr closed or a broken pipe: nowhere left to say it
            pass

    def _line(self, item: tuple[str, float, str, tuple[object, ...]]) -> str:
        name, created, message, args = item
        if self._prefixes.formatter is not self.formatter:
            self._prefixes = _InfoPrefixes(self.formatter)
        if self._prefixes.usable:
            try:
                return self._prefixes.line(name, created, message, args) + self.terminator
            except Exception:   # arguments the message cannot take: the record's way reports it
                pass
        record = logging.LogRecord(name, logging.INFO, "", 0, message, args, None)
        # the time `later` was called, as LogRecord.__init__ would have set it then (Python 3.11's formulas)
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        record.relativeCreated = (created - logging._startTime) * 1000   # type: ignore[attr-defined]
        try:
            return self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return ""

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._writer.start()

    def _run(self) -> None:
        wake = self._wake   # a forked child replaces it; this thread does not exist there
        while not self._closed:
            wake.wait()
            if self._closed:
                return
            # gather for one interval, then write the batch; a line emitted meanwhile sets nothing new
            time.sleep(self.interval_s)
            with self.lock:   # type: ignore[union-attr]
                wake.clear()
                self._write_pending()


_PREFIX_FIELDS = frozenset(("asctime", "process", "levelname", "levelno", "name"))


class _InfoPrefixes:
    """The text a plain logging.Formatter writes around an INFO record's message, made once a second per
    logger instead of once a line: for a format whose other fields (asctime to the second with a datefmt,
    process, levelname, name) are the same for every such record of a logger within a second, as serve.py's
    is. Then a deferred line is that prefix, the message with its arguments, and the suffix: the text
    Formatter.format makes from a LogRecord (tests/serving/test_access_log.py compares them), for ~1 us
    where the LogRecord and format() cost ~4 us, paid by the writer thread under the GIL a request.
    `usable` is False for any other formatter (a subclass, another style, a field such as msecs or
    thread, a default datefmt, which adds milliseconds), which then formats records as usual."""

    def __init__(self, formatter: logging.Formatter | None) -> None:
        self.formatter = formatter
        self.usable = False
        self._key: tuple[int, str] | None = None
        self._around = ("", "")
        if formatter is None or type(formatter) is not logging.Formatter or not formatter.datefmt \
                or type(formatter._style) is not logging.PercentStyle or formatter.converter is not time.localtime:
            return
        fmt = formatter._fmt or ""
        if fmt.count("%(message)s") != 1 or "%%" in fmt \
                or not set(re.findall(r"%\((\w+)\)", fmt)) <= _PREFIX_FIELDS | {"message"}:
            return
        self._before, self._after = fmt.split("%(message)s")
        self.usable = True

    def line(self, name: str, created: float, message: str, args: tuple[object, ...]) -> str:
        key = (int(created), name)
        if key != self._key:
            assert self.formatter is not None and self.formatter.datefmt is not None
            values = {"asctime": time.strftime(self.formatter.datefmt, time.localtime(created)),
                      "process": os.getpid() if logging.logProcesses else None,
                      "levelname": logging.getLevelName(logging.INFO), "levelno": logging.INFO, "name": name}
            self._around = (self._before % values, self._after % values)
            self._key = key
        # LogRecord.getMessage's formatting, with LogRecord's rule for one mapping argument
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            text = str(message) % args[0]
        else:
            text = str(message) % args if args else str(message)
        return self._around[0] + text + self._around[1]


def _after_fork_in_child() -> None:
    # The parent writes its own pending lines; threads do not survive fork, so neither does the writer.
    # logging reinitialises each handler's lock in the child itself.
    for handler in list(_HANDLERS):
        handler._reset()


def _before_fork() -> None:
    # Written before forking, so nothing pending is lost in the child's reset or written out of order
    for handler in list(_HANDLERS):
        if handler.lock is not None and handler.lock.acquire(timeout=1):
            try:
                handler._write_pending()
            finally:
                handler.lock.release()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
