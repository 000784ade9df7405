"""Data-parallel fit() over two real processes on torch.distributed (gloo on this machine's loopback).

Each test starts two processes that join one process group and call fit() as ranks 0 and 1, and compares
what they learned with one process fitting all the rows: identical encoding on both ranks, the same
model up to float rounding, the linear model still least squares, and a bad value on one rank failing
both at once.
"""

from __future__ import annotations

import multiprocessing
import pickle
import traceback
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from model.config import TrainingConfig
from model.distributed import Group
from model.errors import DataError
from model.preprocessing import target_values
from model.table import Table
from model.training import fit
from tests.conftest import read_cars
from tests.serving.process import free_port

SHORT_MLP = TrainingConfig(hidden_layers=(32, 16), ensemble_size=2, epochs=15, patience=15)


def _rank(rank: int, port: int, tables: dict[str, Any], config: TrainingConfig, replicated: bool,
          results: Any) -> None:
    """One rank: join, fit, send back what it learned (or the DataError it raised)."""
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=timedelta(seconds=60))
        group = Group.joined(rank, 2, ("algo-1", "algo-2"), torch.device("cpu"))
        mine = tables[rank] if not replicated else tables["whole"]
        try:
            result = fit(mine, config, test=tables.get("test"), group=group, replicated=replicated)
        except DataError as error:
            results.put((rank, "DataError", str(error)))
            return
        regressor = result.regressor
        results.put((rank, "ok", pickle.dumps({
            "preprocessor": regressor.preprocessor.to_dict(), "metrics": result.metrics,
            "state": {k: v.clone() for k, v in regressor.network.state_dict().items()},
            "best_epoch": result.best_epoch, "residuals": regressor.calibration.residuals
            if regressor.calibration else None, "baseline": regressor.baseline,
            "training_rows": regressor.info["training_rows"]})))
    except BaseException:   # the parent shows the child's traceback instead of hanging on the queue
        results.put((rank, "crash", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _two_ranks(tables: dict[str, Any], config: TrainingConfig, replicated: bool) -> dict[int, Any]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank, args=(rank, port, tables, config, replicated, results))
                 for rank in (0, 1)]
    for process in processes:
        process.start()
    outcomes = {}
    for _ in processes:
        rank, kind, payload = results.get(timeout=240)
        assert kind != "crash", payload
        outcomes[rank] = (kind, pickle.loads(payload) if kind == "ok" else payload)
    for process in processes:
        process.join(timeout=30)
    return outcomes


def _halves(table: Table) -> dict[str, Any]:
    middle = table.n_rows // 2
    return {0: table.take(np.arange(middle)), 1: table.take(np.arange(middle, table.n_rows))}


def _held_out_rmse(state: dict[str, Any], config: TrainingConfig, train: Table, test: Table) -> float:
    from model.network import build_network
    from model.preprocessing import Preprocessor
    from model.regressor import Regressor
    preprocessor = Preprocessor.from_dict(state["preprocessor"])
    network = build_network(preprocessor.n_inputs, config.hidden_layers, config.dropout, config.ensemble_size)
    network.load_state_dict(state["state"])
    predicted = Regressor(preprocessor, network, config).predict(test.select(preprocessor.schema.feature_names))
    return float(np.sqrt(np.mean((predicted - target_values(test, "Price")) ** 2)))


@pytest.fixture(scope="module")
def split_cars() -> tuple[Table, Table]:
    cars = read_cars()
    order = np.random.default_rng(5).permutation(cars.n_rows)
    return cars.take(np.sort(order[300:])), cars.take(np.sort(order[:300]))


@pytest.mark.parametrize("replicated", [True, False], ids=["FullyReplicated", "ShardedByS3Key"])
def test_two_ranks_encode_identically_and_learn_the_single_process_model(
        split_cars: tuple[Table, Table], replicated: bool) -> None:
    train, test = split_cars
    tables = {"whole": train, **_halves(train)} if not replicated else {"whole": train}
    outcomes = _two_ranks(tables, SHORT_MLP, replicated)
    single = fit(train, SHORT_MLP)
    ranks = [outcomes[rank][1] for rank in (0, 1)]
    assert all(outcomes[rank][0] == "ok" for rank in (0, 1))
    # identical encoding on both ranks, equal to one process's up to float rounding
    assert ranks[0]["preprocessor"] == ranks[1]["preprocessor"]
    ours, theirs = ranks[0]["preprocessor"], single.regressor.preprocessor.to_dict()
    assert ours["schema"] == theirs["schema"] and ours["categories"] == theirs["categories"]
    for name, (mean, std) in theirs["numeric"].items():
        assert ours["numeric"][name] == pytest.approx([mean, std], rel=1e-9, abs=1e-12)
    assert ours["target_scale"] == pytest.approx(theirs["target_scale"], rel=1e-9)
    # one model: both ranks hold the same weights, the ones one process learns (float rounding aside)
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
        assert torch.allclose(value, single.regressor.network.state_dict()[key], rtol=1e-3, atol=1e-4), key
    assert ranks[0]["best_epoch"] == single.best_epoch
    assert ranks[0]["training_rows"] == train.n_rows
    assert ranks[0]["metrics"]["validation"]["rows"] == single.metrics["validation"]["rows"]
    assert ranks[0]["metrics"]["train"]["rmse"] == pytest.approx(single.metrics["train"]["rmse"], rel=1e-3)
    assert len(ranks[0]["residuals"]) == len(single.regressor.calibration.residuals)
    held_out = _held_out_rmse(ranks[0], SHORT_MLP, train, test)
    reference = float(np.sqrt(np.mean((single.regressor.predict(test.without("Price"))
                                        - target_values(test, "Price")) ** 2)))
    assert abs(held_out - reference) / reference < 0.01, (held_out, reference)


def test_two_ranks_linear_model_is_still_least_squares(split_cars: tuple[Table, Table]) -> None:
    train, _ = split_cars
    config = TrainingConfig(hidden_layers=(), target_transform="none")
    outcomes = _two_ranks({"whole": train}, config, replicated=True)
    state = outcomes[0][1]
    from model.network import build_network
    from model.preprocessing import Preprocessor
    from model.regressor import Regressor
    preprocessor = Preprocessor.from_dict(state["preprocessor"])
    network = build_network(preprocessor.n_inputs, ())
    network.load_state_dict(state["state"])
    regressor = Regressor(preprocessor, network, config)
    # the closed form on the rows it trained on (the same hold-out one process draws)
    single = fit(train, config)
    from model.training import holdout
    rows, _ = holdout(train, config)
    features = np.c_[preprocessor.encode(rows.without("Price")).astype(np.float64), np.ones(rows.n_rows)]
    goal = target_values(rows, "Price")
    weights, *_ = np.linalg.lstsq(features, goal, rcond=None)
    reference = float(np.sqrt(np.mean((features @ weights - goal) ** 2)))
    ours = float(np.sqrt(np.mean((regressor.predict(rows.without("Price")) - goal) ** 2)))
    assert abs(ours - reference) / reference < 1e-6
    assert outcomes[0][1]["metrics"]["train"]["rmse"] == pytest.approx(single.metrics["train"]["rmse"], rel=1e-6)


@pytest.mark.parametrize("hidden", [(16, 8), ()], ids=["mlp", "linear"])
def test_two_ranks_of_compact_rows_learn_what_one_process_learns(hidden: tuple[int, ...]) -> None:
    """A 300-level feature: the rows stay compact (model/onehot_rows.py) on each rank, and the two ranks
    learn one process's model to float rounding."""
    from tests.model.test_onehot_rows import _table

    train = _table(3_000, 2)
    config = TrainingConfig(target="price", categorical_columns=("postcode",), hidden_layers=hidden,
                            ensemble_size=2, epochs=4, batch_size=128)
    outcomes = _two_ranks({"whole": train}, config, replicated=True)
    single = fit(train, config)
    for rank in (0, 1):
        kind, state = outcomes[rank]
        assert kind == "ok"
        for name, value in single.regressor.network.state_dict().items():
            torch.testing.assert_close(state["state"][name], value, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state["baseline"], single.regressor.baseline, rtol=1e-9, atol=1e-12)
        for split in ("train", "validation"):
            assert state["metrics"][split]["rmse"] == pytest.approx(single.metrics[split]["rmse"], rel=1e-4)


def test_a_bad_value_on_one_rank_fails_both_with_its_row(split_cars: tuple[Table, Table]) -> None:
    train, _ = split_cars
    halves = _halves(train)
    broken = halves[1].columns["KM"].copy()
    broken[7] = "lots"
    halves[1] = Table({**halves[1].columns, "KM": broken}, halves[1].row_labels)
    outcomes = _two_ranks({"whole": train, **halves}, SHORT_MLP, replicated=False)
    for rank in (0, 1):
        kind, message = outcomes[rank]
        assert kind == "DataError"
        assert "algo-2" in message and "'KM'" in message and "'lots'" in message, message
