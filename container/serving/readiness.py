"""ReadinessBoard: which gunicorn workers have loaded the model, shared through a small folder under /tmp.

One empty file per live worker, named by its pid: `<pid>.loading` from fork until the model is loaded and
has made a warm-up prediction, then renamed (atomically) to `<pid>.ready`. The master clears the folder
before forking and removes a worker's file when it reaps the worker. `/ping` answers 200 only when the
planned number of workers are all ready, which costs one `listdir` of a handful of names.

A worker whose model cannot load claims the file `failed`: the first one exits with code 3, which makes
gunicorn halt the server; later ones (all workers run the same failing model_fn at about the same time)
leave that to it and wait for the master's SIGTERM, because a second exit 3 reaped while gunicorn is
already halting escapes its shutdown and ends the master with code 1 instead of 3.
"""

from __future__ import annotations

import os
import pathlib
import shutil

LOADING = ".loading"
READY = ".ready"
FAILED = "failed"


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
        ready = sum(name.endswith(READY) for name in names)
        return ready >= workers and not any(name.endswith(LOADING) for name in names)
