"""`serve`: the SageMaker hosting and batch-transform entry point (`docker run IMAGE serve`).

Reads ServingSettings from the environment once, sets up logging, and runs gunicorn in this process
(PID 1 in the container, so SIGTERM reaches gunicorn directly) with the Flask app of container/serving/.
What it serves: the user's inference handlers when SAGEMAKER_PROGRAM (default inference.py) is found in
SAGEMAKER_SUBMIT_DIRECTORY or <model dir>/code (container/serving/user_code.py), else the hyperplane
artifact in SageMakerPaths.from_environ().model_dir (/opt/ml/model, read-only); nothing is written there,
the readiness folder lives under /tmp.

    serve                                      # in the image; `serve serve` is accepted too
    SAGEMAKER_BASE_DIR=/tmp/ml SAGEMAKER_BIND_TO_PORT=8081 PYTHONPATH=. python -m container.serve

Exit codes: 2 for a bad setting (the log names the variable), 3 when there is nothing it can serve (an
explicit SAGEMAKER_PROGRAM found nowhere, neither user code nor an artifact, a broken artifact, a model_fn
that raises, a requirements.txt it cannot install; one `cannot serve: ...` line says which), 0 after a
SIGTERM shutdown.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from container.serving.logbuffer import BufferedStreamHandler
from container.serving.settings import ServingSettings, SettingsError
from container.serving.user_code import UserCodeError

USAGE = "usage: serve\n\nServes the model in /opt/ml/model over HTTP; configured by environment variables.\n"
SETTINGS_ERROR = 2
NOTHING_TO_SERVE = 3   # the code gunicorn_app.py exits with when the model cannot be loaded

log = logging.getLogger("hyperplane.serve")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    if args not in ([], ["serve"]):
        sys.stderr.write(f"serve: unexpected arguments {' '.join(args)}\n{USAGE}")
        return SETTINGS_ERROR
    configure_logging(logging.INFO)
    try:
        settings = ServingSettings.from_environ()
    except SettingsError as error:
        log.error("cannot serve: %s", error)
        return SETTINGS_ERROR
    except UserCodeError as error:
        log.error("cannot serve: %s", error)
        return NOTHING_TO_SERVE
    configure_logging(settings.log_level)
    log.info("serving %s on port %d: %d worker(s) x %d thread(s), %d torch thread(s) each, %d GPU(s), "
             "payload limit %s MiB, timeout %d s", settings.model_dir, settings.port, settings.workers,
             settings.threads, settings.torch_threads, settings.gpus, settings.max_payload_mb or "no",
             settings.timeout_s)
    if settings.image_role == "train":
        log.warning("this is the training image serving; deploy the slimmer hyperplane-serve image in "
                    "production (same server, smaller download, faster scale-out)")

    from container.serving.gunicorn_app import ServerApplication
    from container.serving.memory import limit_arenas

    limit_arenas()   # before any worker or thread exists: each worker's request threads share 2 arenas
    ServerApplication(settings).run()
    return 0


def configure_logging(level: int) -> None:
    """One line per record on stderr, INFO lines (the access line of every request) written in batches
    every 0.02 s, warnings and errors at once, nothing lost on a graceful stop (logbuffer.py)."""
    logging.basicConfig(level=level, handlers=[BufferedStreamHandler(sys.stderr)], force=True,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S %z")


if __name__ == "__main__":
    sys.exit(main())
