"""The training image run for real: `docker run -v <job>:/opt/ml hyperplane-train:latest train`."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import tempfile

import pytest

from model import artifact
from model.config import TrainingConfig
from tests.container.docker import run_job
from tests.jobs import CARS_HEADER, CARS_LINES, FAILURE_CASES, SMALL_CARS, Job, lay_out_job
from tests.training.test_hyperparameters import STYLES

pytestmark = pytest.mark.docker
BODY = "".join(CARS_LINES[:200])


def _json_lines(text: str) -> str:
    header, *rows = text.splitlines()
    names = header.split(",")
    return "".join(json.dumps(dict(zip(names, row.split(","), strict=True))) + "\n" for row in rows)


FORMATS: dict[str, dict[str, str | bytes]] = {
    "csv with header": {"cars.csv": SMALL_CARS},
    "csv without header": {"cars.csv": BODY},
    "several files": {"a.csv": CARS_HEADER + "".join(CARS_LINES[:100]),
                      "b.csv": CARS_HEADER + "".join(CARS_LINES[100:200])},
    "gzip": {"cars.csv.gz": gzip.compress(SMALL_CARS.encode())},
    "json lines": {"cars.jsonl": _json_lines(SMALL_CARS)},
}


def _succeeded(root: pathlib.Path, result: object) -> artifact.Regressor:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]   # type: ignore[attr-defined]
    assert (root / "output/data/metrics.json").is_file()
    assert not (root / "output/failure").exists()
    return artifact.load(root / "model")


@pytest.mark.parametrize("layout", FORMATS)
def test_channel_formats(train_image: str, tmp_path: pathlib.Path, layout: str) -> None:
    root = lay_out_job(tmp_path, Job(channels={"train": FORMATS[layout]}))
    regressor = _succeeded(root, run_job(root, image=train_image))
    assert regressor.info["training_rows"] == 200
    assert len(regressor.feature_names) == 23


@pytest.mark.parametrize("style", STYLES)
def test_hyperparameter_quoting_styles(train_image: str, tmp_path: pathlib.Path, style: str) -> None:
    root = lay_out_job(tmp_path, Job(hyperparameters={**STYLES[style], "ensemble_size": "1"}))
    config = _succeeded(root, run_job(root, image=train_image)).config
    assert (config.hidden_layers, config.categorical_columns, config.epochs) == (
        (64, 32), ("Met_Color", "Automatic"), 50)
    assert config == TrainingConfig(hidden_layers=(64, 32), categorical_columns=("Met_Color", "Automatic"),
                                    epochs=50, learning_rate=0.001, target="Price", ensemble_size=1)


def test_no_command_trains(train_image: str, tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job())
    _succeeded(root, run_job(root, image=train_image, command=()))


def test_runs_as_an_unprivileged_user(train_image: str) -> None:
    # pytest's tmp_path sits below a 0700 folder that uid 1000 cannot enter: use a world-readable one.
    root = pathlib.Path(tempfile.mkdtemp(prefix="hyperplane-user-", dir="/tmp"))
    try:
        lay_out_job(root, Job())
        for path in (root, *root.rglob("*")):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        for folder in (root / "model", root / "output"):
            os.chmod(folder, 0o777)
        result = run_job(root, "--user", "1000:1000", image=train_image)
        _succeeded(root, result)
        assert (root / "model" / artifact.ARTIFACT_NAME).stat().st_uid == 1000
    finally:
        shutil.rmtree(root)


def test_input_mounted_read_only(train_image: str, tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job())
    volumes = (f"{root}/input:/opt/ml/input:ro", f"{root}/model:/opt/ml/model", f"{root}/output:/opt/ml/output")
    _succeeded(root, run_job(root, image=train_image, volumes=volumes))


@pytest.mark.parametrize("case", FAILURE_CASES)
def test_failures(train_image: str, tmp_path: pathlib.Path, case: str) -> None:
    job, fragments = FAILURE_CASES[case]
    root = lay_out_job(tmp_path, job)
    result = run_job(root, image=train_image)
    assert result.returncode == 2
    failure = (root / "output/failure").read_text()
    first_line = failure.splitlines()[0]
    for fragment in fragments:
        assert fragment in first_line
    assert first_line in result.stdout + result.stderr     # the log says it too
