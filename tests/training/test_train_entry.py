"""The `train` entry point in-process, on temporary /opt/ml trees (the image tests repeat this for real)."""

import gzip
import itertools
import json
import logging
import os
import pathlib
import signal

import numpy as np
import pytest
import torch

from container.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR
from container.paths import SageMakerPaths
from container.stopping import EXIT_STOPPED
from container.train import run
from model import artifact, checkpoint, training
from tests.conftest import read_cars
from tests.jobs import CARS_HEADER, CARS_LINES, FAILURE_CASES, FAST, SMALL_CARS, Job, lay_out_job


def test_a_job_writes_artifact_metrics_and_epoch_lines(tmp_path: pathlib.Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    job = Job(channels={"train": {"a.csv": SMALL_CARS},
                        "test": {"t.csv.gz": gzip.compress((CARS_HEADER + "".join(CARS_LINES[300:350])).encode())}})
    assert run(SageMakerPaths(lay_out_job(tmp_path, job))) == 0
    out = capsys.readouterr().out
    assert "epoch=1 train_loss=" in out and "validation_rmse=" in out
    assert "test_rmse=" in out
    metrics = json.loads((tmp_path / "output/data/metrics.json").read_text())
    assert set(metrics) >= {"train", "validation", "test", "best_epoch"}
    assert metrics["test"]["rows"] == 50
    regressor = artifact.load(tmp_path / "model")
    assert regressor.feature_names[:3] == ["Age_08_04", "KM", "Fuel_Type"]
    assert not (tmp_path / "output/failure").exists()
    assert regressor.predict(read_cars(3).without("Price")).shape == (3,)


def test_without_config_files_the_channel_folders_are_used(tmp_path: pathlib.Path) -> None:
    lay_out_job(tmp_path, Job())
    for name in ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"):
        (tmp_path / "input/config" / name).unlink()
    (tmp_path / "input/config/hyperparameters.json").write_text('{"epochs": "2", "hidden_layers": ""}')
    assert run(SageMakerPaths(tmp_path)) == 0
    assert (tmp_path / "model" / artifact.ARTIFACT_NAME).is_file()


@pytest.mark.parametrize("case", FAILURE_CASES)
def test_failures_name_their_cause(tmp_path: pathlib.Path, case: str) -> None:
    job, fragments = FAILURE_CASES[case]
    assert run(SageMakerPaths(lay_out_job(tmp_path, job))) == EXIT_USER_ERROR
    first_line = (tmp_path / "output/failure").read_text().splitlines()[0]
    for fragment in fragments:
        assert fragment in first_line


def test_a_bug_reports_its_traceback(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("container.train.fit", explode)
    assert run(SageMakerPaths(lay_out_job(tmp_path, Job()))) == EXIT_INTERNAL_ERROR
    text = (tmp_path / "output/failure").read_text()
    assert text.startswith("Unexpected error (ZeroDivisionError: boom)")
    assert "Traceback (most recent call last)" in text


def test_missing_feature_values_are_imputed_not_fatal(tmp_path: pathlib.Path) -> None:
    lines = SMALL_CARS.splitlines(keepends=True)
    holes = [",".join("" if i in (2, 6) else c for i, c in enumerate(line.split(","))) for line in lines[1:20]]
    job = Job(channels={"train": {"cars.csv": lines[0] + "".join(holes) + "".join(lines[20:])}})
    assert run(SageMakerPaths(lay_out_job(tmp_path, job))) == 0
    regressor = artifact.load(tmp_path / "model")
    assert np.isfinite(regressor.predict(read_cars(5).without("Price"))).all()


# Spot-safe training: SIGTERM stops the job with a checkpoint, a job started again resumes from it.
SPOT = {**FAST, "epochs": "6", "dropout": "0.2", "batch_size": "32"}   # 160 training rows: 5 steps per epoch


def sigterm_before_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Sends this process SIGTERM during optimiser step `step` (1-based), as docker stop would."""
    calls = itertools.count(1)
    real = training._member_loss

    def loss_then_signal(outputs: torch.Tensor, y: torch.Tensor, rows: int) -> torch.Tensor:
        if next(calls) == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(outputs, y, rows)

    monkeypatch.setattr(training, "_member_loss", loss_then_signal)


def test_sigterm_stops_with_a_checkpoint_and_the_job_started_again_resumes_to_the_same_model(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    whole, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    assert run(SageMakerPaths(lay_out_job(whole, Job(hyperparameters=SPOT)))) == 0
    handler = signal.getsignal(signal.SIGTERM)

    sigterm_before_step(monkeypatch, 8)   # epoch 2, batch 3
    assert run(SageMakerPaths(lay_out_job(stopped, Job(hyperparameters=SPOT)))) == EXIT_STOPPED == 143
    assert (stopped / "output/failure").read_text().splitlines()[0] == (
        f"the training job was stopped (SIGTERM) at epoch 2, batch 3; a checkpoint is in {stopped}/checkpoints: "
        "start the job again with the same checkpoint folder (checkpoint_s3_uri) to resume")
    assert os.listdir(stopped / "checkpoints") == [checkpoint.CHECKPOINT_NAME]
    assert not (stopped / "model" / artifact.ARTIFACT_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) == handler   # the built-in path leaves no handler behind

    monkeypatch.undo()
    (stopped / "output/failure").unlink()   # SageMaker gives every job a fresh output folder
    with caplog.at_level(logging.INFO):
        assert run(SageMakerPaths(stopped)) == 0
    assert "resuming from the checkpoint" in caplog.text and "written at epoch 2, batch 3" in caplog.text
    expected, got = (json.loads((root / "output/data/metrics.json").read_text()) for root in (whole, stopped))
    for split in ("train", "validation"):
        for metric, value in expected[split].items():
            assert got[split][metric] == pytest.approx(value, rel=1e-6, abs=1e-6), (split, metric)
    assert (got["best_epoch"], got["epochs_run"]) == (expected["best_epoch"], expected["epochs_run"])
    ours, theirs = (artifact.load(root / "model").network.state_dict() for root in (whole, stopped))
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert os.listdir(stopped / "checkpoints") == []   # the model is written: the checkpoint is removed


def test_sigterm_with_checkpointing_off_stops_without_a_checkpoint(tmp_path: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    job = Job(hyperparameters={**SPOT, "checkpoint_epochs": "0", "checkpoint_seconds": "0"})
    sigterm_before_step(monkeypatch, 3)
    assert run(SageMakerPaths(lay_out_job(tmp_path, job))) == EXIT_STOPPED
    assert (tmp_path / "output/failure").read_text().startswith(
        "the training job was stopped (SIGTERM) at epoch 1, batch 3; no checkpoint was written (checkpointing is "
        "off (checkpoint_epochs and checkpoint_seconds are both 0)): a new job starts from the beginning")
    assert not (tmp_path / "checkpoints").exists()


def test_a_finished_job_removes_its_checkpoint_so_the_next_job_in_the_folder_starts_afresh(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay_out_job(tmp_path, Job(hyperparameters={**FAST, "checkpoint_epochs": "1"}))
    paths = SageMakerPaths.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert paths.checkpoints_dir == tmp_path / "checkpoints"
    assert run(paths, environ={}) == 0
    assert os.listdir(tmp_path / "checkpoints") == []   # written after epochs 1 to 4, removed at the end
    (tmp_path / "input/config/hyperparameters.json").write_text(json.dumps({**FAST, "epochs": "6"}))
    capsys.readouterr()
    assert run(paths, environ={}) == 0   # other hyperparameters, same folder: nothing left to refuse
    assert "epoch=1 train_loss=" in capsys.readouterr().out


def test_with_checkpointing_off_no_checkpoint_folder_is_written(tmp_path: pathlib.Path) -> None:
    job = Job(hyperparameters={**FAST, "checkpoint_epochs": "0", "checkpoint_seconds": "0"})
    assert run(SageMakerPaths(lay_out_job(tmp_path, job))) == 0
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_of_other_hyperparameters_fails_the_job_naming_them(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sigterm_before_step(monkeypatch, 3)
    assert run(SageMakerPaths(lay_out_job(tmp_path, Job()))) == EXIT_STOPPED
    monkeypatch.undo()
    (tmp_path / "input/config/hyperparameters.json").write_text(json.dumps({**FAST, "epochs": "6"}))
    assert run(SageMakerPaths(tmp_path)) == EXIT_USER_ERROR
    first_line = (tmp_path / "output/failure").read_text().splitlines()[0]
    assert first_line.startswith(f"the checkpoint {tmp_path}/checkpoints/{checkpoint.CHECKPOINT_NAME} belongs to "
                                 "another training job (other hyperparameters: epochs=6 here, 5 in the checkpoint)")
    assert first_line.endswith("start this job with an empty checkpoint folder, or with the checkpoint's data and "
                               "hyperparameters to resume it (on SageMaker the checkpoint folder is the job's "
                               "checkpoint_s3_uri)")


def test_a_damaged_checkpoint_fails_the_job(tmp_path: pathlib.Path) -> None:
    lay_out_job(tmp_path, Job())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / checkpoint.CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 cut short")
    assert run(SageMakerPaths(tmp_path)) == EXIT_USER_ERROR
    assert "cannot be resumed from: it is damaged, truncated or not plain data" in \
        (tmp_path / "output/failure").read_text().splitlines()[0]


def test_an_unwritable_checkpoint_folder_is_logged_and_the_job_succeeds(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    lay_out_job(tmp_path, Job(hyperparameters={**FAST, "checkpoint_epochs": "2"}))
    (tmp_path / "checkpoints").write_text("a file where the folder should be (as for a user who cannot create it)")
    assert run(SageMakerPaths(tmp_path)) == 0
    assert "writing a checkpoint to" in caplog.text and "training goes on" in caplog.text
    assert (tmp_path / "model" / artifact.ARTIFACT_NAME).is_file()
    assert "could not remove" not in caplog.text


def test_a_failure_file_left_by_an_earlier_run_is_removed(tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job())
    (root / "output/failure").write_text("the training job was stopped (SIGTERM) at epoch 3\n")
    assert run(SageMakerPaths(root), environ={}) == 0
    assert not (root / "output/failure").exists()
