"""ReadinessBoard: which gunicorn workers have loaded the model, shared through a small folder under /tmp.

One empty file per live worker, named by its pid: `<pid>.loading` from fork until the model is loaded and
has made a warm-up prediction, then renamed (atomically) to `<pid>.ready`. The master clears the folder
before forking and removes a worker's file when it reaps the worker. `/ping` answers 200 only when the
planned number of workers are all ready, which costs one `listdir` of a handful of names.
"""

from __future__ import annotations

import os
import pathlib
import shutil

LOADING = ".loading"
READY = ".ready"


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

    def all_ready(self, workers: int) -> bool:
        """True when `workers` workers are registered and none is still loading."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return False
        ready = sum(name.endswith(READY) for name in names)
        return ready >= workers and not any(name.endswith(LOADING) for name in names)
