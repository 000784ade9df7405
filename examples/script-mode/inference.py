"""The handlers for the model train.py writes, in sagemaker-inference's contract (what
`Model(entry_point="inference.py", source_dir=...)` names; hyperplane-serve loads it in every worker).

    POST /invocations  Content-Type: application/json  {"instances": [{"Age_08_04": 23, "KM": 46986, ...}]}
                       or text/csv, one car per line, the numeric features in training order
    -> {"predictions": [13456.7, ...]} (application/json) or one price per line (text/csv)
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Any

import torch
from sagemaker_inference import errors
from train import network  # source_dir is on sys.path: the code folder is importable


class PriceModel:
    def __init__(self, saved: dict[str, Any]) -> None:
        self.features: list[str] = saved["features"]
        self.net = network(len(self.features), saved["hidden"])
        self.net.load_state_dict(saved["state_dict"])
        self.net.eval()
        self.x_mean, self.x_std = saved["x_mean"], saved["x_std"]
        self.y_mean, self.y_std = saved["y_mean"], saved["y_std"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net((x - self.x_mean) / self.x_std).squeeze(1) * self.y_std + self.y_mean


def model_fn(model_dir: str) -> PriceModel:
    return PriceModel(torch.load(pathlib.Path(model_dir) / "model.pt", weights_only=True))


def input_fn(body: str | bytes, content_type: str) -> list[list[Any]]:
    text = body.decode() if isinstance(body, bytes) else body
    if content_type == "application/json":
        instances = json.loads(text)
        return instances["instances"] if isinstance(instances, dict) else instances
    if content_type == "text/csv":
        return [row for row in csv.reader(io.StringIO(text)) if row]
    raise errors.GenericInferenceToolkitError(415, f"send application/json or text/csv, not {content_type}")


def predict_fn(instances: list[Any], model: PriceModel) -> list[float]:
    try:
        rows = [[float(item[name]) for name in model.features] if isinstance(item, dict)
                else [float(value) for value in item] for item in instances]
    except (KeyError, ValueError, TypeError) as error:
        raise errors.GenericInferenceToolkitError(400, f"each instance needs the numeric features "
                                                  f"{', '.join(model.features)}: {error}") from None
    if any(len(row) != len(model.features) for row in rows):
        raise errors.GenericInferenceToolkitError(400, f"each row needs {len(model.features)} values")
    return model(torch.tensor(rows, dtype=torch.float32)).tolist()


def output_fn(predictions: list[float], accept: str) -> tuple[str, str]:
    if accept == "text/csv":
        return "".join(f"{value!r}\n" for value in predictions), "text/csv"
    return json.dumps({"predictions": predictions}), "application/json"
