"""The gunicorn master's decision before it forks: what this container serves, and whether it can.

    mode = prepare(settings)       # "handlers" or "artifact"; StartError (one log line) when it cannot

    user code located (settings.user_code)   handler mode: one log line naming the module and folder; its
                                             requirements.txt is pip-installed here when pip is importable
                                             (the training image), and refused when it is not (the serving
                                             image has no pip), so that no worker starts without it
    else a hyperplane artifact in model_dir  built-in mode: the artifact is loaded once on the CPU to
                                             validate it
    neither                                  StartError naming both places

Handler mode imports neither the user's module nor torch here: what runs in the master before fork must
not start CUDA or threads, and the user's model_fn belongs in the workers. `pip_available` and `install`
are parameters so that tests decide whether pip exists and what installing does.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Literal

from container.serving.settings import ServingSettings
from container.serving.user_code import DEFAULT_PROGRAM

Mode = Literal["handlers", "artifact"]

log = logging.getLogger("hyperplane.serve")


class StartError(Exception):
    """The server cannot start; the message is the one `cannot serve: ...` line the log shows."""


def pip_available() -> bool:
    return importlib.util.find_spec("pip") is not None


def run_pip(command: Sequence[str], cwd: pathlib.Path) -> int:
    """Runs pip with the container's stdout and stderr, so its output lands in the log as it comes."""
    return subprocess.run(list(command), cwd=cwd, check=False).returncode


def prepare(settings: ServingSettings, *, pip_available: Callable[[], bool] = pip_available,
            install: Callable[[Sequence[str], pathlib.Path], int] = run_pip) -> Mode:
    code = settings.user_code
    if code is not None:
        log.info("serving user handlers %s from %s (SAGEMAKER_PROGRAM=%s, found in %s)", code.module,
                 code.folder, code.program, code.origin)
        if code.requirements is not None:
            install_requirements(code.requirements, pip_available, install)
        return "handlers"
    validate_artifact(settings)
    return "artifact"


def install_requirements(path: pathlib.Path, pip_available: Callable[[], bool],
                         install: Callable[[Sequence[str], pathlib.Path], int]) -> None:
    if not pip_available():
        raise StartError(f"{path} lists requirements, but this serving image has no pip to install them at "
                         "start: serve with the training image, or build an image FROM hyperplane-serve that "
                         "installs them")
    command = [sys.executable, "-m", "pip", "install", "--no-input", "-r", str(path)]
    log.info("installing the user's requirements: %s", " ".join(command))
    # From the code folder, as sagemaker-training installs it: relative paths in the file (a wheel
    # shipped in source_dir) resolve there.
    status = install(command, path.parent)
    if status != 0:
        raise StartError(f"pip install -r {path} failed with exit code {status} (its output is above)")
    importlib.invalidate_caches()   # the workers fork from here and import what was just installed


def validate_artifact(settings: ServingSettings) -> None:
    """Loads the artifact once on the CPU, in one torch thread (no intra-op pool in the master before
    fork), and logs what it holds; StartError if there is none or it is unreadable."""
    import torch

    from model import artifact
    from model.card import read_summary

    if not (settings.model_dir / artifact.ARTIFACT_NAME).is_file():
        folders = settings.code_dirs or (settings.model_dir / "code",)
        raise StartError(f"no user code ({DEFAULT_PROGRAM} in {' or '.join(map(str, folders))}) and no "
                         f"hyperplane artifact in {settings.model_dir}")
    torch.set_num_threads(1)
    try:
        regressor = artifact.load(settings.model_dir)
    except Exception as error:
        # one line (torch's own messages run to several); the full text and traceback with DEBUG
        log.debug("model load failure in detail", exc_info=error)
        raise StartError(str(error).splitlines()[0] if str(error) else repr(error)) from error
    info = regressor.info
    log.info("model %s: %d features (%s), target %s, trained on %s rows; starting %d worker(s)",
             info.get("version"), len(regressor.feature_names),
             "all numeric" if regressor.numeric_only else "with categorical features", regressor.target,
             info.get("training_rows", "?"), settings.workers)
    log.info("model card: %s", read_summary(settings.model_dir))   # optional: older artifacts have none
