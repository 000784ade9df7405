"""Measurements made side by side, and the table row they sum up to (bench.py and bench_compare.py).

    runs = side_by_side({"server": measure_ours, "floor": measure_floor}, repeats)
    row = summary(runs, form="csv", client="wrk", c=8)

Each round measures every runner once, in order, so a busy shared machine falls on all of them alike; the
row holds the median ratio of "server" to "floor" requests per second with its range, and each runner's
median req/s, p50 and p99 as `<runner>_rps`, `<runner>_p50`, `<runner>_p99`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

Run = dict[str, float]   # one measurement: "rps", "p50", "p99"


def side_by_side(runners: Mapping[str, Callable[[], Run]], repeats: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, measure in runners.items():
            runs[name].append(measure())
    return runs


def summary(runs: dict[str, list[Run]], **labels: Any) -> dict[str, Any]:
    ratios = [s["rps"] / f["rps"] for s, f in zip(runs["server"], runs["floor"], strict=True)]
    return {**labels, "ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios)),
            **{f"{name}_{key}": statistics.median(run[key] for run in runs[name])
               for name in runs for key in ("rps", "p50", "p99")}}
