"""`serve` as a subprocess on a free local port, for the tests that need the real gunicorn master and
workers (test_server_process.py, test_handlers_server.py); conftest.py's `start` fixture stops them."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Protocol

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`serve` in a subprocess; `command` replaces `python -m container.serve` (e.g. to fake what the
    image lacks before main() runs)."""

    def __init__(self, base_dir: pathlib.Path, tmp_dir: pathlib.Path, command: Sequence[str] = (),
                 **environ: str) -> None:
        self.port = free_port()
        self.tmp_dir = tmp_dir   # TMPDIR: the readiness folder is hyperplane-readiness-<pid> in it
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGEMAKER_BASE_DIR": str(base_dir),
               "TMPDIR": str(tmp_dir),   # the readiness folder, even when a test kills the server
               "SAGEMAKER_BIND_TO_PORT": str(self.port), "SAGEMAKER_MODEL_SERVER_WORKERS": "2", **environ}
        self.started = time.monotonic()
        self.process = subprocess.Popen(list(command) or [sys.executable, "-m", "container.serve"], env=env,
                                        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        self.stop()
        assert self.process.stdout is not None
        return self.process.stdout.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class StartServer(Protocol):
    """The `start` fixture: start(base_dir, command=(), **environ) -> a Server stopped after the test."""

    def __call__(self, base_dir: pathlib.Path, command: Sequence[str] = (), **environ: str) -> Server: ...
