"""The model as one worker holds it: a Predictor, and the background loader that makes it after fork.

    loader = ModelLoader(settings, board)      # in the worker, after fork
    loader.start(worker_index)                 # thread: device, torch threads, load, warm-up, mark ready
    loader.current()                           # None until loaded; /ping asks loader.ready()

A load failure ends the worker with exit code 3, which gunicorn's master treats as "worker failed to
boot" and answers by halting the server, so a broken model never serves errors. Nothing here is a
module global: each worker process builds its own loader (see gunicorn_app.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from container.serving.codecs import InputSchema
from container.serving.readiness import ReadinessBoard
from container.serving.settings import ServingSettings
from model.table import Table

if TYPE_CHECKING:   # torch is imported by the loader thread, after the port is bound
    from model.regressor import Regressor

WORKER_BOOT_ERROR = 3   # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: the master halts the server

log = logging.getLogger("hyperplane.serve")


class Predictor:
    """One regressor; `predict` runs one request at a time (see settings.PREDICTIONS_PER_WORKER)."""

    def __init__(self, regressor: Regressor) -> None:
        self.regressor = regressor
        self.version = str(regressor.info.get("version", "unknown"))
        self.schema = InputSchema(tuple(regressor.feature_names), regressor.target, regressor.numeric_only)
        self.lock = threading.Lock()

    def predict(self, table: Table) -> np.ndarray:
        return self.regressor.predict(table)

    def warm_up(self) -> None:
        """One prediction on a row of missing values (every feature imputed), so the first request is
        not the one that pays for lazy initialisation."""
        names = list(self.schema.feature_names)
        self.predict(Table.from_rows(names, [[None] * len(names)]))


class ModelLoader:
    """Loads the model on a background thread so that /ping answers 503 (not nothing) meanwhile."""

    def __init__(self, settings: ServingSettings, board: ReadinessBoard,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.board = board
        self.on_failure = on_failure or _exit_worker
        self._predictor: Predictor | None = None

    def start(self, worker_index: int) -> threading.Thread:
        thread = threading.Thread(target=self._load, args=(worker_index,), name="model-loader", daemon=True)
        thread.start()
        return thread

    def current(self) -> Predictor | None:
        return self._predictor

    def ready(self) -> bool:
        return self._predictor is not None and self.board.all_ready(self.settings.workers)

    def _load(self, worker_index: int) -> None:
        pid = os.getpid()
        try:
            import torch

            from model import artifact

            torch.set_num_threads(self.settings.torch_threads)
            device = self._device(worker_index, torch.cuda.is_available())
            predictor = Predictor(artifact.load(self.settings.model_dir).to(device))
            predictor.warm_up()
            self._predictor = predictor
            log.info("worker %s ready: model %s on %s, %s torch thread(s)", pid, predictor.version, device,
                     self.settings.torch_threads)
            self.board.mark_ready(pid)   # after the log line, so a log reader never sees 200 first
        except Exception:
            log.exception("worker %s cannot load the model from %s; stopping the server", pid,
                          self.settings.model_dir)
            self.on_failure()

    def _device(self, worker_index: int, cuda_available: bool) -> str:
        if self.settings.gpus and cuda_available:
            return f"cuda:{worker_index % self.settings.gpus}"
        if self.settings.gpus:
            log.warning("%s GPU(s) visible but this torch build has no CUDA: serving on the CPU",
                        self.settings.gpus)
        return "cpu"


def _exit_worker() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(WORKER_BOOT_ERROR)   # from a thread, sys.exit would end only the thread
