"""Script mode outside a container: `train` runs the user's entry point through sagemaker-training.

Each test runs `train` as its own process (as the image does): the toolkit fixes its paths when it is
imported, so jobs with different SAGEMAKER_BASE_DIRs cannot share one interpreter. The image tests
(tests/container/test_script_mode_image.py) repeat the main cases under docker.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping

import pytest

from container.script_mode import describe_failure, exit_code, find_entry_point, secret_values
from tests.jobs import SMALL_CARS, Job, lay_out_job

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "script-mode"
TRAIN = [sys.executable, "-c", "from container.train import main; main()"]

DUMP_ENV = """
import json, os, pathlib, sys
seen = {"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("SM_")}}
pathlib.Path(os.environ["SM_MODEL_DIR"], "seen.json").write_text(json.dumps(seen))
"""
RAISES = """
def check(rate):
    if rate <= 0:
        raise ValueError(f"learning rate must be positive, got {rate}")
check(-1.0)
"""
ON_SIGTERM = """
import os, pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path(os.environ["SM_MODEL_DIR"], "handled.txt").write_text(str(signum))
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("script running", flush=True)
time.sleep(60)
"""
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("script running", flush=True)
time.sleep(60)
"""


def script_job(root: pathlib.Path, code: Mapping[str, str], hyperparameters: Mapping[str, str] | None = None,
               program: str = "train.py", *, submit_dir: bool = True) -> pathlib.Path:
    """A job whose code lies in root/src, named by the hyperparameters as the SDK names it (JSON strings)."""
    source = root / "src"
    source.mkdir(parents=True)
    for name, text in code.items():
        (source / name).write_text(text)
    sdk = {"sagemaker_program": json.dumps(program)}
    if submit_dir:
        sdk["sagemaker_submit_directory"] = json.dumps(str(source))
    return lay_out_job(root / "ml", Job(hyperparameters={**sdk, **(hyperparameters or {})},
                                        channels={"train": {"cars.csv": SMALL_CARS}}))


def run_train(job: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TRAIN, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), **env})


def first_log_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[0]


def test_the_script_sees_the_hyperparameters_as_arguments_and_every_sm_variable(tmp_path: pathlib.Path) -> None:
    job = script_job(tmp_path, {"train.py": DUMP_ENV}, {"epochs": "7", "learning_rate": "0.5"})
    result = run_train(job)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training with the user's entry point train.py (named by the sagemaker_program hyperparameter)" \
        in first_log_line(result)
    seen = json.loads((job / "model/seen.json").read_text())
    assert seen["argv"] == ["--epochs", "7", "--learning_rate", "0.5"]
    env = seen["env"]
    assert env["SM_MODEL_DIR"] == str(job / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(job / "input/data/train")
    assert json.loads(env["SM_CHANNELS"]) == ["train"]
    assert json.loads(env["SM_HPS"]) == {"epochs": 7, "learning_rate": 0.5}
    assert env["SM_HP_EPOCHS"] == "7"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"] and env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_NUM_GPUS"] == "0" and int(env["SM_NUM_CPUS"]) >= 1
    assert env["SM_OUTPUT_DATA_DIR"] == str(job / "output/data")
    assert not (job / "output/failure").exists()


def test_the_example_trains_its_own_model(tmp_path: pathlib.Path) -> None:
    code = {name: (EXAMPLE / name).read_text() for name in ("train.py", "inference.py")}
    job = script_job(tmp_path, code, {"epochs": "60"})
    result = run_train(job)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train_rmse=" in result.stdout
    assert (job / "model/model.pt").is_file() and not (job / "model/hyperplane-regressor.pt").exists()
    assert json.loads((job / "output/data/metrics.json").read_text())["epochs"] == 60


def test_sagemaker_program_in_the_environment_and_code_in_opt_ml_code(tmp_path: pathlib.Path) -> None:
    job = lay_out_job(tmp_path, Job(hyperparameters={"epochs": "3"}))
    (job / "code").mkdir()
    (job / "code/fit.py").write_text(DUMP_ENV)
    result = run_train(job, SAGEMAKER_PROGRAM="fit.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fit.py (named by the SAGEMAKER_PROGRAM environment variable)" in first_log_line(result)
    assert json.loads((job / "model/seen.json").read_text())["argv"] == ["--epochs", "3"]


def test_code_from_a_tarball_and_a_shell_entry_point(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.sh").write_text('#!/bin/sh\necho "args: $*" > "$SM_MODEL_DIR/sh.txt"\n')
    with tarfile.open(tmp_path / "sourcedir.tar.gz", "w:gz") as tar:
        tar.add(source / "train.sh", arcname="train.sh")
    job = lay_out_job(tmp_path / "ml", Job(hyperparameters={
        "sagemaker_program": '"train.sh"', "sagemaker_submit_directory": json.dumps(str(tmp_path / "sourcedir.tar.gz")),
        "epochs": "2"}))
    result = run_train(job)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (job / "model/sh.txt").read_text() == "args: --epochs 2\n"


def test_without_an_entry_point_the_builtin_regressor_trains_and_the_toolkit_stays_out(
        tmp_path: pathlib.Path) -> None:
    """No sagemaker_training import, no folders under ~, no nvidia-smi: the built-in path is as before."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    marker = tmp_path / "nvidia-smi-was-called"
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    probe = [sys.executable, "-c", "import sys; from container.train import main\n"
             "try:\n    main()\nfinally:\n    print('toolkit imported:', 'sagemaker_training' in sys.modules)"]
    job = lay_out_job(tmp_path / "ml", Job(hyperparameters={"epochs": "2", "hidden_layers": ""}))
    result = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), **env})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training the built-in regressor: no entry point is named" in first_log_line(result)
    assert "toolkit imported: False" in result.stdout
    assert (job / "model/hyperplane-regressor.pt").is_file()
    assert list(home.iterdir()) == [] and not marker.exists()

    # The same probe in script mode does call the toolkit, so the assertions above can fail.
    job = script_job(tmp_path / "script", {"train.py": DUMP_ENV})
    result = subprocess.run(probe, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), **env})
    assert "toolkit imported: True" in result.stdout and marker.exists()


def test_a_failing_script_keeps_its_exit_code_and_its_exception_line_leads_the_failure_file(
        tmp_path: pathlib.Path) -> None:
    job = script_job(tmp_path, {"train.py": RAISES})
    result = run_train(job)
    assert result.returncode == 1
    failure = (job / "output/failure").read_text()
    assert failure.splitlines()[0] == "ValueError: learning rate must be positive, got -1.0"
    assert "train.py exited with code 1" in failure
    assert "Traceback (most recent call last):" in failure and "in check" in failure

    job = script_job(tmp_path / "exit7", {"train.py": "import sys\nprint('giving up', file=sys.stderr)\nsys.exit(7)\n"})
    result = run_train(job)
    assert result.returncode == 7
    failure = (job / "output/failure").read_text()
    assert failure.splitlines()[0] == "train.py exited with code 7" and "giving up" in failure


def test_secret_hyperparameters_never_reach_the_log(tmp_path: pathlib.Path) -> None:
    secrets = {"db_password": '"hunter2-pw"', "api_token": '"tok-123456"', "aws_secret": "s3cr3t",
               "api_key": '"k-987"'}
    job = script_job(tmp_path, {"train.py": DUMP_ENV}, {**secrets, "epochs": "2"})
    result = run_train(job)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "SM_HPS=" in log and "****" in log   # the toolkit did log the hyperparameters, masked
    for value in ("hunter2-pw", "tok-123456", "s3cr3t", "k-987"):
        assert value not in log
    assert '"epochs": 2' in log                 # other hyperparameters are still shown
    seen = json.loads((job / "model/seen.json").read_text())   # the script itself gets the real values
    assert "--db_password" in seen["argv"] and "hunter2-pw" in seen["argv"]


DDP_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
if dist.get_rank() == 0:
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "ddp.json"), "w") as f:
        json.dump({"world": dist.get_world_size(), "sum": float(total), "argv": sys.argv[1:]}, f)
dist.destroy_process_group()
"""


def test_torch_distributed_runs_the_script_under_torchrun_one_process_per_slot(tmp_path: pathlib.Path) -> None:
    """distribution={"torch_distributed": ...}: torchrun starts the processes (two here, as on a host with
    two GPUs); they find each other from torchrun's environment and all-reduce."""
    job = script_job(tmp_path, {"train.py": DDP_SCRIPT}, {"sagemaker_torch_distributed_enabled": "true",
                                                         "epochs": "3"})
    result = run_train(job, HYPERPLANE_PROCESSES_PER_HOST="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "running the entry point with torchrun: 1 host(s) x 2 process(es)" in result.stdout + result.stderr
    seen = json.loads((job / "model/ddp.json").read_text())
    assert seen["world"] == 2 and seen["sum"] == 3.0
    assert seen["argv"] == ["--epochs", "3"]


def test_other_distribution_options_fail_the_job_instead_of_running_one_process(tmp_path: pathlib.Path) -> None:
    job = script_job(tmp_path, {"train.py": DUMP_ENV}, {"sagemaker_mpi_enabled": "true"})
    result = run_train(job)
    assert result.returncode == 2
    failure = (job / "output/failure").read_text()
    assert failure.startswith("distribution 'mpi' (sagemaker_mpi_enabled) is not supported by hyperplane's script "
                              "mode"), failure
    assert "torch_distributed" in failure
    assert not (job / "model/seen.json").exists()


def test_a_missing_code_folder_is_named(tmp_path: pathlib.Path) -> None:
    job = lay_out_job(tmp_path, Job(hyperparameters={"sagemaker_program": '"train.py"',
                                                     "sagemaker_submit_directory": '"/nowhere/src"'}))
    result = run_train(job)
    assert result.returncode == 2
    assert "sagemaker_submit_directory is /nowhere/src, which does not exist" in (job / "output/failure").read_text()


def _start(job: pathlib.Path, **env: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(TRAIN, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), **env})
    assert process.stdout is not None
    for line in process.stdout:   # wait until the script itself runs
        if "script running" in line:
            return process
    raise AssertionError(f"the script never started (exit code {process.wait()})")


def test_sigterm_reaches_the_script_and_train_reports_the_stop(tmp_path: pathlib.Path) -> None:
    job = script_job(tmp_path, {"train.py": ON_SIGTERM})
    process = _start(job)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    assert time.monotonic() - started < 10
    assert (job / "model/handled.txt").read_text() == str(int(signal.SIGTERM))
    failure = (job / "output/failure").read_text()
    assert failure.startswith("the training job was stopped (SIGTERM); train.py exited with code 143")


def test_a_script_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: pathlib.Path) -> None:
    job = script_job(tmp_path, {"train.py": IGNORES_SIGTERM})
    process = _start(job, HYPERPLANE_STOP_TIMEOUT_S="2")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGKILL
    assert 2 <= time.monotonic() - started < 15
    assert "stopped (SIGTERM)" in (job / "output/failure").read_text()


@pytest.mark.parametrize(("environ", "hyperparameters", "expected"), [
    ({}, {}, None),
    ({"SAGEMAKER_PROGRAM": "a.py"}, {"sagemaker_program": '"b.py"'}, "a.py"),
    ({}, {"sagemaker_program": '"b.py"'}, "b.py"),
    ({}, {"sagemaker_program": "b.py"}, "b.py"),
    ({"SAGEMAKER_PROGRAM": " "}, {"sagemaker_program": '""'}, None),
])
def test_which_entry_point_is_named(environ: dict[str, str], hyperparameters: dict[str, str],
                                    expected: str | None) -> None:
    entry = find_entry_point(environ, hyperparameters)
    assert (entry.program if entry else None) == expected


def test_exit_codes_and_failure_descriptions() -> None:
    assert (exit_code("7"), exit_code("-15"), exit_code("-9"), exit_code("None")) == (7, 143, 137, 1)
    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'\n\nDuring handling of "
               "the above exception, another exception occurred:\n\nTraceback (most recent call last):\n"
               "  File \"a.py\", line 3, in <module>\nRuntimeError: no x\n")
    reason, details = describe_failure("a.py", 1, "noise\n" + chained)
    assert reason == "RuntimeError: no x" and details.endswith("RuntimeError: no x\n")
    reason, _ = describe_failure("a.sh", 3, "")
    assert reason == "a.sh exited with code 3"
    assert secret_values({"api_key": '"abc"', "epochs": "5", "sagemaker_program": '"t.py"'}) >= {"abc", '"abc"'}
    assert "5" not in secret_values({"api_key": "5"})
