"""Streamed training's wall time, throughput and peak memory as the data grows (scripts/stream-bench).

    python scripts/lib/stream_bench.py [--rows 500000] [--factor 10] [--small 20000] [--out FILE]

Generates a seeded synthetic used-car table (the columns of data/toyota_corolla.csv that matter most:
price, age, km, fuel, hp, colour, automatic, cc, doors, weight, airco; prices from a log-linear formula
with noise) as CSV under a temporary SageMaker tree, at `rows` (1x) and `rows * factor` (10x), and a small
set of `small` rows. Each measurement runs in its own child process (`run`), so that its peak RSS
(os.wait4's ru_maxrss of that child alone) is its own: streamed training (container/streaming.py) of the
linear model and of a short MLP run (2 epochs) on every set, and the in-memory path (read_channels +
fit) on the small and the 1x sets. Writes a Markdown table with the exact command to `out`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HEADER = "Price,Age,KM,Fuel_Type,HP,Color,Automatic,CC,Doors,Weight,Airco\n"
FUELS = np.array(["Petrol", "Diesel", "CNG"])
COLOURS = np.array(["Blue", "Silver", "Black", "Grey", "Red", "Green", "White", "Beige", "Yellow", "Violet"])
BLOCK = 500_000
MODELS = {"linear": {"hidden_layers": ""},
          "mlp": {"hidden_layers": "64,32", "ensemble_size": "1", "epochs": "2", "batch_size": "512",
                  "learning_rate": "0.003"}}


def generate(path: pathlib.Path, rows: int, seed: int) -> None:
    """`rows` synthetic cars as CSV, written block by block (the generator never holds the whole set)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        out.write(HEADER)
        for start in range(0, rows, BLOCK):
            n = min(BLOCK, rows - start)
            age = rng.integers(1, 80, n)
            km = np.maximum(0, age * 1400 + rng.normal(0, 20_000, n)).astype(np.int64)
            fuel = rng.choice(3, n, p=[0.88, 0.1, 0.02])
            hp = rng.choice([69, 86, 97, 110, 116, 192], n)
            colour = rng.integers(0, 10, n)
            automatic = (rng.random(n) < 0.06).astype(np.int64)
            cc = np.where(fuel == 1, 2000, rng.choice([1300, 1400, 1600, 1800], n))
            doors = rng.choice([2, 3, 4, 5], n, p=[0.01, 0.43, 0.14, 0.42])
            weight = 1000 + hp + rng.integers(0, 150, n)
            airco = (rng.random(n) < 0.5).astype(np.int64)
            log_price = (10.1 - 0.012 * age - 2.5e-6 * km + 0.0025 * hp + 0.06 * airco + 0.04 * automatic
                         + 0.05 * (fuel == 1) + 0.0004 * (weight - 1100) + rng.normal(0, 0.09, n))
            price = (np.round(np.exp(log_price) / 50) * 50).astype(np.int64)
            columns = [price.astype(str), age.astype(str), km.astype(str), FUELS[fuel], hp.astype(str),
                       COLOURS[colour], automatic.astype(str), cc.astype(str), doors.astype(str),
                       weight.astype(str), airco.astype(str)]
            out.write("\n".join(",".join(row) for row in zip(*columns, strict=True)) + "\n")


def lay_out(root: pathlib.Path, rows: int, seed: int) -> pathlib.Path:
    """A SageMaker tree whose train channel holds `rows` synthetic rows (generated once per size)."""
    data = root / "input" / "data" / "train" / "cars.csv"
    if not data.exists():
        # In a child: Linux hands a parent's peak RSS at fork on to the ru_maxrss of the children it starts
        # later, so a driver that generated the data itself would inflate every measurement after it.
        subprocess.run([sys.executable, __file__, "generate", str(data), str(rows), str(seed)], check=True)
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    return root


def run(root: pathlib.Path, mode: str, model: str) -> dict[str, Any]:
    """One measurement in this process (the child): train, then report what it did."""
    import logging

    from container.channels import read_channels
    from container.hyperparameters import parse_hyperparameters
    from container.paths import SageMakerPaths
    from container.streaming import train_streaming
    from model.distributed import Group
    from model.training import fit

    logging.disable(logging.WARNING)
    config = parse_hyperparameters({**MODELS[model], "data_loading": mode, "checkpoint_epochs": "0",
                                    "checkpoint_seconds": "0"})
    paths = SageMakerPaths(root)
    started = time.perf_counter()
    if mode == "stream":
        result = train_streaming(paths, config, Group.single(), None).result
    else:
        channels = read_channels(paths, None, config.csv_header, max_bytes=1 << 40)
        result = fit(channels.train, config, channels.validation, channels.test)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "validation_rmse": result.metrics["validation"]["rmse"],
            "rows": int(result.regressor.info["training_rows"]), "epochs_run": result.epochs_run}


def measure(root: pathlib.Path, mode: str, model: str) -> dict[str, Any]:
    """`run` in a child process; its own peak RSS from os.wait4."""
    # One torch thread unless told otherwise: on a shared 2-core machine two threads that wait for each
    # other made an MLP step 30 times slower (51 ms against 1.5 ms), which would measure the neighbours.
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    child = subprocess.Popen([sys.executable, __file__, "run", str(root), mode, model], stdout=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{mode} {model} on {root} failed with exit code {child.returncode}")
    report = json.loads(output.decode().strip().splitlines()[-1])
    report["peak_rss_mb"] = usage.ru_maxrss / 1024   # Linux: kilobytes
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the 1x set")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--small", type=int, default=20_000, help="rows of the small set")
    parser.add_argument("--work", type=pathlib.Path, default=None, help="where the data goes (default: a temp dir)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/streaming-figures.md"))
    parser.add_argument("--skip-memory-1x", action="store_true", help="no in-memory run on the 1x set")
    args = parser.parse_args()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="stream-bench-"))
    sizes = {"small": args.small, "1x": args.rows, f"{args.factor}x": args.rows * args.factor}
    plan = [(size, mode, model) for size in sizes for mode in ("memory", "stream") for model in MODELS
            if mode == "stream" or size == "small" or (size == "1x" and not args.skip_memory_1x)]
    lines = ["| set | rows | path | model | wall s | rows/s (rows x passes) | peak RSS MB | validation rmse |",
             "|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    for size, mode, model in plan:
        started = time.perf_counter()
        root = lay_out(work / size, sizes[size], seed=0)
        generated = time.perf_counter() - started
        report = measure(root, mode, model)
        passes = (3 if model == "linear" else 2 + report["epochs_run"]) if mode == "stream" else 1
        rate = report["rows"] / report["wall_s"]
        line = (f"| {size} | {report['rows']:,} | {mode} | {model} | {report['wall_s']:.1f} | {rate:,.0f} "
                f"({report['rows'] * passes / report['wall_s']:,.0f}) | {report['peak_rss_mb']:,.0f} | "
                f"{report['validation_rmse']:.1f} |")
        lines.append(line)
        print(line + (f"  (data generated in {generated:.0f} s)" if generated > 1 else ""), flush=True)
    command = " ".join(["scripts/stream-bench", *sys.argv[1:]])
    machine = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    args.out.write_text("\n".join([
        "## Streamed training: time and memory as the data grows", "",
        f"`{command}` ({machine}, load average {os.getloadavg()[0]:.1f} at the end; one torch thread per run "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}); torch {__import__('torch').__version__}; "
        "synthetic used-car CSV, 11 columns, seeded). Each row is one child process; peak RSS is that "
        "process's ru_maxrss. rows/s is training-channel "
        "rows per second of wall time; in brackets, rows read per second over all passes (streamed: the "
        "statistics pass, one per epoch (the linear model: one), and the metrics pass). MLP: 64-32, 1 member, "
        "2 epochs, batch 512.", "", *lines, ""]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        print(json.dumps(run(pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4])))
    elif len(sys.argv) > 1 and sys.argv[1] == "generate":
        generate(pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
