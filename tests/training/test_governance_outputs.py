"""A finished job's governance outputs: evaluation.json, the monitoring baseline and the model card, and the
card's summary in the serving log (an artifact without a card still serves)."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import numpy as np
import pytest

from container.paths import SageMakerPaths
from container.serving.settings import ServingSettings
from container.serving.startup import validate_artifact
from container.train import run
from model import artifact
from model.card import CARD_NAME
from model.evaluation import bootstrap_deviations
from model.preprocessing import target_values
from tests.conftest import read_cars
from tests.jobs import CARS_HEADER, CARS_LINES, FAST, SMALL_CARS, Job, lay_out_job

TEST_ROWS = CARS_HEADER + "".join(CARS_LINES[300:360])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = lay_out_job(tmp_path_factory.mktemp("governed"), Job(
        hyperparameters={**FAST, "drop_columns": "Color,Doors"},
        channels={"train": {"cars.csv": SMALL_CARS}, "test": {"t.csv": TEST_ROWS}}))
    assert run(SageMakerPaths(root), environ={}) == 0
    return root


def _read(root: pathlib.Path, name: str) -> Any:
    return json.loads((root / name).read_text())


def test_evaluation_json_is_the_test_split_in_pipelines_format(job: pathlib.Path) -> None:
    evaluation = _read(job, "output/data/evaluation.json")
    metrics = _read(job, "output/data/metrics.json")
    regression = evaluation["regression_metrics"]
    assert set(regression) == {"mse", "rmse", "mae", "r2"}
    assert all(set(entry) == {"value", "standard_deviation"} for entry in regression.values())
    # What a ConditionStep's JsonGet(json_path="regression_metrics.rmse.value") reads:
    assert regression["rmse"]["value"] == metrics["test"]["rmse"]
    assert regression["mae"]["value"] == pytest.approx(metrics["test"]["mae"])
    assert evaluation["evaluation"]["split"] == "test" and evaluation["evaluation"]["rows"] == 60
    regressor = artifact.load(job / "model")
    table = read_cars(360).take(np.arange(300, 360))
    truth = target_values(table, "Price")
    expected = bootstrap_deviations(truth, regressor.predict(table.select(regressor.feature_names)), seed=0)
    assert {name: entry["standard_deviation"] for name, entry in regression.items()} == pytest.approx(expected)
    features = {entry["feature"] for entry in evaluation["slices"]}
    assert features == set(regressor.feature_names)
    worst = evaluation["worst_slice"]
    assert worst is not None and worst["gap"] >= 0


def test_without_a_test_channel_the_validation_split_is_evaluated(tmp_path: pathlib.Path) -> None:
    assert run(SageMakerPaths(lay_out_job(tmp_path, Job())), environ={}) == 0
    evaluation = _read(tmp_path, "output/data/evaluation.json")
    metrics = _read(tmp_path, "output/data/metrics.json")
    assert evaluation["evaluation"] == {**evaluation["evaluation"], "split": "validation", "rows": 40}
    assert evaluation["regression_metrics"]["rmse"]["value"] == metrics["validation"]["rmse"]


def test_the_model_card_describes_the_artifact_beside_it(job: pathlib.Path) -> None:
    card = _read(job, f"model/{CARD_NAME}")
    regressor = artifact.load(job / "model")
    assert card["data"]["fingerprint"] == regressor.info["data_fingerprint"]
    assert card["model"]["version"] == regressor.info["version"]
    columns = card["data"]["columns"]
    assert columns["dropped"] == ["Color", "Doors"]
    assert [f["name"] for f in columns["features"]] == regressor.feature_names
    assert card["data"]["rows"]["train"] + card["data"]["rows"]["validation"] == 200
    assert card["hyperparameters"]["drop_columns"] == ["Color", "Doors"]
    assert set(card["versions"]) >= {"hyperplane", "torch", "numpy", "python"}
    assert card["evaluation"]["worst_slice"] == _read(job, "output/data/evaluation.json")["worst_slice"]
    assert card["intended_use"] and card["limitations"]
    assert "2 column(s) dropped: Color, Doors" in card["summary"]


def test_the_baseline_covers_the_features_only(job: pathlib.Path) -> None:
    statistics = _read(job, "output/data/statistics.json")
    constraints = _read(job, "output/data/constraints.json")
    names = artifact.load(job / "model").feature_names
    assert statistics["dataset"] == {"item_count": 200}
    assert [f["name"] for f in statistics["features"]] == names
    assert [f["name"] for f in constraints["features"]] == names
    assert not {"Price", "Color", "Doors"} & set(names)


def test_serving_logs_the_card_summary_and_serves_without_one(job: pathlib.Path, tmp_path: pathlib.Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    settings = ServingSettings.from_environ({"SAGEMAKER_BASE_DIR": str(job)}, cpus=1, gpus=0)
    with caplog.at_level(logging.INFO, logger="hyperplane.serve"):
        validate_artifact(settings)
    summary = _read(job, f"model/{CARD_NAME}")["summary"]
    assert f"model card: {summary}" in caplog.messages
    caplog.clear()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / artifact.ARTIFACT_NAME).write_bytes((job / "model" / artifact.ARTIFACT_NAME).read_bytes())
    older = ServingSettings.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)}, cpus=1, gpus=0)
    with caplog.at_level(logging.INFO, logger="hyperplane.serve"):
        validate_artifact(older)
    assert any(m.startswith("model card: none") for m in caplog.messages)


def test_the_report_is_in_the_output_and_beside_the_artifact(job: pathlib.Path) -> None:
    """report.html in output/data (output.tar.gz) and in model/ (model.tar.gz): the same page, one point
    of the learning curves per epoch run, the evaluated split's rmse from evaluation.json."""
    pages = [(job / folder / "report.html").read_text() for folder in ("output/data", "model")]
    assert pages[0] == pages[1]
    evaluation = _read(job, "output/data/evaluation.json")
    metrics = _read(job, "output/data/metrics.json")
    assert f"{evaluation['regression_metrics']['rmse']['value']:,.0f}" in pages[0]
    for figure in ("learning-curves", "predicted-vs-actual", "residuals-by-slice", "attributions"):
        assert f'id="{figure}"' in pages[0]
    assert metrics["epochs_run"] == 5
