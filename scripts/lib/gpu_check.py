"""scripts/gpu-check: the training and serving code on a machine's GPUs, with the figures to record.

    scripts/gpu-check [--out DIR]        # on a machine with an NVIDIA GPU and a CUDA build of torch

Runs `train` and `serve` from this source tree with the Python that holds CUDA torch (a GPU machine
without Docker, such as the device machines DEVELOPERS.md describes; the CUDA images run the same code):
1. the used cars, split 80/20: the default model trained on one GPU, on the CPU, and with one process per
   GPU (torch.distributed, NCCL; the same as one GPU when the machine has one), the linear model (its
   least-squares solve) and the default model streamed from disk (data_loading=stream) on the GPU, each
   with its held-out RMSE and wall time;
2. a synthetic used-car set of SYNTHETIC_ROWS rows: training throughput (rows/s over the epochs after the
   first) on the GPU and on the CPU;
3. `serve` on the GPU with two workers (worker i on GPU i mod n): the device each worker loaded on,
   single-row CSV latency and throughput over one keep-alive connection, one 10,000-row request, and the
   served predictions against the same artifact on the CPU.
Prints a markdown table (and writes it to DIR/gpu-check.md). Exits 1 if any step failed.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model import artifact  # noqa: E402
from model.table import Table  # noqa: E402

CARS = ROOT / "data" / "toyota_corolla.csv"
SYNTHETIC_ROWS = 400_000
TRAIN = [sys.executable, "-c", "from container.train import main; main()"]
SERVE = [sys.executable, "-c", "from container.serve import main; main()"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device here; run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    rows: list[tuple[str, str]] = [
        ("machine", f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
                    f"{torch.version.cuda}, {os.cpu_count()} CPUs")]
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        header, train_lines, test_lines = _split_cars()
        test = _table(header, test_lines)
        jobs = {"one GPU": ({"device": "cuda"}, {}),
                "CPU": ({"device": "cpu"}, {}),
                f"one process per GPU ({gpus})": ({"device": "cuda"},
                                                  {"HYPERPLANE_PROCESSES_PER_HOST": str(gpus)}),
                "linear model, one GPU": ({"device": "cuda", "hidden_layers": ""}, {}),
                "linear model, CPU": ({"device": "cpu", "hidden_layers": ""}, {}),
                "streamed from disk, one GPU": ({"device": "cuda", "data_loading": "stream"}, {})}
        for name, (hyperparameters, env) in jobs.items():
            job = _lay_out(work / re.sub(r"\W+", "-", name), header, train_lines, hyperparameters)
            outcome = _train(job, env)
            if outcome["code"] != 0:
                failures.append(f"training ({name}) exited {outcome['code']}: {outcome['tail']}")
                continue
            rmse = _held_out_rmse(job, test)
            rows.append((f"train on the used cars, {name}",
                         f"held-out RMSE {rmse:,.0f}, {outcome['seconds']:.1f} s, best epoch "
                         f"{outcome['metrics']['best_epoch']} of {outcome['metrics']['epochs_run']}; "
                         f"{outcome['first_line']}"))
        synthetic = _synthetic(header, train_lines)
        for device in ("cuda", "cpu"):
            job = _lay_out(work / f"synthetic-{device}", header, synthetic,
                           {"device": device, "epochs": "3", "patience": "3", "batch_size": "1024",
                            "checkpoint_epochs": "0", "checkpoint_seconds": "0"})
            outcome = _train(job, {})
            if outcome["code"] != 0:
                failures.append(f"synthetic training on {device} exited {outcome['code']}: {outcome['tail']}")
                continue
            rows.append((f"training throughput, {SYNTHETIC_ROWS:,} rows, {device}",
                         f"{outcome['rows_per_s']:,.0f} rows/s (epochs 2-3, batch 1024, 5 x MLP 128-64)"))
        served = _serve(work / "one-GPU", header, test_lines, failures)
        rows.extend(served)
    table = "| check | result |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    if failures:
        table += "\nFAILED:\n" + "".join(f"- {f}\n" for f in failures)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-check.md").write_text(table)
    return 1 if failures else 0


def _python_path() -> str:
    """This tree first, then whatever the caller added (the device machines' carried wheels)."""
    return os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))


def _split_cars() -> tuple[str, list[str], list[str]]:
    header, *lines = CARS.read_text().splitlines(keepends=True)
    order = np.random.default_rng(7).permutation(len(lines))
    cut = len(lines) // 5
    return header, [lines[i] for i in sorted(order[cut:])], [lines[i] for i in sorted(order[:cut])]


def _synthetic(header: str, lines: list[str]) -> list[str]:
    """SYNTHETIC_ROWS used-car rows: training rows drawn with replacement, price, age and km jittered."""
    rng = np.random.default_rng(11)
    names = header.strip().split(",")
    picked = rng.integers(0, len(lines), SYNTHETIC_ROWS)
    noise = rng.normal(1.0, 0.03, (SYNTHETIC_ROWS, 2))
    out = []
    for index, (a, b) in zip(picked, noise, strict=True):
        cells = lines[index].rstrip("\n").split(",")
        cells[0] = f"{float(cells[0]) * a:.0f}"
        km = names.index("KM")
        cells[km] = f"{float(cells[km]) * b:.0f}"
        out.append(",".join(cells) + "\n")
    return out


def _lay_out(job: pathlib.Path, header: str, lines: list[str], hyperparameters: dict[str, str]) -> pathlib.Path:
    (job / "input/config").mkdir(parents=True)
    (job / "input/data/train").mkdir(parents=True)
    (job / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    (job / "input/config/resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    (job / "input/data/train/cars.csv").write_text(header + "".join(lines))
    return job


def _train(job: pathlib.Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    process = subprocess.Popen(TRAIN, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), "PYTHONPATH": _python_path(), **env})
    assert process.stdout is not None
    epoch_times: list[float] = []
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch="):
            epoch_times.append(time.monotonic())
    code = process.wait()
    seconds = time.monotonic() - started
    first = next((line.split(": ", 1)[-1].strip() for line in lines if "world_size=" in line), "")
    outcome: dict[str, Any] = {"code": code, "seconds": seconds, "tail": "".join(lines[-15:]), "first_line": first}
    if code == 0:
        outcome["metrics"] = json.loads((job / "output/data/metrics.json").read_text())
        if len(epoch_times) >= 2:
            train_rows = outcome["metrics"]["train"]["rows"]
            outcome["rows_per_s"] = train_rows * (len(epoch_times) - 1) / (epoch_times[-1] - epoch_times[0])
    return outcome


def _table(header: str, lines: list[str]) -> Table:
    rows = list(csv.reader(io.StringIO(header + "".join(lines))))
    return Table.from_rows(rows[0], rows[1:])


def _held_out_rmse(job: pathlib.Path, test: Table) -> float:
    regressor = artifact.load(job / "model")
    predicted = regressor.predict(test.without("Price"))
    truth = test.columns["Price"].astype(np.float64)
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


def _serve(job: pathlib.Path, header: str, test_lines: list[str], failures: list[str]) -> list[tuple[str, str]]:
    if not (job / "model").is_dir():
        failures.append("serving skipped: the one-GPU training left no model")
        return []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = job / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(SERVE, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                  env={**os.environ, "SAGEMAKER_BASE_DIR": str(job), "PYTHONPATH": _python_path(),
                                       "SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    rows: list[tuple[str, str]] = []
    try:
        connection = _wait_ready(port, server)
        devices = sorted(set(re.findall(r"ready: model \S+ on (\S+),", log.read_text())))
        rows.append(("serve: the workers' devices", ", ".join(devices) or "not logged"))
        features = [line.rstrip("\n").split(",", 1)[1] for line in test_lines]
        latencies = []
        for i in range(2000):
            body = features[i % len(features)]
            began = time.perf_counter()
            answer = _post(connection, body)
            latencies.append(time.perf_counter() - began)
            if i == 0:
                float(answer.strip())
        latencies.sort()
        rows.append(("serve: single-row CSV, one keep-alive client",
                     f"p50 {statistics.median(latencies) * 1e3:.2f} ms, p99 "
                     f"{latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms, {len(latencies) / sum(latencies):,.0f} "
                     "req/s"))
        big = "\n".join(features[i % len(features)] for i in range(10_000))
        began = time.perf_counter()
        served = np.array([float(v) for v in _post(connection, big).split()])
        rows.append(("serve: one 10,000-row CSV request", f"{(time.perf_counter() - began) * 1e3:.0f} ms"))
        names = header.strip().split(",")[1:]
        table = Table.from_rows(names, [row.split(",") for row in big.split("\n")])
        reference = artifact.load(job / "model").to("cpu").predict(table)
        worst = float(np.max(np.abs(served - reference) / np.abs(reference)))
        rows.append(("serve: GPU answers against the CPU", f"max relative difference {worst:.2e} over 10,000 rows"))
        if worst > 1e-4:
            failures.append(f"served predictions differ from the CPU's by {worst:.2e}")
    except Exception as error:
        failures.append(f"serving: {type(error).__name__}: {error}; log tail: {log.read_text()[-1500:]}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def _wait_ready(port: int, server: subprocess.Popen[bytes]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"serve exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return connection
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("serve did not answer /ping with 200 within 180 s")


def _post(connection: http.client.HTTPConnection, body: str) -> str:
    connection.request("POST", "/invocations", body=body.encode(), headers={"Content-Type": "text/csv",
                                                                             "Accept": "text/csv"})
    response = connection.getresponse()
    text = response.read().decode()
    if response.status != 200:
        raise RuntimeError(f"/invocations answered {response.status}: {text[:300]}")
    return text


if __name__ == "__main__":
    sys.exit(main())
