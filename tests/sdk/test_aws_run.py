"""scripts/aws-run cannot reach AWS here: its --help works without the SDK, and a dry run under
.venv-sdk2 with autospec'd SageMaker classes checks every call it makes against sagemaker 2.x's real
signatures, and that the endpoint and model are deleted even when a step fails."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.sdk.conftest import AWS_RUN, ROOT, metric_definitions, run_driver, scratch_folder, step


def test_help_works_without_the_sdk() -> None:
    result = subprocess.run([sys.executable, str(AWS_RUN), "--help"], capture_output=True, text=True,
                            timeout=60, check=True)
    for option in ("--role", "--s3-prefix", "--train-image", "--serve-image", "scripts/push-images"):
        assert option in result.stdout


def test_push_images_help() -> None:
    result = subprocess.run([str(ROOT / "scripts" / "push-images"), "--help"], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "ECR" in result.stdout


@pytest.mark.sdk
def test_dry_run_against_the_sdk_v2_signatures() -> None:
    root = scratch_folder("aws-run")
    try:
        steps = run_driver(2, "aws_run_dry.py", {"aws_run": str(AWS_RUN)}, root)
    finally:
        shutil.rmtree(root)
    happy: dict[str, Any] = step(steps, "happy")
    assert happy["raised"] is None
    assert happy["estimator"]["instance_type"] == "ml.m5.large"
    assert happy["estimator"]["output_path"] == "s3://bucket/pre/output"
    assert happy["model"]["image_uri"].endswith("/hyperplane-serve:latest")
    assert happy["deploy"] == "ml.m5.large"
    assert len(happy["transform"]) == 1 and "split_type='Line'" in happy["transform"][0]
    assert happy["uploads"] == [f"call('{ROOT / 'data' / 'toyota_corolla.csv'}', bucket='bucket', "
                                "key_prefix='pre/data/train')"]
    for result in (happy, step(steps, "failing")):
        assert len(result["delete_endpoint"]) == len(result["delete_endpoint_config"]) == 1
        assert result["delete_model"] == 1
    assert step(steps, "failing")["raised"] == "boom"


def test_metric_regexes_on_sample_lines() -> None:
    lines = {"epoch=3 train_loss=0.123 validation_loss=1.2e-05 validation_rmse=1.23457e+06": {
                 "epoch:train_loss": 0.123, "epoch:validation_loss": 1.2e-05,
                 "epoch:validation_rmse": 1234570.0},
             "validation_rmse=1010.17 validation_mae=763.3 validation_mape=7.67 validation_r2=0.918": {
                 "validation:rmse": 1010.17, "validation:mae": 763.3, "validation:mape": 7.67,
                 "validation:r2": 0.918},
             "test_rmse=990 test_mae=700.5 test_mape=7 test_r2=-0.5": {
                 "test:rmse": 990, "test:mae": 700.5, "test:mape": 7, "test:r2": -0.5}}
    for line, expected in lines.items():
        found = {d["Name"]: float(m.group(1)) for d in metric_definitions()
                 if (m := re.search(d["Regex"], line))}
        assert found == expected, line
    assert pathlib.Path(AWS_RUN).stat().st_mode & 0o111
