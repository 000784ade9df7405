"""The comparisons behind `scripts/bench --mlflow` and `--training` (bench.py renders them).

    mlflow(model_dir, repeats, seconds)   hyperplane's `serve` and MLflow's pyfunc scoring server
                                          (`mlflow models serve --env-manager local -w N`, a pyfunc wrapper
                                          calling Regressor.predict on the same artifact), both on this host
                                          (no Docker for either, so neither pays for the other's network
                                          path), N = 1 and 2 workers, the same single-row CSV with a header
                                          (MLflow reads CSV through pandas, which needs one)
    training(repeats)                     wall time and held-out RMSE: hyperplane default and linear against
                                          scikit-learn Ridge and HistGradientBoostingRegressor on the used
                                          cars and on LaptopSales (284k rows, from the dmba wheel into
                                          build/bench, never committed), and hyperplane linear against
                                          numpy.linalg.lstsq on 1M synthetic rows

Runs with .venv-bench's Python (mlflow, pyarrow, scikit-learn there; the project's dependencies from .venv).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from bench_runs import side_by_side, summary

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "bench"
CARS = ROOT / "data" / "toyota_corolla.csv"
SEED = 0

MLFLOW_MODEL = '''\
"""MLflow pyfunc model (models from code): the hyperplane artifact in artifacts["model"], Regressor.predict."""
import mlflow
import numpy as np


class Hyperplane(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import os
        import pathlib
        import torch
        from model import artifact
        torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))   # as a hyperplane worker
        self.regressor = artifact.load(pathlib.Path(context.artifacts["model"]))
        self.regressor.network.eval()

    def predict(self, context, model_input, params=None):
        from model.table import Table
        columns = {name: model_input[name].to_numpy(dtype=object) for name in self.regressor.feature_names}
        return self.regressor.predict(Table(columns))


mlflow.models.set_model(Hyperplane())
'''


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------- MLflow's scoring server ----------

def _wait(port: int, path: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready in {timeout} s")


@contextmanager
def _process(command: list[str], env: dict[str, str], port: int, ping: str, logfile: pathlib.Path) -> Iterator[int]:
    with logfile.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=ROOT, start_new_session=True)
        try:
            _wait(port, ping, process)
            yield port
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()
            _await_group(process.pid)


def _await_group(group: int, timeout_s: float = 30) -> None:
    """Until every process of the group has gone: a server's workers (MLflow's uvicorn processes) can
    outlive their parent for seconds, and would still be running during the next measurement. What is
    left at the timeout is killed; an exited process counts until its new parent (init) reaps it, so the
    wait after that is bounded too."""
    killed = False
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            if killed:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, 9)
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.05)


def mlflow_model(model_dir: pathlib.Path) -> pathlib.Path:
    import mlflow.pyfunc

    folder = WORK / "mlflow-model"
    if not (folder / "MLmodel").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        code = WORK / "mlflow_model.py"
        code.write_text(MLFLOW_MODEL)
        mlflow.pyfunc.save_model(path=str(folder), python_model=str(code), artifacts={"model": str(model_dir)})
    return folder


def mlflow(model_dir: pathlib.Path, body: bytes, repeats: int, seconds: float,
           measures: dict[str, Callable[..., dict[str, float]]], free_port: Callable[[], int]) -> list[dict[str, Any]]:
    """Rows like bench.single_row's, with "floor" being MLflow: ratio = hyperplane req/s / MLflow req/s; and
    "ceiling": the same worker class and count answering a constant (bench.py's floor app), on the host."""

    folder = mlflow_model(model_dir)
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-serve-"))
    (base / "model").symlink_to(model_dir)
    out = []
    for workers in (1, 2):
        ours, theirs = free_port(), free_port()
        serve = [str(ROOT / ".venv" / "bin" / "python"), "-m", "container.serve"]
        serve_env = {"PYTHONPATH": str(ROOT), "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(ours),
                     "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)}
        # MLflow starts `uvicorn` from PATH; its pyfunc gets the torch threads a hyperplane worker takes
        ml_env = {"PYTHONPATH": str(ROOT), "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}",
                  "BENCH_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
        ml = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder), "-p", str(theirs), "-h",
              "127.0.0.1", "--env-manager", "local", "-w", str(workers)]
        # the ceiling: gunicorn with hyperplane's worker class and count and a constant answer (bench.py's floor
        # app): no server of this class answers faster, so a ratio to MLflow above ceiling/MLflow is unreachable
        ceiling = free_port()
        constant = [str(ROOT / ".venv" / "bin" / "python"), "-m", "gunicorn", "-w", str(workers), "-k",
                    "container.serving.worker.PingLaneWorker", "--threads", "8", "--keep-alive", "60", "-b",
                    f"127.0.0.1:{ceiling}", "--chdir", str(WORK), "floor:app"]
        with _process(serve, serve_env, ours, "/ping", WORK / f"serve-{workers}.log"), \
                _process(ml, ml_env, theirs, "/ping", WORK / f"mlflow-{workers}.log"), \
                _process(constant, {"PYTHONPATH": str(ROOT)}, ceiling, "/ping", WORK / f"ceiling-{workers}.log"):
            answers = []
            for port in (ours, theirs):
                import http.client
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("POST", "/invocations", body, {"Content-Type": "text/csv"})
                response = connection.getresponse()
                answers.append((response.status, response.read()))
            log(f"mlflow -w {workers}: hyperplane answers {answers[0]}, MLflow answers {answers[1]}")
            for port in (ours, theirs, ceiling):   # warm every worker
                measures["wrk"](port, "text/csv", body, 8, 1)
            for client, connections in (("wrk", 1), ("wrk", 8), ("wrk", 32), ("python", 8)):
                runners = {name: functools.partial(measures[client], port, "text/csv", body, connections, seconds)
                           for name, port in (("server", ours), ("floor", theirs), ("ceiling", ceiling))}
                row = summary(side_by_side(runners, repeats), workers=workers, client=client, c=connections)
                log(f"mlflow -w {workers} {client} c={connections}: {row}")
                out.append(row)
    shutil.rmtree(base, ignore_errors=True)
    return out


# ---------- training ----------

def _read_csv(rows: list[list[str]]) -> Any:
    from model.table import Table

    return Table.from_rows(rows[0], rows[1:])


def cars() -> tuple[Any, str, list[str]]:
    with CARS.open(newline="") as handle:
        return _read_csv(list(csv.reader(handle))), "Price", ["Fuel_Type", "Color"]


def laptops() -> tuple[Any, str, list[str]]:
    """LaptopSales from the dmba wheel (downloaded into build/bench once); rows without a price dropped,
    Date dropped (a timestamp per sale: no model here uses it)."""
    wheels = WORK / "wheels"
    found = sorted(wheels.glob("dmba-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), "dmba==0.2.4"],
                       check=True)
        found = sorted(wheels.glob("dmba-*.whl"))
    with zipfile.ZipFile(found[0]) as wheel, wheel.open("dmba/csvFiles/LaptopSales.csv.gz") as raw, \
            gzip.open(raw, "rt", newline="") as text:
        lines = list(csv.reader(text))
    header = lines[0]
    target = header.index("Retail Price")
    date = header.index("Date")
    keep = [i for i in range(len(header)) if i != date]
    rows = [[line[i] for i in keep] for line in lines[1:] if line[target].strip() not in ("", "NaN", "nan")]
    table = _read_csv([[header[i] for i in keep], *rows])
    categorical = ["Integrated Wireless?", "Bundled Applications?", "Store Postcode", "Customer Postcode",
                   "Configuration"]
    return table, "Retail Price", categorical


def _split(table: Any) -> tuple[Any, Any]:
    order = np.random.default_rng(SEED).permutation(table.n_rows)
    return table.take(order[len(order) // 5:]), table.take(order[: len(order) // 5])


def timed(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """{name: (median wall time of `repeats` calls, the last call's result)}. The calls take turns, one of
    each per round, so a slow spell of this shared machine lands on every model alike and the ratios of
    the medians hold within one run. As timeit does, each call runs with the garbage collector off after
    a collection: by the time this runs the benchmark process holds the objects of MLflow, scikit-learn
    and the serving runs, and a full collection landing inside one fit (~0.1 s) would be charged to
    whichever model it hit."""
    import gc
    import statistics

    times: dict[str, list[float]] = {name: [] for name in calls}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, call in calls.items():
            gc.collect()
            gc.disable()
            try:
                started = time.perf_counter()
                results[name] = call()
                times[name].append(time.perf_counter() - started)
            finally:
                gc.enable()
    return {name: (statistics.median(times[name]), results[name]) for name in calls}


def compare(table: Any, target: str, categorical: list[str], configs: dict[str, Any], log_target: bool,
            repeats: int = 1) -> dict[str, tuple[float, float]]:
    """{model: (wall seconds, held-out RMSE)} on the seeded 80/20 split; seconds: the median of `repeats`
    fits, the models taking turns (every fit here is seeded, so each gives the same model)."""
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    from model.schema import as_float_column
    from model.training import fit

    train, test = _split(table)
    features = [name for name in table.names if name != target]
    truth = as_float_column(test, target)

    def rmse(predicted: np.ndarray) -> float:
        return float(np.sqrt(np.mean((predicted - truth) ** 2)))

    cat_index = [features.index(name) for name in categorical]
    num_index = [i for i in range(len(features)) if i not in cat_index]

    def matrix(part: Any) -> np.ndarray:
        grid = np.empty((part.n_rows, len(features)), dtype=object)
        for i, name in enumerate(features):
            grid[:, i] = as_float_column(part, name) if i in num_index else \
                np.array([str(cell).strip() for cell in part.columns[name]], dtype=object)
        return grid

    y = as_float_column(train, target)
    y = np.log(y) if log_target else y
    inverse = np.exp if log_target else (lambda v: v)
    # HGB takes at most 255 levels as categories; wider ones (postcodes, configuration ids) go in as codes
    few = [i for i, index in enumerate(cat_index) if len(set(table.columns[categorical[i]].tolist())) <= 250]
    ridge = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown="ignore"), cat_index),
                                                  (make_pipeline(_Imputer(), StandardScaler()), num_index)),
                          Ridge(alpha=1.0))
    hgb = make_pipeline(make_column_transformer((OrdinalEncoder(handle_unknown="use_encoded_value",
                                                                unknown_value=-1, encoded_missing_value=-1),
                                                 cat_index), ("passthrough", num_index)),
                        HistGradientBoostingRegressor(categorical_features=few, random_state=SEED))
    x_train, x_test = matrix(train), matrix(test)
    suffix = " (log target)" if log_target else ""
    calls: dict[str, Callable[[], Any]] = {name: functools.partial(fit, train, config)
                                           for name, config in configs.items()}
    theirs = {f"scikit-learn Ridge{suffix}": ridge, f"scikit-learn HistGradientBoosting{suffix}": hgb}
    calls.update({name: functools.partial(model.fit, x_train, y) for name, model in theirs.items()})
    out: dict[str, tuple[float, float]] = {}
    for name, (seconds, fitted) in timed(calls, repeats).items():
        predicted = (fitted.regressor.predict(test.without(target)) if name in configs
                     else inverse(fitted.predict(x_test)))
        out[name] = (seconds, rmse(predicted))
        log(f"training {name}: {out[name]}")
    return out


def _Imputer() -> Any:   # noqa: N802 - a factory that reads like the class it makes
    from sklearn.impute import SimpleImputer

    return SimpleImputer(strategy="mean")


def lstsq(rows: int = 1_000_000, width: int = 10, repeats: int = 3) -> dict[str, tuple[float, float]]:
    """hyperplane linear against numpy.linalg.lstsq (with an intercept) on synthetic rows, same split."""
    from model.config import TrainingConfig
    from model.table import Table
    from model.training import fit

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(rows, width))
    y = 3.0 + x @ rng.normal(size=width) + rng.normal(scale=0.5, size=rows)
    names = [f"x{i}" for i in range(width)]
    table = Table({"y": y, **{name: x[:, i] for i, name in enumerate(names)}})
    train, test = _split(table)
    truth = test.columns["y"]
    def ours() -> np.ndarray:
        regressor = fit(train, TrainingConfig(target="y", hidden_layers=(), target_transform="none")).regressor
        return regressor.predict(test.without("y"))

    def theirs() -> np.ndarray:
        design = np.column_stack([np.ones(train.n_rows), *(train.columns[name] for name in names)])
        coefficients = np.linalg.lstsq(design, train.columns["y"], rcond=None)[0]
        predicted: np.ndarray = np.column_stack([np.ones(test.n_rows), *(test.columns[name] for name in names)]) \
            @ coefficients
        return predicted

    out = {name: (seconds, float(np.sqrt(np.mean((predicted - truth) ** 2)))) for name, (seconds, predicted)
           in timed({"hyperplane linear": ours, "numpy.linalg.lstsq": theirs}, repeats).items()}
    log(f"lstsq: {out}")
    return out


# fits per model on the used cars: ~0.1 s each, so many cost little, and the median of 5 still moved by
# 20% between runs of the same code on this shared machine, enough to flip the comparison with HGB
CARS_REPEATS = 11


def training(mlp_laptops: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    from model.config import TrainingConfig

    table, target, categorical = cars()
    results = {"used cars (1,436 rows)": compare(
        table, target, categorical,
        {"hyperplane default (MLP ensemble)": TrainingConfig(target=target),
         "hyperplane linear": TrainingConfig(target=target, hidden_layers=())}, log_target=True,
        repeats=CARS_REPEATS)}
    table, target, categorical = laptops()
    label = ", ".join(f"{key}={value}" for key, value in mlp_laptops.items())
    results[f"LaptopSales ({table.n_rows:,} rows)"] = compare(
        table, target, categorical,
        {f"hyperplane MLP ensemble ({label})": TrainingConfig(target=target, categorical_columns=tuple(categorical),
                                                             target_transform="none", **mlp_laptops),
         "hyperplane linear": TrainingConfig(target=target, categorical_columns=tuple(categorical), hidden_layers=(),
                                             target_transform="none")}, log_target=False)
    results["synthetic linear (1,000,000 rows, 10 features)"] = lstsq()
    return results
