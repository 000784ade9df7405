"""Shared by the SDK script-mode tests: the user code of examples/script-mode, its inputs, and what its own
inference.py computes in-process (with the dev venv's torch) from a model.pt the images produced."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pathlib
import shutil
import sys
import tarfile
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from tests.sdk.conftest import FEATURES, REQUEST_ROWS, ROOT

EXAMPLE = ROOT / "examples" / "script-mode"
NON_NUMERIC = ["Fuel_Type", "Color"]
NUMERIC_FEATURES = [name for name in FEATURES if name not in NON_NUMERIC]   # what train.py keeps, in order
NUMERIC_ROWS = [[cell for name, cell in zip(FEATURES, row, strict=True) if name in NUMERIC_FEATURES]
                for row in REQUEST_ROWS]                                     # CSV text cells
# Python values: v2 quotes them with str(), v3 with JSON; train.py reads --epochs 100 --hidden 16 ...
SCRIPT_HYPERPARAMETERS: dict[str, Any] = {"epochs": 100, "learning_rate": 0.02, "hidden": 16, "seed": 7}


def copy_source(root: pathlib.Path) -> pathlib.Path:
    """examples/script-mode copied into the scratch folder (local mode mounts it into the containers)."""
    source = root / "source"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


@contextlib.contextmanager
def example_inference() -> Iterator[ModuleType]:
    """examples/script-mode/inference.py imported by path, as a module of its own name, with the sibling
    train.py it imports (`from train import network`) visible only while it loads."""
    saved = sys.modules.pop("train", None)
    try:
        train_spec = importlib.util.spec_from_file_location("train", EXAMPLE / "train.py")
        assert train_spec and train_spec.loader
        train = importlib.util.module_from_spec(train_spec)
        sys.modules["train"] = train
        train_spec.loader.exec_module(train)
        spec = importlib.util.spec_from_file_location("hyperplane_example_inference", EXAMPLE / "inference.py")
        assert spec and spec.loader
        inference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(inference)
        yield inference
    finally:
        sys.modules.pop("train", None)
        if saved is not None:
            sys.modules["train"] = saved


def extract(model_tar: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True)
    with tarfile.open(model_tar) as tar:
        tar.extractall(dest, filter="data")
    return dest


def in_process(model_dir: pathlib.Path) -> dict[str, Any]:
    """What the example's handlers answer for NUMERIC_ROWS, computed here: the expected predictions for JSON
    records and for CSV, and what model.pt says about itself."""
    import torch

    with example_inference() as inference:
        model = inference.model_fn(str(model_dir))
        records = [dict(zip(NUMERIC_FEATURES, [_typed(cell) for cell in row], strict=True)) for row in NUMERIC_ROWS]
        body = "".join(",".join(row) + "\n" for row in NUMERIC_ROWS)
        expected_json = inference.predict_fn(inference.input_fn(_json_body(records), "application/json"), model)
        expected_csv = inference.predict_fn(inference.input_fn(body, "text/csv"), model)
    saved = torch.load(model_dir / "model.pt", weights_only=True)
    return {"json": expected_json, "csv": expected_csv, "features": saved["features"], "target": saved["target"],
            "hidden": saved["hidden"]}


def _json_body(records: list[dict[str, Any]]) -> str:
    return json.dumps({"instances": records})


def _typed(cell: str) -> int | float:
    """A CSV cell as the drivers send it in JSON (tests/sdk/drivers/_common.py typed)."""
    try:
        return int(cell)
    except ValueError:
        return float(cell)


def metrics_json(output_tar: pathlib.Path) -> dict[str, Any]:
    """data/metrics.json (what train.py wrote to SM_OUTPUT_DATA_DIR) from a job's output.tar.gz, or {}."""
    if not output_tar.is_file():
        return {}
    with tarfile.open(output_tar) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("metrics.json")), None)
        data = tar.extractfile(member) if member else None
        metrics: dict[str, Any] = json.loads(data.read()) if data else {}
    return metrics
