"""Single-row A/B on the host: hyperplane's server run from several source trees, and the floor, side by
side in one run; for each, throughput, latency and the CPU time its processes spend per request.

    .venv-bench/bin/python scripts/lib/serve_ab.py [--form csv|json] [--repeats 5] [--seconds 3]
                                                   [--connections 8] TREE [TREE ...]

A TREE is a directory holding `container/` and `model/` (a copy of the working tree with one change, say).
Each runs as `python -P -m container.serve` with PYTHONPATH=TREE, 2 workers, on the bench's model: -P
matters, because `python -m` otherwise puts the working directory ahead of PYTHONPATH and every tree
would run the same code. The floor is scripts/lib/bench.py's: gunicorn with the same worker class and
count and a constant WSGI app. wrk drives one server at a time, each in turn every round, so a slow spell
of this shared machine hits them all; CPU time is read from /proc for the master and every worker.

It prints the medians; "cpu/req" is the number to compare between trees (it moves by ~5 us between runs
of the same code), "ratio" is throughput against the floor's in the same round. docs/benchmarks.md quotes
its figures in the notes under "Serving and training speed".
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack

import bench
import bench_compare

PYTHON = str(bench.ROOT / ".venv" / "bin" / "python")
TICKS = os.sysconf("SC_CLK_TCK")


def server_pids(port: int) -> set[int]:
    """The processes listening on the port (gunicorn's master and workers) and their children."""
    listing = subprocess.run(["ss", "-tlnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", listing)}
    for pid in list(pids):
        for task in os.listdir(f"/proc/{pid}/task"):
            pids |= {int(child) for child in pathlib.Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
    return pids


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])   # utime + stime, all threads
    return total / TICKS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=pathlib.Path)
    parser.add_argument("--form", choices=("csv", "json"), default="csv")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    model_dir = bench.ensure_model()
    base = pathlib.Path(tempfile.mkdtemp(prefix="serve-ab-"))
    (base / "model").symlink_to(model_dir)
    bench.WORK.mkdir(parents=True, exist_ok=True)
    (bench.WORK / "floor.py").write_text(bench.FLOOR_APP)
    row = bench.DATA.read_text().splitlines()[1].split(",", 1)[1]
    content_type, body = ("text/csv", (row + "\n").encode()) if args.form == "csv" \
        else ("application/json", bench.json_row(row))

    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for index, tree in enumerate(args.trees):
            port = bench.free_port()
            env = {"PYTHONPATH": str(tree.resolve()), "SAGEMAKER_BASE_DIR": str(base),
                   "SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": str(bench.WORKERS)}
            stack.enter_context(bench_compare._process([PYTHON, "-P", "-m", "container.serve"], env, port, "/ping",
                                                       bench.WORK / f"serve-ab-{index}.log"))
            ports[str(tree)] = port
        floor = bench.free_port()
        stack.enter_context(bench_compare._process(
            [PYTHON, "-m", "gunicorn", "-w", str(bench.WORKERS), "-k", "container.serving.worker.PingLaneWorker",
             "--threads", "8", "--keep-alive", "60", "-b", f"127.0.0.1:{floor}", "--chdir", str(bench.WORK),
             "floor:app"], {"PYTHONPATH": str(bench.ROOT)}, floor, "/", bench.WORK / "serve-ab-floor.log"))
        ports["floor"] = floor
        for port in ports.values():
            bench.wrk(port, content_type, body, args.connections, 1)   # warm-up
        # after the warm-up: the floor answers once one worker is up, and gunicorn starts the other meanwhile
        pids = {name: server_pids(port) for name, port in ports.items()}
        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in ports}
        for _ in range(args.repeats):
            for name, port in ports.items():
                before = cpu_seconds(pids[name])
                result = bench.wrk(port, content_type, body, args.connections, args.seconds)
                spent = cpu_seconds(pids[name]) - before
                runs[name].append((result["rps"], spent / (result["rps"] * args.seconds) * 1e6,
                                   result["p50"], result["p99"]))
    for name, rounds in runs.items():
        ratio = statistics.median(mine[0] / floor_round[0] for mine, floor_round in zip(rounds, runs["floor"],
                                                                                       strict=True))
        print(f"{name}: {statistics.median(r[0] for r in rounds):.0f} req/s ({ratio:.2f}x the floor), "
              f"cpu/req {statistics.median(r[1] for r in rounds):.1f} us "
              f"(rounds: {', '.join(f'{r[1]:.0f}' for r in rounds)}), "
              f"p50 {statistics.median(r[2] for r in rounds):.2f} ms, "
              f"p99 {statistics.median(r[3] for r in rounds):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
