"""Spot-safe training in the training image: `docker kill -s TERM` (what StopTrainingJob and a spot
interruption send) mid-training stops the job within 30 s with the failure file and a checkpoint; the
same job started again on the same folder resumes from it and ends with exactly the model and metrics of
an uninterrupted run. The variants (hyperparameters, data, damaged files) are covered in-process by
tests/model/test_checkpoint.py and tests/training/test_train_entry.py."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import pytest
import torch

from model import artifact, checkpoint
from tests.container.docker import run_job, terminate_when_logged
from tests.jobs import CARS_HEADER, CARS_LINES, Job, lay_out_job

pytestmark = pytest.mark.docker
STOP_LIMIT_S = 30   # SageMaker's SIGKILL comes 120 s after SIGTERM; the issue asks for 30 s
# 300 cars, one small MLP with dropout, one row per step: 240 steps and about 0.1 s per epoch, so that 80
# epochs last several seconds and a SIGTERM sent after epoch 3 lands mid-training, most likely mid-epoch.
SPOT_JOB = Job(hyperparameters={"epochs": "80", "hidden_layers": "16", "ensemble_size": "1", "dropout": "0.1",
                                "batch_size": "1", "patience": "1000"},
               channels={"train": {"cars.csv": CARS_HEADER + "".join(CARS_LINES[:300])}})


@dataclass(frozen=True)
class Stopped:
    root: pathlib.Path
    exit_code: int
    seconds_to_exit: float
    logs: str


@pytest.fixture(scope="module")
def stopped(train_image: str, tmp_path_factory: pytest.TempPathFactory) -> Stopped:
    """The job, sent SIGTERM once it has logged epoch 3."""
    root = lay_out_job(tmp_path_factory.mktemp("spot-stopped"), SPOT_JOB)
    ended = terminate_when_logged(train_image, root, "epoch=3 ", limit_s=STOP_LIMIT_S)
    print(f"sigterm_to_exit_s={ended.seconds_to_exit:.2f}")   # docs/reliability.md quotes the median of a few runs
    return Stopped(root, ended.exit_code, ended.seconds_to_exit, ended.logs)


def test_sigterm_stops_within_30_s_with_the_failure_file_and_a_checkpoint(stopped: Stopped) -> None:
    assert stopped.seconds_to_exit < STOP_LIMIT_S
    assert stopped.exit_code == 143, stopped.logs[-3000:]
    reason = (stopped.root / "output/failure").read_text().splitlines()[0]
    assert reason.startswith("the training job was stopped (SIGTERM) "), reason
    assert reason.endswith("a checkpoint is in /opt/ml/checkpoints: start the job again with the same checkpoint "
                           "folder (checkpoint_s3_uri) to resume")
    assert [path.name for path in (stopped.root / "checkpoints").iterdir()] == [checkpoint.CHECKPOINT_NAME]
    assert not (stopped.root / "model" / artifact.ARTIFACT_NAME).exists()
    assert "epoch=80 " not in stopped.logs   # it did stop mid-training


def test_the_job_started_again_resumes_to_the_uninterrupted_model(train_image: str, stopped: Stopped,
                                                                   tmp_path: pathlib.Path) -> None:
    whole = lay_out_job(tmp_path / "uninterrupted", SPOT_JOB)
    uninterrupted = run_job(whole, image=train_image)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]

    (stopped.root / "output/failure").unlink()   # SageMaker gives every job a fresh output folder
    resumed = run_job(stopped.root, image=train_image)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from the checkpoint /opt/ml/checkpoints/hyperplane-checkpoint.pt, written " in resumed.stdout
    assert not (stopped.root / "output/failure").exists()

    expected, got = (json.loads((root / "output/data/metrics.json").read_text()) for root in (whole, stopped.root))
    assert set(got) == set(expected)
    for split in ("train", "validation"):
        for metric, value in expected[split].items():
            assert got[split][metric] == pytest.approx(value, rel=1e-6, abs=1e-6), (split, metric)
    assert (got["best_epoch"], got["epochs_run"]) == (expected["best_epoch"], expected["epochs_run"])
    ours, theirs = (artifact.load(root / "model").network.state_dict() for root in (whole, stopped.root))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert list((stopped.root / "checkpoints").iterdir()) == []   # removed once the model was written
