"""Thin helpers over the docker CLI for the image tests: build once per session, run, always clean up."""

from __future__ import annotations

import pathlib
import subprocess
import uuid

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
