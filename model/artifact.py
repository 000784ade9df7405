"""One file holds a trained Regressor: weights, schema, preprocessing, config, metrics and provenance.

    save(regressor, folder)  -> folder/hyperplane-regressor.pt
    load(folder or file)     -> Regressor on the CPU (move it with .to(device))

The file is a torch.save of plain data (strings, numbers, tensors) and is always read with
`torch.load(weights_only=True)`, which refuses pickled code: an artifact can never run anything on load.
`format_version` changes whenever a reader of the old version could misread the new one. The conformal
calibration and the explanation baseline are optional metadata keys: older readers ignore them, and
artifacts without them load with None there (they predict, but give no intervals or explanations).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import torch

from model.config import TrainingConfig
from model.conformal import Calibration
from model.network import build_network
from model.preprocessing import Preprocessor
from model.regressor import Regressor

ARTIFACT_NAME = "hyperplane-regressor.pt"
FORMAT = "hyperplane-regressor"
FORMAT_VERSION = 1


class ArtifactError(Exception):
    """The artifact is missing, unreadable, or of a format this code does not know."""


def save(regressor: Regressor, folder: pathlib.Path) -> pathlib.Path:
    metadata = {"config": regressor.config.to_dict(), "preprocessor": regressor.preprocessor.to_dict(),
                "info": regressor.info,
                **({"calibration": regressor.calibration.to_dict()} if regressor.calibration else {}),
                **({"baseline": list(regressor.baseline)} if regressor.baseline is not None else {})}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": json.dumps(metadata),
               "state_dict": {k: v.detach().cpu() for k, v in regressor.network.state_dict().items()}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARTIFACT_NAME
    torch.save(payload, path)
    return path


def load(location: pathlib.Path) -> Regressor:
    """Loads from the artifact file or a folder holding it; ArtifactError says precisely what is wrong."""
    path = location / ARTIFACT_NAME if location.is_dir() else location
    if not path.is_file():
        found = sorted(p.name for p in location.iterdir()) if location.is_dir() else []
        raise ArtifactError(f"no model artifact at {path} (the folder holds: {', '.join(found) or 'nothing'})")
    raw = path.read_bytes()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        # torch's own text goes on to suggest weights_only=False, which is exactly what must not happen.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"{path} is not a readable artifact (damaged, truncated or not written by "
                            f"hyperplane): {reason}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a {FORMAT} artifact")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {payload.get('format_version')}; this code reads "
                            f"version {FORMAT_VERSION}: serve it with the image that matches its trainer")
    try:
        return _rebuild(json.loads(payload["metadata"]), payload["state_dict"], raw)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ArtifactError(f"{path} is damaged: {error}") from error


def _rebuild(metadata: dict[str, Any], state_dict: dict[str, torch.Tensor], raw: bytes) -> Regressor:
    config = TrainingConfig.from_dict(metadata["config"])
    preprocessor = Preprocessor.from_dict(metadata["preprocessor"])
    network = build_network(preprocessor.n_inputs, config.hidden_layers, config.dropout, config.ensemble_size)
    network.load_state_dict(state_dict)
    network.eval()
    info = dict(metadata["info"])
    info["version"] = hashlib.sha256(raw).hexdigest()[:12]   # names this exact file in responses and logs
    calibration = Calibration.from_dict(metadata["calibration"]) if "calibration" in metadata else None
    baseline = tuple(float(v) for v in metadata["baseline"]) if "baseline" in metadata else None
    if baseline is not None and len(baseline) != preprocessor.n_inputs:
        raise ValueError(f"the baseline has {len(baseline)} values for {preprocessor.n_inputs} inputs")
    return Regressor(preprocessor, network, config, info, calibration, baseline)
