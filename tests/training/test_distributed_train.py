"""`train` as several processes on torch.distributed: two ranks on this machine, and hosts that never meet.

The two-rank job runs `train` with HYPERPLANE_PROCESSES_PER_HOST=2 (what a host with two GPUs gets), so
the process start, the rendezvous, gloo, the shared fit and rank 0's writing all run for real. The other
two jobs are two-host jobs in which the other host never comes: each process must fail within the
rendezvous timeout with a failure file that names the host it could not meet, not hang.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tests.jobs import FAST, SMALL_CARS, Job, lay_out_job
from tests.serving.process import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-c", "from container.train import main; main()"]


def run_train(job: pathlib.Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TRAIN, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(job),
                               "HYPERPLANE_MASTER_PORT": str(free_port()), **env})


def two_hosts(job: pathlib.Path, current: str) -> pathlib.Path:
    (job / "input/config/resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"}))
    return job


def test_two_processes_train_one_model_that_equals_the_single_process_one(tmp_path: pathlib.Path) -> None:
    hyperparameters = {**FAST, "epochs": "8", "hidden_layers": "16", "ensemble_size": "2"}
    single = lay_out_job(tmp_path / "single", Job(hyperparameters=hyperparameters))
    pair = lay_out_job(tmp_path / "pair", Job(hyperparameters=hyperparameters))
    assert run_train(single).returncode == 0
    result = run_train(pair, HYPERPLANE_PROCESSES_PER_HOST="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):   # every process says who it is first
        assert re.search(rf"hosts=algo-1 world_size=2 rank={rank} local_rank={rank} backend=gloo device=cpu",
                         result.stdout), result.stdout[-2000:]
    epochs = re.findall(r"^epoch=\d+ ", result.stdout, flags=re.MULTILINE)
    assert len(epochs) == 8, "rank 0 alone logs the epochs"
    ours = json.loads((pair / "output/data/metrics.json").read_text())
    theirs = json.loads((single / "output/data/metrics.json").read_text())
    assert ours["validation"]["rows"] == theirs["validation"]["rows"]
    assert ours["best_epoch"] == theirs["best_epoch"]
    for split in ("train", "validation"):
        assert ours[split]["rmse"] == pytest.approx(theirs[split]["rmse"], rel=0.01)
    assert sorted(p.name for p in (pair / "model").iterdir()) == sorted(p.name for p in (single / "model").iterdir())
    assert not (pair / "output/failure").exists()


def test_a_bad_value_in_the_data_fails_every_process_and_rank_0_reports_it(tmp_path: pathlib.Path) -> None:
    lines = SMALL_CARS.splitlines(keepends=True)
    lines[150] = lines[150].replace(",Diesel,", ",,", 1).replace("\n", ",extra\n")
    job = lay_out_job(tmp_path / "job", Job(channels={"train": {"cars.csv": "".join(lines)}}))
    started = time.monotonic()
    result = run_train(job, HYPERPLANE_PROCESSES_PER_HOST="2")
    assert result.returncode == 2
    assert time.monotonic() - started < 60
    failure = (job / "output/failure").read_text().splitlines()[0]
    assert "line 151" in failure and "expected 24 values, found 25" in failure, failure
    assert "(rank 0 writes the failure file)" in result.stdout


def test_a_host_that_cannot_reach_the_master_fails_in_bounded_time(tmp_path: pathlib.Path) -> None:
    job = two_hosts(lay_out_job(tmp_path / "job", Job()), current="algo-2")
    started = time.monotonic()
    result = run_train(job, timeout=60, HYPERPLANE_RENDEZVOUS_TIMEOUT_S="3")
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert elapsed < 30
    assert "hosts=algo-1,algo-2 world_size=2 rank=1 local_rank=0 backend=gloo" in result.stdout
    failure = (job / "output/failure").read_text().splitlines()[0]
    assert failure.startswith("algo-2 could not reach the master algo-1:"), failure
    assert "within 3 s" in failure


def test_a_master_whose_peer_never_arrives_fails_naming_it(tmp_path: pathlib.Path) -> None:
    job = two_hosts(lay_out_job(tmp_path / "job", Job()), current="algo-1")
    started = time.monotonic()
    result = run_train(job, timeout=60, HYPERPLANE_RENDEZVOUS_TIMEOUT_S="3")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert time.monotonic() - started < 30
    failure = (job / "output/failure").read_text().splitlines()[0]
    assert failure.startswith("algo-2 did not join the training within 3 s"), failure
    assert "1 of 2 processes arrived" in failure


def test_sigterm_stops_every_process_at_one_step_and_the_restart_resumes_to_the_same_model(
        tmp_path: pathlib.Path) -> None:
    hyperparameters = {**FAST, "epochs": "40", "patience": "40", "hidden_layers": "16", "ensemble_size": "2",
                       "checkpoint_epochs": "1000"}
    whole = lay_out_job(tmp_path / "whole", Job(hyperparameters=hyperparameters))
    stopped = lay_out_job(tmp_path / "stopped", Job(hyperparameters=hyperparameters))
    assert run_train(whole, HYPERPLANE_PROCESSES_PER_HOST="2").returncode == 0
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(stopped), "HYPERPLANE_MASTER_PORT": str(free_port()),
           "HYPERPLANE_PROCESSES_PER_HOST": "2"}
    process = subprocess.Popen(TRAIN, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    output = []
    for line in process.stdout:   # rank 0's process is the one docker stop signals
        output.append(line)
        if line.startswith("epoch=3 "):
            process.send_signal(15)
            break
    output.extend(process.stdout)
    assert process.wait(timeout=60) == 143, "".join(output)[-3000:]
    failure = (stopped / "output/failure").read_text().splitlines()[0]
    assert failure.startswith("the training job was stopped (SIGTERM) "), failure
    assert "a checkpoint is in" in failure
    assert "(rank 0 writes the failure file)" in "".join(output)   # rank 1 stopped at the same step
    resumed = run_train(stopped, HYPERPLANE_PROCESSES_PER_HOST="2")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from the checkpoint" in resumed.stdout
    assert (json.loads((stopped / "output/data/metrics.json").read_text())
            == json.loads((whole / "output/data/metrics.json").read_text()))


def test_a_process_lost_mid_training_fails_the_others_with_a_clear_failure(tmp_path: pathlib.Path) -> None:
    job = lay_out_job(tmp_path / "job", Job(hyperparameters={**FAST, "epochs": "300", "patience": "300"}))
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job), "HYPERPLANE_MASTER_PORT": str(free_port()),
           "HYPERPLANE_PROCESSES_PER_HOST": "2", "HYPERPLANE_COLLECTIVE_TIMEOUT_S": "30"}
    process = subprocess.Popen(TRAIN, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("epoch=3 "):   # rank 1 is a child of rank 0's process: end it the hard way
            rank_1 = subprocess.run(["pgrep", "-f", "-P", str(process.pid), "multiprocessing.spawn"],
                                    capture_output=True, text=True).stdout.split()
            assert rank_1, "no child process found"
            for pid in rank_1:
                os.kill(int(pid), 9)
            break
    output.extend(process.stdout)
    assert process.wait(timeout=90) == 2, "".join(output)[-3000:]
    failure = (job / "output/failure").read_text().splitlines()[0]
    assert failure.startswith("algo-1 process 0 lost contact with the other processes during "), failure
    assert "see the other hosts' logs" in failure


def test_two_processes_stream_the_data_and_write_one_model(tmp_path: pathlib.Path) -> None:
    hyperparameters = {**FAST, "data_loading": "stream", "hidden_layers": "", "target_transform": "none"}
    job = lay_out_job(tmp_path / "job", Job(hyperparameters=hyperparameters))
    single = lay_out_job(tmp_path / "single", Job(hyperparameters=hyperparameters))
    assert run_train(single).returncode == 0
    result = run_train(job, HYPERPLANE_PROCESSES_PER_HOST="2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("streaming the channels from disk (data_loading=stream)") == 2   # both ranks
    ours = json.loads((job / "output/data/metrics.json").read_text())
    theirs = json.loads((single / "output/data/metrics.json").read_text())
    assert ours["train"]["rows"] + ours["validation"]["rows"] == 200
    # the linear model is least squares on the same held-out split, however the rows are shared
    assert ours["train"]["rmse"] == pytest.approx(theirs["train"]["rmse"], rel=1e-6)
