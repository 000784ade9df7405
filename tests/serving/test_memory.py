"""A worker's memory after large requests: freed memory goes back to the system (memory.release) and the
request threads share two malloc arenas (memory.limit_arenas), so answering large bodies on a worker's
several threads in turn leaves it flat instead of ~10-30 MiB larger for every thread that took one."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from container import serve
from container.serving import memory

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Decodes a ~6 MiB CSV body (the column-wise reader's buffers) on 8 long-lived threads in turn, as a
# gunicorn worker's request threads answer large requests, releasing memory after each; prints RSS in MiB.
SCRIPT = """
import json, queue, sys, threading
from container.serving import codecs, memory
from tests.serving.requests_data import FEATURES, ROWS
if sys.argv[1] == "limited":
    assert memory.limit_arenas()
row = ",".join(ROWS[0]) + "\\n"
body = (row * (6 * 2**20 // len(row))).encode()
schema = codecs.InputSchema(tuple(FEATURES), "Price", False, frozenset(FEATURES) - {"Fuel_Type", "Color"})
def rss():
    return next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
queues, done = [queue.Queue() for _ in range(8)], queue.Queue()
def work(q):
    while q.get():
        table = codecs.decode(body, "text/csv", {}, schema)
        del table
        memory.release()
        done.put(rss())
for q in queues:
    threading.Thread(target=work, args=(q,), daemon=True).start()
readings = []
for i in range(24):
    queues[i % 8].put(True)
    readings.append(done.get())
print(json.dumps(readings))
"""


def growth(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=300)
    readings = json.loads(out.stdout)
    return float(readings[-1] - readings[0])


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._malloc_trim() is None,
                    reason="glibc's malloc arenas: Linux with glibc only (the images are Debian)")
def test_large_requests_on_many_threads_leave_a_worker_flat() -> None:
    unlimited, limited = growth("unlimited"), growth("limited")
    assert limited < 30, f"grew {limited:.0f} MiB over 24 large bodies on 8 threads with 2 arenas"
    assert unlimited > limited   # the arenas are what made the difference on this C library


def test_the_server_limits_the_arenas_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from container.serving import gunicorn_app

    calls: list[str] = []
    monkeypatch.setattr(memory, "limit_arenas", lambda: calls.append("arenas") or True)
    monkeypatch.setattr(gunicorn_app.ServerApplication, "run", lambda self: calls.append("run"))
    # the server's logging set-up replaces the root logger's handlers for good: not in this test process,
    # whose later tests would log through a buffered handler that writes only at exit
    monkeypatch.setattr(serve, "configure_logging", lambda level: None)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(ROOT / "build" / "no-such-base"))
    assert serve.main(["serve"]) == 0
    assert calls == ["arenas", "run"]
