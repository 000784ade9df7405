"""gunicorn, configured from ServingSettings, with the hooks that make start-up and shutdown safe.

Order of events (master = the `serve` process, PID 1 in the container):
  1. the master binds the port (well under a second: torch is not imported yet);
  2. when_ready: startup.prepare decides the mode. User code located -> handler mode (the module is not
     imported here; a requirements.txt is installed when pip exists); else the master loads the artifact
     once on the CPU (never CUDA, so forking stays safe). Neither, a broken artifact or requirements that
     cannot be installed log one line `cannot serve: ...` and exit 3, before any worker exists;
  3. each forked worker (gthread with a lane of its own for /ping, worker.py) registers in the
     ReadinessBoard, builds its own Flask app and ModelLoader, and loads the model (or runs the user's
     model_fn) on a thread while the worker already answers /ping with 503; a worker that cannot load
     exits 3, which makes gunicorn halt the whole server. A worker that dies later (SIGKILL, out of
     memory) is replaced by a new one that loads the same way while /ping stays 200 (readiness.py);
  4. SIGTERM: gunicorn stops accepting, lets in-flight requests finish for up to graceful_timeout (25 s,
     inside SageMaker's 30 s before SIGKILL), then exits; workers leave with os._exit, skipping the
     seconds a normal interpreter shutdown spends on torch.

gunicorn's access log is off (app.py writes one structured line per request, through serve.py's buffered
handler, logbuffer.py, which worker_exit flushes before os._exit); its error log goes to stderr at the
configured level.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from container.serving.predictor import WORKER_BOOT_ERROR, ModelLoader
from container.serving.readiness import ReadinessBoard
from container.serving.settings import ServingSettings
from container.serving.startup import StartError, prepare

log = logging.getLogger("hyperplane.serve")


class ServerApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.board = ReadinessBoard(settings.readiness_dir)
        self.worker_index = 0
        self.loader: ModelLoader | None = None
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        options: dict[str, Any] = {
            "bind": [f"0.0.0.0:{settings.port}"],
            "workers": settings.workers,
            "worker_class": "container.serving.worker.PingLaneWorker",   # gthread, with /ping apart
            "threads": settings.threads,
            "timeout": settings.timeout_s,
            "graceful_timeout": settings.graceful_timeout_s,
            "keepalive": settings.keepalive_s,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": gunicorn_level(settings.log_level),
            "preload_app": False,
            "control_socket_disable": True,
            "proc_name": "hyperplane-serve",
            "when_ready": self.when_ready,
            "post_fork": self.post_fork,
            "post_worker_init": self.post_worker_init,
            "worker_exit": self.worker_exit,
            "child_exit": self.child_exit,
            "on_exit": self.on_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Runs in each worker after fork: its own loader and app, no model shared across processes."""
        from container.serving.app import create_app

        self.loader = ModelLoader(self.settings, self.board)
        return create_app(self.settings, self.loader)

    # gunicorn hooks; `arbiter` and `worker` are gunicorn objects.

    def when_ready(self, arbiter: Any) -> None:
        self.board.reset()
        try:
            prepare(self.settings)
            return
        except StartError as error:
            log.error("cannot serve: %s", error)
        except Exception as error:   # a bug: the traceback, and still the one line and exit code 3
            log.exception("cannot serve: the start-up check failed: %s", error)
        arbiter.halt(reason=f"nothing to serve from {self.settings.model_dir}", exit_status=WORKER_BOOT_ERROR)

    def post_fork(self, arbiter: Any, worker: Any) -> None:
        self.worker_index = worker.age - 1   # spawn order, for the GPU round-robin
        self.board.register(os.getpid())

    def post_worker_init(self, worker: Any) -> None:
        if self.loader is None:
            raise RuntimeError("gunicorn called post_worker_init before load()")
        self.loader.start(self.worker_index)

    def worker_exit(self, arbiter: Any, worker: Any) -> None:
        """The worker's last step (gunicorn calls it while its SystemExit propagates). Leave with that
        exit code at once: a normal interpreter shutdown spends seconds tearing torch down, and aborts
        (SIGABRT) when SIGTERM arrives while the loader thread is still inside torch."""
        self.board.forget(worker.pid)
        ending = sys.exc_info()[1]
        if isinstance(ending, SystemExit):
            code = ending.code if isinstance(ending.code, int) else (0 if ending.code is None else 1)
            logging.shutdown()   # flushes every handler
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code & 0xFF)

    def child_exit(self, arbiter: Any, worker: Any) -> None:
        self.board.forget(worker.pid)

    def on_exit(self, arbiter: Any) -> None:
        self.board.remove()


def gunicorn_level(level: int) -> str:
    for limit, name in ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warning"),
                        (logging.ERROR, "error")):
        if level <= limit:
            return name
    return "critical"
