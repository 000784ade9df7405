"""A user's own training script for hyperplane-train's script mode (what `entry_point="train.py"` names).

The image runs it through sagemaker-training as `python train.py --epochs 300 --learning_rate 0.05 ...`
(hyperparameters become `--name value`), with every SM_* variable set. It reads the CSV files (with a
header row) in SM_CHANNEL_TRAIN, fits a small PyTorch network on the numeric columns to predict `--target`,
and writes SM_MODEL_DIR/model.pt (tensors and names only, so inference.py loads it with
weights_only=True) and SM_OUTPUT_DATA_DIR/metrics.json.

On SIGTERM (a stopped or spot-interrupted job) it finishes the current epoch, saves the model it has, and
exits with 143, so the job's failure file says it was stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import signal
import sys

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Price")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_dir", default=os.environ.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--train", default=os.environ.get("SM_CHANNEL_TRAIN", "data"))
    parser.add_argument("--output_data_dir", default=os.environ.get("SM_OUTPUT_DATA_DIR", "output"))
    return parser.parse_args()


def read_numeric_table(folder: str, target: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every *.csv below `folder`; the columns whose every value is a number, the target split off."""
    rows: list[dict[str, str]] = []
    for path in sorted(pathlib.Path(folder).rglob("*.csv")):
        with path.open(newline="") as file:
            rows.extend(csv.DictReader(file))
    if not rows:
        sys.exit(f"no CSV rows found in {folder}")
    if target not in rows[0]:
        raise ValueError(f"target column {target!r} is not in the data (columns: {', '.join(rows[0])})")

    def numeric(name: str) -> bool:
        try:
            return all(math.isfinite(float(row[name])) for row in rows)
        except ValueError:
            return False

    features = [name for name in rows[0] if name != target and numeric(name)]
    x = torch.tensor([[float(row[name]) for name in features] for row in rows], dtype=torch.float32)
    y = torch.tensor([float(row[target]) for row in rows], dtype=torch.float32)
    return features, x, y


def network(inputs: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))


def main() -> None:
    args = parse_args()
    stop_signal: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_signal.append(signum))
    torch.manual_seed(args.seed)

    features, x, y = read_numeric_table(args.train, args.target)
    x_mean, x_std = x.mean(0), x.std(0).clamp_min(1e-6)
    y_mean, y_std = y.mean(), y.std().clamp_min(1e-6)
    xs, ys = (x - x_mean) / x_std, (y - y_mean) / y_std
    net = network(len(features), args.hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.learning_rate)
    print(f"training on {len(y)} rows, features: {', '.join(features)}", flush=True)

    epoch = 0
    for epoch in range(1, args.epochs + 1):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xs).squeeze(1), ys)
        loss.backward()
        optimiser.step()
        if epoch % 50 == 0 or epoch == args.epochs:
            print(f"epoch={epoch} train_loss={loss.item():.6g}", flush=True)
        if stop_signal:
            print(f"SIGTERM received: saving the model after epoch {epoch} and stopping", flush=True)
            break

    model_dir = pathlib.Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "features": features, "target": args.target,
                "hidden": args.hidden, "x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std},
               model_dir / "model.pt")
    with torch.no_grad():
        rmse = float(((net(xs).squeeze(1) * y_std + y_mean - y) ** 2).mean().sqrt())
    pathlib.Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.output_data_dir) / "metrics.json").write_text(
        json.dumps({"train_rmse": rmse, "epochs": epoch}) + "\n")
    print(f"train_rmse={rmse:.6g}; model written to {model_dir / 'model.pt'}", flush=True)
    if stop_signal:
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
