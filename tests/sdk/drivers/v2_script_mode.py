"""SDK v2 (sagemaker<3) local mode in framework (script) mode: the user's own train.py and inference.py
(examples/script-mode) run in the hyperplane images (run by .venv-sdk2/bin/python).

    .venv-sdk2/bin/python tests/sdk/drivers/v2_script_mode.py SPEC.json

Steps (tests/sdk/test_sdk_v2_script_mode.py asserts what each must show):
    fit                 Estimator(image_uri=<training image>, entry_point="train.py", source_dir=...).fit(...):
                        local mode mounts source_dir at /opt/ml/code, `train` runs the script through
                        sagemaker-training; model.tar.gz / output.tar.gz members and metrics.json come back
    model_deploy        Model(image_uri=<serving image>, entry_point="inference.py", source_dir=...).deploy():
                        /ping, predictions through the SDK's JSON and CSV serializers, raw HTTP headers,
                        bad requests (F13: statuses, not exceptions) and a good request after them
    estimator_deploy    estimator.deploy(entry_point="inference.py", source_dir=...): the training image's
                        `serve` runs the same handlers
Every endpoint and model is deleted (model first, F6); the exited compose containers are the caller's to
remove (F7). Everything is written under spec["work"].
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from typing import Any

# _common first: it sets the region and SAGEMAKER_SUPPRESS_V2_WARNING before the SDK loads
from _common import ROLE, TELEMETRY_OPT_OUT, Steps, csv_numbers, on_endpoint, read_spec, typed

# isort: split

from sagemaker.deserializers import CSVDeserializer, JSONDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import CSVSerializer, JSONSerializer

spec = read_spec()
WORK = spec["work"]
SOURCE_DIR = spec["source_dir"]
PORT = spec["serving_port"]
# Model._upload_code asks for a bucket (default_bucket(): an STS call that fails without credentials)
# before it notices local_code; with code_location it never asks. Nothing is uploaded in local mode.
CODE_LOCATION = "s3://hyperplane-local-unused/code"
steps = Steps()
# straight to the published port, never through an HTTP(S)_PROXY from the environment
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

session = LocalSession(sagemaker_config=TELEMETRY_OPT_OUT)
# local_code: source_dir is mounted at /opt/ml/code instead of being uploaded to S3 (the only way
# script mode works without AWS)
session.config = {"local": {"local_code": True, "container_root": os.path.join(WORK, "container-root"),
                            "serving_port": PORT}}
os.makedirs(session.config["local"]["container_root"], exist_ok=True)

FEATURES: list[str] = spec["feature_names"]               # the numeric features, in training order
ROWS: list[list[str]] = spec["rows"]                       # their cells as CSV text
RECORDS = [dict(zip(FEATURES, [typed(cell) for cell in row], strict=True)) for row in ROWS]


def out_dir(name: str) -> str:
    """One folder per job or model (F9)."""
    path = os.path.join(WORK, "out", name)
    os.makedirs(path, exist_ok=True)
    return path


def own_copy(model_data: str, name: str) -> str:
    """model.tar.gz copied into a folder of its own, as a file:// URI (F9: deploying extracts it in place,
    and a Model with entry_point repacks it in place)."""
    shutil.copy(model_data.removeprefix("file://"), out_dir(name))
    return "file://" + os.path.join(out_dir(name), "model.tar.gz")


def members(archive: str) -> list[str]:
    with tarfile.open(archive) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def fit() -> Estimator:
    est = Estimator(image_uri=spec["train_image"], entry_point="train.py", source_dir=SOURCE_DIR, role=ROLE,
                    instance_count=1, instance_type="local", hyperparameters=spec["hyperparameters"],
                    output_path="file://" + out_dir("script"), base_job_name="hyperplane-script",
                    sagemaker_session=session)
    est.fit({"train": "file://" + spec["train_dir"]})   # keep logs=True: logs=False adds a 5 s poll
    return est


def describe_fit(est: Estimator) -> dict[str, Any]:
    model_tar = est.model_data.removeprefix("file://")
    output_tar = os.path.join(os.path.dirname(model_tar), "output.tar.gz")
    # a pristine copy for the test (deploying with entry_point repacks est.model_data in place)
    trained = own_copy(est.model_data, "trained").removeprefix("file://")
    return {"model_data": est.model_data, "trained_copy": trained, "model_members": members(model_tar),
            "output_members": members(output_tar), "output_tar": output_tar,
            "hyperparameters": est.hyperparameters()}


def ping() -> dict[str, Any]:
    """GET /ping on the published port until it answers 200 (local create_endpoint already waited for it;
    this checks it ourselves), at most 60 s."""
    deadline = time.monotonic() + 60
    status: int | str = "no answer"
    while time.monotonic() < deadline:
        try:
            with DIRECT.open(f"http://localhost:{PORT}/ping", timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError as error:
            status = f"{type(error).__name__}: {error}"
        if status == 200:
            break
        time.sleep(1)
    return {"status": status}


def http(body: bytes, content_type: str, accept: str) -> dict[str, Any]:
    """POST /invocations straight to the container: local mode's invoke_endpoint reports the Accept sent
    as the response's ContentType (F13), so the real header is only seen this way."""
    request = urllib.request.Request(f"http://localhost:{PORT}/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": accept})
    try:
        with DIRECT.open(request, timeout=30) as response:
            return {"status": response.status, "content_type": response.headers.get("Content-Type", ""),
                    "body": response.read().decode()}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "content_type": error.headers.get("Content-Type", ""),
                "body": error.read().decode()}


def invoke(endpoint: str, body: bytes, content_type: str, accept: str) -> dict[str, Any]:
    """Local mode hands back whatever status the container answered, without raising (F13)."""
    response = session.sagemaker_runtime_client.invoke_endpoint(
        EndpointName=endpoint, Body=body, ContentType=content_type, Accept=accept)
    return {"status": response["Body"].status, "body": response["Body"].read().decode()}


def predict_all(predictor: Predictor, with_errors: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"endpoint_name": predictor.endpoint_name, "ping": ping()}
    predictor.serializer, predictor.deserializer = JSONSerializer(), JSONDeserializer()
    results["json_records"] = predictor.predict({"instances": RECORDS})["predictions"]
    results["json_lists"] = predictor.predict(
        {"instances": [[typed(cell) for cell in row] for row in ROWS]})["predictions"]
    predictor.serializer, predictor.deserializer = CSVSerializer(), CSVDeserializer()
    table = predictor.predict(ROWS)                                  # [["13321.5"], ...]
    results["csv"] = [float(cells[0]) for cells in table]
    results["csv_widths"] = sorted({len(cells) for cells in table})
    csv_body = "".join(",".join(row) + "\n" for row in ROWS).encode()
    results["http_csv"] = http(csv_body, "text/csv", "text/csv")
    results["http_json"] = http(json.dumps({"instances": RECORDS}).encode(), "application/json",
                                "application/json")
    if with_errors:
        endpoint = predictor.endpoint_name
        missing = [{name: value for name, value in RECORDS[0].items() if name != FEATURES[-1]}]
        results["errors"] = {
            "malformed_json": http(b'{"instances": [{"KM": 1', "application/json", "application/json"),
            "malformed_json_sdk": invoke(endpoint, b'{"instances": [', "application/json", "application/json"),
            "missing_feature": invoke(endpoint, json.dumps({"instances": missing}).encode(), "application/json",
                                      "application/json"),
            "xml": http(b"<cars/>", "application/xml", "application/json"),
        }
        # the endpoint still answers, and the same
        after = invoke(endpoint, csv_body, "text/csv", "text/csv")
        results["after_errors"] = {"status": after["status"], "csv": csv_numbers(after["body"].encode())}
    return results


def model_deploy(model_data: str) -> Predictor:
    model = Model(image_uri=spec["serve_image"], model_data=model_data, entry_point="inference.py",
                  source_dir=SOURCE_DIR, role=ROLE, name="hyperplane-script-model", predictor_cls=Predictor,
                  code_location=CODE_LOCATION, sagemaker_session=session)
    return model.deploy(initial_instance_count=1, instance_type="local", wait=False)   # F5


def main() -> None:
    est = steps.run("fit", fit, describe_fit)
    if est is None:
        return
    steps.run("model_deploy", lambda: on_endpoint(
        lambda: model_deploy(own_copy(est.model_data, "model-serve")),
        lambda predictor: predict_all(predictor, with_errors=True)))
    steps.run("estimator_deploy", lambda: on_endpoint(
        lambda: est.deploy(initial_instance_count=1, instance_type="local", wait=False,
                           entry_point="inference.py", source_dir=SOURCE_DIR, code_location=CODE_LOCATION),
        lambda predictor: predict_all(predictor, with_errors=False)))


if __name__ == "__main__":
    try:
        main()
    finally:
        steps.emit()
