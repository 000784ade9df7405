"""The failure file: what SageMaker shows as a training job's FailureReason.

`report_failure` writes /opt/ml/output/failure with the reason on its first line (SageMaker shows the first
1024 characters), then, after a blank line, the details (a traceback, the end of a script's output), and
logs the same. Both training paths, the built-in regressor and the user's entry point, end here.
"""

from __future__ import annotations

import logging

from container.paths import SageMakerPaths

log = logging.getLogger("hyperplane.train")
FAILURE_REASON_LIMIT = 1024   # SageMaker shows this much of output/failure as the job's FailureReason


def report_failure(paths: SageMakerPaths, reason: str, details: str = "") -> None:
    """Writes output/failure (reason first, on one line) and logs it; never raises."""
    reason = " ".join(reason.split())   # one line, whatever the error message held
    text = f"{reason}\n\n{details}" if details else f"{reason}\n"
    log.error("training failed: %s%s", reason, f"\n{details}" if details else "")
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(text)
    except OSError as error:
        log.error("could not write %s: %s", paths.failure_file, error)


def clear_stale_failure(paths: SageMakerPaths) -> None:
    """Removes an output/failure left by an earlier run in the same folder (a restarted `docker run`; SageMaker
    itself starts every job with an empty output folder), so that a job that succeeds leaves none."""
    try:
        paths.failure_file.unlink()
    except FileNotFoundError:
        return
    except OSError as error:
        log.warning("could not remove the failure file of an earlier run, %s: %s", paths.failure_file, error)
        return
    log.info("removed %s, left by an earlier run", paths.failure_file)
