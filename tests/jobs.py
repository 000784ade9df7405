"""Training jobs laid out as SageMaker lays out /opt/ml, shared by the in-process and the image tests.

`lay_out_job(root, ...)` writes input/config/*.json and the channel files; FAILURE_CASES lists broken jobs
with the words their failure file must contain.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from tests.conftest import CARS_CSV

CARS_TEXT = CARS_CSV.read_text()
CARS_HEADER, *CARS_LINES = CARS_TEXT.splitlines(keepends=True)
SMALL_CARS = CARS_HEADER + "".join(CARS_LINES[:200])
FAST = {"epochs": "5", "hidden_layers": "8", "ensemble_size": "1"}   # seconds, not minutes


@dataclass
class Job:
    hyperparameters: dict[str, str] = field(default_factory=lambda: dict(FAST))
    channels: dict[str, dict[str, str | bytes]] = field(default_factory=lambda: {"train": {"cars.csv": SMALL_CARS}})
    input_config: dict[str, dict[str, str]] | None = None     # None: one entry per channel, File mode


def lay_out_job(root: pathlib.Path, job: Job) -> pathlib.Path:
    config_dir = root / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(job.hyperparameters))
    (config_dir / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    input_config = job.input_config or {name: {"TrainingInputMode": "File"} for name in job.channels}
    (config_dir / "inputdataconfig.json").write_text(json.dumps(input_config))
    for channel, files in job.channels.items():
        folder = root / "input" / "data" / channel
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    for output in ("model", "output"):
        (root / output).mkdir(exist_ok=True)
    return root


def _cars_with(row: int, column: str, value: str) -> str:
    lines = SMALL_CARS.splitlines(keepends=True)
    index = lines[0].strip().split(",").index(column)
    cells = lines[row].rstrip("\n").split(",")
    cells[index] = value
    lines[row] = ",".join(cells) + "\n"
    return "".join(lines)


FAILURE_CASES: dict[str, tuple[Job, list[str]]] = {
    "bad hyperparameter": (Job(hyperparameters={**FAST, "learning_rate": "fast"}),
                           ["learning_rate='fast' is invalid", "expected a number"]),
    "unknown hyperparameter": (Job(hyperparameters={**FAST, "epoch": "5"}),
                               ["unknown hyperparameter 'epoch'", "hidden_layers"]),
    "missing channel": (Job(channels={}, input_config={"train": {"TrainingInputMode": "File"}}),
                        ["channel 'train' has no data", "does not exist"]),
    "empty channel": (Job(channels={"train": {}}), ["channel 'train' is empty"]),
    "unknown target": (Job(hyperparameters={**FAST, "target": "price"}),
                       ["target names column 'price'", "Price, Age_08_04"]),
    "non-numeric value": (Job(channels={"train": {"cars.csv": _cars_with(17, "KM", "lots")}}),
                          ["train/cars.csv line 18", "column 'KM'", "'lots'"]),
    "missing target": (Job(channels={"train": {"cars.csv": _cars_with(9, "Price", "")}}),
                       ["train/cars.csv line 10", "column 'Price'", "target value is missing"]),
    "unreadable file": (Job(channels={"train": {"cars.csv.gz": b"\x1f\x8b\x08\x00broken"}}),
                        ["cannot read train/cars.csv.gz"]),
}
