"""`train`: the SageMaker training entry point (`docker run IMAGE train`, or the image's default command).

    SAGEMAKER_BASE_DIR=/tmp/job train      # outside a container: a folder laid out like /opt/ml

It first decides what trains, and says so in its first log line: the user's entry point when one is named
(SAGEMAKER_PROGRAM or the `sagemaker_program` hyperparameter; run by script_mode.py through
sagemaker-training, with the script's own exit code), else the built-in regressor, which
reads input/config/*.json, the channels under input/data, fits the model and writes
- model/hyperplane-regressor.pt   the artifact (the only thing the serving image needs),
- output/data/metrics.json        train/validation/test metrics,
- output/data/evaluation.json     the test (else validation) split in SageMaker Pipelines' regression format,
                                  with per-slice errors and the worst slice (model/evaluation.py),
- output/data/statistics.json, constraints.json   Model Monitor's data-quality baseline of the training
                                  features (model/monitoring.py),
- model/model-card.json           data fingerprint, columns used and dropped, hyperparameters, versions,
                                  metrics, intended use and limits (model/card.py),
- output/data/report.html, model/report.html   the same evaluation for people: one self-contained page with
                                  learning curves, predicted against actual, residuals by slice and
                                  attributions (model/report.py),
- output/failure                  on failure: one sentence naming the cause, then (for bugs) the traceback.
Every epoch logs one `key=value` line that SageMaker metric_definitions can match (see the README).
The built-in regressor checkpoints to checkpoints/ (what SageMaker syncs with checkpoint_s3_uri), resumes
from a checkpoint found there, and on SIGTERM (StopTrainingJob, spot interruption) stops after the current
optimiser step with a checkpoint (container/stopping.py, model/checkpointing.py).
Exit codes: 0 success, 2 a problem with the configuration or data (a foreign or damaged checkpoint too),
1 a bug, 143 stopped by SIGTERM.

Several hosts (instance_count > 1) or GPUs: every host runs `train`; on a host with n GPUs it starts n - 1
more processes, one per GPU. container/cluster.py joins them all on torch.distributed, and fit() trains
one model data-parallel (model/training.py). A FullyReplicated channel is read whole on every host and
divided by rank inside fit(); a ShardedByS3Key training channel already holds this host's share. Rank 0
alone writes the model, metrics, governance files, checkpoints and the failure file (a failure every rank
agrees on, such as a bad value in one host's data, is reported once, by rank 0, naming the host); every
process waits for the others before it exits, so no host leaves early (in local mode the first container to
exit ends the job).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pathlib
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from container.channels import ChannelError, Channels, read_channels
from container.cluster import Cluster, ClusterError
from container.errors import EXIT_INTERNAL_ERROR, JobError
from container.failure import clear_stale_failure, report_failure
from container.hyperparameters import parse_hyperparameters
from container.paths import SageMakerPaths
from container.script_mode import find_entry_point, run_entry_point
from container.stopping import JobStopped, StopRequest, stop_on_sigterm
from container.streaming import streaming_reason, train_streaming
from model import artifact
from model.card import build_card, write_card
from model.checkpoint import CheckpointError
from model.checkpointing import Checkpointing, TrainingStopped, discard
from model.config import TrainingConfig
from model.distributed import CollectiveError, Group
from model.errors import DataError
from model.evaluation import describe_worst, evaluate_split, evaluation_split
from model.monitoring import data_quality_baseline
from model.report import evaluation_report, write_report
from model.streaming import StreamedFit
from model.table import Table
from model.training import EpochReport, FitResult, fit, share

log = logging.getLogger("hyperplane.train")
CONFIG_FILE_LIMIT = 1024 * 1024   # hyperparameters.json holds at most 100 values of 2,500 characters


def main() -> None:
    _configure_logging()
    sys.exit(run(SageMakerPaths.from_environ()))


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)


def run(paths: SageMakerPaths, environ: Mapping[str, str] = os.environ) -> int:
    try:
        hyperparameters = _read_hyperparameters(paths)
        entry = find_entry_point(environ, hyperparameters)
        if entry is not None:
            log.info("training with the user's entry point %s (named by %s), run through sagemaker-training",
                     entry.program, entry.named_by)
        else:
            log.info("training the built-in regressor: no entry point is named (neither SAGEMAKER_PROGRAM nor "
                     "the sagemaker_program hyperparameter is set)")
        clear_stale_failure(paths)
        if entry is not None:
            return run_entry_point(paths, entry, hyperparameters, environ)
        train(paths, hyperparameters, environ)
    except ReportedByRankZero as follower:
        return follower.exit_code
    except (JobError, DataError) as error:
        report_failure(paths, f"{error}")
        return getattr(error, "exit_code", JobError.exit_code)
    except Exception as error:  # the boundary: anything else is a bug, reported with its traceback
        report_failure(paths, f"Unexpected error ({type(error).__name__}: {error}); this is a bug in "
                              "hyperplane, please report it with the traceback below.", traceback.format_exc())
        return EXIT_INTERNAL_ERROR
    return 0


class ReportedByRankZero(Exception):  # noqa: N818 - an outcome, not an error of this process
    """This process failed the way every rank did (agreed data errors, a stop, a refused checkpoint): rank
    0 writes the failure file; this one only ends with the same exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def train(paths: SageMakerPaths, hyperparameters: Mapping[str, Any],
          environ: Mapping[str, str] = os.environ) -> None:
    """The built-in regressor's job; SIGTERM while it runs stops it with a checkpoint (JobStopped)."""
    config = parse_hyperparameters(hyperparameters)
    gpus = 0 if config.device == "cpu" else torch.cuda.device_count()
    cluster = Cluster.plan(_read_json(paths.resource_config) or {}, environ, gpus)
    others = _start_local_processes(paths, hyperparameters, cluster)
    try:
        with stop_on_sigterm() as stop:
            _train_rank(paths, config, cluster, 0, stop)
    finally:
        _wait_for(others)


def _start_local_processes(paths: SageMakerPaths, hyperparameters: Mapping[str, Any],
                           cluster: Cluster) -> list[multiprocessing.process.BaseProcess]:
    """Local ranks 1..n-1 of this host (one per GPU beyond the first), as fresh interpreters: CUDA cannot be
    used in a forked child."""
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(target=_local_process, args=(str(paths.root), dict(hyperparameters), cluster, i),
                        name=f"rank-{cluster.rank(i)}") for i in range(1, cluster.processes_per_host)]
    for process in processes:
        process.start()
    return processes


def _local_process(root: str, hyperparameters: dict[str, Any], cluster: Cluster, local_rank: int) -> None:
    _configure_logging()
    paths = SageMakerPaths(pathlib.Path(root))
    try:
        with stop_on_sigterm() as stop:
            _train_rank(paths, parse_hyperparameters(hyperparameters), cluster, local_rank, stop)
    except ReportedByRankZero as follower:
        sys.exit(follower.exit_code)
    except (JobError, DataError) as error:   # never rank 0: the log, not the failure file
        log.error("training failed on local rank %d: %s", local_rank, error)
        sys.exit(getattr(error, "exit_code", JobError.exit_code))


def _wait_for(processes: list[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=60)
        if process.is_alive():   # this host's local rank 0 has ended, so the collectives left can only fail
            log.warning("%s is still running after rank 0 ended: stopping it", process.name)
            process.kill()
            process.join()


def _train_rank(paths: SageMakerPaths, config: TrainingConfig, cluster: Cluster, local_rank: int,
                stop: StopRequest) -> None:
    log.info("%s", cluster.describe(local_rank))
    with cluster.joined(local_rank) as group:
        try:
            _train(paths, config, group, stop)
            # No process may leave before the others: in local mode the first container to exit ends the job.
            group.barrier()
        except CollectiveError as error:
            # every process that sees it reports it: rank 0 may be the one that is gone
            raise ClusterError(f"{error}; another host or process ended or the network failed: see the other "
                               "hosts' logs") from None
        except (DataError, ChannelError, CheckpointError, JobStopped, JobError) as error:
            if group.leader or isinstance(error, ClusterError):
                raise
            log.error("training failed on every process: %s (rank 0 writes the failure file)", error)
            raise ReportedByRankZero(getattr(error, "exit_code", JobError.exit_code)) from None


@dataclass(frozen=True)
class _Trained:
    """A fitted model and what its governance files describe."""

    result: FitResult
    evaluation: Callable[[], tuple[str, Table]]   # the evaluated split's name and rows (rank 0 asks)
    baseline: Table                               # the training rows the monitoring baseline describes
    note: str | None                              # when those are not all the data, what they are
    checkpointing: Checkpointing | None


def _train(paths: SageMakerPaths, config: TrainingConfig, group: Group, stop: StopRequest) -> None:
    started = time.monotonic()
    log.info("hyperparameters: %s", json.dumps(config.to_dict()))
    input_config = _read_json(paths.input_data_config)
    # Each host sizes its own channels; if one must stream, all do (the ranks run one algorithm together).
    reasons = group.gather(group.agree(lambda: streaming_reason(paths, input_config, config),
                                       errors=(ChannelError, DataError)))
    reason = next((reason for reason in reasons if reason is not None), None)
    trained = (_train_streamed(paths, config, group, stop, input_config, reason) if reason is not None
               else _train_in_memory(paths, config, group, stop, input_config))
    if not group.leader:
        return
    result = trained.result
    if stop.requested():
        log.info("SIGTERM came after the last training step: the job finishes writing the model")
    path = artifact.save(result.regressor, paths.model_dir)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**result.metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    (paths.output_data_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for split, values in result.metrics.items():
        print(" ".join(f"{split}_{key}={value:.6g}" for key, value in values.items() if key != "rows"),
              flush=True)
    if trained.note:
        log.info("evaluation.json, the monitoring baseline and the model card describe %s", trained.note)
    _write_governance(paths, config, trained.evaluation(), trained.baseline, result, path)
    if trained.checkpointing is not None:
        # Only now that the model is written: SageMaker mirrors the deletion to checkpoint_s3_uri, and a later
        # job with the same checkpoint folder trains from the start instead of resuming a finished run.
        discard(trained.checkpointing)
    log.info("best epoch %d of %d; model written to %s in %.1f s", result.best_epoch, result.epochs_run, path,
             time.monotonic() - started)


def _train_in_memory(paths: SageMakerPaths, config: TrainingConfig, group: Group, stop: StopRequest,
                     input_config: Mapping[str, Any] | None) -> _Trained:
    channels = group.agree(lambda: read_channels(paths, input_config, config.csv_header),
                           errors=(ChannelError, DataError))
    sharded = _sharded(input_config)
    log.info("read %d training rows x %d columns%s%s%s", channels.train.n_rows, len(channels.train.names),
             f", {channels.validation.n_rows} validation rows" if channels.validation else "",
             f", {channels.test.n_rows} test rows" if channels.test else "",
             (" (this host's shard: ShardedByS3Key)" if sharded else " (every host reads them all: "
              "FullyReplicated; each rank trains on its share)") if group.distributed else "")
    checkpointing = Checkpointing(paths.checkpoints_dir, config.checkpoint_epochs, config.checkpoint_seconds,
                                  stop.requested)
    result = _fit(config, channels, checkpointing, stop, group, sharded)
    note = f"{group.name}'s shard of the data" if any(sharded.values()) and group.distributed else None
    return _Trained(result, lambda: evaluation_split(channels.train, config, channels.validation, channels.test),
                    channels.train, note, checkpointing)


def _train_streamed(paths: SageMakerPaths, config: TrainingConfig, group: Group, stop: StopRequest,
                    input_config: Mapping[str, Any] | None, reason: str) -> _Trained:
    log.info("streaming the channels from disk (%s): statistics in one pass, then one pass per epoch, "
             "memory bounded whatever the data's size; no checkpoints are written", reason)
    streamed = _fit_streamed(paths, config, group, stop, input_config)
    note = (f"seeded samples of the streamed data: {streamed.sample.n_rows} {streamed.split} rows, "
            f"{streamed.train_sample.n_rows} training rows")
    return _Trained(streamed.result, lambda: (streamed.split, streamed.sample), streamed.train_sample, note, None)


def _fit_streamed(paths: SageMakerPaths, config: TrainingConfig, group: Group, stop: StopRequest,
                  input_config: Mapping[str, Any] | None) -> StreamedFit:
    """train_streaming() with a stop turned into the JobError it ends the job with."""
    try:
        return train_streaming(paths, config, group, input_config, stop.requested,
                               on_epoch=_log_epoch if group.leader else None)
    except TrainingStopped as stopped:
        log.info("stopping %.1f s after SIGTERM, %s", stop.seconds_since(), stopped.position.describe())
        raise JobStopped(_stopped_reason(paths.checkpoints_dir, stopped)) from None


def _sharded(input_config: Mapping[str, Any] | None) -> dict[str, bool]:
    """Which channels are ShardedByS3Key (each host holds its own files) rather than FullyReplicated."""
    return {name: isinstance(entry, dict) and entry.get("S3DistributionType") == "ShardedByS3Key"
            for name, entry in (input_config or {}).items()}


def _write_governance(paths: SageMakerPaths, config: TrainingConfig, evaluation: tuple[str, Table],
                      baseline: Table, result: FitResult, artifact_path: pathlib.Path) -> None:
    """After the artifact: evaluation.json of the evaluation split (name, rows) and the monitoring baseline
    of the training rows in output/data (output.tar.gz, where a pipeline step or a monitoring schedule takes
    them from), model-card.json beside the artifact, and report.html in both."""
    split, table = evaluation
    report = evaluate_split(result.regressor, table, split, seed=config.seed)
    _write_json(paths.output_data_dir / "evaluation.json", report)
    print(describe_worst(report), flush=True)
    statistics, constraints = data_quality_baseline(baseline, result.regressor.feature_names, config.seed)
    _write_json(paths.output_data_dir / "statistics.json", statistics, indent=None)   # KLL levels: compact
    _write_json(paths.output_data_dir / "constraints.json", constraints)
    rows = {name: int(values["rows"]) for name, values in result.metrics.items()}
    card = build_card(result.regressor, artifact_path, rows, report)
    write_card(card, paths.model_dir)
    log.info("model card: %s", card["summary"])
    page = evaluation_report(result.regressor, table, result.history, result.best_epoch, report, card,
                             seed=config.seed)
    write_report(page, paths.output_data_dir)   # output.tar.gz, beside evaluation.json
    write_report(page, paths.model_dir)         # model.tar.gz, beside the model card


def _write_json(path: pathlib.Path, value: Mapping[str, Any], indent: int | None = 2) -> None:
    path.write_text(json.dumps(value, indent=indent, allow_nan=False) + "\n")


def _fit(config: TrainingConfig, channels: Channels, checkpointing: Checkpointing, stop: StopRequest,
         group: Group, sharded: Mapping[str, bool]) -> FitResult:
    """fit() with checkpoints, and the two ways it can end early as JobErrors."""
    train_sharded = any(sharded.get(name, False) for name in ("train", "training"))
    validation, test = channels.validation, channels.test
    if train_sharded and group.distributed:
        # fit() divides the other splits like the training one; a FullyReplicated one is divided here
        validation = share(validation, group) if validation and not sharded.get("validation") else validation
        test = share(test, group) if test and not sharded.get("test") else test
    try:
        return fit(channels.train, config, validation, test, on_epoch=_log_epoch if group.leader else None,
                   checkpointing=checkpointing, group=group, replicated=not train_sharded)
    except CheckpointError as error:
        raise JobError(f"{error} (on SageMaker the checkpoint folder is the job's checkpoint_s3_uri)") from None
    except TrainingStopped as stopped:
        log.info("stopping %.1f s after SIGTERM, %s", stop.seconds_since(), stopped.position.describe())
        raise JobStopped(_stopped_reason(checkpointing.folder, stopped)) from None


def _stopped_reason(folder: pathlib.Path, stopped: TrainingStopped) -> str:
    """The failure file's first line for a job SIGTERM stopped: where, and whether it can resume."""
    where = f"the training job was stopped (SIGTERM) {stopped.position.describe()}"
    if stopped.checkpoint is not None:
        return (f"{where}; a checkpoint is in {folder}: start the job again with the same "
                "checkpoint folder (checkpoint_s3_uri) to resume")
    return f"{where}; no checkpoint was written ({stopped.not_written}): a new job starts from the beginning"


def _log_epoch(report: EpochReport) -> None:
    print(f"epoch={report.epoch} train_loss={report.train_loss:.6g} validation_loss={report.validation_loss:.6g} "
          f"validation_rmse={report.validation_rmse:.6g}", flush=True)


def _read_hyperparameters(paths: SageMakerPaths) -> dict[str, Any]:
    return _read_json(paths.hyperparameters) or {}


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    """A config file's JSON object, None when the file is absent; JobError for anything else: not an object,
    malformed, nested beyond reason, larger than any SageMaker writes, or a link out of the config folder."""
    if not path.is_file():
        return None
    if not path.resolve().is_relative_to(path.parent.resolve()):
        raise JobError(f"{path.name} is a symbolic link that leads out of {path.parent}; it is not read")
    try:
        size = path.stat().st_size
        if size > CONFIG_FILE_LIMIT:
            raise JobError(f"{path.name} is {size} bytes; SageMaker's config files are far below the "
                           f"{CONFIG_FILE_LIMIT} bytes hyperplane reads")
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise JobError(f"cannot read {path.name}: {detail}") from None
    if not isinstance(value, dict):
        raise JobError(f"{path.name} must hold a JSON object, not a JSON {type(value).__name__}")
    return value
