"""What one worker serves, and the background loader that makes it after fork.

    Predictor       the built-in regressor as a servable.Servable: codecs.py's formats around
                    Regressor.predict, plus what the custom attributes ask for (options.py: intervals,
                    explanations)
    ModelLoader     loads the worker's Servable on a thread: the built-in Predictor, or (handler mode,
                    settings.user_code set) handlers.UserHandlers, whose model_fn runs here

    loader = ModelLoader(settings, board)      # in the worker, after fork
    loader.start(worker_index)                 # thread: device, torch threads, load, warm-up, mark ready
    loader.current()                           # None until loaded (a replacement worker waits for it)
    loader.ready()                             # what /ping answers: readiness.ReadinessBoard.serving

A load failure (a broken artifact, a model_fn that raises) logs `cannot serve: ...` and ends the worker
with exit code 3, which gunicorn's master treats as "worker failed to boot" and answers by halting the
server, so a broken model never serves errors. Only the first failing worker does so (readiness.py
says why); the others wait for the master's SIGTERM. Nothing here is a module global: each worker process
builds its own loader (see gunicorn_app.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from werkzeug.utils import get_content_type

from container.serving import codecs
from container.serving.attributes import HEADER
from container.serving.codecs import InputSchema
from container.serving.errors import InvalidInput
from container.serving.limits import RequestLimits
from container.serving.options import NO_OPTIONS, RequestOptions, request_options
from container.serving.plainrow import plain_row
from container.serving.readiness import ReadinessBoard
from container.serving.servable import Answer, LoadError, RequestInfo, Servable
from container.serving.settings import ServingSettings
from model.errors import DataError
from model.schema import Kind
from model.table import Table

if TYPE_CHECKING:   # torch is imported by the loader thread, after the port is bound
    from model.explanation import Explainer
    from model.regressor import Regressor

WORKER_BOOT_ERROR = 3   # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR: the master halts the server

log = logging.getLogger("hyperplane.serve")


class Predictor:
    """One regressor as a Servable; one request at a time (see settings.PREDICTIONS_PER_WORKER)."""

    def __init__(self, regressor: Regressor, *, batch: bool = False,
                 limits: RequestLimits | None = None) -> None:
        self.regressor = regressor
        self.batch = batch   # a transform job: no newline after the last record (codecs.encode)
        self.limits = limits or RequestLimits()   # the row limit for JSON and x-npy (app.py checks lines)
        self.version = str(regressor.info.get("version", "unknown"))
        self.schema = InputSchema(tuple(regressor.feature_names), regressor.target, regressor.numeric_only,
                                  frozenset(feature.name for feature in regressor.preprocessor.schema.features
                                            if feature.kind is Kind.NUMERIC))
        self.lock = threading.Lock()
        self._explainer: Explainer | None = None   # made by the first request with explain=true
        self._content_types = {mimetype: get_content_type(mimetype, "utf-8") for mimetype in codecs.OUTPUT_TYPES}
        regressor.freeze()   # eval mode once here, and no per-call look at the weights (Regressor.freeze)

    def check(self, request: RequestInfo) -> None:
        codecs.require_input_type(request.mimetype, request.content_type, self.schema)
        response_type = codecs.response_type(request.accept, request.mimetype)   # 406 before the body is read
        self._options(request, response_type)   # and 400 for an unusable custom attribute

    def invoke(self, body: bytes, request: RequestInfo) -> Answer:
        response_type = codecs.response_type(request.accept, request.mimetype)
        options = self._options(request, response_type)
        return self.answer(body, request.mimetype, request.params, response_type, options)

    def answer(self, body: bytes, mimetype: str, params: Mapping[str, str], response_type: str,
               options: RequestOptions = NO_OPTIONS) -> Answer:
        """invoke after the headers are read: the body of `mimetype` answered in `response_type`. The
        fast path (fastpath.py) calls it directly for requests without parameters or attributes."""
        try:
            if not params and options is NO_OPTIONS and (encoded := self._plain_row(body, mimetype)) is not None:
                self.limits.check_rows(1)
                rows, predictions, extras = 1, self.regressor.predict_row(encoded), None
            else:
                table = codecs.decode(body, mimetype, params, self.schema)
                rows = table.n_rows
                self.limits.check_rows(rows)
                predictions = self.predict(table)
                extras = self._extras(table, predictions, options) if options is not NO_OPTIONS else None
            payload = codecs.encode(predictions, response_type, final_newline=not self.batch, extras=extras)
        except DataError as error:
            raise InvalidInput.from_data_error(error) from None
        content_type = self._content_types.get(response_type) or get_content_type(response_type, "utf-8")
        return Answer(payload, content_type, rows=rows)

    def _plain_row(self, body: bytes, mimetype: str) -> list[float] | None:
        """The encoded row of a body holding one row in its plainest spelling (plainrow.py) whose cells
        encode without the general handling (Preprocessor.encode_row); None sends the body through
        codecs.decode and a Table. Same predictions either way: encode_row makes encode's bits, and
        predict_row is predict_encoded, what predict runs, for that one row."""
        cells = plain_row(body, mimetype, self.schema)
        return None if cells is None else self.regressor.preprocessor.encode_row(cells)

    def _options(self, request: RequestInfo, response_type: str) -> RequestOptions:
        options = request_options(request.attributes, self.regressor.calibration,
                                  self.regressor.baseline is not None)
        if options.explain and response_type == codecs.CSV:
            raise InvalidInput(f"{HEADER} explain=true: explanations are answered in JSON or JSON Lines; send "
                               "Accept: application/json or application/jsonlines")
        return options

    def _extras(self, table: Table, predictions: np.ndarray,
                options: RequestOptions) -> dict[str, np.ndarray | list[dict[str, Any]]]:
        """What the options add to each row: "lower" and "upper" for intervals, "explanation" objects."""
        extras: dict[str, np.ndarray | list[dict[str, Any]]] = {}
        if options.interval_level is not None and self.regressor.calibration is not None:
            extras["lower"], extras["upper"] = self.regressor.calibration.interval(predictions,
                                                                                  options.interval_level)
        if options.explain:
            extras["explanation"] = self._explain(table)
        return extras

    def _explain(self, table: Table) -> list[dict[str, Any]]:
        from model.explanation import Explainer  # torch, imported by the loader thread before any request

        if self._explainer is None:   # built on the first request that asks: a float64 copy of the network
            self._explainer = Explainer(self.regressor)
        attributions = self._explainer.explain(table)
        bad = np.flatnonzero(~np.isfinite(attributions).all(axis=1))
        if len(bad):
            raise InvalidInput("the explanation is not finite (the input lies far outside the training data)",
                               row=int(bad[0]) + 1)
        names, base = self._explainer.features, self._explainer.base
        return [{"base": base, "attributions": dict(zip(names, map(float, row), strict=True))}
                for row in attributions]

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
        self._servable: Servable | None = None
        self._loaded = threading.Event()   # set once loading has ended, either way

    def start(self, worker_index: int) -> threading.Thread:
        thread = threading.Thread(target=self._load, args=(worker_index,), name="model-loader", daemon=True)
        thread.start()
        return thread

    def current(self) -> Servable | None:
        """The servable, or None while loading. A worker forked after the server has served replaces one
        that died, and /ping answers 200 meanwhile (readiness.py): a request that reaches it before its
        model is loaded waits for the model (at most the request timeout) instead of failing with 503."""
        if self._servable is None and self.board.has_served():
            self._loaded.wait(self.settings.timeout_s)
        return self._servable

    def ready(self) -> bool:
        return self.board.serving(self.settings.workers)

    def _load(self, worker_index: int) -> None:
        pid = os.getpid()
        try:
            servable, device = (self._load_handlers(worker_index) if self.settings.user_code
                                else self._load_regressor(worker_index))
            servable.warm_up()
            self._servable = servable
            log.info("worker %s ready: model %s on %s, %s torch thread(s)", pid, servable.version, device,
                     self.settings.torch_threads)
            self.board.mark_ready(pid)   # after the log line, so a log reader never sees 200 first
            self.board.serving(self.settings.workers)   # records `served` if this was the last one
        except LoadError as error:
            if self._first_failure(pid, error):
                # the user's traceback, then the one line that says why the container stops
                log.error("worker %s: the user's handlers failed to load", pid, exc_info=error.__cause__)
                log.error("cannot serve: %s", error)
                self.on_failure()
        except Exception as error:
            if self._first_failure(pid, error):
                log.exception("worker %s cannot load the model from %s; stopping the server", pid,
                              self.settings.model_dir)
                self.on_failure()
        finally:
            self._loaded.set()   # a failed load wakes the waiting requests too (they answer 503)

    def _first_failure(self, pid: int, error: Exception) -> bool:
        """True when this worker is the one to stop the server (see readiness.py); the others say so in one
        line and keep answering 503 until the master's SIGTERM ends them."""
        if self.board.claim_failure(pid):
            return True
        log.error("worker %s cannot load the model either (%s); the server is stopping", pid,
                  type(error).__name__)
        return False

    def _load_regressor(self, worker_index: int) -> tuple[Servable, str]:
        import torch

        from model import artifact

        torch.set_num_threads(self.settings.torch_threads)
        device = self._device(worker_index, torch.cuda.is_available())
        regressor = artifact.load(self.settings.model_dir).to(device)
        limits = RequestLimits.from_settings(self.settings)
        return Predictor(regressor, batch=self.settings.batch, limits=limits), device

    def _load_handlers(self, worker_index: int) -> tuple[Servable, str]:
        """The user's model_fn runs here, in the worker after fork, so CUDA is safe. torch (present in both
        images) gets this worker's thread count and, with GPUs, its round-robin GPU as the current device,
        so that a model_fn writing `.to("cuda")` spreads the workers over the GPUs too."""
        from container.serving.handlers import UserHandlers

        device = "cpu"
        if importlib.util.find_spec("torch") is not None:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
            device = self._device(worker_index, torch.cuda.is_available())
            if device != "cpu":
                torch.cuda.set_device(device)
        gpu_id = int(device.partition(":")[2]) if device != "cpu" else None
        return UserHandlers.load(self.settings, gpu_id), device

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
