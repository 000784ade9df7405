"""The model card: model-card.json beside the artifact, saying what the model is, what it learned from and
how well it does, so it travels in model.tar.gz with the weights it describes.

    card = build_card(regressor, artifact_path, rows={"train": 900, ...}, evaluation=report)
    write_card(card, folder)          -> folder/model-card.json
    read_summary(folder)              -> its one-line summary, or why there is none (never raises)

Promises: plain JSON; `data.fingerprint` is the artifact's own `data_fingerprint` (sha256 of the training
channel's column names and cells) and `model.version` the first 12 hex digits of the artifact file's sha256
(the `model_version` serving reports), so a card can be matched to its artifact and data; the columns
dropped with drop_columns are listed by name (how personal columns are kept out of the model); no data row
appears in it. Artifacts trained before cards existed have none: read_summary says so, and serving goes on.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

from model.artifact import FORMAT, FORMAT_VERSION
from model.regressor import Regressor

CARD_NAME = "model-card.json"
CARD_VERSION = 1

INTENDED_USE = (
    "Point predictions of a numeric target for rows shaped like the training data (same columns, same "
    "meaning, values in the ranges seen in training), as a decision aid that a person or a business rule "
    "reviews. The running example prices used cars.")
LIMITATIONS = (
    "Measured only on the evaluation split named here; the error on new data is larger when the data drifts "
    "(compare requests with the monitoring baseline, statistics.json and constraints.json).",
    "No prediction interval: a prediction is a mean and says nothing of its own uncertainty.",
    "Levels never seen in training and missing values are imputed (the unknown slot, the training mean): "
    "such rows are predicted as an average case.",
    "Far outside the training ranges the network extrapolates without warning.",
    "Slices with few rows are listed without metrics; the error of rare groups is therefore not known.",
    "Correlation, not cause: the model must not be used to explain why a target has its value, nor for "
    "decisions about people unless its columns and errors were reviewed for that purpose.",
)


def build_card(regressor: Regressor, artifact_path: pathlib.Path, rows: dict[str, int],
               evaluation: dict[str, Any]) -> dict[str, Any]:
    """The card of the regressor saved at `artifact_path`. `rows`: rows per split as fitted (train,
    validation, test); `evaluation`: evaluation.evaluate_split's report."""
    info = regressor.info
    config = regressor.config
    schema = regressor.preprocessor.schema
    sha256 = hashlib.sha256(artifact_path.read_bytes()).hexdigest()
    architecture = ("linear (least squares)" if not config.hidden_layers else
                    f"MLP {'-'.join(map(str, config.hidden_layers))}, ensemble of {config.ensemble_size}")
    worst = evaluation.get("worst_slice")
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "model": {"name": FORMAT, "artifact": artifact_path.name, "artifact_format_version": FORMAT_VERSION,
                  "artifact_sha256": sha256, "version": sha256[:12], "architecture": architecture,
                  "target": schema.target, "target_transform": config.target_transform},
        "data": {
            "fingerprint": info.get("data_fingerprint"),
            "rows": {"training_channel": info.get("training_rows"), **rows,
                     "dropped": 0,
                     "note": "no row is dropped: missing feature values are imputed, and a row without a "
                             "target fails the job"},
            "columns": {"target": schema.target,
                        "features": [{"name": f.name, "kind": f.kind.value} for f in schema.features],
                        "dropped": list(config.drop_columns),
                        "note": "dropped columns (drop_columns) are not read by the model, and not in the "
                                "monitoring baseline"}},
        "hyperparameters": config.to_dict(),
        "versions": info.get("versions", {}),
        "training": {"best_epoch": info.get("best_epoch"), "epochs_run": info.get("epochs_run")},
        "metrics": info.get("metrics", {}),
        "evaluation": {"split": evaluation["evaluation"]["split"], "rows": evaluation["evaluation"]["rows"],
                       "regression_metrics": evaluation["regression_metrics"],
                       "slices": len(evaluation["slices"]),
                       "slices_too_small": sum(1 for s in evaluation["slices"] if s.get("too_small")),
                       "worst_slice": worst},
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
    }
    card["summary"] = summary(card)
    return card


def summary(card: dict[str, Any]) -> str:
    """One line: the model, its data, its headline error and its worst slice."""
    model, data, evaluation = card["model"], card["data"], card["evaluation"]
    columns = data["columns"]
    dropped = columns["dropped"]
    rmse = evaluation["regression_metrics"]["rmse"]["value"]
    line = (f"{model['name']} {model['version']} ({model['architecture']}) predicts {columns['target']} from "
            f"{len(columns['features'])} features ({len(dropped)} column(s) dropped"
            f"{': ' + ', '.join(dropped) if dropped else ''}); trained on {data['rows'].get('train')} rows of data "
            f"{str(data['fingerprint'])[:12]}; {evaluation['split']} rmse {rmse:.6g} on {evaluation['rows']} rows")
    worst = evaluation["worst_slice"]
    if worst is not None:
        line += (f"; worst slice {worst['feature']}={worst['slice']} rmse {worst['rmse']:.6g} "
                 f"({worst['gap']:+.6g})")
    return line


def write_card(card: dict[str, Any], folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CARD_NAME
    path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    return path


def read_summary(folder: pathlib.Path) -> str:
    """The card's summary line, or a short reason why there is none; never raises, because a missing or
    damaged card must not stop a model from serving."""
    path = folder / CARD_NAME
    if not path.is_file():
        return f"none ({CARD_NAME} is absent: an artifact trained before model cards)"
    try:
        card = json.loads(path.read_text())
        return str(card["summary"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable ({type(error).__name__}); the model serves without it"
