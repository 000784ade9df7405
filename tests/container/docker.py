"""Thin helpers over the docker CLI for the image tests: build once per session, run, always clean up."""

from __future__ import annotations

import pathlib
import subprocess
import time
import uuid
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN_IMAGE = "hyperplane-train:latest"
SERVE_IMAGE = "hyperplane-serve:latest"


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def build_images(*flags: str) -> None:
    """Runs scripts/build-images (a cached rebuild takes seconds); fails loudly, never skips."""
    result = subprocess.run([str(ROOT / "scripts" / "build-images"), *flags], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-images failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def run_job(root: pathlib.Path, *docker_args: str, command: tuple[str, ...] = ("train",),
            image: str = TRAIN_IMAGE, volumes: tuple[str, ...] | None = None) -> subprocess.CompletedProcess[str]:
    """`docker run IMAGE train` with `root` as /opt/ml; the container is removed whatever happens."""
    name = f"hyperplane-test-{uuid.uuid4().hex[:10]}"
    mounts = volumes if volumes is not None else (f"{root}:/opt/ml",)
    args = ["run", "--rm", "--name", name, "--network", "none"]
    for mount in mounts:
        args += ["-v", mount]
    try:
        return docker(*args, *docker_args, image, *command, check=False)
    finally:
        docker("rm", "-f", name, check=False)


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    seconds_to_exit: float   # from `docker kill -s TERM` to the container's end
    logs: str                # stdout and stderr


def terminate_when_logged(image: str, root: pathlib.Path, line: str, *, limit_s: float,
                          command: tuple[str, ...] = ("train",)) -> Terminated:
    """`docker run -d` with `root` as /opt/ml, `docker kill -s TERM` once `line` is in the log (SageMaker's
    StopTrainingJob, a spot interruption), then waits for the end; fails the test if the container runs
    on for `limit_s` + 10 s after the signal. The container is removed whatever happens."""
    name = f"hyperplane-test-{uuid.uuid4().hex[:10]}"
    docker("run", "-d", "--name", name, "--network", "none", "-v", f"{root}:/opt/ml", image, *command)
    try:
        deadline = time.monotonic() + 120
        while line not in docker("logs", name).stdout:
            if time.monotonic() > deadline:
                raise AssertionError(f"{line!r} never logged:\n{docker('logs', name).stdout[-3000:]}")
            time.sleep(0.1)
        docker("kill", "-s", "TERM", name)
        killed = time.monotonic()
        try:
            code = int(docker("wait", name, timeout=limit_s + 10).stdout.strip())
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the container still ran {limit_s + 10} s after SIGTERM") from None
        elapsed = time.monotonic() - killed
        logs = docker("logs", name)
    finally:
        docker("rm", "-f", name, check=False)
    return Terminated(code, elapsed, logs.stdout + logs.stderr)
