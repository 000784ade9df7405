"""Channel folders -> one Table per channel: train (or training), optional validation and test.

Every file below a channel folder is read, in sorted path order, except hidden files; a file or folder
that is a symbolic link out of the job's tree (/opt/ml) fails the job, so nothing outside it is read. Formats:
- CSV, with or without a header row (`csv_header=auto` calls the first row a header when all its cells
  are words and some column below it holds numbers; `present`/`absent` decide it outright). Headerless
  columns are named c0, c1, ... and the target is then c0 unless told otherwise.
- JSON Lines: one object per line (keys are column names) or one array per line (positional, like CSV).
- Either one gzip-compressed, recognised by its magic bytes whatever the file is called.
A channel's ContentType (inputdataconfig.json) picks the format when given; otherwise the file name, and
failing that the first character, does. Row labels name the file and line for error messages.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from container.errors import JobError
from container.paths import SageMakerPaths
from model.errors import DataError
from model.schema import parse_number
from model.table import Cell, Table

log = logging.getLogger(__name__)

TRAIN_NAMES = ("train", "training")
KNOWN_CHANNELS = (*TRAIN_NAMES, "validation", "test")
CSV_TYPES = {"text/csv", "csv", "text/x-csv", "application/csv"}
JSONLINES_TYPES = {"application/jsonlines", "application/json-lines", "application/x-jsonlines",
                   "application/jsonl", "application/x-ndjson", "application/json"}
HEADER_SNIFF_ROWS = 50
MEMORY_SHARE = 32   # a channel's text may use 1/32 of the memory: its rows take ~20-30 times as much


class ChannelError(JobError):
    pass


@dataclass(frozen=True)
class Channels:
    train: Table
    validation: Table | None
    test: Table | None


def read_channels(paths: SageMakerPaths, input_config: Mapping[str, Any] | None, csv_header: str,
                  max_bytes: int | None = None) -> Channels:
    """Reads the channels listed in inputdataconfig.json, or the folders under input/data without one.
    `max_bytes` bounds each channel's text (after decompression); default: channel_byte_budget()."""
    max_bytes = channel_byte_budget() if max_bytes is None else max_bytes
    train_name, configs = channel_configs(paths, input_config)
    tables = {name: read_channel(paths.channel(name), name, config, csv_header, root=paths.root,
                                 max_bytes=max_bytes)
              for name, config in configs.items()}
    train = tables[train_name]
    return Channels(train, *(_aligned(tables.get(name), train, name) for name in ("validation", "test")))


def channel_configs(paths: SageMakerPaths, input_config: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(the training channel's name, every channel's config): inputdataconfig.json's channels, or the folders
    under input/data without one; ChannelError for an unknown channel or no (or two) training channels."""
    configs = dict(input_config) if input_config is not None else discover_channels(paths)
    unknown = sorted(set(configs) - set(KNOWN_CHANNELS))
    if unknown:
        raise ChannelError(f"unknown channel {unknown[0]!r}; hyperplane reads the channels train (or "
                           "training), validation and test")
    named = [name for name in TRAIN_NAMES if name in configs]
    if not named:
        raise ChannelError("no training data: give a channel named 'train' (or 'training')")
    if len(named) > 1:
        raise ChannelError("both 'train' and 'training' channels were given; use one of them")
    return named[0], {name: channel_config(value, name) for name, value in configs.items()}


def channel_files(folder: pathlib.Path, name: str, root: pathlib.Path | None) -> list[pathlib.Path]:
    """The channel's files in sorted path order, hidden ones skipped; with `root`, the folder and every file
    must resolve inside it (ChannelError for a link out of the job's tree), and so must a missing or empty
    folder fail."""
    if root is not None:
        inside_job(folder, root, f"the folder of channel {name!r}")
    if not folder.is_dir():
        raise ChannelError(f"channel {name!r} has no data: the folder {folder} does not exist")
    # rglob does not descend into linked folders; linked files are checked one by one below.
    files = sorted(p for p in folder.rglob("*") if not p.name.startswith(".") and
                   (root is None or inside_job(p, root, f"{p.relative_to(folder.parent)}")) and p.is_file())
    if not files:
        raise ChannelError(f"channel {name!r} is empty: no files in {folder}")
    return files


def read_channel(folder: pathlib.Path, name: str, config: Mapping[str, Any], csv_header: str,
                 root: pathlib.Path | None = None, max_bytes: int | None = None) -> Table:
    """The channel's rows. With `root` (the job's /opt/ml), the folder and every file must resolve inside
    it: a symbolic link out of the job's tree fails the job, and nothing outside is read. With `max_bytes`,
    a channel whose text (after decompression) exceeds it fails the job before memory runs out."""
    mode = config.get("TrainingInputMode", "File")
    if mode == "Pipe":
        raise ChannelError(f"channel {name!r} uses Pipe input mode, which is streamed, not read into memory "
                           "(data_loading=auto or stream)")
    files = channel_files(folder, name, root)
    content_type = str(config.get("ContentType") or "").split(";")[0].strip().lower()
    if content_type and content_type not in CSV_TYPES | JSONLINES_TYPES:
        raise ChannelError(f"channel {name!r} has ContentType {content_type!r}; hyperplane reads text/csv and "
                           "application/jsonlines (either one gzip-compressed)")
    budget = _Budget(name, max_bytes)
    tables = [table for path in files
              if (table := _read_file(path, path.relative_to(folder.parent), content_type, csv_header, budget))]
    if not tables:
        raise ChannelError(f"channel {name!r} has no rows: its files in {folder} are empty")
    return _stack(tables, name)


def _read_file(path: pathlib.Path, label: pathlib.PurePath, content_type: str,
               csv_header: str, budget: _Budget | None = None) -> Table | None:
    budget = budget or _Budget("", None)
    try:
        budget.check(path.stat().st_size, label)
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            # Read at most one byte past what is left, so that a gzip bomb stops there.
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as compressed:
                raw = compressed.read(-1 if budget.left is None else budget.left + 1)
        budget.take(len(raw), label)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as error:
        raise ChannelError(f"cannot read {label}: {error}") from error
    if not text.strip():
        log.warning("skipping empty file %s", label)
        return None
    if is_jsonlines(path, text, content_type):
        return _parse_jsonlines(text, label)
    return _parse_csv(text, label, csv_header)


def is_jsonlines(path: pathlib.Path, text: str, content_type: str) -> bool:
    """ContentType decides, then the name (.gz aside), then the first character of `text` (the file's
    text or just its first line)."""
    if content_type:
        return content_type in JSONLINES_TYPES
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if suffixes and suffixes[-1] in (".jsonl", ".json", ".ndjson"):
        return True
    if suffixes and suffixes[-1] in (".csv", ".txt"):
        return False
    return text.lstrip()[:1] == "{"


def _parse_csv(text: str, label: pathlib.PurePath, csv_header: str) -> Table:
    numbered = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(text)), start=1) if row]
    first = numbered[0][1]
    has_header = (csv_header == "present" or
                  (csv_header == "auto" and looks_like_header(first, [r for _, r in numbered[1:]])))
    body = numbered[1:] if has_header else numbered
    names = [cell.strip() for cell in first] if has_header else [f"c{i}" for i in range(len(first))]
    try:
        return Table.from_rows(names, [row for _, row in body], [f"{label} line {n}" for n, _ in body])
    except DataError as error:   # a row error names its file and line; a header error needs the file
        raise ChannelError(str(error) if error.row else f"{label}: {error}") from error


def looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
    if any(not cell.strip() or parse_number(cell) is not None for cell in first):
        return False
    sample = rest[:HEADER_SNIFF_ROWS]
    return any(parse_number(row[i]) is not None for row in sample for i in range(min(len(row), len(first))))


def json_lines(lines: Iterable[str], label: pathlib.PurePath) -> Iterator[tuple[int, Any, str]]:
    """(line number, JSON object or array, row label) for each non-blank line; ChannelError for a line that
    is not JSON or holds another kind of value (named by its kind, never quoted)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ChannelError(f"{label} line {number}: not valid JSON ({error.msg})") from error
        if not isinstance(value, dict | list):
            # The kind of value, never the line: a line is a row (a JSON string may hold a whole CSV row).
            raise ChannelError(f"{label} line {number}: expected a JSON object or array, got a JSON "
                               f"{json_kind(value)}")
        yield number, value, f"{label} line {number}"


def _parse_jsonlines(text: str, label: pathlib.PurePath) -> Table:
    records: list[dict[str, Cell]] = []
    rows: list[list[Cell]] = []
    labels = []
    for number, value, where in json_lines(text.splitlines(), label):
        if isinstance(value, dict):
            records.append(value)
        else:
            rows.append(value)
        labels.append(where)
        if records and rows:
            raise ChannelError(f"{label} line {number}: mixes JSON objects and arrays; use one form per file")
    for cells, where in zip((*records, *rows), labels, strict=True):   # one kind per file: in line order
        named = cells.items() if isinstance(cells, dict) else ((f"c{i}", cell) for i, cell in enumerate(cells))
        for column, cell in named:
            if isinstance(cell, dict | list):
                # Named by line and column, not quoted: a nested list can be a whole row ([[13500, 23, ...]]).
                raise ChannelError(f"{where}, column {column!r}: a nested JSON {json_kind(cell)} where a "
                                   "single value belongs")
    try:
        if records:
            return Table.from_records(records, labels)
        return Table.from_rows([f"c{i}" for i in range(len(rows[0]))], rows, labels)
    except DataError as error:
        raise ChannelError(str(error)) from error


def json_kind(value: Any) -> str:
    kinds = ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean"), (int | float, "number"))
    return next((kind for types, kind in kinds if isinstance(value, types)), "null")


def _stack(tables: list[Table], name: str) -> Table:
    named = [table for table in tables if not _positional(table)]
    reference = named[0] if named else tables[0]
    names = reference.names
    for table in tables:
        if table.names != names:
            if _positional(table) and len(table.names) == len(names):
                continue
            raise ChannelError(f"channel {name!r}: {table.label(0).rsplit(' line', 1)[0]} has columns "
                               f"{', '.join(table.names)} but {reference.label(0).rsplit(' line', 1)[0]} has "
                               f"{', '.join(names)}")
    return Table.concat([_renamed(table, names) for table in tables])


def _aligned(table: Table | None, train: Table, name: str) -> Table | None:
    """A headerless validation or test channel takes the training column names, position for position."""
    if table is None or table.names == train.names:
        return table
    if _positional(table) and len(table.names) == len(train.names):
        return _renamed(table, train.names)
    raise ChannelError(f"the {name} channel has columns {', '.join(table.names)} but the training channel "
                       f"has {', '.join(train.names)}")


def _positional(table: Table) -> bool:
    return table.names == [f"c{i}" for i in range(len(table.names))]


def _renamed(table: Table, names: list[str]) -> Table:
    return Table(dict(zip(names, table.columns.values(), strict=True)), table.row_labels)


def inside_job(path: pathlib.Path, root: pathlib.Path, what: str) -> bool:
    """True, or ChannelError when `path` resolves (through symbolic links) outside `root`."""
    if not path.resolve().is_relative_to(root.resolve()):
        raise ChannelError(f"{what} is a symbolic link that leads out of {root}; hyperplane reads channel data "
                           f"only below {root}")
    return True


def channel_config(config: Any, name: str) -> Mapping[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ChannelError(f"inputdataconfig.json: the entry of channel {name!r} must be a JSON object, not "
                           f"{json.dumps(config)[:60]}")
    return config


class _Budget:
    """What is left of a channel's byte budget (None: no limit), and the failure when a file exceeds it."""

    def __init__(self, channel: str, limit: int | None) -> None:
        self.channel, self.limit, self.left = channel, limit, limit

    def check(self, size: int, label: pathlib.PurePath) -> None:
        if self.left is not None and size > self.left:
            raise ChannelError(f"{label}: channel {self.channel!r} holds more than {self.limit} bytes of data "
                               f"(hyperplane reads a channel into memory, at many times its size: the limit is "
                               f"1/{MEMORY_SHARE} of this container's memory); set data_loading=stream (or auto) to "
                               "stream it from disk, use an instance with more memory, or fewer or smaller files")

    def take(self, size: int, label: pathlib.PurePath) -> None:
        self.check(size, label)
        if self.left is not None:
            self.left -= size


def channel_byte_budget(cgroup_root: pathlib.Path = pathlib.Path("/sys/fs/cgroup")) -> int:
    """The text a channel may hold: 1/MEMORY_SHARE of the memory this container may use (its cgroup limit,
    else the machine's). Parsed rows take many times their text in Python objects."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            memory = min(memory, int(limit_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):   # absent, or "max": no limit of its own
            continue
    return memory // MEMORY_SHARE


def discover_channels(paths: SageMakerPaths) -> dict[str, Any]:
    data = paths.root / "input" / "data"
    return {p.name: {} for p in sorted(data.iterdir()) if p.is_dir()} if data.is_dir() else {}
