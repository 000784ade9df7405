"""Script mode: the user's own training entry point, run through sagemaker-training exactly where AWS's
framework containers run it, with what the toolkit gets wrong fixed around it (never by forking it).

    entry = find_entry_point(os.environ, hyperparameters)    # None: the built-in regressor trains
    exit_code = run_entry_point(paths, entry, hyperparameters)

The toolkit resolves the code (`sagemaker_submit_directory`: a folder, a tar.gz or S3, else /opt/ml/code,
where SDK local mode mounts `source_dir`), installs `requirements.txt` or a `setup.py` package, passes the
hyperparameters as `--key value` and every SM_* variable, and runs `.py`, `.sh` or other entry points. It
is imported only here, only when an entry point is named: its import creates folders and its Environment
runs nvidia-smi, none of which the built-in path may do. Around it:
- SIGTERM reaches the script's process group (the toolkit forwards nothing), which then has
  `HYPERPLANE_STOP_TIMEOUT_S` (default 100 s) to exit before it is killed, inside the 120 s SageMaker
  waits before its SIGKILL, so `train` itself always gets to write the failure file;
- the script's exit code is kept (the toolkit turns every failure into 1); death by signal N is 128 + N;
- output/failure starts with the script's exception line and holds the end of its traceback (the
  toolkit's plain runner writes an empty message);
- hyperparameters whose name looks secret (password, token, secret, key) are masked in every log line
  (the toolkit logs every hyperparameter and SM_* variable before it starts the script);
- `distribution={"torch_distributed": {"enabled": True}}` (sagemaker_torch_distributed_enabled) runs the
  script under torchrun, one process per GPU (else one; HYPERPLANE_PROCESSES_PER_HOST overrides) on every
  host, master on the first host at port 7777, through the toolkit's own TorchDistributedRunner but with
  the network interface checked (container/cluster.py) and torchrun taken from this Python; the other
  distribution options (mpi, smdistributed, ...) need launchers the image lacks and fail the job instead
  of running a single process;
- a single-host job skips the toolkit's DNS wait for the hosts (up to 15 minutes of retries for a name
  like algo-1 that `docker run` never defines).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from container.errors import JobError
from container.failure import report_failure
from container.hyperparameters import decode
from container.paths import SageMakerPaths

log = logging.getLogger("hyperplane.train")

DEFAULT_STOP_TIMEOUT_S = 100
STDERR_TAIL_BYTES = 64 * 1024
FAILURE_DETAIL_LINES = 40
SECRET_NAME = re.compile(r"password|passwd|token|secret|key|credential", re.IGNORECASE)
MIN_MASKED_LENGTH = 3   # shorter values ("1", "no") would mask unrelated text all over the log
TORCH_DISTRIBUTED_FLAG = "sagemaker_torch_distributed_enabled"
# Hyperparameters the SDK sets for the other `distribution=` options: what hyperplane's script mode cannot run.
DISTRIBUTION_FLAGS = {
    "sagemaker_mpi_enabled": "mpi",
    "sagemaker_distributed_dataparallel_enabled": "smdistributed dataparallel",
    "sagemaker_pytorch_xla_multi_worker_enabled": "pytorchxla",
    "sagemaker_parameter_server_enabled": "parameter_server",
    "sagemaker_multi_worker_mirrored_strategy_enabled": "multi_worker_mirrored_strategy",
}
DEFAULT_RESOURCE_CONFIG = {"current_host": "algo-1", "hosts": ["algo-1"]}


@dataclass(frozen=True)
class EntryPoint:
    program: str     # the script, module or command, relative to the code folder
    named_by: str    # where the name came from, for the first log line


def find_entry_point(environ: Mapping[str, str], hyperparameters: Mapping[str, Any]) -> EntryPoint | None:
    """The user's entry point, as the toolkit finds it: SAGEMAKER_PROGRAM, else `sagemaker_program`."""
    program = environ.get("SAGEMAKER_PROGRAM", "").strip()
    if program:
        return EntryPoint(program, "the SAGEMAKER_PROGRAM environment variable")
    program = str(decode(hyperparameters.get("sagemaker_program") or "")).strip()
    if program:
        return EntryPoint(program, "the sagemaker_program hyperparameter")
    return None


def run_entry_point(paths: SageMakerPaths, entry: EntryPoint, hyperparameters: Mapping[str, Any],
                    environ: Mapping[str, str] = os.environ) -> int:
    """Runs the entry point to its end; returns its exit code, having written output/failure if not 0.
    Raises JobError for what is wrong before the script runs (configuration, code location, installs)."""
    _refuse_distribution(hyperparameters)
    _ensure_config_files(paths)
    mask = SecretMask(secret_values(hyperparameters))
    for handler in logging.getLogger().handlers:
        handler.addFilter(mask)

    # The toolkit reads SAGEMAKER_BASE_DIR at import: it must agree with `paths`.
    os.environ["SAGEMAKER_BASE_DIR"] = str(paths.root)
    from sagemaker_training import entry_point, environment, errors

    env = environment.Environment()
    if len(env.hosts) == 1:
        os.environ["SM_STUDIO_LOCAL_MODE"] = "true"   # the toolkit's switch for skipping its DNS wait
    _check_code_location(env.module_dir, entry.program)
    runner = _torchrun(env, environ) if _enabled(hyperparameters.get(TORCH_DISTRIBUTED_FLAG)) else None
    timeout_s = _stop_timeout(environ)
    with StderrTail() as tail, StopForwarding(timeout_s) as stop:
        try:
            if runner is not None:
                entry_point.run(uri=env.module_dir, user_entry_point=env.user_entry_point, args=env.to_cmd_args(),
                                env_vars=env.to_env_vars(), capture_error=False, runner_type=runner)
            else:
                entry_point.run(uri=env.module_dir, user_entry_point=env.user_entry_point,
                                args=env.to_cmd_args(), env_vars=env.to_env_vars(), capture_error=False)
            code = 0
        except (errors.InstallModuleError, errors.InstallRequirementsError) as error:
            raise JobError(f"installing the dependencies of {entry.program} failed (exit code "
                           f"{error.return_code}); see the pip output above") from None
        except errors.ExecuteUserScriptError as error:
            code = exit_code(error.return_code)
        except errors.ClientError as error:
            raise JobError(str(error)) from None
    if code:
        reason, details = describe_failure(entry.program, code, tail.text(), stopped=stop.stopped)
        report_failure(paths, mask.apply(reason), mask.apply(details))
    else:
        log.info("%s finished%s", entry.program, " after SIGTERM" if stop.stopped else "")
    return code


def exit_code(return_code: object) -> int:
    """The toolkit's return code (a string; negative when a signal ended the process) as a shell would."""
    try:
        code = int(str(return_code))
    except ValueError:
        return 1
    return 128 - code if code < 0 else code


def describe_failure(program: str, code: int, stderr: str, *, stopped: bool = False) -> tuple[str, str]:
    """(first line of output/failure, details): the script's exception line and the end of its traceback,
    or, without a traceback (a shell script, a crash), the exit code and the end of its error output."""
    exited = f"{program} exited with code {code}"
    if stopped:
        exited += " after SIGTERM (the training job was stopped)"
    marker = stderr.rfind("Traceback (most recent call last):")
    lines = (stderr[marker:] if marker >= 0 else stderr).rstrip().splitlines()
    exception_line = next((line for line in reversed(lines) if line.strip() and not line[0].isspace()), "") \
        if marker >= 0 else ""
    reason = f"the training job was stopped (SIGTERM); {exited}" if stopped else (exception_line or exited)
    shown = "\n".join(lines[-FAILURE_DETAIL_LINES:])
    kind = "traceback" if marker >= 0 else "error output"
    details = f"{exited}. The end of its {kind}:\n{shown}\n" if shown else f"{exited}; it wrote no error output.\n"
    return reason, details


def secret_values(hyperparameters: Mapping[str, Any]) -> set[str]:
    """The values to mask: those of hyperparameters whose name looks secret, raw and decoded."""
    values: set[str] = set()
    for name, raw in hyperparameters.items():
        if name.startswith("sagemaker_") or not SECRET_NAME.search(name):
            continue
        decoded = decode(raw)
        for form in (raw, decoded, json.dumps(decoded), json.dumps(raw)):
            text = form if isinstance(form, str) else json.dumps(form)
            for candidate in (text, text.strip('"')):
                if len(candidate) >= MIN_MASKED_LENGTH:
                    values.add(candidate)
    return values


class SecretMask(logging.Filter):
    """A handler filter that replaces secret values in every record it passes with ****."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        # longest first: a value that contains another is masked whole
        self.pattern = re.compile("|".join(map(re.escape, sorted(secrets, key=len, reverse=True)))) \
            if secrets else None

    def apply(self, text: str) -> str:
        return self.pattern.sub("****", text) if self.pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern:
            message = record.getMessage()
            masked = self.apply(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


class StderrTail:
    """Tees file descriptor 2, which the entry point inherits, to the real stderr and keeps its last bytes:
    the script's traceback for the failure file, without capturing (and delaying) its output."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self._tail = bytearray()

    def __enter__(self) -> StderrTail:
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._copy, args=(read_fd,), name="stderr-tee", daemon=True)
        self._thread.start()
        return self

    def _copy(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._saved, view):]
                self._tail += chunk
                del self._tail[:-self.limit]

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)          # drops this process's write end of the pipe
        # A grandchild still holding the pipe must not keep `train` from finishing.
        self._thread.join(timeout=5)

    def text(self) -> str:
        return self._tail.decode("utf-8", "replace")


class StopForwarding:
    """While active, SIGTERM is passed to this process group (the entry point and whatever it started),
    and whatever of it is still running `timeout_s` later is killed."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.stopped = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> StopForwarding:
        if os.getpgrp() != os.getpid():
            os.setpgid(0, 0)   # a group of our own, so that killpg reaches the script's tree and nothing else
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # killpg below reaches this process too
        self.stopped = True
        log.warning("SIGTERM: passing it to the entry point; whatever still runs in %g s is killed",
                    self.timeout_s)
        os.killpg(os.getpgrp(), signal.SIGTERM)
        self._timer = threading.Timer(self.timeout_s, self._kill_children)
        self._timer.daemon = True
        self._timer.start()

    def _kill_children(self) -> None:
        import psutil  # a sagemaker-training dependency, only in script mode

        children = psutil.Process().children(recursive=True)
        log.warning("the entry point did not exit within %g s of SIGTERM; killing %d process(es)",
                    self.timeout_s, len(children))
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):   # it may have exited meanwhile
                child.kill()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        signal.signal(signal.SIGTERM, self._previous)


def _enabled(value: Any) -> bool:
    decoded = decode(value if value is not None else False)
    return decoded is True or str(decoded).lower() == "true"


def _refuse_distribution(hyperparameters: Mapping[str, Any]) -> None:
    for key, name in DISTRIBUTION_FLAGS.items():
        if _enabled(hyperparameters.get(key)):
            raise JobError(f"distribution {name!r} ({key}) is not supported by hyperplane's script mode: its "
                           "launcher is not in the image, and the entry point would run as a single process per "
                           "host. Use distribution={'torch_distributed': {'enabled': True}} (torchrun), or start "
                           "the processes from your own entry point")


def _torchrun(env: Any, environ: Mapping[str, str]) -> Any:
    """The toolkit's TorchDistributedRunner, with what it gets wrong here put right: the interface it
    exports must exist in this container (SDK v3 local mode names `ethwe`), gloo needs it too on CPUs, and
    `torchrun` may not be on PATH (it is this Python's torch.distributed.run)."""
    from sagemaker_training import torch_distributed

    from container.cluster import Cluster

    cluster = Cluster.plan({"hosts": list(env.hosts), "current_host": env.current_host,
                            "network_interface_name": env.network_interface_name}, environ, int(env.num_gpus))
    if cluster.interface is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", cluster.interface)

    class Runner(torch_distributed.TorchDistributedRunner):  # type: ignore[misc]
        def _create_command(self) -> list[str]:
            command: list[str] = super()._create_command()
            if command and command[0] == torch_distributed.TORCH_DISTRIBUTED_MODULE:
                command[:1] = [sys.executable, "-m", "torch.distributed.run"]
            return command

    log.info("running the entry point with torchrun: %d host(s) x %d process(es), master %s:%s, interface %s",
             len(cluster.hosts), cluster.processes_per_host, cluster.hosts[0], torch_distributed.MASTER_PORT,
             cluster.interface or "default")
    return Runner(env.user_entry_point, env.to_cmd_args(), env.to_env_vars(), cluster.processes_per_host,
                  cluster.hosts[0], list(cluster.hosts), cluster.current_host,
                  cluster.interface or env.network_interface_name, env.current_instance_type)


def _ensure_config_files(paths: SageMakerPaths) -> None:
    """The toolkit reads all three config files and fails on a missing one; SageMaker and the SDK always
    write them, a plain `docker run` may not. Missing ones get what a single-host job would have."""
    defaults: dict[Any, Any] = {paths.hyperparameters: {}, paths.input_data_config: {},
                                paths.resource_config: DEFAULT_RESOURCE_CONFIG}
    for path, content in defaults.items():
        if path.exists():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
        except OSError as error:
            raise JobError(f"{path} is missing and cannot be created ({error.strerror}); script mode needs "
                           "it, as SageMaker writes it") from None
        log.info("%s was missing; wrote %s", path, json.dumps(content))


def _check_code_location(module_dir: str, program: str) -> None:
    if module_dir.startswith("s3://") or os.path.exists(module_dir):
        return
    raise JobError(f"the code for {program} is not there: sagemaker_submit_directory is {module_dir}, which does "
                   "not exist (give source_dir to the SDK, or mount the code at /opt/ml/code)")


def _stop_timeout(environ: Mapping[str, str]) -> float:
    raw = environ.get("HYPERPLANE_STOP_TIMEOUT_S", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_STOP_TIMEOUT_S
    except ValueError:
        raise JobError(f"HYPERPLANE_STOP_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise JobError(f"HYPERPLANE_STOP_TIMEOUT_S={raw!r} must be positive")
    return value
