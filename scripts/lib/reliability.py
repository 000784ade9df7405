"""scripts/reliability's measurements: the serving image under load, faults and abuse, in one run, printed
as tables (docs/reliability.md, "Serving faults and load" and "Abuse", records one run).

    PYTHONPATH=. .venv/bin/python scripts/lib/reliability.py [--requests 100000] [--concurrency 32] ...

One container (`docker run -d -p 127.0.0.1:PORT:8080 ... hyperplane-serve:latest serve`) serves a model
trained here with the default architecture (5 MLPs 128,64) on the used-car data, and goes through:

  load      --requests requests (one, three, two and ten rows, CSV/JSON/JSON Lines in turn) from
            --concurrency keep-alive clients after a warm-up; /ping every 0.5 s; each worker's VmRSS and
            Pss (docker exec, /proc) after the warm-up and every 10% of the run
  saturate  the same clients sending 1 MiB (15,000-row) requests for 20 s; /ping every 0.2 s
  kill      a tenth of --requests with one worker SIGKILLed a quarter in: what fails, what /ping says,
            when the master reaps it and when the replacement is ready (the readiness folder, polled
            inside the container every 5 ms)
  abuse     --malformed malformed requests (tests/serving/malformed.py, --seed): statuses, workers
  sigterm   SIGTERM under load: requests answered, exit code, time to exit

Only 127.0.0.1 is ever contacted; every phase is bounded in requests and in time; the container is
removed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.container.docker import docker  # noqa: E402  (the repository root is put on the path first)
from tests.container.serve_container import Memory, ServeContainer  # noqa: E402
from tests.serving.load import Body, LoadResult, PingProbe, ping, run_load  # noqa: E402
from tests.serving.malformed import malformed_requests  # noqa: E402
from tests.serving.requests_data import ROWS  # noqa: E402

MODEL_DIR = ROOT / "build" / "reliability" / "model"
BODIES = [Body.csv(ROWS[:1]), Body.json(ROWS[1:4]), Body.jsonlines(ROWS[4:6]), Body.csv(ROWS[6:16])]
WARM_UP = 2_000


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, phase: str, what: str, value: str) -> None:
        self.rows.append((phase, what, value))
        print(f"  {phase:<9} {what:<44} {value}", flush=True)

    def table(self) -> str:
        lines = ["| phase | measure | result |", "|---|---|---|"]
        lines += [f"| {phase} | {what} | {value} |" for phase, what, value in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def train_model(folder: pathlib.Path) -> None:
    from model import artifact
    from model.config import TrainingConfig
    from model.training import fit
    from tests.conftest import read_cars

    if (folder / artifact.ARTIFACT_NAME).is_file():
        return
    result = fit(read_cars(), TrainingConfig(target="Price", epochs=100))
    artifact.save(result.regressor, folder)


class MemorySampler:
    """Samples every worker's memory on its own thread when asked, so that no client waits for docker."""

    def __init__(self, container: ServeContainer) -> None:
        self.container = container
        self.samples: list[tuple[int, dict[int, Memory]]] = []
        self._asks: queue.Queue[int | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ask(self, sent: int) -> None:
        self._asks.put(sent)

    def close(self) -> None:
        self._asks.put(None)
        self._thread.join(60)

    def _run(self) -> None:
        while (sent := self._asks.get()) is not None:
            self.samples.append((sent, self.container.workers()))


def load_phase(container: ServeContainer, report: Report, total: int, concurrency: int) -> None:
    run_load(container.port, BODIES, total=WARM_UP, concurrency=concurrency, deadline_s=300)
    sampler = MemorySampler(container)
    sampler.ask(0)
    step = max(1, total // 10)

    def sample(sent: int) -> None:
        if sent:   # 0 was sampled before the clients started
            sampler.ask(sent)

    with PingProbe(container.port, every_s=0.5) as probe:
        result = run_load(container.port, BODIES, total=total, concurrency=concurrency, deadline_s=1800,
                          on_progress=sample, progress_every=step)
    sampler.ask(total)
    sampler.close()
    _report_load(report, "load", result, probe, concurrency)
    _report_memory(report, sampler.samples, step)


def _report_load(report: Report, phase: str, result: LoadResult, probe: PingProbe, concurrency: int) -> None:
    failed = len(result.failures)
    report.add(phase, f"requests at concurrency {concurrency}", f"{len(result.outcomes):,} in "
               f"{result.ended - result.started:.1f} s ({result.rate:.0f}/s)")
    report.add(phase, "errors (not a complete 200)", f"{failed} ({dict(result.statuses())})")
    report.add(phase, "latency median / p99 / max", f"{ms(result.latency(0.5))} / {ms(result.latency(0.99))} / "
               f"{ms(result.latency(1.0))}")
    latencies = [p.latency for p in probe.pings]
    report.add(phase, "/ping median / max (answers)", f"{ms(statistics.median(latencies))} / "
               f"{ms(max(latencies))} ({dict(probe.statuses())})")


def _report_memory(report: Report, samples: list[tuple[int, dict[int, Memory]]], step: int) -> None:
    samples.sort(key=lambda sample: sample[0])
    pids = sorted(set.intersection(*(set(found) for _, found in samples)))
    for pid in pids:
        series = [(sent, found[pid]) for sent, found in samples]
        rss = " ".join(f"{memory.rss_kb / 1024:.1f}" for _, memory in series)
        report.add("memory", f"worker {pid} VmRSS MiB every {step:,} requests", rss)
        first, tenth, last = series[0][1], series[1][1], series[-1][1]
        report.add("memory", f"worker {pid} growth after warm-up / after 10%",
                   f"{(last.rss_kb - first.rss_kb) / 1024:+.1f} MiB ({last.rss_kb / first.rss_kb - 1:+.1%}) / "
                   f"{(last.rss_kb - tenth.rss_kb) / 1024:+.1f} MiB ({last.rss_kb / tenth.rss_kb - 1:+.1%}); "
                   f"Pss {first.pss_kb / 1024:.1f} -> {last.pss_kb / 1024:.1f} MiB")
    if len(pids) != len(samples[0][1]):
        report.add("memory", "workers replaced during the run", str(sorted(set(samples[0][1]) - set(pids))))


def saturate_phase(container: ServeContainer, report: Report, concurrency: int) -> None:
    big = Body.csv(ROWS * 600)   # 15,000 rows, about 1 MiB
    with PingProbe(container.port, every_s=0.2, timeout_s=30) as probe:
        result = run_load(container.port, [big], total=1_000_000, concurrency=concurrency, deadline_s=20)
    _report_load(report, "saturate", result, probe, concurrency)


# Run inside the container next to the kill: polls the readiness folder (readiness.py) every 5 ms and
# prints when the killed worker's file went (the master reaped it) and when a new worker's `.ready`
# appeared, on CLOCK_MONOTONIC, which the container shares with the host.
_WATCH_REPLACEMENT = """
import os, sys, time
victim, before = sys.argv[1], set(sys.argv[2:])
folder = next(f"/tmp/{name}" for name in os.listdir("/tmp") if name.startswith("hyperplane-readiness-"))
reaped = None
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    names = os.listdir(folder)
    if reaped is None and not any(name.startswith(victim + ".") for name in names):
        reaped = time.monotonic()
    new = [name for name in names if name.endswith(".ready") and name.split(".")[0] not in before]
    if reaped is not None and new:
        print(reaped, time.monotonic(), new[0].split(".")[0])
        break
    time.sleep(0.005)
"""


def kill_phase(container: ServeContainer, report: Report, total: int, concurrency: int) -> None:
    before = container.workers()
    victim = min(before)
    kill: dict[str, float] = {}
    watcher: list[subprocess.Popen[str]] = []

    def kill_a_quarter_in(sent: int) -> None:
        if sent == total // 4:
            watcher.append(subprocess.Popen(["docker", "exec", container.name, "python", "-c", _WATCH_REPLACEMENT,
                                             str(victim), *map(str, before)], stdout=subprocess.PIPE, text=True))
            time.sleep(0.5)   # the watcher is polling before the kill
            kill["started"] = time.monotonic()
            container.kill_worker(victim)
            kill["done"] = time.monotonic()

    with PingProbe(container.port, every_s=0.05) as probe:
        result = run_load(container.port, BODIES, total=total, concurrency=concurrency, deadline_s=600,
                          on_progress=kill_a_quarter_in, progress_every=total // 4)
    _report_load(report, "kill", result, probe, concurrency)
    lost = result.failures
    report.add("kill", "failed requests: all sent before the kill", f"{len(lost)}: "
               f"{all(o.started <= kill['done'] + 0.5 for o in lost)}")
    output, _ = watcher[0].communicate(timeout=90)
    if not output.strip():
        report.add("kill", "worker replaced", "not within 60 s")
        return
    reaped, ready, pid = output.split()
    report.add("kill", "worker reaped / replacement ready, after the kill",
               f"{ms(float(reaped) - kill['started'])} / {ms(float(ready) - kill['started'])} (worker {pid})")
    report.add("kill", "/ping answers in that window (503 before the change)",
               str(dict(Counter(p.status for p in probe.pings if float(reaped) <= p.at <= float(ready)))))


def abuse_phase(container: ServeContainer, report: Report, count: int, seed: int) -> None:
    import requests

    workers = set(container.workers())
    cases = malformed_requests(count=count, seed=seed)
    statuses: Counter[int | str] = Counter()
    started = time.monotonic()
    with requests.Session() as session:
        for case in cases:
            try:
                statuses[session.post(f"{container.url}/invocations", data=case.body, headers=case.headers(),
                                      timeout=60).status_code] += 1
            except requests.ConnectionError as error:
                statuses[type(error).__name__] += 1
    report.add("abuse", f"malformed requests (seed {seed})", f"{len(cases):,} in {time.monotonic() - started:.1f} s")
    report.add("abuse", "statuses", str(dict(sorted(statuses.items(), key=str))))
    report.add("abuse", "5xx / workers restarted / /ping after",
               f"{sum(n for s, n in statuses.items() if not isinstance(s, int) or s >= 500)} / "
               f"{len(workers - set(container.workers()))} / {ping(container.port).status}")


def sigterm_phase(container: ServeContainer, report: Report, concurrency: int) -> None:
    stop = threading.Event()
    results: list[LoadResult] = []
    load = threading.Thread(target=lambda: results.append(run_load(
        container.port, [Body.csv(ROWS * 8)], total=10_000_000, concurrency=concurrency, deadline_s=120,
        stop=stop)))
    load.start()
    time.sleep(3)
    terminated = time.monotonic()
    container.terminate()
    code = container.wait_exit(timeout_s=60)
    exited = time.monotonic()
    stop.set()
    load.join(180)
    before = [o for o in results[0].outcomes if o.started < terminated]
    in_flight = [o for o in before if o.ended > terminated]
    report.add("sigterm", "exit code, SIGTERM to exit", f"{code}, {exited - terminated:.2f} s")
    report.add("sigterm", "requests sent before SIGTERM: answered 200", f"{sum(o.ok for o in before)} of "
               f"{len(before)} ({len(in_flight)} in flight at SIGTERM)")


def machine(report: Report, when: str) -> None:
    """The CPUs, and the load average: what else ran on the machine (the server and clients add ~2)."""
    load = os.getloadavg()
    cpu = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    report.add("machine", f"CPUs, model, load average 1/5/15 min {when}",
               f"{os.cpu_count()}, {cpu}, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--malformed", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = Report()
    train_model(MODEL_DIR)
    print(f"serving {MODEL_DIR} with {args.workers} workers; image "
          f"{docker('image', 'inspect', '-f', '{{.Id}}', 'hyperplane-serve:latest').stdout.strip()[:19]}", flush=True)
    machine(report, "before")
    container = ServeContainer.start(MODEL_DIR, workers=args.workers)
    phases: list[Callable[[], None]] = [
        lambda: load_phase(container, report, args.requests, args.concurrency),
        lambda: saturate_phase(container, report, args.concurrency),
        lambda: kill_phase(container, report, max(1000, args.requests // 10), args.concurrency),
        lambda: abuse_phase(container, report, args.malformed, args.seed),
        lambda: sigterm_phase(container, report, args.concurrency),
    ]
    try:
        for phase in phases:
            phase()
        machine(report, "after")
    finally:
        logs = container.logs()
        container.remove()
    print("\nserver log: " + ", ".join(f"{word} x{logs.count(word)}" for word in
                                       ("Booting worker", "was sent SIGKILL", "Traceback", "status=500")))
    print("\n" + report.table())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        sys.exit(f"reliability: {' '.join(error.cmd)} failed: {error.stderr}")
