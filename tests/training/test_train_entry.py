"""The `train` entry point in-process, on temporary /opt/ml trees (the image tests repeat this for real)."""

import gzip
import json
import pathlib

import numpy as np
import pytest

from container.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR
from container.paths import SageMakerPaths
from container.train import run
from model import artifact
from tests.conftest import read_cars
from tests.jobs import CARS_HEADER, CARS_LINES, FAILURE_CASES, SMALL_CARS, Job, lay_out_job


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
