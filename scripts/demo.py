"""The demo's Python half (scripts/demo sets up the machine and images first, then runs this).

Lays out a SageMaker job in build/demo/ (train channel, test channel, default hyperparameters), runs
`docker run hyperplane-train:latest train` on it, serves the artifact with hyperplane-serve:latest, sends
five held-out cars to /invocations as CSV and as JSON and prints the predicted prices next to the real ones.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
JOB = ROOT / "build" / "demo"
SHOWN = ("Age_08_04", "KM", "Fuel_Type", "Color", "Metallic_Rim")


def main() -> None:
    with (ROOT / "data" / "toyota_corolla.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    random.Random(7).shuffle(rows)
    test, train, examples = rows[:200], rows[200:], rows[:5]
    lay_out(header, train, test)

    print(f"\n== training in hyperplane-train:latest (job folder {JOB})", flush=True)
    started = time.monotonic()
    subprocess.run(["docker", "run", "--rm", "-v", f"{JOB}:/opt/ml", "hyperplane-train:latest", "train"],
                   check=True)
    print(f"   trained in {time.monotonic() - started:.0f} s")

    port = free_port()
    print(f"\n== serving from hyperplane-serve:latest on http://127.0.0.1:{port}", flush=True)
    container = subprocess.run(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080",
                                "-v", f"{JOB / 'model'}:/opt/ml/model:ro", "hyperplane-serve:latest", "serve"],
                               check=True, capture_output=True, text=True).stdout.strip()
    try:
        wait_until_ready(port)
        features = [name for name in header if name != "Price"]
        cars = [[cell for name, cell in zip(header, row, strict=True) if name != "Price"] for row in examples]
        body = "\n".join(",".join(car) for car in cars) + "\n"
        by_csv = [float(x) for x in call(port, body.encode(), "text/csv").split()]
        instances = [dict(zip(features, car, strict=True)) for car in cars]
        by_json = json.loads(call(port, json.dumps({"instances": instances}).encode(), "application/json"))
        show(header, examples, by_csv, by_json["predictions"])
    finally:
        subprocess.run(["docker", "stop", "-t", "5", container], capture_output=True, check=False)

    metrics = json.loads((JOB / "output" / "data" / "metrics.json").read_text())
    print(f"\nheld-out test set ({int(metrics['test']['rows'])} cars): RMSE EUR {metrics['test']['rmse']:.0f}, "
          f"MAE EUR {metrics['test']['mae']:.0f}, R2 {metrics['test']['r2']:.3f}")
    print(f"artifact: {JOB / 'model'}   metrics: {JOB / 'output' / 'data' / 'metrics.json'}")


def lay_out(header: list[str], train: list[list[str]], test: list[list[str]]) -> None:
    shutil.rmtree(JOB, ignore_errors=True)
    for channel, rows in (("train", train), ("test", test)):
        folder = JOB / "input" / "data" / channel
        folder.mkdir(parents=True)
        with (folder / "cars.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([header, *rows])
    config = JOB / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text("{}")
    (config / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"ContentType": "text/csv", "TrainingInputMode": "File"},
         "test": {"ContentType": "text/csv", "TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))


def call(port: int, body: bytes, content_type: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": content_type, "Accept": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def wait_until_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    sys.exit(f"the server on port {port} did not become ready within {timeout:.0f} s")


def show(header: list[str], examples: list[list[str]], by_csv: list[float], by_json: list[float]) -> None:
    index = {name: header.index(name) for name in (*SHOWN, "Price")}
    out = io.StringIO()
    out.write(f"\n{'age (months)':>12} {'km':>8} {'fuel':>7} {'colour':>7} {'alloys':>6} | {'real EUR':>9} "
              f"{'CSV EUR':>9} {'JSON EUR':>9}\n")
    for row, csv_price, json_price in zip(examples, by_csv, by_json, strict=True):
        cells = [row[index[name]] for name in SHOWN]
        out.write(f"{cells[0]:>12} {cells[1]:>8} {cells[2]:>7} {cells[3]:>7} {'yes' if cells[4] == '1' else 'no':>6} | "
                  f"{float(row[index['Price']]):>9.0f} {csv_price:>9.0f} {json_price:>9.0f}\n")
    print(out.getvalue(), end="")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    main()
