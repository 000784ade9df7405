"""ReadinessBoard: which gunicorn workers have loaded the model, shared through a small folder under /tmp.

One empty file per live worker, named by its pid: `<pid>.loading` from fork until the model is loaded and
has made a warm-up prediction, then renamed (atomically) to `<pid>.ready`. The master clears the folder
before forking and removes a worker's file when it reaps the worker. `/ping` asks `serving(workers)`, one
`listdir` of a handful of names:

  * while the server starts, 200 only when the planned number of workers are all ready (so SageMaker
    sends no traffic to a half-loaded server); the first time that holds, the file `served` is written;
  * once `served` exists, 200 while at least one worker is ready. A worker that dies (SIGKILL, the OOM
    killer, gunicorn's timeout) is replaced by one that loads the model again; its siblings answer
    meanwhile, and requests that reach the new worker wait for its model (predictor.ModelLoader.current).
    A 503 there would tell SageMaker the instance is unhealthy, and SageMaker answers that by taking it
    out of service and replacing it: minutes of lost capacity for a gap of a second or less
    (docs/reliability.md, "Serving faults and load"). With no worker ready the answer is 503 again.

A worker whose model cannot load claims the file `failed`: the first one exits with code 3, which makes
gunicorn halt the server; later ones (all workers run the same failing model_fn at about the same time)
leave that to it and wait for the master's SIGTERM, because a second exit 3 reaped while gunicorn is
already halting escapes its shutdown and ends the master with code 1 instead of 3.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil

LOADING = ".loading"
READY = ".ready"
FAILED = "failed"
SERVED = "served"   # the server has been fully ready once: from then on one ready worker is enough


class ReadinessBoard:
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder

    def reset(self) -> None:
        """Master, before forking: an empty folder."""
        self.remove()
        self.folder.mkdir(parents=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def register(self, pid: int) -> None:
        """Worker, right after fork: this worker exists and is loading."""
        (self.folder / f"{pid}{LOADING}").touch()

    def mark_ready(self, pid: int) -> None:
        os.replace(self.folder / f"{pid}{LOADING}", self.folder / f"{pid}{READY}")

    def forget(self, pid: int) -> None:
        """Master (on reaping) or worker (on exit): the worker is gone."""
        for suffix in (LOADING, READY):
            (self.folder / f"{pid}{suffix}").unlink(missing_ok=True)

    def claim_failure(self, pid: int) -> bool:
        """Worker that cannot load: True for the first one, which stops the server; False afterwards."""
        try:
            fd = os.open(self.folder / FAILED, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        except OSError:   # no folder: nothing to share, so this worker reports the failure itself
            return True
        os.write(fd, f"{pid}\n".encode())
        os.close(fd)
        return True

    def all_ready(self, workers: int) -> bool:
        """True when `workers` workers are registered and none is still loading."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return False
        return _all_ready(names, workers)

    def serving(self, workers: int) -> bool:
        """What /ping reports (see the module docstring): all `workers` ready until the server has served,
        then at least one. Records `served` the first time all are ready."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return False
        if SERVED in names:
            return any(name.endswith(READY) for name in names)
        if not _all_ready(names, workers):
            return False
        with contextlib.suppress(OSError):   # the folder is gone once the server stops
            (self.folder / SERVED).touch()   # idempotent: several workers may see the moment at once
        return True

    def has_served(self) -> bool:
        """True once the server has been fully ready: a worker loading now replaces one that died."""
        return (self.folder / SERVED).exists()


def _all_ready(names: list[str], workers: int) -> bool:
    ready = sum(name.endswith(READY) for name in names)
    return ready >= workers and not any(name.endswith(LOADING) for name in names)
