"""SIGTERM during the built-in training: a stop request the fit loop polls, and the exit code it ends with.

    with stop_on_sigterm() as stop:           # installs the handler; the previous one is back afterwards
        fit(..., checkpointing=Checkpointing(folder, stop_requested=stop.requested))

SageMaker stops a training job (StopTrainingJob, a spot interruption) with SIGTERM and sends SIGKILL 120 s
later. `train` is PID 1 in the container, where a signal without a handler is ignored, so without this the
job would run on until the SIGKILL and save nothing. The handler only sets a flag: the fit loop finishes
its current optimiser step, writes a checkpoint and raises TrainingStopped, which `JobStopped` turns into
the failure file and EXIT_STOPPED (143 = 128 + SIGTERM, what a shell reports for a process SIGTERM ended,
and what script mode returns for a stopped user script). The handler does no I/O: it may interrupt a
print or a log call, and a second write to the same stream from inside it could fail.
Script mode (container/script_mode.py) forwards SIGTERM to the user's script with its own handler.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from container.errors import JobError

EXIT_STOPPED = 128 + signal.SIGTERM   # 143


class JobStopped(JobError):  # noqa: N818 - the stop the job was asked for, reported like an error
    """The job was stopped by SIGTERM; the message (the failure file's first line) says where it stopped
    and where the checkpoint is."""

    exit_code = EXIT_STOPPED


class StopRequest:
    """Set by the SIGTERM handler; `requested` is what the fit loop polls between optimiser steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.received_at: float | None = None   # time.monotonic() of the first SIGTERM

    def requested(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
        self._event.set()

    def seconds_since(self) -> float:
        return time.monotonic() - self.received_at if self.received_at is not None else 0.0


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[StopRequest]:
    """SIGTERM sets the StopRequest while the block runs (in the main thread; elsewhere signals cannot be
    handled, and the request simply never comes)."""
    request = StopRequest()

    def handle(signum: int, frame: FrameType | None) -> None:
        request.set()

    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
