"""The checkpoint file: everything that decides the rest of a training run, written atomically.

    write(snapshot, folder)              -> folder/hyperplane-checkpoint.pt (replaced atomically)
    read(folder, identity)               -> the Snapshot, None when there is none, CheckpointError otherwise
    remove(folder)                       -> the checkpoint and any temporary file are gone

A Snapshot is taken between two optimiser steps and holds the network and optimiser state, the batch-order
generator's state at the start of the current epoch (the epoch's permutation is drawn again from it and
the batches already done are skipped), the global torch RNG state (dropout) and CUDA's, the early-stopping
state and the position (epochs done, batches done in the current epoch, their loss sum). Training on from
it gives exactly the model an uninterrupted run gives.

A checkpoint belongs to one job: its Identity (the training settings, which exclude the checkpoint
frequencies, and the fingerprints of the training and validation data) must equal the resuming job's, or
`read` refuses it, naming what differs; it never mixes two trainings. A damaged, truncated or foreign
file is refused too. The file is a torch.save of plain data and tensors, read only with
`torch.load(weights_only=True)`, so a checkpoint can never run code.

Writing goes to a temporary file in the same folder, which is flushed and fsynced, then renamed over the
checkpoint (os.replace) and the folder fsynced: a crash at any moment leaves the previous checkpoint or
the new one, never a mix. A temporary file left by a killed writer is ignored and removed by `read`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

CHECKPOINT_NAME = "hyperplane-checkpoint.pt"
TEMPORARY_PREFIX = f".{CHECKPOINT_NAME}."   # ".hyperplane-checkpoint.pt.<random>.tmp"
TEMPORARY_SUFFIX = ".tmp"
FORMAT = "hyperplane-checkpoint"
FORMAT_VERSION = 1

StateDict = dict[str, Any]


class CheckpointError(Exception):
    """The checkpoint cannot be resumed from: it belongs to another job, or it is damaged."""


@dataclass(frozen=True)
class Identity:
    """What makes two runs the same run: equal identities, equal models."""

    settings: dict[str, Any]            # TrainingConfig.training_settings()
    train_fingerprint: str              # Table.fingerprint() of the training channel
    validation_fingerprint: str | None  # of the validation channel; None: held out from the training rows


@dataclass(frozen=True)
class Position:
    """Where a run stands between two optimiser steps."""

    epochs_done: int
    batches_done: int = 0   # optimiser steps done in epoch epochs_done + 1

    def describe(self) -> str:
        if self.batches_done:
            return f"at epoch {self.epochs_done + 1}, batch {self.batches_done}"
        return f"after epoch {self.epochs_done}" if self.epochs_done else "before the first epoch"


@dataclass(frozen=True)
class Snapshot:
    identity: Identity
    position: Position
    loss_sum: float                     # the current epoch's training loss so far (row-weighted sum)
    network: StateDict
    optimizer: StateDict
    batch_order: torch.Tensor | None    # generator state at the start of the current epoch (None: L-BFGS)
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]        # one state per visible GPU; empty on the CPU
    best_loss: float
    best_epoch: int
    best_network: StateDict
    device: str                         # where it was trained: resuming elsewhere is not bit-identical


def path_in(folder: pathlib.Path) -> pathlib.Path:
    return folder / CHECKPOINT_NAME


def write(snapshot: Snapshot, folder: pathlib.Path) -> pathlib.Path:
    """Writes the snapshot atomically; OSError if the folder cannot be created or written."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "torch_version": str(torch.__version__),
               "identity": {"settings": snapshot.identity.settings,
                            "train_fingerprint": snapshot.identity.train_fingerprint,
                            "validation_fingerprint": snapshot.identity.validation_fingerprint},
               "position": {"epochs_done": snapshot.position.epochs_done,
                            "batches_done": snapshot.position.batches_done,
                            "loss_sum": snapshot.loss_sum},
               "network": _cpu(snapshot.network), "optimizer": _cpu(snapshot.optimizer),
               "rng": {"batch_order": snapshot.batch_order, "torch": snapshot.torch_rng,
                       "cuda": list(snapshot.cuda_rng)},
               "early_stopping": {"best_loss": snapshot.best_loss, "best_epoch": snapshot.best_epoch,
                                  "best_network": _cpu(snapshot.best_network)},
               "device": snapshot.device}
    path = path_in(folder)
    write_atomically(payload, path)
    return path


def write_atomically(payload: Any, path: pathlib.Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX)
    try:
        os.fchmod(descriptor, 0o644)   # mkstemp's 0600 would hide the file from the folder's other users
        with os.fdopen(descriptor, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def read(folder: pathlib.Path, identity: Identity) -> Snapshot | None:
    """The folder's checkpoint if it belongs to this identity; None without one; CheckpointError if it is
    damaged or belongs to another job."""
    for leftover in _temporaries(folder):
        with contextlib.suppress(OSError):   # a writer killed mid-write; the checkpoint itself is intact
            leftover.unlink()
    path = path_in(folder)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(f"the checkpoint {path} cannot be resumed from: it is damaged, truncated or not "
                              f"plain data ({_load_failure(error)}); delete it (or use a new checkpoint folder) "
                              "to train from the start") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a hyperplane checkpoint; delete it (or use a new checkpoint "
                              "folder) to train from the start")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"the checkpoint {path} has format version {payload.get('format_version')}; this "
                              f"code reads version {FORMAT_VERSION}: resume with the image that wrote it")
    try:
        snapshot = _snapshot(payload)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"the checkpoint {path} is damaged ({type(error).__name__}: {error}); delete it "
                              "(or use a new checkpoint folder) to train from the start") from error
    differences = _differences(snapshot.identity, identity)
    if differences:
        raise CheckpointError(f"the checkpoint {path} belongs to another training job ({'; '.join(differences)}); "
                              "resuming would mix two trainings: start this job with an empty checkpoint folder, "
                              "or with the checkpoint's data and hyperparameters to resume it")
    return snapshot


def remove(folder: pathlib.Path) -> bool:
    """Deletes the checkpoint and any temporary file of ours (nothing else in the folder); whether there
    was a checkpoint. OSError if one cannot be deleted."""
    path = path_in(folder)
    existed = path.exists()
    for stale in (*_temporaries(folder), *([path] if existed else [])):
        stale.unlink(missing_ok=True)
    if existed:
        _fsync_folder(folder)
    return existed


def _temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(folder.glob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}")) if folder.is_dir() else []


def _load_failure(error: Exception) -> str:
    """torch's reason in one line, without its advice to load with weights_only=False: exactly what must
    not happen to a file that may hold code."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if line.startswith("WeightsUnpickler error:")]
    return (refused or lines or [type(error).__name__])[0]


def _differences(theirs: Identity, ours: Identity) -> list[str]:
    found = []
    names = sorted(set(theirs.settings) | set(ours.settings))
    changed = [f"{name}={ours.settings.get(name)!r} here, {theirs.settings.get(name)!r} in the checkpoint"
               for name in names if theirs.settings.get(name) != ours.settings.get(name)]
    if changed:
        found.append("other hyperparameters: " + ", ".join(changed))
    if theirs.train_fingerprint != ours.train_fingerprint:
        found.append(f"other training data: fingerprint {ours.train_fingerprint[:12]} here, "
                     f"{theirs.train_fingerprint[:12]} in the checkpoint")
    if theirs.validation_fingerprint != ours.validation_fingerprint:
        found.append(f"other validation data: {_describe_validation(ours.validation_fingerprint)} here, "
                     f"{_describe_validation(theirs.validation_fingerprint)} in the checkpoint")
    return found


def _describe_validation(fingerprint: str | None) -> str:
    return f"fingerprint {fingerprint[:12]}" if fingerprint else "no validation channel"


def _snapshot(payload: dict[str, Any]) -> Snapshot:
    identity, position, rng, early = (payload[key] for key in ("identity", "position", "rng", "early_stopping"))
    snapshot = Snapshot(
        identity=Identity(dict(identity["settings"]), str(identity["train_fingerprint"]),
                          identity["validation_fingerprint"]),
        position=Position(int(position["epochs_done"]), int(position["batches_done"])),
        loss_sum=float(position["loss_sum"]),
        network=dict(payload["network"]), optimizer=dict(payload["optimizer"]),
        batch_order=rng["batch_order"], torch_rng=rng["torch"], cuda_rng=list(rng["cuda"]),
        best_loss=float(early["best_loss"]), best_epoch=int(early["best_epoch"]),
        best_network=dict(early["best_network"]), device=str(payload["device"]))
    if snapshot.position.epochs_done < 0 or snapshot.position.batches_done < 0:
        raise ValueError(f"negative position {snapshot.position}")
    for name, value in (("batch_order", snapshot.batch_order), ("torch_rng", snapshot.torch_rng)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}, not a tensor")
    return snapshot


def _cpu(state: Any) -> Any:
    """The state (nested dicts, lists, tensors) with every tensor on the CPU; CPU tensors are not copied,
    since torch.save writes them before training goes on."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: _cpu(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu(value) for value in state)
    return state


def _fsync_folder(folder: pathlib.Path) -> None:
    # Makes the rename itself durable. Some filesystems (network and FUSE mounts) cannot fsync a folder;
    # the file's own data is already on disk then, and the rename is as durable as that mount allows.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
