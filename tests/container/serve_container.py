"""The serving image run detached, with what the fault tests and scripts/reliability need to see inside:
the gunicorn workers' pids and memory, and a worker killed.

    container = ServeContainer.start(model_dir, workers=2)        # docker run -d ... serve; waits for 200
    container.workers()                   # {pid: Memory(rss_kb, pss_kb)} of each worker (children of PID 1)
    container.kill_worker(pid)            # SIGKILL, as the OOM killer sends it
    container.remove()                    # always: docker rm -f

The port is published on 127.0.0.1 only. Reading /proc goes through `docker exec ... python` (the image
has neither ps nor kill binaries; `sh -c 'kill ...'` uses the shell's builtin).
"""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from dataclasses import dataclass

from tests.container.docker import SERVE_IMAGE, docker
from tests.serving.load import ping
from tests.serving.process import free_port

# Prints {pid: [VmRSS kB, Pss kB]} for every child of PID 1 (the gunicorn master), i.e. its workers.
_WORKER_MEMORY = """
import json, os
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] != "1":
            continue
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
        rollup = dict(line.split(":", 1) for line in open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:])
    except (OSError, IndexError, ValueError):
        continue   # the process ended while being read
    found[pid] = [int(status["VmRSS"].split()[0]), int(rollup["Pss"].split()[0])]
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Memory:
    rss_kb: int
    pss_kb: int


class ServeContainer:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(cls, model_dir: pathlib.Path, *, workers: int = 2, image: str = SERVE_IMAGE,
              env: dict[str, str] | None = None, ready_within_s: float = 120) -> ServeContainer:
        container = cls(f"hyperplane-faults-{uuid.uuid4().hex[:10]}", free_port())
        args = ["run", "-d", "--name", container.name, "-p", f"127.0.0.1:{container.port}:8080",
                "-v", f"{model_dir.resolve()}:/opt/ml/model:ro"]
        for key, value in {"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), **(env or {})}.items():
            args += ["-e", f"{key}={value}"]
        docker(*args, image, "serve")
        try:
            container.wait_ready(ready_within_s)
        except BaseException:
            container.remove()
            raise
        return container

    def wait_ready(self, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while ping(self.port, timeout_s=2).status != 200:
            if time.monotonic() > deadline or not self.running():
                raise RuntimeError(f"{self.name} did not become ready:\n{self.logs()[-3000:]}")
            time.sleep(0.1)

    def running(self) -> bool:
        result = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def restart_count(self) -> int:
        return int(docker("inspect", "-f", "{{.RestartCount}}", self.name).stdout.strip())

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def workers(self) -> dict[int, Memory]:
        found = json.loads(docker("exec", self.name, "python", "-c", _WORKER_MEMORY).stdout)
        return {int(pid): Memory(*values) for pid, values in found.items()}

    def kill_worker(self, pid: int) -> None:
        docker("exec", self.name, "sh", "-c", f"kill -KILL {pid}")

    def terminate(self) -> None:
        docker("kill", "-s", "TERM", self.name)

    def wait_exit(self, timeout_s: float) -> int:
        return int(docker("wait", self.name, timeout=timeout_s).stdout.strip())

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)
