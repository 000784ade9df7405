"""When fit() writes checkpoints, resumes from them and stops: the caller's Checkpointing, applied between
optimiser steps.

    fit(train, config, checkpointing=Checkpointing(folder, every_epochs=10, every_seconds=300,
                                                    stop_requested=stop.is_set))

The caller says where (a folder) and when, and owns `stop_requested` (the container's SIGTERM handler sets
it); this module knows neither SageMaker nor signals. Between two optimiser steps (an AdamW mini-batch, an
L-BFGS epoch), `Checkpointer.between_steps`:
- when stop_requested() is true, writes a checkpoint and raises TrainingStopped: the step that was running
  has finished, and no other one starts;
- writes a checkpoint every `every_epochs` epochs or `every_seconds` seconds since the last one, whichever
  comes first (0 turns that trigger off), so a SIGKILL loses little.
Checkpoints are written only at positions where training goes on, so resuming from any of them replays
the steps that remain. Once the model is safely written, the caller removes the checkpoint (`discard`),
so that a later job with the same folder starts afresh instead of resuming a finished run.
With both triggers 0 checkpointing is off: no checkpoint is read or written, and a stop still stops.
A checkpoint that cannot be written (unwritable folder, full disk) is logged and training goes on; the
previous one stays intact (model/checkpoint.py writes atomically).
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from model import checkpoint
from model.checkpoint import Identity, Position, Snapshot

log = logging.getLogger("hyperplane.checkpoint")


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Checkpointing:
    folder: pathlib.Path
    every_epochs: int = 10                            # 0: no epoch trigger
    every_seconds: float = 300.0                      # 0: no time trigger
    stop_requested: Callable[[], bool] = _never       # polled between optimiser steps
    clock: Callable[[], float] = time.monotonic
    writes: bool = True                               # False: another process (rank 0) writes for this one

    @property
    def enabled(self) -> bool:
        """Off only when both triggers are 0: then no checkpoint is read or written."""
        return self.every_epochs > 0 or self.every_seconds > 0


class TrainingStopped(Exception):  # noqa: N818 - an outcome the caller asked for, not an error
    """stop_requested() was true: training stopped between two steps, after writing `checkpoint` if it
    could (None: checkpointing is off, or the write failed for the reason in `not_written`)."""

    def __init__(self, position: Position, checkpoint: pathlib.Path | None, not_written: str | None) -> None:
        self.position = position
        self.checkpoint = checkpoint
        self.not_written = not_written
        saved = f"checkpoint in {checkpoint}" if checkpoint else f"no checkpoint: {not_written}"
        super().__init__(f"training stopped {position.describe()} ({saved})")


class Checkpointer:
    """The checkpoint policy of one fit(); without Checkpointing (None) every method does nothing."""

    def __init__(self, settings: Checkpointing | None, identity: Callable[[], Identity]) -> None:
        self._settings = settings
        self._identity = identity
        self._known: Identity | None = None
        self._saved_epochs = 0
        self._saved_at = settings.clock() if settings else 0.0

    def identity(self) -> Identity:
        """This job's identity, computed once and only when needed (fingerprinting reads every cell)."""
        if self._known is None:
            self._known = self._identity()
        return self._known

    def resume(self) -> Snapshot | None:
        """The checkpoint to go on from, if the folder holds one for this job (CheckpointError if it holds
        another job's or a damaged one)."""
        settings = self._settings
        if settings is None:
            return None
        path = checkpoint.path_in(settings.folder)
        if not settings.enabled:
            if path.exists():
                log.warning("checkpointing is off (both triggers are 0): %s is neither resumed from nor "
                            "changed; training starts from the beginning", path)
            return None
        snapshot = checkpoint.read(settings.folder, self.identity())
        if snapshot is not None:
            log.info("resuming from the checkpoint %s, written %s (best epoch so far %d)", path,
                     snapshot.position.describe(), snapshot.best_epoch)
            self._saved_epochs = snapshot.position.epochs_done
        self._saved_at = settings.clock()
        return snapshot

    def between_steps(self, position: Position, take: Callable[[], Snapshot]) -> None:
        """Called before every optimiser step; `take` builds the snapshot, only when one is written."""
        settings = self._settings
        if settings is None:
            return
        if settings.stop_requested():
            if not settings.enabled:
                raise TrainingStopped(position, None, "checkpointing is off (checkpoint_epochs and "
                                                      "checkpoint_seconds are both 0)")
            path, failure = self._write(take, f"stop requested {position.describe()}")
            raise TrainingStopped(position, path, failure)
        if not settings.enabled:
            return
        epochs_due = (settings.every_epochs > 0 and position.batches_done == 0
                      and position.epochs_done - self._saved_epochs >= settings.every_epochs)
        time_due = settings.every_seconds > 0 and settings.clock() - self._saved_at >= settings.every_seconds
        if epochs_due or time_due:
            self._write(take, position.describe())

    def _write(self, take: Callable[[], Snapshot], why: str) -> tuple[pathlib.Path | None, str | None]:
        assert self._settings is not None
        if not self._settings.writes:
            return None, "rank 0 writes the checkpoints"
        started = time.perf_counter()
        snapshot = take()
        # After a failure too, so that a broken folder is retried once per interval, not at every step.
        self._saved_epochs, self._saved_at = snapshot.position.epochs_done, self._settings.clock()
        try:
            path = checkpoint.write(snapshot, self._settings.folder)
        except OSError as error:
            failure = f"writing a checkpoint to {self._settings.folder} failed ({error})"
            log.warning("%s; training goes on, and the previous checkpoint (if any) is kept", failure)
            return None, failure
        log.info("checkpoint written (%s): %s, %.0f kB in %.0f ms", why, path, path.stat().st_size / 1e3,
                 (time.perf_counter() - started) * 1e3)
        return path, None


def discard(settings: Checkpointing) -> None:
    """Removes the checkpoint of a job whose model is written (nothing when checkpointing is off); a
    failure is logged, since the model is already safe."""
    if not settings.enabled:
        return
    try:
        if checkpoint.remove(settings.folder):
            log.info("training finished and the model is written: checkpoint removed from %s", settings.folder)
    except OSError as error:
        log.warning("could not remove the checkpoint in %s (%s): a job started again with this folder resumes "
                    "from it and ends with the same model", settings.folder, error)
