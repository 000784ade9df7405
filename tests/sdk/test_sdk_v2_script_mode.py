"""SageMaker Python SDK v2 local mode in framework (script) mode: the user's train.py and inference.py
(examples/script-mode) run in hyperplane-train and hyperplane-serve.

One driver run (tests/sdk/drivers/v2_script_mode.py under .venv-sdk2) trains with
Estimator(entry_point="train.py", source_dir=...), serves with Model(entry_point="inference.py", ...) on the
serving image and with estimator.deploy(entry_point=...) on the training image; each test asserts one part
of its results against what examples/script-mode/inference.py computes in-process from the same model.pt.
"""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.sdk.conftest import Hygiene, assert_close, run_driver, scratch_folder, step, write_inputs
from tests.sdk.script_mode import (
    NUMERIC_FEATURES,
    NUMERIC_ROWS,
    SCRIPT_HYPERPARAMETERS,
    copy_source,
    extract,
    in_process,
    metrics_json,
)
from tests.serving.process import free_port

pytestmark = [pytest.mark.sdk, pytest.mark.docker]
EPOCHS = SCRIPT_HYPERPARAMETERS["epochs"]


@dataclass
class V2ScriptRun:
    steps: dict[str, Any]
    expected: dict[str, Any]        # in_process(): the example's own predictions and what model.pt holds
    metrics: dict[str, Any]         # output.tar.gz: data/metrics.json (written by train.py)
    hygiene: Hygiene


@pytest.fixture(scope="module")
def v2(sdk_images: tuple[str, str]) -> V2ScriptRun:
    train_image, serve_image = sdk_images
    root = scratch_folder("sdk2-script")
    hygiene = Hygiene(root)
    try:
        spec = {"work": str(root), **write_inputs(root), "source_dir": str(copy_source(root)),
                "serving_port": free_port(), "train_image": train_image, "serve_image": serve_image,
                "hyperparameters": SCRIPT_HYPERPARAMETERS, "feature_names": NUMERIC_FEATURES,
                "rows": NUMERIC_ROWS}
        steps = run_driver(2, "v2_script_mode.py", spec, root)
        # read everything the tests need before the scratch folder goes
        expected: dict[str, Any] = {}
        metrics: dict[str, Any] = {}
        if steps.get("fit", {}).get("ok"):
            fitted = steps["fit"]["value"]
            if "model.pt" in fitted["model_members"]:
                expected = in_process(extract(pathlib.Path(fitted["trained_copy"]), root / "in-process"))
            metrics = metrics_json(pathlib.Path(fitted["output_tar"]))
    finally:
        hygiene.clean()
    return V2ScriptRun(steps, expected, metrics, hygiene)


def test_fit_runs_the_users_train_py(v2: V2ScriptRun) -> None:
    """`train` sees sagemaker_program, runs train.py from the mounted source_dir (not the built-in regressor),
    and model.tar.gz holds what the script wrote: model.pt, not hyperplane-regressor.pt."""
    fit = step(v2.steps, "fit")
    log = v2.steps["fit"]["log"]
    assert "training with the user's entry point train.py (named by the sagemaker_program hyperparameter)" in log
    assert "training the built-in regressor" not in log
    assert fit["model_members"] == ["model.pt"], fit["model_members"]
    assert "data/metrics.json" in fit["output_members"], fit["output_members"]
    assert json.loads(fit["hyperparameters"]["sagemaker_program"]) == "train.py"
    # model.pt, read with weights_only=True: the numeric columns in file order, the target, --hidden
    assert v2.expected, "model.pt could not be read back"
    assert v2.expected["features"] == NUMERIC_FEATURES
    assert (v2.expected["target"], v2.expected["hidden"]) == ("Price", SCRIPT_HYPERPARAMETERS["hidden"])


def test_the_scripts_log_and_metrics_come_back(v2: V2ScriptRun) -> None:
    """The script's own log lines reach the SDK's log, its --epochs is honoured, and metrics.json (in
    output.tar.gz) agrees with its last log line."""
    step(v2.steps, "fit")
    log = v2.steps["fit"]["log"]
    assert "training on 300 rows, features: " + ", ".join(NUMERIC_FEATURES) in log
    assert f"epoch={EPOCHS} train_loss=" in log and f"epoch={EPOCHS + 50} " not in log
    logged = re.findall(r"train_rmse=([0-9.eE+-]+); model written to /opt/ml/model/model.pt", log)
    assert len(logged) == 1, logged
    assert v2.metrics["epochs"] == EPOCHS
    assert v2.metrics["train_rmse"] == pytest.approx(float(logged[0]), rel=1e-5)
    assert 0 < v2.metrics["train_rmse"] < 5000        # a used car's price: the net learned something


def test_hyperparameters_reach_the_script_as_arguments(v2: V2ScriptRun) -> None:
    """sagemaker-training passes the user's hyperparameters (not the sagemaker_* ones) as sorted
    --name value arguments."""
    step(v2.steps, "fit")
    args = " ".join(f"--{name} {SCRIPT_HYPERPARAMETERS[name]}" for name in sorted(SCRIPT_HYPERPARAMETERS))
    commands = [line.strip() for line in v2.steps["fit"]["log"].splitlines() if "train.py --" in line]
    assert any(re.search(r"/python3? (-- )?train\.py " + re.escape(args) + "$", line) for line in commands), \
        (args, commands)


def _assert_served(result: dict[str, Any], expected: dict[str, Any]) -> None:
    assert result["ping"]["status"] == 200, result["ping"]
    json_expected, csv_expected = np.asarray(expected["json"]), np.asarray(expected["csv"])
    assert json_expected.shape == (len(NUMERIC_ROWS),)
    assert_close(result["json_records"], json_expected)
    assert_close(result["json_lists"], json_expected)
    assert result["csv_widths"] == [1]     # CSVDeserializer: one number per line
    assert_close(result["csv"], csv_expected)
    # the container's own headers (local mode's invoke_endpoint echoes the Accept instead, F13)
    http_csv, http_json = result["http_csv"], result["http_json"]
    assert http_csv["status"] == 200 and http_csv["content_type"].startswith("text/csv"), http_csv
    assert_close([float(line) for line in http_csv["body"].splitlines()], csv_expected)
    assert http_json["status"] == 200 and http_json["content_type"].startswith("application/json"), http_json
    assert_close(json.loads(http_json["body"])["predictions"], json_expected)


def test_model_on_the_serving_image_runs_inference_py(v2: V2ScriptRun) -> None:
    """Model(image_uri=hyperplane-serve, entry_point="inference.py", source_dir=...).deploy(): /ping answers
    200, and JSON (records and lists) and CSV through the SDK's serializers give what inference.py gives
    in-process for the same model.pt (rtol 1e-5)."""
    result = step(v2.steps, "model_deploy")
    _assert_served(result, v2.expected)


def _json_error(answer: dict[str, Any]) -> dict[str, Any]:
    assert "Traceback" not in answer["body"] and 'File "' not in answer["body"], answer["body"]
    body = json.loads(answer["body"])
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    return body


def test_bad_requests_answer_json_errors_and_the_endpoint_recovers(v2: V2ScriptRun) -> None:
    """Malformed JSON: a 4xx/5xx JSON error without a traceback; the handlers' own errors keep their status
    and message (predict_fn's 400, input_fn's 415); afterwards the endpoint answers as before."""
    result = step(v2.steps, "model_deploy")
    errors = result["errors"]
    for name in ("malformed_json", "malformed_json_sdk"):
        assert 400 <= errors[name]["status"] < 600, (name, errors[name])
        _json_error(errors[name])
    assert errors["malformed_json"]["content_type"].startswith("application/json"), errors["malformed_json"]
    missing = errors["missing_feature"]
    assert missing["status"] == 400, missing
    assert "each instance needs the numeric features" in _json_error(missing)["message"]
    xml = errors["xml"]
    assert xml["status"] == 415, xml
    assert "send application/json or text/csv" in _json_error(xml)["message"]
    assert result["after_errors"]["status"] == 200
    assert_close(result["after_errors"]["csv"], np.asarray(v2.expected["csv"]))


def test_estimator_deploy_runs_inference_py_in_the_training_image(v2: V2ScriptRun) -> None:
    """estimator.deploy(entry_point="inference.py", source_dir=...): the training image's `serve` loads the
    same handlers and answers the same."""
    result = step(v2.steps, "estimator_deploy")
    _assert_served(result, v2.expected)


def test_leaves_no_containers_networks_or_folders(v2: V2ScriptRun) -> None:
    v2.hygiene.assert_clean()
    assert len(v2.hygiene.removed) >= 3    # the training job and two endpoints
