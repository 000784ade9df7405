"""Checkpoints in-process: a run stopped after any step and resumed equals the uninterrupted run exactly;
periodic checkpoints are written atomically; another job's checkpoint or a damaged one is refused."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError, Position
from model.checkpointing import Checkpointing, TrainingStopped, discard
from model.config import TrainingConfig
from model.table import Table
from model.training import EpochReport, FitResult, fit
from tests.conftest import read_cars

# FAST (tests/jobs.py) with dropout, so the global RNG matters, and small batches: 160 training rows make
# three steps per epoch, so a stop can land mid-epoch.
MODELS = {
    "mlp with dropout": TrainingConfig(hidden_layers=(8,), ensemble_size=2, dropout=0.2, epochs=5),
    "linear": TrainingConfig(hidden_layers=(), epochs=5),
}
STEPS = {"mlp with dropout": 15, "linear": 1}   # optimiser steps in an uninterrupted run (least squares: one)
PER_EPOCH = {"mlp with dropout": 3, "linear": 1}


@pytest.fixture(scope="module")
def cars() -> Table:
    return read_cars(200)   # tests/jobs.py SMALL_CARS


@pytest.fixture(scope="module")
def uninterrupted(cars: Table) -> dict[str, tuple[FitResult, list[EpochReport]]]:
    runs = {}
    for name, config in MODELS.items():
        reports: list[EpochReport] = []
        runs[name] = (fit(cars, config, on_epoch=reports.append), reports)
    return runs


def stop_after(steps: int) -> Callable[[], bool]:
    """A stop request that turns true before optimiser step `steps + 1` (fit polls it before every step)."""
    polls = itertools.count()
    return lambda: next(polls) >= steps


def assert_same_model(first: FitResult, second: FitResult) -> None:
    ours, theirs = first.regressor.network.state_dict(), second.regressor.network.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    for split, values in first.metrics.items():
        for metric, value in values.items():
            assert abs(second.metrics[split][metric] - value) <= 1e-6 * max(1.0, abs(value)), (split, metric)
    assert (first.best_epoch, first.epochs_run) == (second.best_epoch, second.epochs_run)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_model(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path,
        model: str, fraction: float) -> None:
    config, (reference, reference_reports) = MODELS[model], uninterrupted[model]
    # the linear model's one step can only be stopped before it runs
    steps = max(1, round(STEPS[model] * fraction)) if STEPS[model] > 1 else 0
    reports: list[EpochReport] = []
    with pytest.raises(TrainingStopped) as stopped:
        fit(cars, config, on_epoch=reports.append,
            checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(steps)))
    assert stopped.value.checkpoint == tmp_path / checkpoint.CHECKPOINT_NAME
    per_epoch = PER_EPOCH[model]
    assert stopped.value.position == Position(steps // per_epoch, steps % per_epoch)

    resumed = fit(cars, config, on_epoch=reports.append, checkpointing=Checkpointing(tmp_path))
    assert_same_model(reference, resumed)
    assert reports == reference_reports   # every epoch once, the interrupted epoch's loss included


def test_a_mid_epoch_stop_redraws_the_batch_order_and_skips_the_batches_done(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped) as stopped:
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(7)))
    assert stopped.value.position == Position(epochs_done=2, batches_done=1)
    assert str(stopped.value).startswith("training stopped at epoch 3, batch 1")
    with caplog.at_level(logging.INFO, logger="hyperplane.checkpoint"):
        resumed = fit(cars, config, checkpointing=Checkpointing(tmp_path))
    assert "resuming from the checkpoint" in caplog.text and "written at epoch 3, batch 1" in caplog.text
    assert_same_model(uninterrupted["mlp with dropout"][0], resumed)


def test_stopping_twice_still_gives_the_same_model(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path) -> None:
    config = MODELS["mlp with dropout"]
    for steps in (4, 5):   # 4 steps, then 5 more from the first checkpoint
        with pytest.raises(TrainingStopped):
            fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(steps)))
    assert_same_model(uninterrupted["mlp with dropout"][0], fit(cars, config, checkpointing=Checkpointing(tmp_path)))


def test_discard_removes_the_checkpoint_and_temporaries_and_nothing_else(cars: Table, tmp_path: pathlib.Path) -> None:
    with pytest.raises(TrainingStopped):
        fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(2)))
    (tmp_path / f"{checkpoint.TEMPORARY_PREFIX}x{checkpoint.TEMPORARY_SUFFIX}").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("the user's own file")
    discard(Checkpointing(tmp_path, every_epochs=0, every_seconds=0))   # checkpointing off: not touched
    assert len(os.listdir(tmp_path)) == 3
    discard(Checkpointing(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]
    discard(Checkpointing(tmp_path / "never-created"))   # nothing to remove is fine


def test_checkpoints_every_n_epochs_atomically(cars: Table, tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    written = record_writes(monkeypatch)
    fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(tmp_path, every_epochs=2, every_seconds=0))
    assert written == [Position(2), Position(4)]   # only where training goes on: none after the last epoch
    assert os.listdir(tmp_path) == [checkpoint.CHECKPOINT_NAME]   # one file, no temporary left behind


def test_checkpoints_every_m_seconds_also_mid_epoch(cars: Table, tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    written = record_writes(monkeypatch)
    ticks = itertools.count()   # a clock that advances one second each time it is read
    settings = Checkpointing(tmp_path, every_epochs=0, every_seconds=4, clock=lambda: float(next(ticks)))
    fit(cars, MODELS["mlp with dropout"], checkpointing=settings)
    assert len(written) >= 3 and any(position.batches_done for position in written)
    assert written == sorted(written, key=lambda p: (p.epochs_done, p.batches_done))


def test_a_crash_while_writing_leaves_the_previous_checkpoint_intact(cars: Table, tmp_path: pathlib.Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(4)))
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    before = path.read_bytes()

    def half_written(payload: object, file: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(TrainingStopped) as stopped:
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(2)))
    assert stopped.value.checkpoint is None and "No space left on device" in str(stopped.value.not_written)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [checkpoint.CHECKPOINT_NAME]


def test_a_failed_periodic_write_is_logged_and_training_goes_on(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the checkpoint folder should be")
    result = fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(blocked, every_epochs=1))
    assert_same_model(uninterrupted["mlp with dropout"][0], result)
    assert "writing a checkpoint to" in caplog.text and "training goes on" in caplog.text


def test_a_temporary_file_left_by_a_killed_writer_is_ignored_and_removed(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(6)))
    leftover = tmp_path / f"{checkpoint.TEMPORARY_PREFIX}abc123{checkpoint.TEMPORARY_SUFFIX}"
    leftover.write_bytes(b"PK\x03\x04 the first bytes of a checkpoint")
    resumed = fit(cars, config, checkpointing=Checkpointing(tmp_path))
    assert_same_model(uninterrupted["mlp with dropout"][0], resumed)
    assert not leftover.exists()


@pytest.mark.parametrize(("change", "expected"), [
    ({"learning_rate": 0.002}, "other hyperparameters: learning_rate=0.002 here, 0.001 in the checkpoint"),
    ({"epochs": 8, "dropout": 0.1}, "dropout=0.1 here, 0.2 in the checkpoint, epochs=8 here, 5 in the checkpoint"),
])
def test_a_checkpoint_of_other_hyperparameters_is_refused(cars: Table, tmp_path: pathlib.Path,
                                                          change: dict[str, Any], expected: str) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(4)))
    other = dataclasses.replace(config, **change)
    with pytest.raises(CheckpointError, match="belongs to another training job") as refused:
        fit(cars, other, checkpointing=Checkpointing(tmp_path))
    assert expected in str(refused.value)
    assert "empty checkpoint folder" in str(refused.value)


def test_the_checkpoint_frequency_is_not_part_of_the_job(
        cars: Table, uninterrupted: dict[str, tuple[FitResult, list[EpochReport]]], tmp_path: pathlib.Path) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(2)))
    other = dataclasses.replace(config, checkpoint_epochs=1, checkpoint_seconds=0)
    assert_same_model(uninterrupted["mlp with dropout"][0], fit(cars, other, checkpointing=Checkpointing(tmp_path)))


def test_a_checkpoint_of_other_data_is_refused(cars: Table, tmp_path: pathlib.Path) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(2)))
    fewer = cars.take(np.arange(199))
    with pytest.raises(CheckpointError, match=r"other training data: fingerprint [0-9a-f]{12} here"):
        fit(fewer, config, checkpointing=Checkpointing(tmp_path))
    with pytest.raises(CheckpointError, match=r"other validation data: fingerprint [0-9a-f]{12} here, no "
                                              r"validation channel in the checkpoint"):
        fit(cars, config, validation=cars.take(np.arange(20)), checkpointing=Checkpointing(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_refused(cars: Table, tmp_path: pathlib.Path, damage: str) -> None:
    config = MODELS["mlp with dropout"]
    with pytest.raises(TrainingStopped):
        fit(cars, config, checkpointing=Checkpointing(tmp_path, stop_requested=stop_after(2)))
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    with pytest.raises(CheckpointError, match="cannot be resumed from: it is damaged, truncated or not plain data"):
        fit(cars, config, checkpointing=Checkpointing(tmp_path))


def touch(path: str) -> None:
    pathlib.Path(path).touch()


class Trap:
    """Unpickling it would call touch(marker): code that a checkpoint must never get to run."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return touch, (str(self.marker),)


def test_a_checkpoint_holding_code_is_refused_without_running_it(cars: Table, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"format": checkpoint.FORMAT, "trap": Trap(marker)}, tmp_path / checkpoint.CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=r"not plain data \(WeightsUnpickler error: Unsupported global") \
            as refused:
        fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(tmp_path))
    assert not marker.exists()
    assert "weights_only=False" not in str(refused.value)


@pytest.mark.parametrize(("payload", "expected"), [
    ({"format": "something else"}, "is not a hyperplane checkpoint"),
    ({"format": checkpoint.FORMAT, "format_version": 99}, "has format version 99"),
    ({"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION, "position": {}}, "is damaged"),
])
def test_a_foreign_checkpoint_is_refused(cars: Table, tmp_path: pathlib.Path, payload: dict[str, Any],
                                         expected: str) -> None:
    torch.save(payload, tmp_path / checkpoint.CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match=expected):
        fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(tmp_path))


def test_with_both_triggers_off_nothing_is_read_or_written_and_a_stop_still_stops(
        cars: Table, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    off = Checkpointing(tmp_path / "checkpoints", every_epochs=0, every_seconds=0, stop_requested=stop_after(2))
    with pytest.raises(TrainingStopped) as stopped:
        fit(cars, MODELS["mlp with dropout"], checkpointing=off)
    assert stopped.value.checkpoint is None and "checkpointing is off" in str(stopped.value.not_written)
    assert not (tmp_path / "checkpoints").exists()

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / checkpoint.CHECKPOINT_NAME).write_bytes(b"another job's checkpoint")
    fit(cars, MODELS["mlp with dropout"], checkpointing=Checkpointing(tmp_path / "checkpoints", 0, 0))
    assert (tmp_path / "checkpoints" / checkpoint.CHECKPOINT_NAME).read_bytes() == b"another job's checkpoint"
    assert "checkpointing is off" in caplog.text


def test_the_checkpoint_frequencies_are_validated() -> None:
    with pytest.raises(ValueError, match="checkpoint_epochs must be 0 \\(off\\) or positive"):
        TrainingConfig(checkpoint_epochs=-1)
    with pytest.raises(ValueError, match="checkpoint_seconds must be 0 \\(off\\) or positive"):
        TrainingConfig(checkpoint_seconds=-5)
    settings = TrainingConfig(checkpoint_epochs=3).training_settings()
    assert "checkpoint_epochs" not in settings and "checkpoint_seconds" not in settings and "epochs" in settings


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[Position]:
    """Records the position of every checkpoint written, and writes it."""
    written: list[Position] = []
    real = checkpoint.write

    def spy(snapshot: checkpoint.Snapshot, folder: pathlib.Path) -> pathlib.Path:
        written.append(snapshot.position)
        return real(snapshot, folder)

    monkeypatch.setattr(checkpoint, "write", spy)
    return written
