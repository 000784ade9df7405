"""ServingSettings: every knob of the model server, read once from the environment when `serve` starts.

Nothing else in the server reads os.environ: the limits the server enforces (payload size, concurrency)
and the ones it announces (`/execution-parameters`) come from this one value, so they cannot disagree.
(In handler mode sagemaker-inference reads SAGEMAKER_PROGRAM itself; handlers.py sets it in each worker
to the module user_code.py located.)

    variable                        default                 meaning
    SAGEMAKER_BIND_TO_PORT          8080                    listening port (0.0.0.0)
    SAGEMAKER_SAFE_PORT_RANGE       -                       "LOW-HIGH": with both set, the port lies in it
    SAGEMAKER_MODEL_SERVER_WORKERS  usable CPUs (>= GPUs)   gunicorn worker processes, one model copy each
    SAGEMAKER_MODEL_SERVER_TIMEOUT  60                      gunicorn worker timeout (s)
    SAGEMAKER_MAX_PAYLOAD_IN_MB     6                       request body limit in MiB (413 beyond); 0 = none
    HYPERPLANE_MAX_ROWS             500000                  rows one request may hold (413 beyond); 0 = none
    HYPERPLANE_MAX_LINE_BYTES       1048576                 bytes one CSV or JSON Lines line may hold (413
                                                            beyond); 0 = none (limits.py says why)
    LOG_LEVEL, SAGEMAKER_CONTAINER_LOG_LEVEL  INFO          name or number; LOG_LEVEL wins when both are set
    HYPERPLANE_LOG_PING             false                   also log one line per /ping
    SAGEMAKER_BATCH                 false                   a transform job: no newline after a response's
                                                            last CSV/JSON Lines record (codecs.encode)
    HYPERPLANE_IMAGE_ROLE           -                       `train` in the training image (Dockerfile)
    SAGEMAKER_PROGRAM               inference.py            the user's handler module (user_code.py)
    SAGEMAKER_SUBMIT_DIRECTORY      -                       a local folder searched first for it
    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT  application/json  handler mode: the response type for a missing
                                                            Accept or */*

Usable CPUs are the process's CPU affinity capped by the cgroup CPU quota; GPUs are counted through NVML
(never CUDA, so the master stays fork-safe) within CUDA_VISIBLE_DEVICES. Each worker runs one prediction
at a time (the preprocessing is Python and holds the GIL) with `torch_threads` intra-op threads, so that
workers x torch_threads does not exceed the CPUs.

    PYTHONPATH=. python -c "from container.serving.settings import ServingSettings; \
        print(ServingSettings.from_environ())"
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from container.paths import SageMakerPaths
from container.serving.user_code import UserCode, locate

DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 60
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_MAX_ROWS = 500_000       # a full 6 MiB mini-batch of rows of 13 bytes or more (used cars: ~90,000)
DEFAULT_MAX_LINE_BYTES = 1 << 20  # one record per line; a line of megabytes is abuse, not a record
DEFAULT_ACCEPT = "application/json"   # sagemaker-inference's default for SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
GRACEFUL_TIMEOUT_S = 25          # SageMaker sends SIGKILL 30 s after SIGTERM
KEEPALIVE_S = 60                 # SageMaker's front end reuses connections
THREADS_PER_WORKER = 8           # one computes, the others wait their turn (/ping has its own: worker.py)
PREDICTIONS_PER_WORKER = 1       # concurrent predictions in one worker (see the module docstring)
BATCH_PAYLOAD_BUDGET_MB = 100    # SageMaker: MaxConcurrentTransforms x MaxPayloadInMB <= 100
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")


class SettingsError(ValueError):
    """An environment variable has a value the server cannot use; the message names it."""


@dataclass(frozen=True)
class ServingSettings:
    model_dir: pathlib.Path
    readiness_dir: pathlib.Path       # one file per live worker; see readiness.py
    port: int = DEFAULT_PORT
    workers: int = 1
    threads: int = THREADS_PER_WORKER
    torch_threads: int = 1
    gpus: int = 0
    timeout_s: int = DEFAULT_TIMEOUT_S
    graceful_timeout_s: int = GRACEFUL_TIMEOUT_S
    keepalive_s: int = KEEPALIVE_S
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB
    max_rows: int = DEFAULT_MAX_ROWS                  # 0 = no limit
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES      # 0 = no limit
    log_level: int = logging.INFO
    log_ping: bool = False
    batch: bool = False               # a batch transform job (SageMaker sets SAGEMAKER_BATCH)
    image_role: str = "serve"
    user_code: UserCode | None = None          # handler mode when set (see user_code.py)
    code_dirs: tuple[pathlib.Path, ...] = ()   # where user code was looked for, for the start-up error
    default_accept: str = DEFAULT_ACCEPT

    @property
    def max_payload_bytes(self) -> int | None:
        """The request body limit in bytes (MiB, as SageMaker's 6 MiB = 6,291,456 bytes); None = no limit."""
        return self.max_payload_mb * 1024 * 1024 if self.max_payload_mb else None

    @property
    def max_concurrent_transforms(self) -> int:
        """Requests the server computes at once, capped so that it times MaxPayloadInMB stays <= 100."""
        planned = self.workers * PREDICTIONS_PER_WORKER
        if 0 < self.max_payload_mb <= BATCH_PAYLOAD_BUDGET_MB:
            planned = min(planned, BATCH_PAYLOAD_BUDGET_MB // self.max_payload_mb)
        return max(1, planned)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, *, cpus: int | None = None,
                     gpus: int | None = None) -> ServingSettings:
        """Reads and checks every variable; `cpus`/`gpus` replace detection (tests). SettingsError for a bad
        value; user_code.UserCodeError when SAGEMAKER_PROGRAM names a file found nowhere."""
        cpus = usable_cpus() if cpus is None else cpus
        gpus = visible_gpus(environ) if gpus is None else gpus
        workers = _positive_int(environ, "SAGEMAKER_MODEL_SERVER_WORKERS", max(cpus, gpus, 1))
        model_dir = SageMakerPaths.from_environ(environ).model_dir
        code = locate(environ, model_dir)
        return cls(
            model_dir=model_dir,
            readiness_dir=pathlib.Path(tempfile.gettempdir()) / f"hyperplane-readiness-{os.getpid()}",
            port=_port(environ),
            workers=workers,
            torch_threads=max(1, cpus // workers),
            gpus=gpus,
            timeout_s=_positive_int(environ, "SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S),
            max_payload_mb=_int(environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB, minimum=0),
            max_rows=_int(environ, "HYPERPLANE_MAX_ROWS", DEFAULT_MAX_ROWS, minimum=0),
            max_line_bytes=_int(environ, "HYPERPLANE_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES, minimum=0),
            log_level=_log_level(environ),
            log_ping=_flag(environ, "HYPERPLANE_LOG_PING"),
            batch=_flag(environ, "SAGEMAKER_BATCH"),
            image_role=environ.get("HYPERPLANE_IMAGE_ROLE", "").strip().lower() or "serve",
            user_code=code.found,
            code_dirs=code.folders,
            default_accept=_default_accept(environ),
        )


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _int(environ, name, default, minimum=1)


def _port(environ: Mapping[str, str]) -> int:
    port = _positive_int(environ, "SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)
    if port > 65535:
        raise SettingsError(f"SAGEMAKER_BIND_TO_PORT={port} is not a TCP port (1-65535)")
    safe_range = environ.get("SAGEMAKER_SAFE_PORT_RANGE", "").strip()
    if safe_range and environ.get("SAGEMAKER_BIND_TO_PORT", "").strip():
        low, high = _port_range(safe_range)
        if not low <= port <= high:
            raise SettingsError(f"SAGEMAKER_BIND_TO_PORT={port} lies outside "
                                f"SAGEMAKER_SAFE_PORT_RANGE={safe_range!r}")
    return port


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        bounds = int(low), int(high)
    except ValueError:
        bounds = (0, -1)
    if not sep or not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise SettingsError(f"SAGEMAKER_SAFE_PORT_RANGE={text!r} is not a range like '1111-2222'")
    return bounds


def _log_level(environ: Mapping[str, str]) -> int:
    for name in ("LOG_LEVEL", "SAGEMAKER_CONTAINER_LOG_LEVEL"):
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        if raw.isdigit():
            return int(raw)
        level = logging.getLevelNamesMapping().get(raw.upper())
        if level is None:
            raise SettingsError(f"{name}={raw!r} is not a log level (DEBUG, INFO, WARNING, ERROR or a "
                                "number)")
        return level
    return logging.INFO


def _default_accept(environ: Mapping[str, str]) -> str:
    name = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return DEFAULT_ACCEPT
    kind, slash, subtype = raw.partition("/")
    if not slash or not kind or not subtype or any(c in raw for c in "*,; "):
        raise SettingsError(f"{name}={raw!r} is not one media type such as application/json or text/csv")
    return raw


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def usable_cpus(cgroup_root: pathlib.Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (affinity), capped by the cgroup v2 or v1 CPU quota when there is one."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: pathlib.Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]        # cgroup v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct"):                    # cgroup v1
        try:
            quota_us = int((folder / "cpu.cfs_quota_us").read_text())
            period_us = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def visible_gpus(environ: Mapping[str, str] = os.environ,
                 device_count: Callable[[], int] | None = None) -> int:
    """NVIDIA GPUs this process may use: NVML's count, limited by CUDA_VISIBLE_DEVICES when set."""
    count = (device_count or nvml_device_count)()
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    entries = []
    for entry in visible.split(","):   # CUDA stops at the first invalid entry, e.g. "-1"
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return min(count, len(entries))


def nvml_device_count() -> int:
    """Asks NVML (the driver's management library), which unlike CUDA is safe before fork; 0 if absent."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()
