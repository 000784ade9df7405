"""container/streaming.py: channels read chunk by chunk (files, gzip, headers, JSON Lines, Pipe-mode FIFOs,
rank/world shares), the choice between streaming and memory, and streamed training end to end, on one
process and on two (gloo on this machine's loopback)."""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import os
import pathlib
import pickle
import threading
import time
import traceback
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from container.channels import ChannelError, read_channel
from container.paths import SageMakerPaths
from container.streaming import ChannelStream, channel_text_bytes, streaming_reason, train_streaming
from container.train import run
from model import artifact
from model.config import TrainingConfig
from model.distributed import Group
from model.table import Table
from tests.jobs import CARS_HEADER, CARS_LINES, Job, lay_out_job
from tests.serving.process import free_port

FILES = {"a.csv": CARS_HEADER + "".join(CARS_LINES[:300]),
         "b.csv.gz": gzip.compress("".join(CARS_LINES[300:700]).encode()),   # headerless: takes a.csv's names
         "c.csv": CARS_HEADER + "".join(CARS_LINES[700:1000])}
STREAM = {"data_loading": "stream", "epochs": "3", "hidden_layers": "8", "ensemble_size": "1"}


def channel(tmp_path: pathlib.Path, files: dict[str, str | bytes], **settings: Any) -> ChannelStream:
    root = lay_out_job(tmp_path, Job(channels={"train": files}))
    return ChannelStream(SageMakerPaths(root).channel("train"), "train", root=root, **settings)


def test_chunks_hold_the_channel_in_order_with_channels_py_labels(tmp_path: pathlib.Path) -> None:
    stream = channel(tmp_path, FILES, chunk_rows=128)
    chunks = list(stream.chunks(0))
    assert all(0 < chunk.n_rows <= 128 for chunk in chunks)
    whole = read_channel(stream.folder, "train", {}, "auto")
    streamed = Table.concat(chunks)
    assert streamed.fingerprint() == whole.fingerprint()
    assert list(streamed.labels()) == list(whole.labels())
    assert streamed.label(0) == "train/a.csv line 2" and streamed.label(300) == "train/b.csv.gz line 1"
    assert streamed.label(700) == "train/c.csv line 2"
    # every pass gives the same rows
    assert Table.concat(stream.chunks(1)).fingerprint() == whole.fingerprint()


@pytest.mark.parametrize("header", ["auto", "present", "absent"])
def test_csv_header_settings(tmp_path: pathlib.Path, header: str) -> None:
    text = CARS_HEADER + "".join(CARS_LINES[:20])
    stream = channel(tmp_path, {"cars.csv": text}, csv_header=header, chunk_rows=7)
    table = Table.concat(stream.chunks(0))
    if header == "absent":
        assert table.names[0] == "c0" and table.n_rows == 21 and table.label(0) == "train/cars.csv line 1"
    else:
        assert table.names[:2] == ["Price", "Age_08_04"] and table.n_rows == 20
        assert table.label(0) == "train/cars.csv line 2"


def test_json_lines_objects_and_arrays(tmp_path: pathlib.Path) -> None:
    records = [{"price": 10 + i, "km": i * 100, **({"fuel": "Diesel"} if i % 3 else {})} for i in range(50)]
    lines = "\n".join(json.dumps(r) for r in records) + "\n"
    stream = channel(tmp_path, {"a.jsonl.gz": gzip.compress(lines.encode())}, chunk_rows=16)
    table = Table.concat(stream.chunks(0))
    assert table.names == ["price", "km", "fuel"] and table.n_rows == 50
    assert table.columns["fuel"][0] is None and table.columns["fuel"][1] == "Diesel"
    arrays = channel(tmp_path / "arrays", {"a.jsonl": "[1, 2]\n[3, 4]\n"})
    assert Table.concat(arrays.chunks(0)).names == ["c0", "c1"]
    late = channel(tmp_path / "late", {"a.jsonl": lines + json.dumps({"price": 1, "colour": "red"}) + "\n"},
                   chunk_rows=16)
    with pytest.raises(ChannelError, match=r"train/a.jsonl line 51: the key 'colour' is not among"):
        list(late.chunks(0))


def test_a_short_row_and_mismatched_files_fail_with_their_names(tmp_path: pathlib.Path) -> None:
    short = channel(tmp_path / "short", {"a.csv": CARS_HEADER + "".join(CARS_LINES[:5]) + "1,2\n"})
    with pytest.raises(ChannelError, match=r"train/a.csv line 7: expected 24 values, found 2"):
        list(short.chunks(0))
    other = channel(tmp_path / "other", {"a.csv": CARS_HEADER + CARS_LINES[0], "b.csv": "x,y\n1,2\n"})
    with pytest.raises(ChannelError, match=r"train/b.csv has columns x, y but the channel's other files have Price"):
        list(other.chunks(0))


@pytest.mark.parametrize("world", [2, 3])
def test_rank_world_shares_cover_every_row_once(tmp_path: pathlib.Path, world: int) -> None:
    shares = [Table.concat(channel(tmp_path / str(rank), FILES, rank=rank, world=world, chunk_rows=50).chunks(0))
              for rank in range(world)]
    labels = [list(share.labels()) for share in shares]
    everything = list(Table.concat(channel(tmp_path / "all", FILES).chunks(0)).labels())
    assert sorted(label for share in labels for label in share) == sorted(everything)
    for rank, share in enumerate(labels):
        assert share == everything[rank::world]
    sharded = channel(tmp_path / "sharded", FILES, rank=1, world=2,
                      config={"S3DistributionType": "ShardedByS3Key"})
    assert list(Table.concat(sharded.chunks(0)).labels()) == everything   # its own files, kept whole


def _write_fifo(path: pathlib.Path, data: bytes, delay: float = 0.2) -> threading.Thread:
    def write() -> None:
        time.sleep(delay)
        with path.open("wb") as fifo:   # blocks until the reader opens it
            for start in range(0, len(data), 4096):
                fifo.write(data[start:start + 4096])
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("compressed", [False, True])
def test_pipe_mode_reads_one_fifo_per_pass(tmp_path: pathlib.Path, compressed: bool) -> None:
    data = tmp_path / "input" / "data"
    data.mkdir(parents=True)
    # two files in a row, each with its header, as SageMaker streams a channel's objects
    text = (CARS_HEADER + "".join(CARS_LINES[:100]) + CARS_HEADER + "".join(CARS_LINES[100:250])).encode()
    stream = ChannelStream(data / "train", "train", {"TrainingInputMode": "Pipe"}, chunk_rows=64, fifo_timeout=10)
    for index in (0, 1):
        fifo = data / f"train_{index}"
        os.mkfifo(fifo)
        writer = _write_fifo(fifo, gzip.compress(text) if compressed else text)
        table = Table.concat(stream.chunks(index))
        writer.join(5)
        assert table.n_rows == 250 and table.names[0] == "Price"
        assert table.label(0) == f"train_{index} line 2" and table.label(100) == f"train_{index} line 103"


def test_a_fifo_that_never_appears_or_stays_silent_fails_within_its_timeout(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "input" / "data"
    data.mkdir(parents=True)
    stream = ChannelStream(data / "train", "train", {"TrainingInputMode": "Pipe"}, fifo_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"Pipe input mode, but its FIFO .*train_0 did not appear within 0 s"):
        list(stream.chunks(0))
    os.mkfifo(data / "train_1")   # there, but no writer ever opens it
    with pytest.raises(ChannelError, match=r"nothing was written into its FIFO .*train_1 within"):
        list(stream.chunks(1))
    assert time.monotonic() - started < 5


def test_streaming_or_memory(tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job(channels={"train": FILES}))
    paths = SageMakerPaths(root)
    auto, memory, stream = (TrainingConfig(data_loading=mode) for mode in ("auto", "memory", "stream"))
    text = len(FILES["a.csv"]) + len("".join(CARS_LINES[300:700])) + len(FILES["c.csv"])
    assert channel_text_bytes(paths.channel("train")) == text   # the gzip file at its decompressed size
    assert streaming_reason(paths, None, auto) is None
    assert streaming_reason(paths, None, memory, budget=1000) is None
    assert streaming_reason(paths, None, stream) == "data_loading=stream"
    assert "more than the" in str(streaming_reason(paths, None, auto, budget=1000))
    piped = {"train": {"TrainingInputMode": "Pipe"}}
    assert "Pipe input mode" in str(streaming_reason(paths, piped, auto))
    with pytest.raises(ChannelError, match="can only be streamed"):
        streaming_reason(paths, piped, memory)
    with pytest.raises(ValueError, match="data_loading must be one of auto, memory, stream"):
        TrainingConfig(data_loading="disk")


def test_a_streamed_job_end_to_end(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """`train` with data_loading=stream: the artifact, metrics, evaluation.json (of a sample of the test
    channel), the monitoring baseline, the model card and the report, from the streamed fit."""
    job = Job(hyperparameters=STREAM, channels={"train": FILES, "test": {"t.csv": "".join(CARS_LINES[1000:1200])}})
    root = lay_out_job(tmp_path, job)
    caplog.set_level(logging.INFO)
    assert run(SageMakerPaths(root), environ={}) == 0
    assert "streaming the channels from disk (data_loading=stream)" in caplog.text
    metrics = json.loads((root / "output/data/metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["test"]["rows"] == 200
    assert metrics["train"]["rows"] + metrics["validation"]["rows"] == 1000
    loaded = artifact.load(root / "model")
    evaluation = json.loads((root / "output/data/evaluation.json").read_text())
    assert evaluation["regression_metrics"]["rmse"]["value"] == pytest.approx(metrics["test"]["rmse"], rel=1e-6)
    statistics = json.loads((root / "output/data/statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 1000
    card = json.loads((root / "model/model-card.json").read_text())
    assert card["data"]["fingerprint"] == loaded.info["data_fingerprint"]
    assert (root / "model/report.html").is_file() and not (root / "output/failure").exists()


def test_a_pipe_mode_job_reads_one_fifo_per_pass(tmp_path: pathlib.Path) -> None:
    """Pipe mode through `train`: SageMaker makes the FIFO train_<k> for pass k; the linear model needs
    three passes (statistics, normal equations, metrics)."""
    root = lay_out_job(tmp_path, Job(hyperparameters={"hidden_layers": "", "target_transform": "none"},
                                     channels={}, input_config={"train": {"TrainingInputMode": "Pipe"}}))
    data = root / "input" / "data"
    data.mkdir(parents=True, exist_ok=True)
    text = (CARS_HEADER + "".join(CARS_LINES[:500])).encode()

    def serve_passes() -> None:
        for index in range(3):
            fifo = data / f"train_{index}"
            os.mkfifo(fifo)
            with fifo.open("wb") as writer:   # blocks until `train` opens this pass
                writer.write(text)

    writer = threading.Thread(target=serve_passes, daemon=True)
    writer.start()
    assert run(SageMakerPaths(root), environ={}) == 0
    writer.join(10)
    metrics = json.loads((root / "output/data/metrics.json").read_text())
    assert metrics["train"]["rows"] + metrics["validation"]["rows"] == 500
    assert artifact.load(root / "model").feature_names == CARS_HEADER.strip().split(",")[1:]


# Two ranks: each process joins a gloo group and streams its share of the same FullyReplicated job.


def _rank(rank: int, port: int, root: str, hyperparameters: dict[str, str], results: Any) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=timedelta(seconds=60))
        group = Group.joined(rank, 2, ("algo-1", "algo-2"), torch.device("cpu"))
        from container.hyperparameters import parse_hyperparameters
        config = parse_hyperparameters(hyperparameters)
        streamed = train_streaming(SageMakerPaths(pathlib.Path(root)), config, group, None, chunk_rows=200)
        regressor = streamed.result.regressor
        results.put((rank, "ok", pickle.dumps({
            "preprocessor": regressor.preprocessor.to_dict(), "metrics": streamed.result.metrics,
            "state": {k: v.clone() for k, v in regressor.network.state_dict().items()},
            "residuals": regressor.calibration.residuals if regressor.calibration else None,
            "sample": streamed.sample.fingerprint(), "info": regressor.info})))
    except BaseException:   # the parent shows the child's traceback instead of hanging on the queue
        results.put((rank, "crash", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _two_ranks(root: pathlib.Path, hyperparameters: dict[str, str]) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank, args=(rank, port, str(root), hyperparameters, results))
                 for rank in (0, 1)]
    for process in processes:
        process.start()
    outcomes: dict[int, Any] = {}
    for _ in processes:
        rank, kind, payload = results.get(timeout=240)
        assert kind == "ok", payload
        outcomes[rank] = pickle.loads(payload)
    for process in processes:
        process.join(timeout=30)
    return [outcomes[0], outcomes[1]]


def test_two_ranks_stream_their_shares_and_learn_one_model(tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job(channels={"train": FILES, "test": {"t.csv": "".join(CARS_LINES[1000:1200])}}))
    linear = {"data_loading": "stream", "hidden_layers": ""}
    mlp = {**STREAM, "epochs": "2"}
    single = train_streaming(SageMakerPaths(root), TrainingConfig(hidden_layers=()), Group.single(), None)
    for hyperparameters in (linear, mlp):
        ranks = _two_ranks(root, hyperparameters)
        assert ranks[0]["preprocessor"] == ranks[1]["preprocessor"]
        for key, value in ranks[0]["state"].items():
            assert torch.equal(value, ranks[1]["state"][key]), key
        assert ranks[0]["metrics"] == ranks[1]["metrics"] and ranks[0]["residuals"] == ranks[1]["residuals"]
        assert ranks[0]["sample"] == ranks[1]["sample"]
        if hyperparameters is linear:
            # the rows of both ranks are the rows one process holds: the same statistics and least squares
            ours, theirs = ranks[0]["preprocessor"], single.result.regressor.preprocessor.to_dict()
            assert ours["categories"] == theirs["categories"] and ours["schema"] == theirs["schema"]
            for name, pair in theirs["numeric"].items():
                assert ours["numeric"][name] == pytest.approx(pair, rel=1e-9)
            for split, values in single.result.metrics.items():
                assert ranks[0]["metrics"][split]["rows"] == values["rows"]
                assert ranks[0]["metrics"][split]["rmse"] == pytest.approx(values["rmse"], rel=1e-6)
            assert ranks[0]["sample"] == single.sample.fingerprint()
            assert ranks[0]["info"]["training_rows"] == 1000
            assert np.allclose(ranks[0]["residuals"], single.result.regressor.calibration.residuals, atol=1e-6)
