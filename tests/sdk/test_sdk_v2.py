"""SageMaker Python SDK v2 (sagemaker<3) local mode drives both images end to end.

One driver run (tests/sdk/drivers/v2_flow.py under .venv-sdk2) trains, deploys three ways, predicts
through the SDK's serializers, runs two batch transforms, a failing job and bad requests; each test
asserts one part of its results against in-process predictions of the same model.tar.gz.
"""

from __future__ import annotations

import json
import pathlib
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from model.regressor import Regressor
from tests.jobs import CARS_LINES
from tests.sdk.conftest import (
    FEATURES,
    HYPERPARAMETERS,
    REQUEST_ROWS,
    TRANSFORM_LINES,
    TRANSFORM_REPEAT,
    Hygiene,
    assert_close,
    load_model_tar,
    metric_definitions,
    predict_rows,
    run_driver,
    scratch_folder,
    step,
    transform_rows,
    write_inputs,
)
from tests.serving.process import free_port

pytestmark = [pytest.mark.sdk, pytest.mark.docker]
DROPPED = ["Fuel_Type", "Color"]
NUMERIC_FEATURES = [name for name in FEATURES if name not in DROPPED]


@dataclass
class V2Run:
    steps: dict[str, Any]
    models: dict[str, Regressor]           # "mixed", "numeric": loaded from the jobs' model.tar.gz
    metrics: dict[str, Any]                # output/data/metrics.json of the mixed job
    failure: str | None                    # the failing job's output.tar.gz: failure
    transform_out: dict[str, str]          # step -> raw .out text
    hygiene: Hygiene


@pytest.fixture(scope="module")
def v2(sdk_images: tuple[str, str]) -> V2Run:
    train_image, serve_image = sdk_images
    root = scratch_folder("sdk2")
    hygiene = Hygiene(root)
    try:
        spec = {"work": str(root), **write_inputs(root), "serving_port": free_port(),
                "train_image": train_image, "serve_image": serve_image,
                "hyperparameters": HYPERPARAMETERS,
                # all features numeric (for application/x-npy): no categorical columns at all
                "numeric_hyperparameters": {**HYPERPARAMETERS, "categorical_columns": [],
                                            "drop_columns": DROPPED},
                "bad_hyperparameters": {**HYPERPARAMETERS, "epoch": 5},
                "feature_names": FEATURES, "numeric_feature_names": NUMERIC_FEATURES, "rows": REQUEST_ROWS}
        steps = run_driver(2, "v2_flow.py", spec, root)
        # read everything the tests need before the scratch folder goes
        models, outs = {}, {}
        for name, fit_step in (("mixed", "fit"), ("numeric", "fit_numeric"), ("two_hosts", "fit_two_hosts")):
            if steps.get(fit_step, {}).get("ok"):
                model_tar = pathlib.Path(steps[fit_step]["value"]["model_data"].removeprefix("file://"))
                models[name] = load_model_tar(model_tar, root / "in-process" / name)
        metrics_text = _member(root / "out" / "mixed" / "output.tar.gz", "metrics.json")
        metrics = json.loads(metrics_text) if metrics_text else {}
        failure = _member(root / "out" / "failing" / "output.tar.gz", "failure")
        for name in ("transform_estimator", "transform_model"):
            if steps.get(name, {}).get("ok"):
                outs[name] = pathlib.Path(steps[name]["value"]["out_file"]).read_text()
    finally:
        hygiene.clean()
    return V2Run(steps, models, metrics, failure, outs, hygiene)


def _member(archive: pathlib.Path, name: str) -> str | None:
    """The text of the first file called `name` in a .tar.gz, or None."""
    if not archive.exists():
        return None
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if pathlib.PurePath(m.name).name == name), None)
        data = tar.extractfile(member) if member else None
        return data.read().decode() if data else None


def test_fit_trains_with_python_valued_hyperparameters(v2: V2Run) -> None:
    """fit({"train": "file://..."}) with ints, a float, a str, a bool and a list as the SDK quotes them."""
    fit = step(v2.steps, "fit")
    assert fit["model_data"].endswith("/out/mixed/model.tar.gz")
    config = v2.models["mixed"].config
    assert (config.epochs, config.hidden_layers, config.ensemble_size, config.learning_rate,
            config.deterministic, config.categorical_columns) == (
        30, (16,), 2, 0.01, True, ("Met_Color", "Automatic"))
    assert v2.models["mixed"].feature_names == FEATURES
    assert v2.models["mixed"].info["training_rows"] == 300


def test_metric_definitions_match_the_training_log(v2: V2Run) -> None:
    """scripts/aws-run's metric_definitions regexes, applied line by line to the log the SDK printed."""
    step(v2.steps, "fit")
    lines = v2.steps["fit"]["log"].splitlines()
    found: dict[str, list[float]] = {}
    for definition in metric_definitions():
        pattern = re.compile(definition["Regex"])
        found[definition["Name"]] = [float(m.group(1)) for line in lines if (m := pattern.search(line))]
    epochs = v2.metrics["epochs_run"]
    for name in ("epoch:train_loss", "epoch:validation_loss", "epoch:validation_rmse"):
        assert len(found[name]) == epochs, (name, found[name])
    for split in ("train", "validation"):
        for metric in ("rmse", "mae", "mape", "r2"):
            values = found[f"{split}:{metric}"]
            assert len(values) == 1, (split, metric, values)
            assert values[0] == pytest.approx(v2.metrics[split][metric], rel=1e-5)
    assert found["test:rmse"] == []        # no test channel: no test metrics


def _assert_predictions(result: dict[str, Any], expected: np.ndarray) -> None:
    assert result["csv_widths"] == [1]     # CSVDeserializer: one number per line
    for form in ("csv", "json_instances", "json_records"):
        assert_close(result[form], expected)


def test_a_estimator_deploy_serves_from_the_training_image(v2: V2Run) -> None:
    """(a) estimator.deploy() runs `serve` in hyperplane-train; CSV and JSON through the SDK's serializers."""
    result = step(v2.steps, "deploy_train_image")
    _assert_predictions(result, predict_rows(v2.models["mixed"], REQUEST_ROWS))


def test_b_estimator_deploy_on_the_serving_image(v2: V2Run) -> None:
    """(b) estimator.deploy(image_uri="hyperplane-serve:latest")."""
    result = step(v2.steps, "deploy_serve_image")
    _assert_predictions(result, predict_rows(v2.models["mixed"], REQUEST_ROWS))


def test_c_model_from_model_data_on_the_serving_image(v2: V2Run) -> None:
    """(c) sagemaker.model.Model(image_uri=serving image, model_data="file://.../model.tar.gz").deploy()."""
    result = step(v2.steps, "model_deploy")
    _assert_predictions(result, predict_rows(v2.models["mixed"], REQUEST_ROWS))


def test_c_numpy_serializers_on_an_all_numeric_model(v2: V2Run) -> None:
    """NumpySerializer (application/x-npy in) and NumpyDeserializer (reading text/csv: the server writes
    no .npy) on a model trained with drop_columns, whose features are all numeric."""
    model = v2.models["numeric"]
    assert model.numeric_only and model.feature_names == NUMERIC_FEATURES
    result = step(v2.steps, "model_deploy_numeric")
    expected = predict_rows(model, REQUEST_ROWS)
    assert result["numpy"]["type"] == "ndarray" and result["numpy"]["shape"] == [len(REQUEST_ROWS)]
    assert_close(result["numpy"]["values"], expected)
    _assert_predictions(result, expected)


def _assert_transform(v2: V2Run, name: str) -> None:
    result = step(v2.steps, name)
    assert result["files"] == ["cars.csv.out"]
    out = v2.transform_out[name]
    assert len("".join(TRANSFORM_LINES)) * TRANSFORM_REPEAT > 2 * 1024 * 1024   # max_payload=1: 3 mini-batches
    # Local mode writes b"\n" after every response when AssembleWith=Line (sagemaker/local/entities.py), as
    # SageMaker does; the server (SAGEMAKER_BATCH) leaves that newline to it: one line per input line, in
    # order, no empty line between mini-batches, the file ending with the last one's newline.
    assert out.endswith("\n") and not out.endswith("\n\n")
    lines = out[:-1].split("\n")
    assert len(lines) == len(TRANSFORM_LINES) * TRANSFORM_REPEAT and all(line.strip() for line in lines)
    assert_close([float(line) for line in lines],
                 np.tile(predict_rows(v2.models["mixed"], transform_rows()), TRANSFORM_REPEAT))


def test_d_batch_transform_from_the_estimator(v2: V2Run) -> None:
    """(d) estimator.transformer(MultiRecord, Line).transform(split_type="Line"): one prediction per line,
    in order."""
    _assert_transform(v2, "transform_estimator")


def test_d_batch_transform_on_a_serving_image_model(v2: V2Run) -> None:
    """(d) Transformer on a model created with session.create_model(..., {"Image": serving image, ...})."""
    _assert_transform(v2, "transform_model")


def test_e_failing_job_raises_and_reports_its_failure(v2: V2Run) -> None:
    """(e) An unknown hyperparameter: fit raises, the failure reason is in output.tar.gz's `failure` and in
    the container log the SDK printed."""
    result = step(v2.steps, "fit_failing")
    assert result["raised"] == "RuntimeError" and "exited with code: 2" in result["message"]
    assert v2.failure is not None, "output.tar.gz holds no failure file"
    reason = v2.failure.splitlines()[0]
    assert reason.startswith("unknown hyperparameter 'epoch'") and "epochs" in reason
    assert reason in v2.steps["fit_failing"]["log"]


def test_f_http_errors_come_back_as_statuses(v2: V2Run) -> None:
    """(f) Local mode does not raise on HTTP errors (F13): the status and JSON body say what is wrong."""
    errors = step(v2.steps, "http_errors")
    assert errors["good"]["status"] == 200
    assert errors["xml"]["status"] == 415 and "application/xml" in json.loads(errors["xml"]["body"])["message"]
    short = json.loads(errors["short_row"]["body"])
    assert errors["short_row"]["status"] == 400 and short["row"] == 1
    assert f"expected {len(FEATURES)} values, found {len(FEATURES) - 1}" in short["message"]
    assert errors["npy_on_mixed_model"]["status"] == 415
    assert "all numeric" in json.loads(errors["npy_on_mixed_model"]["body"])["message"]
    assert errors["accept_xml"]["status"] == 406


def test_leaves_no_containers_networks_or_folders(v2: V2Run) -> None:
    """Local mode leaves one exited compose container per train, deploy and transform (F7); the fixture
    removes them by their compose working directory, and the sagemaker-local network and scratch folder."""
    v2.hygiene.assert_clean()
    assert len(v2.hygiene.removed) >= 9    # 3 fits, 4 endpoints, 2 transforms


def test_two_hosts_train_one_model_as_good_as_one_host(v2: V2Run) -> None:
    """instance_count=2: both containers join one torch.distributed world, one model comes out, it serves,
    and its error on cars it never saw matches the one-host model's within 1%."""
    fit = step(v2.steps, "fit_two_hosts")
    ranks = sorted(rank for line in fit["joined"] for rank in re.findall(r" rank=(\d) ", line))
    assert ranks == ["0", "1"], fit["joined"]
    assert all("world_size=2" in line and "backend=gloo" in line for line in fit["joined"]), fit["joined"]
    two, one = v2.models["two_hosts"], v2.models["mixed"]
    assert two.info["training_rows"] == one.info["training_rows"] == 300
    held_out = [line.strip().split(",") for line in CARS_LINES[600:1400]]
    truth = np.array([float(row[0]) for row in held_out])
    errors = [float(np.sqrt(np.mean((predict_rows(model, [row[1:] for row in held_out]) - truth) ** 2)))
              for model in (two, one)]
    assert abs(errors[0] - errors[1]) / errors[1] < 0.01, errors
    _assert_predictions(step(v2.steps, "deploy_two_hosts"), predict_rows(two, REQUEST_ROWS))
