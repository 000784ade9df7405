"""Shared by the SDK drivers (run by .venv-sdk2/bin/python or .venv-sdk3/bin/python, never by pytest).

A driver reads its spec (a JSON file named by argv[1]), runs named steps, and prints ONE JSON object on its
last stdout line: {"steps": {name: {"ok": true, "value": ..., "seconds": s, "log": "..."} or
{"ok": false, "error": "traceback", "log": "..."}}}. A failing step does not stop the others, so each
test asserts its own step. Only the standard library here: both SDK venvs import this file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

# Before any sagemaker import: a region is required (F1), credentials are not; the v2 banner is noise.
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"

ROLE = "arn:aws:iam::111111111111:role/HyperplaneDummy"      # local mode never uses it
TELEMETRY_OPT_OUT = {"SchemaVersion": "1.0",                   # F3: no STS / S3 telemetry calls
                     "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
LOG_LIMIT = 20000   # characters of each step's captured stdout kept in the result


class Tee(io.TextIOBase):
    """Captures what the SDK writes to sys.stdout (container logs) and still shows it."""

    def __init__(self, echo: Any) -> None:
        self.buffer_ = io.StringIO()
        self.echo = echo

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        self.echo.flush()


class Steps:
    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        self._stdout = sys.stdout

    def run(self, name: str, step: Callable[[], Any], describe: Callable[[Any], Any] = lambda v: v) -> Any:
        """Runs `step`, records describe(its value) (or its traceback) under `name`, returns the value."""
        print(f"===== step {name} =====", flush=True)
        tee = Tee(self._stdout)
        started = time.monotonic()
        record: dict[str, Any]
        try:
            with contextlib.redirect_stdout(tee):
                value = step()
            record = {"ok": True, "value": describe(value)}
        except Exception:  # recorded for the test to assert on
            value = None
            record = {"ok": False, "error": traceback.format_exc()}
        record["seconds"] = round(time.monotonic() - started, 2)
        record["log"] = tee.buffer_.getvalue()[-LOG_LIMIT:]
        self.results[name] = record
        print(f"===== step {name}: {'ok' if record['ok'] else 'FAILED'} in {record['seconds']} s =====",
              flush=True)
        return value

    def emit(self) -> None:
        sys.stdout.flush()
        print(json.dumps({"steps": self.results}), flush=True)


def read_spec() -> dict[str, Any]:
    with open(sys.argv[1]) as f:
        spec: dict[str, Any] = json.load(f)
    return spec


def typed(cell: str) -> int | float | str | None:
    """A CSV cell as JSON would carry it: int, float, the string itself, or null when empty."""
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            continue
    return cell


def csv_numbers(body: bytes) -> list[float]:
    """A text/csv prediction body (one number per line) as floats."""
    return [float(line) for line in body.decode().splitlines() if line.strip()]


def predict_on_local_endpoint(sm: Any, runtime: Any, name: str, container: dict[str, Any],
                              rows: list[list[str]], instances: list[Any]) -> dict[str, Any]:
    """SDK v3's low-level local calls (sagemaker.core.local): create the model, its endpoint config and
    endpoint, send `rows` as one CSV and `instances` as one JSON request, delete all three again."""
    sm.create_model(ModelName=name, PrimaryContainer=container)
    try:
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
            "InstanceType": "local"}])
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)   # blocks until /ping answers 200
        try:
            csv = runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv", Accept="text/csv",
                                          Body="".join(",".join(row) + "\n" for row in rows).encode())
            js = runtime.invoke_endpoint(EndpointName=name, ContentType="application/json",
                                         Accept="application/json",
                                         Body=json.dumps({"instances": instances}).encode())
            return {"csv_status": csv["Body"].status, "csv": csv_numbers(csv["Body"].read()),
                    "json_status": js["Body"].status,
                    "json": json.loads(js["Body"].read())["predictions"]}
        finally:
            sm.delete_endpoint(EndpointName=name)
            sm.delete_endpoint_config(EndpointConfigName=name)
    finally:
        sm.delete_model(ModelName=name)


def on_endpoint(deploy: Callable[[], Any], use: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Deploys (an SDK v2 Predictor comes back), runs `use` on it, and deletes model and endpoint whatever
    happens: the model first, since afterwards its endpoint config is gone (F6)."""
    predictor = deploy()
    try:
        return use(predictor)
    finally:
        predictor.delete_model()
        predictor.delete_endpoint()
