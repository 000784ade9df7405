"""fit_streaming(): fit() for training data larger than memory, read as chunks, one pass after another.

    streamed = fit_streaming(lambda k: reader.chunks(k), config, Group.single())
    streamed.result        # a training.FitResult: the same Regressor, artifact and serving as fit()'s
    streamed.sample        # <= SAMPLE_ROWS rows of the evaluation split, for evaluation.json
    streamed.train_sample  # <= SAMPLE_ROWS rows of the training channel, for the monitoring baseline

`passes(k)` yields the k-th pass over the training channel as Tables (a few ten thousand rows each); it
is called with k = 0, 1, 2, ... in this order and once each (a Pipe-mode channel gives one FIFO per pass),
and every pass must yield the same rows in the same order. `validation` and `test`, when given, are the
same kind of callable for those channels, each with its own pass numbers. Memory is bounded by one chunk,
the shuffle buffer (SHUFFLE_ROWS encoded rows), the samples below and the categorical levels (at most
MAX_LEVELS per column), whatever the number of rows.

Passes over the training channel:
- pass 0, statistics: the schema and the preprocessing statistics in one pass, with model/schema.py's
  rules (a column whose present values are all numbers is numeric; one that is mostly numbers with a few
  words fails with the first word's row; NaN and infinity fail a numeric column) and fit_preprocessor()'s
  statistics: numeric means and population standard deviations from float64 moments merged chunk by chunk
  (Chan's formula, not the cancellation-prone sum of squares), the levels seen, the target's scale. The
  result equals fit_preprocessor() on the training rows up to float rounding. A categorical column with
  more than MAX_LEVELS levels fails (its one-hot encoding alone would not fit either).
- the linear model (hidden_layers empty): pass 1 sums X^T X and X^T y over the training rows in float64
  (model/normal_equations.py, which counts the one-hot blocks) and solves the normal equations with an SVD
  least-squares solver (the minimum-norm solution, which also covers the one-hot columns that are
  collinear with the bias): exactly the least-squares optimum that numpy.linalg.lstsq gives on the encoded
  rows, as fit() solves it.
- the MLPs: pass e is epoch e, AdamW on mini-batches. Rows gather in a buffer of SHUFFLE_ROWS rows, which
  is shuffled (seeded per epoch and rank) and cut into batches; the rows left over go on to the next
  buffer. A pass is therefore shuffled only within windows of SHUFFLE_ROWS consecutive rows: data sorted
  by the target (or by anything the target depends on) trains worse than shuffled data; the statistics
  and the linear model do not care. Early stopping as in fit(): the validation loss of the weights at the
  end of each epoch, `patience`, the best epoch's weights kept.
- a last pass: the metrics of the chosen weights (the definitions of training.evaluate()), the
  split-conformal calibration and the mean encoded training row (regressor.baseline).

Validation rows: the `validation` channel when given; otherwise a row is held out when a seeded hash of
its row number falls under validation_fraction (`held_out`), so no permutation of all rows is needed and
the split does not depend on how the rows are chunked. The held-out rows pass by during the epochs, so
epoch e's weights are kept aside and measured on them during pass e + 1 (the last epoch's in the metrics
pass): each epoch is measured with its final weights, as fit() does, at the price of the epoch that runs
while the previous one is measured, which early stopping may throw away.

Samples (all seeded: a row is kept when its hash-derived priority is among the k smallest, so a sample is
the same whatever the chunking and merges over ranks): the calibration keeps the residuals of at most
CALIBRATION_ROWS validation rows, `sample` and `train_sample` at most SAMPLE_ROWS rows. evaluation.json,
statistics.json and the model card written from them describe a sample when the data was streamed.

data_fingerprint: sha256 over, for each column in order, its name, 0x1f and the hex sha256 of its cells
(`repr(cell)` then 0x1e each, Table.fingerprint()'s bytes for that column), then 0x1e; with several ranks,
over the ranks' column digests in rank order. It is not Table.fingerprint()'s value (that one hashes the
columns one after the other, which a single pass over rows cannot do).

Data-parallel (model/distributed.py): rank r of w must be given rows r, r + w, r + 2w, ... of the channel
(container/streaming.py splits a FullyReplicated channel so; a sharded channel's rows are numbered as if
interleaved the same way): row number = local row index * w + r. Statistics, levels and counts are
merged over ranks; every step each rank computes the summed loss of its part of the batch
(ceil(batch_size / w) rows), the gradients are summed over ranks in one flat all-reduce, which also carries
the rows and the stop flags, and divided by the batch's rows over all ranks; a rank whose rows run out
takes empty steps until the agreed number of steps per epoch. Validation sums and metrics are all-reduced,
so early stopping is decided on the same numbers on every rank. A DataError on one rank during the
statistics pass fails every rank with its message.

Stopping: `stop_requested` is polled before every optimiser step (agreed over ranks through the step's
all-reduce) and between chunks of the other passes (with several ranks, at the end of those passes);
when it is true, TrainingStopped is raised. No checkpoint is written: a stopped streamed job starts again
from the beginning.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import math
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import Position
from model.checkpointing import TrainingStopped
from model.config import TrainingConfig
from model.conformal import Calibration, calibrate
from model.distributed import Group
from model.errors import DataError, shown
from model.network import build_network, predict_mean
from model.normal_equations import normal_equations
from model.onehot_rows import OneHotLayout
from model.preprocessing import Preprocessor, target_values
from model.regressor import Regressor
from model.schema import Feature, Kind, Schema, canonical_category, infer_schema, is_missing, parse_number
from model.stacked import FlatAdamW, StackedEnsemble
from model.table import Table
from model.training import EpochReport, FitResult, deterministic_algorithms, encoded_rows

Passes = Callable[[int], Iterable[Table]]

SHUFFLE_ROWS = 65_536          # encoded rows in the shuffle buffer
CALIBRATION_ROWS = 100_000     # validation residuals kept for the conformal calibration
SAMPLE_ROWS = 50_000           # rows kept of the evaluation split and of the training channel
MAX_LEVELS = 100_000           # levels a categorical column may have when streamed
NOT_WRITTEN = "streamed training does not write checkpoints"

# Salts that make the hashes of one row number independent of each other.
_HOLDOUT, _SAMPLE_TRAIN, _SAMPLE_VALIDATION, _SAMPLE_TEST, _CALIBRATION = 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class StreamedFit:
    result: FitResult
    sample: Table          # <= SAMPLE_ROWS rows of the evaluation split, target included, in row order
    split: str             # which split `sample` is from: "test", else "validation"
    train_sample: Table    # <= SAMPLE_ROWS rows of the training channel, in row order


def fit_streaming(passes: Passes, config: TrainingConfig, group: Group | None = None,
                  on_epoch: Callable[[EpochReport], None] | None = None,
                  stop_requested: Callable[[], bool] | None = None,
                  validation: Passes | None = None, test: Passes | None = None,
                  errors: tuple[type[Exception], ...] = (DataError,)) -> StreamedFit:
    """Raises DataError for unusable data (naming the row), TrainingStopped when stop_requested() turned
    true. With a `group`, every rank calls it with its own rows and every rank gets the same model; an
    exception of `errors` (the reader's own, besides DataError) raised on one rank during the statistics
    pass is raised on every rank."""
    group = group or Group.single()
    history: list[EpochReport] = []

    def report(epoch: EpochReport) -> None:
        history.append(epoch)
        if on_epoch is not None:
            on_epoch(epoch)
    stopper = _Stopper(stop_requested or (lambda: False), group)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    deterministic_algorithms(config.deterministic)

    train_stream = _Stream(passes, "training", group, config.seed)
    census = group.agree(lambda: _Census.scan(train_stream, config, validation is None, stopper), errors)
    stopper.agree(Position(0))
    stats = _Statistics.merge(group.gather(census), config, group, validation is None)
    preprocessor = stats.preprocessor
    train_stream.names = stats.names
    streams = {"validation": _Stream(validation, "validation", group, config.seed, stats.names)
               if validation is not None else None,
               "test": _Stream(test, "test", group, config.seed, stats.names) if test is not None else None}
    torch.manual_seed(config.seed)   # as fit(): the initial weights follow from the seed alone
    network = build_network(preprocessor.n_inputs, config.hidden_layers, config.dropout,
                            config.ensemble_size).to(device)
    run = _Run(config, group, preprocessor, train_stream, streams["validation"], stopper, device, stats, report)
    if config.hidden_layers:
        outcome = run.train_mlp(network)
    else:
        run.solve_linear(network)
        outcome = _Outcome([_Candidate(1, network, None)], 1)
    final = run.measure(outcome.candidates, streams["test"])
    regressor = Regressor(preprocessor, final.candidate.network.cpu().eval(), config,
                          baseline=tuple(final.baseline.tolist()))
    regressor.calibration = final.calibration
    epochs_run = max(outcome.epochs_run, final.candidate.epoch)
    regressor.info.update(_provenance(stats, final.metrics, final.candidate.epoch, epochs_run))
    return StreamedFit(FitResult(regressor, final.metrics, final.candidate.epoch, epochs_run, history),
                       final.sample, final.split, stats.train_sample)


def held_out(row_numbers: np.ndarray, config: TrainingConfig) -> np.ndarray:
    """True for the rows (0-based numbers over the training channel) held out for validation when there is
    no validation channel: a seeded hash of the row number, uniform in [0, 1), under validation_fraction."""
    return _uniform(np.asarray(row_numbers, dtype=np.uint64), config.seed, _HOLDOUT) < config.validation_fraction


def _uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """splitmix64 of (row number + a seed- and salt-derived offset), as floats uniform in [0, 1)."""
    offset = _splitmix(_splitmix(seed & _MASK64) ^ salt)
    z = keys.astype(np.uint64) + np.uint64(offset)   # uint64 arrays wrap around, as the hash wants
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.asarray((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)


def _splitmix(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _Stopper:
    """stop_requested, polled where every rank can act on it together."""

    def __init__(self, requested: Callable[[], bool], group: Group) -> None:
        self.requested, self.group = requested, group

    def between_chunks(self, position: Position) -> None:
        # With several ranks a chunk is no common point (ranks hold different numbers of chunks): they
        # agree at the end of the pass instead (`agree`).
        if not self.group.distributed and self.requested():
            raise TrainingStopped(position, None, NOT_WRITTEN)

    def agree(self, position: Position) -> None:
        if self.group.any(self.requested()):
            raise TrainingStopped(position, None, NOT_WRITTEN)


class _Stream:
    """One channel's passes, numbered in the order they are read, as (chunk, row numbers) pairs."""

    def __init__(self, passes: Passes, name: str, group: Group, seed: int, names: list[str] | None = None) -> None:
        self._passes, self.name, self._group, self._seed = passes, name, group, seed
        self.names = names
        self.passes_read = 0
        self.distributed = group.distributed

    def read(self) -> Iterator[tuple[Table, np.ndarray]]:
        index, local = self.passes_read, 0
        self.passes_read += 1
        for chunk in self._passes(index):
            if chunk.n_rows == 0:
                continue
            if self.names is not None and chunk.names != self.names:
                raise DataError(f"the {self.name} data has columns {', '.join(chunk.names)} but the training "
                                f"data has {', '.join(self.names)}", row=chunk.label(0))
            numbers = np.arange(local, local + chunk.n_rows, dtype=np.uint64)
            local += chunk.n_rows
            yield chunk, numbers * np.uint64(self._group.world_size) + np.uint64(self._group.rank)


# ----------------------------------------------------------------------------------------------------
# Pass 0: what each rank saw, and the statistics all ranks agree on.


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations of some float64 values, merged with Chan's formula."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        if values.size:
            mean = float(values.mean())
            self.merge(_Moments(float(values.size), mean, float(((values - mean) ** 2).sum())))

    def merge(self, other: _Moments) -> None:
        if not other.count:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total

    def scale(self) -> tuple[float, float]:
        """(mean, population std), std 1 for a constant or empty column: fit_preprocessor()'s convention."""
        std = math.sqrt(self.m2 / self.count) if self.count else 0.0
        return (self.mean if self.count else 0.0), (std if std > 0 else 1.0)


@dataclass
class _ColumnCensus:
    """What one rank saw of one feature column."""

    present: int = 0
    words: int = 0                                     # present values that are not numbers
    first_word: tuple[str, str] | None = None          # (row label, the value as a message may show it)
    first_infinite: tuple[str, str] | None = None      # NaN or infinity written out: refused if numeric
    moments: _Moments = field(default_factory=_Moments)   # the training rows' finite numbers
    numbers: np.ndarray = field(default_factory=lambda: np.empty(0))   # their distinct values
    others: set[str] = field(default_factory=set)      # the canonical levels of the training rows' others
    overflow: bool = False                              # more than MAX_LEVELS distinct values were seen

    def observe(self, values: np.ndarray, training: np.ndarray | None, chunk: Table) -> None:
        number, word, missing = _classify(values)
        self.present += int((~missing).sum())
        words = int(word.sum())
        self.words += words
        if words and self.first_word is None:
            first = int(np.argmax(word))
            self.first_word = (chunk.label(first), shown(values[first]))
        finite = np.isfinite(number)
        infinite = ~missing & ~word & ~finite
        if self.first_infinite is None and infinite.any():
            first = int(np.argmax(infinite))
            self.first_infinite = (chunk.label(first), shown(values[first]))
        if training is not None:
            finite, infinite, word = finite & training, infinite & training, word & training
        kept = number[finite]
        self.moments.add(kept)
        if self.overflow:
            return
        self.numbers = np.union1d(self.numbers, np.unique(kept))
        others = word | infinite
        if others.any():
            self.others.update(canonical_category(cell) for cell in set(values[others].tolist()))
        if len(self.numbers) + len(self.others) > MAX_LEVELS:
            self.overflow, self.numbers, self.others = True, np.empty(0), set()

    def merge(self, other: _ColumnCensus) -> None:
        """Adds another rank's census (a later rank: its first word comes after ours)."""
        self.present += other.present
        self.words += other.words
        self.first_word = self.first_word or other.first_word
        self.first_infinite = self.first_infinite or other.first_infinite
        self.moments.merge(other.moments)
        self.overflow = self.overflow or other.overflow
        if not self.overflow:
            self.numbers = np.union1d(self.numbers, other.numbers)
            self.others |= other.others
            self.overflow = len(self.numbers) + len(self.others) > MAX_LEVELS

    def levels(self) -> tuple[str, ...]:
        return tuple(sorted({canonical_category(float(n)) for n in self.numbers} | self.others))


def _classify(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(number or NaN, is a word, is missing) per cell, by schema.py's parse_number and is_missing."""
    n = len(values)
    try:   # fast path: every cell is a finite number (None and "" fail it and take the slow path)
        fast = values.astype(np.float64)
        if np.isfinite(fast).all():
            return fast, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    except (TypeError, ValueError):
        pass
    # Each distinct cell is parsed once: categorical columns repeat a few values many times.
    kinds: dict[Any, tuple[int, float]] = {}
    for cell in set(values.tolist()):
        if is_missing(cell):
            kinds[cell] = (2, math.nan)
        else:
            number = parse_number(cell)
            kinds[cell] = (1, math.nan) if number is None else (0, number)
    codes = np.fromiter((kinds[cell][0] for cell in values), dtype=np.int8, count=n)
    numbers = np.fromiter((kinds[cell][1] for cell in values), dtype=np.float64, count=n)
    return numbers, codes == 1, codes == 2


@dataclass
class _CensusSummary:
    """One rank's census, as gathered: picklable and small (levels, moments, a sample)."""

    names: list[str]
    reference: Schema
    columns: dict[str, _ColumnCensus]
    target: _Moments
    rows: int
    training_rows: int
    validation_rows: int
    column_digests: list[str]
    sample: _Sample


class _Census:
    """Pass 0 on one rank."""

    def __init__(self, first: Table, config: TrainingConfig, holdout: bool) -> None:
        self.config, self.holdout = config, holdout
        # The roles (target, categorical_columns, drop_columns) are checked on the first chunk; the kinds
        # are decided from every row (infer_kinds=False calls every column not forced categorical numeric).
        self.reference = infer_schema(first, config.target, config.categorical_columns, config.drop_columns,
                                      infer_kinds=False)
        self.names = first.names
        self.columns = {f.name: _ColumnCensus() for f in self.reference.features}
        self.target = _Moments()
        self.rows = self.training_rows = 0
        self.digests = {name: hashlib.sha256() for name in self.names}
        self.sample = _Sample(SAMPLE_ROWS)

    @classmethod
    def scan(cls, stream: _Stream, config: TrainingConfig, holdout: bool, stopper: _Stopper) -> _CensusSummary:
        census: _Census | None = None
        for chunk, numbers in stream.read():
            if census is None:
                census = cls(chunk, config, holdout)
                stream.names = census.names
            census.observe(chunk, numbers)
            stopper.between_chunks(Position(0))
        if census is None:
            raise DataError("the training data has no rows" if not stream.distributed else
                            "no training row reached this process (give every host data)")
        return census.summary()

    def observe(self, chunk: Table, numbers: np.ndarray) -> None:
        training = ~held_out(numbers, self.config) if self.holdout else None
        target = self.reference.target
        values = _target(chunk, target, self.config.target_transform)   # every row's: fails by row
        kept = values[training] if training is not None else values
        self.target.add(np.log(kept) if self.config.target_transform == "log" else kept)
        for name, column in self.columns.items():
            column.observe(chunk.columns[name], training, chunk)
        self.rows += chunk.n_rows
        self.training_rows += chunk.n_rows if training is None else int(training.sum())
        for name, digest in self.digests.items():
            cells = chunk.columns[name].tolist()
            digest.update(("\x1e".join(map(repr, cells)) + "\x1e").encode())
        self.sample.add(chunk, numbers, _uniform(numbers, self.config.seed, _SAMPLE_TRAIN))

    def summary(self) -> _CensusSummary:
        return _CensusSummary(self.names, self.reference, self.columns, self.target, self.rows,
                              self.training_rows, self.rows - self.training_rows,
                              [f"{name}\x1f{digest.hexdigest()}\x1e" for name, digest in self.digests.items()],
                              self.sample)


@dataclass(frozen=True)
class _Statistics:
    """The census of every rank merged: the same on every rank."""

    names: list[str]
    preprocessor: Preprocessor
    rows: int
    training_rows: int
    validation_rows: int     # held out of the training channel (0 with a validation channel)
    local_training_rows: int   # this rank's
    fingerprint: str
    train_sample: Table

    @classmethod
    def merge(cls, summaries: list[_CensusSummary], config: TrainingConfig, group: Group,
              holdout: bool) -> _Statistics:
        first = summaries[0]
        for rank, summary in enumerate(summaries):
            if summary.names != first.names:
                raise DataError(f"{group.names[rank]} read columns {', '.join(summary.names)} but "
                                f"{group.names[0]} read {', '.join(first.names)}; every host's data must have "
                                "the same columns")
        columns = first.columns
        target = first.target
        for summary in summaries[1:]:
            for name, column in columns.items():
                column.merge(summary.columns[name])
            target.merge(summary.target)
        features = [Feature(f.name, f.kind if f.kind is Kind.CATEGORICAL else
                            _decide_kind(f.name, columns[f.name], summaries, group))
                    for f in first.reference.features]
        schema = Schema(first.reference.target, tuple(features))
        numeric, categories = {}, {}
        for feature in features:
            column = columns[feature.name]
            if feature.kind is Kind.NUMERIC:
                numeric[feature.name] = column.moments.scale()
            else:
                if column.overflow:
                    raise DataError(f"the categorical column {feature.name!r} has more than {MAX_LEVELS} distinct "
                                    "values, too many to read as categories when the data is streamed; list it in "
                                    "drop_columns (an id or free text?)", column=feature.name)
                categories[feature.name] = column.levels()
        preprocessor = Preprocessor(schema, numeric, categories, config.target_transform, target.scale())
        rows, training, validation = (sum(getattr(s, key) for s in summaries)
                                      for key in ("rows", "training_rows", "validation_rows"))
        if holdout and rows < 2:
            raise DataError(f"need at least 2 training rows to hold out a validation split, got {rows}")
        if training < 1 or (holdout and validation < 1):
            raise DataError(f"the hold-out drew {validation} validation rows and {training} training rows from "
                            f"{rows}; give a validation channel or change validation_fraction")
        fingerprint = hashlib.sha256("".join(d for s in summaries for d in s.column_digests).encode()).hexdigest()
        sample = _Sample.merged([s.sample for s in summaries], SAMPLE_ROWS)
        return cls(first.names, preprocessor, rows, training, validation, summaries[group.rank].training_rows,
                   fingerprint, sample.table_in_order())


def _decide_kind(name: str, column: _ColumnCensus, summaries: list[_CensusSummary], group: Group) -> Kind:
    """schema.py's rule on the merged census; the first bad row is the lowest rank's first one."""
    def where(pick: Callable[[_ColumnCensus], tuple[str, str] | None]) -> tuple[str, str]:
        rank, (label, value) = next((rank, found) for rank, s in enumerate(summaries)
                                    if (found := pick(s.columns[name])) is not None)
        return (f"{group.names[rank]}: {label}" if group.distributed else label), value

    if not column.words:
        if column.first_infinite is not None:
            label, value = where(lambda c: c.first_infinite)
            raise DataError(f"{value} is not a finite number (NaN and infinity are refused; leave the value "
                            "empty to mark it missing)", row=label, column=name)
        return Kind.NUMERIC
    if column.words * 2 < column.present:
        label, value = where(lambda c: c.first_word)
        raise DataError(f"non-numeric value {value} in a column that is otherwise numeric "
                        f"({column.present - column.words} of {column.present} values are numbers); fix the value "
                        "or list the column in categorical_columns", row=label, column=name)
    return Kind.CATEGORICAL


# ----------------------------------------------------------------------------------------------------
# Samples: the k rows of smallest priority (a seeded hash of the row number).


class _Sample:
    """A seeded sample without replacement of at most k rows: the same rows whatever the chunking, and the
    union of the ranks' samples cut to k is the sample of all their rows."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.table: Table | None = None
        self.numbers = np.empty(0, dtype=np.uint64)
        self.priority = np.empty(0)

    def add(self, table: Table, numbers: np.ndarray, priority: np.ndarray) -> None:
        if len(self.priority) >= self.k:   # only rows that beat the worst kept one can enter
            better = priority < self.priority.max()
            if not better.any():
                return
            table, numbers, priority = table.take(np.flatnonzero(better)), numbers[better], priority[better]
        if self.table is not None:
            table = Table.concat([self.table, table])
            numbers, priority = np.concatenate([self.numbers, numbers]), np.concatenate([self.priority, priority])
        keep = np.sort(np.argsort(priority, kind="stable")[:self.k])
        self.table, self.numbers, self.priority = table.take(keep), numbers[keep], priority[keep]

    @classmethod
    def merged(cls, samples: list[_Sample], k: int) -> _Sample:
        out = cls(k)
        for sample in samples:
            if sample.table is not None:
                out.add(sample.table, sample.numbers, sample.priority)
        return out

    def table_in_order(self) -> Table:
        """The kept rows in row-number order (rank 0's first when rows came without a common numbering)."""
        if self.table is None:
            return Table({})
        return self.table.take(np.argsort(self.numbers, kind="stable"))


class _Residuals:
    """The same bottom-k sample of (prediction, truth) pairs of the validation rows, for the calibration."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.priority = np.empty(0)
        self.predicted = np.empty(0)
        self.truth = np.empty(0)

    def add(self, priority: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> None:
        priority = np.concatenate([self.priority, priority])
        keep = np.argsort(priority, kind="stable")[:self.k]
        self.priority = priority[keep]
        self.predicted = np.concatenate([self.predicted, predicted])[keep]
        self.truth = np.concatenate([self.truth, truth])[keep]


# ----------------------------------------------------------------------------------------------------
# Training passes.


@dataclass
class _Candidate:
    """Weights that may become the model: the epoch they ended, and their validation loss when known."""

    epoch: int
    network: nn.Module
    validation_loss: float | None


@dataclass(frozen=True)
class _Outcome:
    candidates: list[_Candidate]   # the best epoch measured so far, and the last one when not yet measured
    epochs_run: int


@dataclass
class _SplitSums:
    """Sums for training.evaluate()'s metrics of one split, for each candidate."""

    candidates: int
    truth: _Moments = field(default_factory=_Moments)
    nonzero: float = 0.0
    errors: np.ndarray = field(init=False)   # per candidate: sse, sae, ape, scaled sse

    def __post_init__(self) -> None:
        self.errors = np.zeros((self.candidates, 4))

    def add(self, index: int, predicted: np.ndarray, truth: np.ndarray, scaled: np.ndarray,
            scaled_truth: np.ndarray) -> None:
        error = predicted - truth
        nonzero = truth != 0
        self.errors[index] += [(error ** 2).sum(), np.abs(error).sum(), np.abs(error[nonzero] / truth[nonzero]).sum(),
                               ((scaled.astype(np.float64) - scaled_truth) ** 2).sum()]

    def add_truth(self, truth: np.ndarray) -> None:
        self.truth.add(truth)
        self.nonzero += float((truth != 0).sum())

    def metrics(self, index: int) -> dict[str, float]:
        rows = self.truth.count
        sse, sae, ape, _ = self.errors[index]
        return {"rmse": float(np.sqrt(sse / rows)), "mae": float(sae / rows),
                "mape": float(ape / self.nonzero * 100) if self.nonzero else 0.0,
                "r2": 1 - float(sse / self.truth.m2) if self.truth.m2 > 0 else 0.0, "rows": float(rows)}


@dataclass(frozen=True)
class _Final:
    candidate: _Candidate
    metrics: dict[str, dict[str, float]]
    baseline: np.ndarray
    calibration: Calibration
    sample: Table
    split: str


class _Run:
    def __init__(self, config: TrainingConfig, group: Group, preprocessor: Preprocessor, train: _Stream,
                 validation: _Stream | None, stopper: _Stopper, device: torch.device, stats: _Statistics,
                 on_epoch: Callable[[EpochReport], None] | None) -> None:
        self.config, self.group, self.preprocessor = config, group, preprocessor
        self.train, self.validation, self.stopper, self.device = train, validation, stopper, device
        self.stats, self.on_epoch = stats, on_epoch
        self.holdout = validation is None
        self.target = preprocessor.schema.target
        self.pending_train_loss = 0.0   # the training loss of the epoch measured in the last pass

    def _split(self, chunk: Table, numbers: np.ndarray) -> tuple[Table, np.ndarray, Table | None, np.ndarray]:
        """The chunk's training rows and their numbers, and its held-out rows (None with a validation channel)."""
        if not self.holdout:
            return chunk, numbers, None, numbers[:0]
        held = held_out(numbers, self.config)
        if not held.any():
            return chunk, numbers, None, numbers[:0]
        kept = np.flatnonzero(~held)
        validation = np.flatnonzero(held)
        return chunk.take(kept), numbers[kept], chunk.take(validation), numbers[validation]

    def _x(self, table: Table) -> torch.Tensor:
        return torch.from_numpy(self.preprocessor.encode(table)).to(self.device)

    # -- the linear model

    def solve_linear(self, network: nn.Module) -> None:
        """The least-squares weights from the normal equations, summed over the training rows and ranks."""
        width = self.preprocessor.n_inputs + 1
        gram, moment = np.zeros((width, width)), np.zeros(width)
        # the sums are made on the CPU: many one-hot columns stay compact there (model/onehot_rows.py), and a
        # chunk of 65,536 wide rows is never a dense float64 matrix
        layout = OneHotLayout.of(self.preprocessor.n_inputs, self.preprocessor.one_hot_blocks, torch.device("cpu"))
        mean, std = self.preprocessor.target_scale
        for chunk, numbers in self.train.read():
            rows, _, _, _ = self._split(chunk, numbers)
            if not rows.n_rows:
                continue
            # the scaled target in float64, not encode_target()'s float32: the solve is exact
            values = _target(rows, self.target, self.config.target_transform)
            y = ((np.log(values) if self.config.target_transform == "log" else values) - mean) / std
            chunk_gram, chunk_moment = normal_equations(encoded_rows(self.preprocessor, rows, layout),
                                                        torch.from_numpy(y), self.preprocessor.one_hot_blocks)
            gram += chunk_gram.numpy()
            moment += chunk_moment.numpy()
            self.stopper.between_chunks(Position(0))
        self.stopper.agree(Position(0))
        sums = self.group.sum(np.concatenate([gram.ravel(), moment]))
        gram, moment = sums[:width * width].reshape(width, width), sums[width * width:]
        # SVD-based (gelsd): the minimum-norm solution, also when one-hot blocks make the system singular
        weights = np.linalg.lstsq(gram, moment, rcond=None)[0]
        layer = next(m for m in network.modules() if isinstance(m, nn.Linear))
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weights[:-1]).reshape(layer.weight.shape))
            layer.bias.copy_(torch.from_numpy(weights[-1:]))

    # -- the MLPs

    def train_mlp(self, network: nn.Module) -> _Outcome:
        # the ensemble trains as one stacked computation (model/stacked.py, as fit() trains it); the
        # candidates measured and kept are copies of the network's own modules
        stacked = StackedEnsemble.of(network)
        try:
            return self._train_stacked(network, stacked, FlatAdamW(
                stacked, lr=self.config.learning_rate, weight_decay=self.config.weight_decay))
        finally:
            stacked.release()

    def _train_stacked(self, network: nn.Module, stacked: StackedEnsemble, optimizer: FlatAdamW) -> _Outcome:
        config, group = self.config, self.group
        batch_rows = -(-config.batch_size // group.world_size)
        steps = max(group.gather(-(-self.stats.local_training_rows // batch_rows)))
        best: _Candidate | None = None
        pending: _Candidate | None = None      # the previous epoch's weights, measured during this pass
        pending_train_loss = 0.0
        for epoch in range(1, config.epochs + 1):
            generator = torch.Generator().manual_seed(_splitmix(config.seed * 1_000_003 + epoch * 7919 + group.rank)
                                                      >> 1)
            batches = _Batches(batch_rows, generator)
            sums = _ValidationSums()
            done, loss_total = 0, 0.0
            network.train()   # measuring a validation channel left it in eval mode
            for chunk, numbers in self.train.read():
                rows, _, held, _ = self._split(chunk, numbers)
                if held is not None and pending is not None:
                    sums.add(self, pending.network, held)
                if rows.n_rows:
                    y = torch.from_numpy(self.preprocessor.encode_target(rows)).to(self.device)
                    for x_batch, y_batch in batches.add(self._x(rows), y):
                        loss_total += self._step(stacked, optimizer, x_batch, y_batch, Position(epoch - 1, done))
                        done += 1
            for x_batch, y_batch in batches.flush():
                loss_total += self._step(stacked, optimizer, x_batch, y_batch, Position(epoch - 1, done))
                done += 1
            empty = torch.empty(0, self.preprocessor.n_inputs, device=self.device)
            while done < steps:   # this rank's rows are used up; the others still have batches
                loss_total += self._step(stacked, optimizer, empty, empty[:, 0], Position(epoch - 1, done))
                done += 1
            train_loss = loss_total / self.stats.training_rows
            if self.holdout:
                if pending is not None:
                    pending.validation_loss = self._report(pending.epoch, pending_train_loss, sums)
                    best, stop = _early_stopping(best, pending, config.patience)
                    if stop:
                        return _Outcome([best], pending.epoch)
                pending = _Candidate(epoch, _frozen(network), None)
                pending_train_loss = train_loss
            else:
                assert self.validation is not None
                sums = _ValidationSums()
                for chunk, _ in self.validation.read():
                    sums.add(self, network, chunk)
                candidate = _Candidate(epoch, _frozen(network), None)
                candidate.validation_loss = self._report(epoch, train_loss, sums)
                best, stop = _early_stopping(best, candidate, config.patience)
                if stop:
                    return _Outcome([best], epoch)
        self.pending_train_loss = pending_train_loss
        candidates = [c for c in (best, pending) if c is not None]
        return _Outcome(candidates, config.epochs)

    def _step(self, stacked: StackedEnsemble, optimizer: FlatAdamW, x: torch.Tensor, y: torch.Tensor,
              position: Position) -> float:
        """One AdamW step on the batch of all ranks; the batch's summed loss (over all ranks' rows)."""
        group = self.group
        stop = self.stopper.requested()
        if not group.distributed and stop:
            raise TrainingStopped(position, None, NOT_WRITTEN)
        stacked.zero_grad()
        loss = torch.zeros((), device=self.device)
        if len(x):
            outputs = stacked(x, training=True)
            # each member's own squared errors, summed: divided by the batch's rows over all ranks below
            loss = nn.functional.mse_loss(outputs, y[:, None].expand_as(outputs), reduction="sum") / outputs.shape[1]
            loss.backward()
        tail = torch.tensor([float(loss.detach()), float(len(x)), 1.0 if stop else 0.0], device=self.device,
                            dtype=stacked.grad.dtype)
        group.sum_tensors_([stacked.grad, tail])
        if tail[2] > 0:
            raise TrainingStopped(position, None, NOT_WRITTEN)
        rows = float(tail[1])
        if rows == 0:
            return 0.0
        stacked.grad.div_(rows)
        optimizer.step()
        return float(tail[0])

    def _report(self, epoch: int, train_loss: float, sums: _ValidationSums) -> float:
        rows, scaled, sse = self.group.sum(np.array([sums.rows, sums.scaled_sse, sums.sse]))
        if rows == 0:
            raise DataError("the validation data has no rows")
        if self.on_epoch:
            self.on_epoch(EpochReport(epoch, train_loss, float(scaled / rows), float(np.sqrt(sse / rows))))
        return float(scaled / rows)

    # -- the last pass

    def measure(self, candidates: list[_Candidate], test: _Stream | None) -> _Final:
        """Metrics, calibration and baseline of the candidates in one more pass; picks the best candidate."""
        config, group, count = self.config, self.group, len(candidates)
        splits = {"train": _SplitSums(count), "validation": _SplitSums(count),
                  **({"test": _SplitSums(count)} if test is not None else {})}
        residuals = [_Residuals(CALIBRATION_ROWS) for _ in candidates]
        split = "test" if test is not None else "validation"
        sample = _Sample(SAMPLE_ROWS)
        column_sums = np.zeros(self.preprocessor.n_inputs + 1)
        salt = _SAMPLE_TEST if test is not None else _SAMPLE_VALIDATION

        def measure(name: str, table: Table, numbers: np.ndarray, x: np.ndarray | None = None) -> None:
            x = self.preprocessor.encode(table) if x is None else x
            truth = _target(table, self.target)
            scaled_truth = self.preprocessor.encode_target(table).astype(np.float64)
            splits[name].add_truth(truth)
            inputs = torch.from_numpy(x).to(self.device)
            for index, candidate in enumerate(candidates):
                candidate.network.eval()
                with torch.inference_mode():
                    scaled = predict_mean(candidate.network, inputs).cpu().numpy()
                predicted = self.preprocessor.decode_target(scaled)
                splits[name].add(index, predicted, truth, scaled, scaled_truth)
                if name == "validation":
                    residuals[index].add(_uniform(numbers, config.seed, _CALIBRATION), predicted, truth)
            if name == split:
                sample.add(table, numbers, _uniform(numbers, config.seed, salt))

        for chunk, numbers in self.train.read():
            rows, row_numbers, held, held_numbers = self._split(chunk, numbers)
            if rows.n_rows:
                x = self.preprocessor.encode(rows)
                column_sums += np.r_[x.astype(np.float64).sum(axis=0), rows.n_rows]
                measure("train", rows, row_numbers, x)
            if held is not None:
                measure("validation", held, held_numbers)
            self.stopper.between_chunks(Position(config.epochs))
        for name, stream in (("validation", self.validation), ("test", test)):
            if stream is not None:
                for chunk, numbers in stream.read():
                    measure(name, chunk, numbers)
                    self.stopper.between_chunks(Position(config.epochs))
        self.stopper.agree(Position(max(c.epoch for c in candidates)))

        totals = group.sum(np.concatenate([column_sums, *(s.errors.ravel() for s in splits.values()),
                                           [s.nonzero for s in splits.values()]]))
        column_sums, offset = totals[:len(column_sums)], len(column_sums)
        for sums in splits.values():
            sums.errors = totals[offset:offset + sums.errors.size].reshape(sums.errors.shape)
            offset += sums.errors.size
        for sums in splits.values():
            sums.nonzero = float(totals[offset])
            offset += 1
            merged = _Moments()
            for moments in group.gather(sums.truth):
                merged.merge(moments)
            sums.truth = merged
        if splits["validation"].truth.count == 0:
            raise DataError("the validation data has no rows")

        chosen = self._choose(candidates, splits)
        index = candidates.index(chosen)
        gathered = group.gather((residuals[index].priority, residuals[index].predicted, residuals[index].truth))
        merged_residuals = _Residuals(CALIBRATION_ROWS)
        for priority, predicted, truth in gathered:
            merged_residuals.add(priority, predicted, truth)
        calibration = calibrate(merged_residuals.predicted, merged_residuals.truth, config.target_transform)
        metrics = {name: sums.metrics(index) for name, sums in splits.items()}
        evaluation = _Sample.merged(group.gather(sample), SAMPLE_ROWS).table_in_order()
        return _Final(chosen, metrics, column_sums[:-1] / column_sums[-1], calibration, evaluation, split)

    def _choose(self, candidates: list[_Candidate], splits: dict[str, _SplitSums]) -> _Candidate:
        validation = splits["validation"]
        rows = validation.truth.count
        if not self.config.hidden_layers:   # the linear model: its one epoch, reported now that it is measured
            train = splits["train"]
            if self.on_epoch:
                self.on_epoch(EpochReport(1, float(train.errors[0, 3] / train.truth.count),
                                          float(validation.errors[0, 3] / rows),
                                          float(np.sqrt(validation.errors[0, 0] / rows))))
            return candidates[0]
        best: _Candidate | None = None
        for index, candidate in enumerate(candidates):
            if candidate.validation_loss is None:   # the last epoch of a held-out run, measured in this pass
                candidate.validation_loss = float(validation.errors[index, 3] / rows)
                if self.on_epoch:
                    self.on_epoch(EpochReport(candidate.epoch, self.pending_train_loss, candidate.validation_loss,
                                              float(np.sqrt(validation.errors[index, 0] / rows))))
            best, _ = _early_stopping(best, candidate, self.config.patience)
        assert best is not None
        return best


def _early_stopping(best: _Candidate | None, candidate: _Candidate, patience: int) -> tuple[_Candidate, bool]:
    """fit()'s rule: the candidate replaces the best when clearly better; stop after `patience` epochs without."""
    assert candidate.validation_loss is not None
    if best is None:
        return candidate, False
    assert best.validation_loss is not None
    if candidate.validation_loss < best.validation_loss - 1e-9 * abs(best.validation_loss):
        return candidate, False
    return best, candidate.epoch - best.epoch >= patience


def _frozen(network: nn.Module) -> nn.Module:
    """A copy of the weights as they are now, for measuring them later."""
    return copy.deepcopy(network).eval()


@dataclass
class _ValidationSums:
    rows: float = 0.0
    scaled_sse: float = 0.0
    sse: float = 0.0

    def add(self, run: _Run, network: nn.Module, table: Table) -> None:
        truth = _target(table, run.target)
        scaled_truth = torch.from_numpy(run.preprocessor.encode_target(table)).to(run.device)
        network.eval()
        with torch.inference_mode():
            scaled = predict_mean(network, run._x(table))
        predicted = run.preprocessor.decode_target(scaled.cpu().numpy())
        self.rows += table.n_rows
        self.scaled_sse += float(((scaled - scaled_truth).double() ** 2).sum())
        self.sse += float(((predicted - truth) ** 2).sum())


class _Batches:
    """Mini-batches of one pass: rows gather in a buffer of `buffer_rows`, which is shuffled and cut into
    batches; the rows left over start the next buffer, and `flush` shuffles and cuts the last one."""

    def __init__(self, batch_rows: int, generator: torch.Generator, buffer_rows: int = SHUFFLE_ROWS) -> None:
        self.batch_rows, self.generator, self.buffer_rows = batch_rows, generator, buffer_rows
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.x.append(x)
        self.y.append(y)
        self.rows += len(x)
        if self.rows >= self.buffer_rows:
            yield from self._cut(last=False)

    def flush(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.rows:
            yield from self._cut(last=True)

    def _cut(self, last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = torch.cat(self.x), torch.cat(self.y)
        order = torch.randperm(len(x), generator=self.generator).to(x.device)
        x, y = x[order], y[order]
        usable = len(x) if last else len(x) - len(x) % self.batch_rows
        self.x, self.y = [x[usable:]], [y[usable:]]
        self.rows = len(x) - usable
        for start in range(0, usable, self.batch_rows):
            yield x[start:start + self.batch_rows], y[start:start + self.batch_rows]


def _target(table: Table, target: str, transform: str = "none") -> np.ndarray:
    """target_values(), without its per-cell loop when every cell is a finite (for log: positive) number."""
    try:
        values = table.columns[target].astype(np.float64)
        if np.isfinite(values).all() and (transform != "log" or (values > 0).all()):
            return np.asarray(values)
    except (KeyError, TypeError, ValueError):
        pass
    return target_values(table, target, transform)   # the slow path names the row at fault


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise DataError("device=cuda was asked for but no CUDA device is visible")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def _provenance(stats: _Statistics, metrics: dict[str, dict[str, float]], best_epoch: int,
                epochs_run: int) -> dict[str, object]:
    """fit()'s provenance, from the statistics pass."""
    try:
        own_version = importlib.metadata.version("hyperplane")
    except importlib.metadata.PackageNotFoundError:
        own_version = "unknown"
    return {"metrics": metrics, "best_epoch": best_epoch, "epochs_run": epochs_run,
            "data_fingerprint": stats.fingerprint, "training_rows": stats.rows,
            "features": len(stats.preprocessor.schema.features), "data_loading": "stream",
            "versions": {"hyperplane": own_version, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}
