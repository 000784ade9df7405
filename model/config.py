"""TrainingConfig: every setting a user can give a training job, with its type, default and meaning.

The container turns SageMaker's string hyperparameters into this dataclass by reading the field types,
and the README's hyperparameter table is this file's `help` texts, so there is one list of settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from model.preprocessing import TARGET_TRANSFORMS

CHECKPOINT_SETTINGS = ("checkpoint_epochs", "checkpoint_seconds")   # when to save, not what is learned
DATA_LOADING = ("auto", "memory", "stream")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainingConfig:
    target: str | None = _setting(None, "Target column; default: the first column (SageMaker's headerless "
                                        "CSV convention).")
    categorical_columns: tuple[str, ...] = _setting((), "Columns to treat as categorical even though their "
                                                        "values are numbers (0/1 flags, integer codes).")
    drop_columns: tuple[str, ...] = _setting((), "Columns to ignore (ids, free text).")
    hidden_layers: tuple[int, ...] = _setting((128, 64), "Hidden layer widths, e.g. `128,64`; empty for the "
                                                        "linear model (least squares).")
    ensemble_size: int = _setting(5, "MLPs trained side by side from different initial weights; the "
                                     "prediction is their mean (the linear model always has one).")
    dropout: float = _setting(0.0, "Dropout after each hidden layer.")
    epochs: int = _setting(400, "Maximum passes over the training split.")
    batch_size: int = _setting(64, "Rows per optimiser step (MLP).")
    learning_rate: float = _setting(1e-3, "AdamW learning rate (MLP).")
    weight_decay: float = _setting(1e-4, "AdamW weight decay (MLP).")
    patience: int = _setting(10, "Stop after this many epochs without a better validation loss; the best "
                                 "epoch's weights are kept.")
    validation_fraction: float = _setting(0.2, "Share of the training rows held out for validation when no "
                                               "`validation` channel is given.")
    target_transform: str = _setting("log", f"One of {', '.join(TARGET_TRANSFORMS)}: learn log(target) "
                                            "and return exp(prediction), for positive skewed targets "
                                            "such as prices.")
    seed: int = _setting(0, "Seed for the split, initialisation and batch order: same seed, same model.")
    deterministic: bool = _setting(True, "Use torch's deterministic algorithms, so a seed reproduces a model "
                                         "exactly (slower on some GPU kernels).")
    device: str = _setting("auto", "`auto` (CUDA when available, else CPU), `cpu` or `cuda`.")
    csv_header: str = _setting("auto", "`auto`, `present` or `absent`: whether CSV files start with a "
                                       "header row; `auto` detects it.")
    checkpoint_epochs: int = _setting(10, "Write a checkpoint every this many epochs (0: no epoch trigger); "
                                          "a stopped job started again with the same checkpoint folder "
                                          "resumes from it.")
    checkpoint_seconds: int = _setting(300, "Also write a checkpoint when this many seconds have passed since "
                                            "the last one (0: no time trigger); both 0 turns checkpointing "
                                            "off: no checkpoint is read or written.")
    data_loading: str = _setting("auto", "`auto`, `memory` or `stream`: read the channels into memory, or stream "
                                         "them from disk in two or more passes (bounded memory, for data larger "
                                         "than memory; always for Pipe mode); `auto` streams a channel too large "
                                         "for memory.")

    def __post_init__(self) -> None:
        problems = []
        if self.target_transform not in TARGET_TRANSFORMS:
            problems.append(f"target_transform must be one of {', '.join(TARGET_TRANSFORMS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append("device must be auto, cpu or cuda")
        if self.csv_header not in ("auto", "present", "absent"):
            problems.append("csv_header must be auto, present or absent")
        if self.data_loading not in DATA_LOADING:
            problems.append(f"data_loading must be one of {', '.join(DATA_LOADING)}")
        if any(width < 1 for width in self.hidden_layers):
            problems.append("hidden_layers widths must be positive integers")
        for name in ("epochs", "batch_size", "patience", "ensemble_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        for name in CHECKPOINT_SETTINGS:
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 (off) or positive")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if not 0 < self.validation_fraction < 1:
            problems.append("validation_fraction must be between 0 and 1")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            problems.append("learning_rate must be positive and weight_decay not negative")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def training_settings(self) -> dict[str, Any]:
        """to_dict() without the checkpoint frequencies: the settings that decide the model, which a
        checkpoint must share with the job that resumes from it (how often it is saved changes nothing)."""
        return {name: value for name, value in self.to_dict().items() if name not in CHECKPOINT_SETTINGS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)
