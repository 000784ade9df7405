"""Channels read as a stream of row chunks, for data larger than memory, and the choice of stream or memory.

    stream = ChannelStream(paths.channel("train"), "train", config_of_channel, csv_header="auto")
    for chunk in stream.chunks(0): ...            # Tables of at most chunk_rows rows, in file order
    reason = streaming_reason(paths, input_config, config)   # None: read the channels into memory
    streamed = train_streaming(paths, config, group, input_config, stop_requested)   # model/streaming.py

What ChannelStream promises:
- File and FastFile mode: the channel folder's files in sorted path order, hidden files skipped, every
  file resolving inside the job's tree (channels.py's rules), read line by line: no file is ever held
  whole; memory is one chunk. Formats as channels.py reads them, decided the same way (ContentType, then
  the file name, then the first character): CSV with or without a header (`csv_header`; `auto` sniffs the
  first row against the next HEADER_SNIFF_ROWS), JSON Lines of objects or arrays, either gzip-compressed
  (recognised by its magic bytes). The files of a channel must have the same columns; a headerless file
  takes the names of the channel's files with a header, position for position. A JSON Lines file of
  objects takes its columns from the keys of its first chunk_rows lines (a key missing from a line is a
  missing value); a later line with a key not among them fails, naming the line: a streamed file cannot
  grow a column after its first rows were used.
- Row labels are channels.py's: "train/cars.csv line 18" (the record number in the file).
- Pipe mode: SageMaker gives pass k of the channel as the FIFO input/data/<channel>_<k> (train_0,
  train_1, ...), each readable once; `chunks(k)` reads that FIFO. The files of the channel arrive in it
  one after the other, so a CSV row equal to the header row is taken as the next file's header and
  skipped; labels name the FIFO ("train_0 line 12", counting over the whole stream). A FIFO that does not
  appear, or into which nothing is written, within `fifo_timeout` seconds (FIFO_TIMEOUT_S by default)
  fails the job with a message saying so, instead of waiting for ever.
- rank/world: a FullyReplicated channel (every host holds all of it) is split row by row: rank r keeps
  the rows whose 0-based row number n over the channel (header rows not counted) has n % world == r, the
  numbering model/streaming.py expects. A ShardedByS3Key channel is kept whole: each host has its own files.

Streaming or memory (`streaming_reason`): stream when a channel uses Pipe mode, when the hyperparameter
data_loading is `stream`, or when it is `auto` and a channel's text (its files' sizes, a gzip file counted
at its decompressed size from its trailer) exceeds channels.channel_byte_budget(), beyond which
read_channels refuses it. `memory` with a Pipe-mode channel fails: a FIFO can only be streamed. In memory
is faster for data that fits (no re-reading and re-parsing per epoch, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import logging
import os
import pathlib
import select
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from container.channels import (
    CSV_TYPES,
    HEADER_SNIFF_ROWS,
    JSONLINES_TYPES,
    ChannelError,
    channel_byte_budget,
    channel_configs,
    channel_files,
    is_jsonlines,
    json_kind,
    json_lines,
    looks_like_header,
)
from container.paths import SageMakerPaths
from model.config import TrainingConfig
from model.distributed import Group
from model.errors import DataError
from model.streaming import StreamedFit, fit_streaming
from model.table import Cell, Table
from model.training import EpochReport

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 65_536
FIFO_TIMEOUT_S = 300.0    # generous: a pass's FIFO may wait for the previous one to be read to its end
_POLL_S = 0.05


@dataclass
class ChannelStream:
    """One channel's rows, pass after pass, as Table chunks of at most `chunk_rows` rows."""

    folder: pathlib.Path                      # input/data/<name> (its parent holds the Pipe-mode FIFOs)
    name: str
    config: Mapping[str, Any] = field(default_factory=dict)   # the channel's inputdataconfig.json entry
    csv_header: str = "auto"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    rank: int = 0
    world: int = 1
    root: pathlib.Path | None = None          # the job's /opt/ml: nothing outside it is read
    fifo_timeout: float = FIFO_TIMEOUT_S
    names: list[str] | None = None            # align positional (headerless) files to these names
    _file_names: dict[pathlib.Path, list[str]] | None = field(default=None, repr=False)

    @property
    def pipe(self) -> bool:
        return bool(self.config.get("TrainingInputMode", "File") == "Pipe")

    @property
    def sharded(self) -> bool:
        return self.config.get("S3DistributionType") == "ShardedByS3Key"

    @property
    def content_type(self) -> str:
        content_type = str(self.config.get("ContentType") or "").split(";")[0].strip().lower()
        if content_type and content_type not in CSV_TYPES | JSONLINES_TYPES:
            raise ChannelError(f"channel {self.name!r} has ContentType {content_type!r}; hyperplane reads text/csv "
                               "and application/jsonlines (either one gzip-compressed)")
        return content_type

    def chunks(self, index: int) -> Iterator[Table]:
        """Pass `index` over the channel: this rank's rows, in order, in chunks of at most chunk_rows."""
        content_type = self.content_type
        kept = _Keeper(0, 1, self.chunk_rows) if self.sharded else _Keeper(self.rank, self.world, self.chunk_rows)
        if self.pipe:
            fifo = self.folder.parent / f"{self.name}_{index}"
            with _open_fifo(fifo, self.name, self.fifo_timeout) as raw:
                yield from self._parse(raw, fifo, pathlib.PurePath(fifo.name), content_type, kept, pipe=True)
        else:
            files = self._files()
            names = self._reference_names(files, content_type)
            for path in files:
                with _open_file(path, self._label(path)) as raw:
                    yield from self._parse(raw, path, self._label(path), content_type, kept, names=names)
        yield from kept.flush()

    def _label(self, path: pathlib.Path) -> pathlib.PurePath:
        return path.relative_to(self.folder.parent)

    def _files(self) -> list[pathlib.Path]:
        return channel_files(self.folder, self.name, self.root)

    def _reference_names(self, files: list[pathlib.Path], content_type: str) -> list[str] | None:
        """The channel's column names, from the first file with a header (channels.py's _stack rule);
        `names` when given (a validation or test channel takes the training channel's)."""
        if self._file_names is None:
            self._file_names = {}
            for path in files:
                with _open_file(path, self._label(path)) as raw:
                    head = self._parse(raw, path, self._label(path), content_type, _Keeper(0, 1, 1 << 62),
                                       head_only=True)
                    found = next(head, None)
                    if found is not None:
                        self._file_names[path] = found.names
        named = [names for names in self._file_names.values() if not _positional(names)]
        return self.names or (named[0] if named else None)

    def _parse(self, raw: io.BufferedReader, path: pathlib.Path, label: pathlib.PurePath, content_type: str,
               kept: _Keeper, *, pipe: bool = False, names: list[str] | None = None,
               head_only: bool = False) -> Iterator[Table]:
        try:
            lines = iter(_text(raw))
            head: list[str] = []
            for line in lines:
                head.append(line)
                if line.strip():
                    break
            if not head or not head[-1].strip():
                if not head_only:
                    log.warning("skipping empty file %s", label)
                return
            stream = itertools.chain(head, lines)
            if is_jsonlines(path, head[-1], content_type):
                blocks = _jsonlines_blocks(stream, label, self.chunk_rows)
            else:
                blocks = _csv_blocks(stream, self.csv_header, pipe, self.chunk_rows)
            file_names: list[str] | None = None
            for block_names, rows, numbers in blocks:
                if file_names is None:
                    file_names = self._names_for(block_names, names, label)
                    if head_only:
                        yield Table.from_rows(file_names, [])
                        return
                yield from kept.extend(file_names, str(label), rows, numbers)
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as error:
            raise ChannelError(f"cannot read {label}: {error}") from error

    def _names_for(self, own: list[str], reference: list[str] | None, label: pathlib.PurePath) -> list[str]:
        reference = self.names or reference
        if reference is None or own == reference:
            return own
        if _positional(own) and len(own) == len(reference):
            return reference
        which = "the training channel" if self.names else "the channel's other files"
        raise ChannelError(f"channel {self.name!r}: {label} has columns {', '.join(own)} but {which} "
                           f"{'has' if self.names else 'have'} {', '.join(reference)}")


class _Keeper:
    """This rank's rows (n % world == rank over the channel's row numbers), gathered into chunks."""

    def __init__(self, rank: int, world: int, chunk_rows: int) -> None:
        self.rank, self.world, self.chunk_rows = rank, world, chunk_rows
        self.number = 0      # rows of the channel seen so far, every rank's
        self.parts: list[tuple[list[str], str, list[list[Cell]], list[int]]] = []   # names, file, rows, lines
        self.rows = 0

    def extend(self, names: list[str], file: str, rows: list[list[Cell]], lines: list[int]) -> Iterator[Table]:
        first = (self.rank - self.number) % self.world
        self.number += len(rows)
        rows, lines = rows[first::self.world], lines[first::self.world]
        if self.parts and names != self.parts[-1][0]:   # a headerless file renamed: a chunk has one set of names
            yield from self.flush()
        while rows:
            room = self.chunk_rows - self.rows
            self.parts.append((names, file, rows[:room], lines[:room]))
            self.rows += min(room, len(rows))
            rows, lines = rows[room:], lines[room:]
            if self.rows >= self.chunk_rows:
                yield from self.flush()

    def flush(self) -> Iterator[Table]:
        if not self.parts:
            return
        names = self.parts[0][0]
        rows = [row for part in self.parts for row in part[2]]
        labels = [f"{file} line {line}" for _, file, _, lines in self.parts for line in lines]
        self.parts, self.rows = [], 0
        yield _table(names, rows, labels)


def _table(names: list[str], rows: list[list[Cell]], labels: list[str]) -> Table:
    """Table.from_rows, column by column (several times faster on large chunks), and its errors."""
    if len(set(names)) != len(names) or set(map(len, rows)) != {len(names)}:
        try:
            return Table.from_rows(names, rows, labels)   # raises, naming the row
        except DataError as error:   # a row error names its file and line; a header error needs the file
            where = labels[0].rsplit(" line", 1)[0]
            raise ChannelError(str(error) if error.row else f"{where}: {error}") from error
    columns = {}
    for name, cells in zip(names, zip(*rows, strict=True), strict=True):
        column = np.empty(len(cells), dtype=object)
        column[:] = cells
        columns[name] = column
    return Table(columns, np.array(labels, dtype=object))


def _csv_blocks(lines: Iterable[str], csv_header: str, pipe: bool,
                size: int) -> Iterator[tuple[list[str], list[list[Cell]], list[int]]]:
    """(names, rows, line numbers) in blocks of up to `size` rows; the header decided as channels.py does."""
    numbered = ((number, row) for number, row in enumerate(csv.reader(lines), start=1) if row)
    sniffed = list(itertools.islice(numbered, HEADER_SNIFF_ROWS + 1))
    first = sniffed[0][1]
    has_header = (csv_header == "present" or
                  (csv_header == "auto" and looks_like_header(first, [r for _, r in sniffed[1:]])))
    names = [cell.strip() for cell in first] if has_header else [f"c{i}" for i in range(len(first))]
    pending = sniffed[1:] if has_header else sniffed
    while True:
        block = pending + list(itertools.islice(numbered, max(0, size - len(pending))))
        pending = []
        if not block:
            return
        if pipe and has_header:
            # Pipe mode: the channel's files follow one another in the FIFO, each with its header
            block = [(n, row) for n, row in block if not (len(row) == len(names) and row[0].strip() == names[0]
                                                         and [cell.strip() for cell in row] == names)]
        yield names, [row for _, row in block], [n for n, _ in block]  # type: ignore[misc]


def _jsonlines_blocks(lines: Iterable[str], label: pathlib.PurePath,
                      size: int) -> Iterator[tuple[list[str], list[list[Cell]], list[int]]]:
    """(names, rows, line numbers) in blocks of up to `size` rows; the names of objects are the keys of the
    first `size` lines."""
    parsed = json_lines(lines, label)
    head = list(itertools.islice(parsed, size))
    if not head:
        return
    objects = isinstance(head[0][1], dict)
    if objects:
        keys: dict[str, None] = {}
        for _, value, _ in head:
            if isinstance(value, dict):
                keys.update(dict.fromkeys(value))
        names = list(keys)
    else:
        names = [f"c{i}" for i in range(len(head[0][1]))]
    known = set(names)
    rows: list[list[Cell]] = []
    numbers: list[int] = []
    for number, value, where in itertools.chain(head, parsed):
        if isinstance(value, dict) != objects:
            raise ChannelError(f"{label} line {number}: mixes JSON objects and arrays; use one form per file")
        if isinstance(value, dict):
            unknown = next((key for key in value if key not in known), None)
            if unknown is not None:
                raise ChannelError(f"{where}: the key {unknown!r} is not among the keys of the file's first "
                                   f"{size} lines; a streamed file takes its columns from its first lines "
                                   "(give that key in one of them, or read the data into memory: "
                                   "data_loading=memory)")
            cells: list[Cell] = [value.get(name) for name in names]
            named: Iterable[tuple[str, Any]] = value.items()
        else:
            cells = list(value)
            named = ((f"c{i}", cell) for i, cell in enumerate(value))
        for column, cell in named:
            if isinstance(cell, dict | list):
                # Named by line and column, not quoted: a nested list can be a whole row ([[13500, 23, ...]]).
                raise ChannelError(f"{where}, column {column!r}: a nested JSON {json_kind(cell)} where a single "
                                   "value belongs")
        rows.append(cells)
        numbers.append(number)
        if len(rows) >= size:
            yield names, rows, numbers
            rows, numbers = [], []
    if rows:
        yield names, rows, numbers


def _positional(names: list[str]) -> bool:
    return names == [f"c{i}" for i in range(len(names))]


def _text(raw: io.BufferedReader) -> io.TextIOWrapper:
    """The file's text, decompressed when it starts with gzip's magic bytes (a FIFO included)."""
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw, mode="rb"), encoding="utf-8-sig", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def _open_file(path: pathlib.Path, label: pathlib.PurePath) -> Iterator[io.BufferedReader]:
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ChannelError(f"cannot read {label}: {error}") from error
    with handle:
        yield handle


@contextlib.contextmanager
def _open_fifo(path: pathlib.Path, channel: str, timeout: float) -> Iterator[io.BufferedReader]:
    """The FIFO of one Pipe-mode pass, once it exists and a writer has written into it (or closed it);
    ChannelError after `timeout` seconds of waiting for either."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise ChannelError(f"channel {channel!r} uses Pipe input mode, but its FIFO {path} did not appear within "
                               f"{timeout:.0f} s; SageMaker creates one FIFO per pass over the channel")
        time.sleep(_POLL_S)
    if not stat.S_ISFIFO(path.stat().st_mode):
        with _open_file(path, pathlib.PurePath(path.name)) as handle:
            yield handle
        return
    # A blocking open waits for a writer for ever; a non-blocking one returns at once, and poll() then
    # reports data or a writer's close (Linux reports no hang-up before a writer has ever opened it).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            raise ChannelError(f"channel {channel!r} uses Pipe input mode, but nothing was written into its FIFO "
                               f"{path} within {timeout:.0f} s")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


# ----------------------------------------------------------------------------------------------------
# The job: which channels, streamed or not, and the streamed training itself.


def streaming_reason(paths: SageMakerPaths, input_config: Mapping[str, Any] | None, config: TrainingConfig,
                     budget: int | None = None) -> str | None:
    """Why the job streams its channels (for the log), or None when it reads them into memory."""
    _, configs = channel_configs(paths, input_config)
    piped = [name for name, entry in configs.items() if entry.get("TrainingInputMode") == "Pipe"]
    if piped:
        if config.data_loading == "memory":
            raise ChannelError(f"channel {piped[0]!r} uses Pipe input mode, which can only be streamed, and "
                               "data_loading=memory was asked for; use data_loading=auto (or stream), or File mode")
        return f"channel {piped[0]!r} uses Pipe input mode"
    if config.data_loading == "stream":
        return "data_loading=stream"
    if config.data_loading == "memory":
        return None
    budget = channel_byte_budget() if budget is None else budget
    for name in configs:
        size = channel_text_bytes(paths.channel(name))
        if size > budget:
            return (f"channel {name!r} holds about {size / 1e6:.0f} MB of text, more than the {budget / 1e6:.0f} MB "
                    "a channel may take in memory (data_loading=auto)")
    return None


def channel_text_bytes(folder: pathlib.Path) -> int:
    """The channel's text in bytes: its files' sizes, a gzip file at its decompressed size (the trailer's
    ISIZE is that size modulo 4 GiB: taken as the smallest such size not below the compressed one)."""
    if not folder.is_dir():
        return 0
    total = 0
    for path in folder.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        size = path.stat().st_size
        try:
            with path.open("rb") as handle:
                if size >= 18 and handle.read(2) == b"\x1f\x8b":
                    handle.seek(-4, os.SEEK_END)
                    isize = int.from_bytes(handle.read(4), "little")
                    size = isize + ((max(0, size - isize) + (1 << 32) - 1) >> 32 << 32)
        except OSError:
            pass   # unreadable: the reader says so with the file's name
        total += size
    return total


def train_streaming(paths: SageMakerPaths, config: TrainingConfig, group: Group,
                    input_config: Mapping[str, Any] | None, stop_requested: Callable[[], bool] = lambda: False,
                    on_epoch: Callable[[EpochReport], None] | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    fifo_timeout: float = FIFO_TIMEOUT_S) -> StreamedFit:
    """The built-in regressor fitted on streamed channels (model/streaming.py): rank `group.rank` of
    `group.world_size` reads its share of each FullyReplicated channel. Raises ChannelError and DataError
    for unusable data, TrainingStopped when stop_requested() turned true."""
    train_name, configs = channel_configs(paths, input_config)

    def stream(name: str, names: list[str] | None = None) -> ChannelStream:
        return ChannelStream(paths.channel(name), name, configs[name], config.csv_header, chunk_rows, group.rank,
                             group.world_size, paths.root, fifo_timeout, names)

    train = stream(train_name)
    train_names: list[list[str]] = []   # the training channel's names, once its first chunk was read
    others: dict[str, ChannelStream] = {}

    def train_chunks(index: int) -> Iterator[Table]:
        for chunk in train.chunks(index):
            if not train_names:
                train_names.append(chunk.names)
            yield chunk

    def aligned(name: str) -> Callable[[int], Iterator[Table]]:
        # A headerless validation or test channel takes the training channel's names, known once the
        # training channel's first pass has begun (fit_streaming reads it before any other).
        def chunks(index: int) -> Iterator[Table]:
            if name not in others:
                others[name] = stream(name, train_names[0] if train_names else None)
            return others[name].chunks(index)
        return chunks

    return fit_streaming(train_chunks, config, group, on_epoch, stop_requested,
                         aligned("validation") if "validation" in configs else None,
                         aligned("test") if "test" in configs else None, (ChannelError, DataError))
