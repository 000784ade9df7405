"""Malformed, huge or hostile job inputs fail the job with one clear line and read nothing outside the job's
tree (/opt/ml, here a temporary folder)."""

from __future__ import annotations

import gzip
import os
import pathlib

import pytest

from container.channels import MEMORY_SHARE, ChannelError, channel_byte_budget, read_channel
from container.errors import EXIT_USER_ERROR
from container.paths import SageMakerPaths
from container.train import CONFIG_FILE_LIMIT, run
from tests.jobs import SMALL_CARS, Job, lay_out_job


def _fails_with(root: pathlib.Path, *fragments: str) -> str:
    assert run(SageMakerPaths(root), environ={}) == EXIT_USER_ERROR
    first_line = (root / "output/failure").read_text().splitlines()[0]
    for fragment in fragments:
        assert fragment in first_line
    return first_line


@pytest.fixture
def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder beside the job, holding a file the job must never read."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.csv").write_text(SMALL_CARS)
    return folder


def test_a_data_file_linked_out_of_the_job_is_refused(tmp_path: pathlib.Path, outside: pathlib.Path) -> None:
    root = lay_out_job(tmp_path / "ml", Job())
    (root / "input/data/train/more.csv").symlink_to(outside / "secret.csv")
    _fails_with(root, "train/more.csv is a symbolic link that leads out of", "hyperplane reads channel data only")


def test_a_channel_folder_linked_out_of_the_job_is_refused(tmp_path: pathlib.Path, outside: pathlib.Path) -> None:
    root = lay_out_job(tmp_path / "ml", Job(channels={}, input_config={"train": {}}))
    (root / "input/data").mkdir()
    (root / "input/data/train").symlink_to(outside, target_is_directory=True)
    _fails_with(root, "the folder of channel 'train' is a symbolic link that leads out of")


def test_a_folder_inside_a_channel_linked_out_of_the_job_is_refused(tmp_path: pathlib.Path,
                                                                     outside: pathlib.Path) -> None:
    root = lay_out_job(tmp_path / "ml", Job())
    (root / "input/data/train/sub").symlink_to(outside, target_is_directory=True)
    _fails_with(root, "train/sub is a symbolic link that leads out of")


def test_a_channel_named_with_dots_is_refused(tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path / "ml", Job(input_config={"train": {}, "../../outside": {}}))
    _fails_with(root, "unknown channel '../../outside'")


@pytest.mark.parametrize(("name", "content", "fragments"), [
    ("hyperparameters.json", "[1, 2]", ("hyperparameters.json must hold a JSON object, not a JSON list",)),
    ("hyperparameters.json", "{\"epochs\": ", ("cannot read hyperparameters.json",)),
    ("hyperparameters.json", "[" * 100_000 + "]" * 100_000, ("cannot read hyperparameters.json: nested too deeply",)),
    ("hyperparameters.json", b"\xff\xfe{}", ("cannot read hyperparameters.json",)),
    ("inputdataconfig.json", "\"train\"", ("inputdataconfig.json must hold a JSON object",)),
    ("inputdataconfig.json", "{\"train\": [1]}", ("the entry of channel 'train' must be a JSON object",)),
    ("resourceconfig.json", "null", ("resourceconfig.json must hold a JSON object",)),
])
def test_malformed_config_files_name_the_file(tmp_path: pathlib.Path, name: str, content: str | bytes,
                                              fragments: tuple[str, ...]) -> None:
    root = lay_out_job(tmp_path, Job())
    path = root / "input/config" / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _fails_with(root, *fragments)


def test_a_huge_config_file_is_not_read(tmp_path: pathlib.Path) -> None:
    root = lay_out_job(tmp_path, Job())
    (root / "input/config/hyperparameters.json").write_text("{\"epochs\": \"5\"" + " " * CONFIG_FILE_LIMIT + "}")
    _fails_with(root, "hyperparameters.json is", "bytes")


def test_a_config_file_linked_out_of_the_config_folder_is_not_read(tmp_path: pathlib.Path,
                                                                   outside: pathlib.Path) -> None:
    root = lay_out_job(tmp_path / "ml", Job())
    (outside / "hp.json").write_text("{}")
    (root / "input/config/hyperparameters.json").unlink()
    (root / "input/config/hyperparameters.json").symlink_to(outside / "hp.json")
    _fails_with(root, "hyperparameters.json is a symbolic link that leads out of")


def test_a_gzip_bomb_or_an_oversized_channel_fails_before_memory_runs_out(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "data" / "train"
    folder.mkdir(parents=True)
    (folder / "cars.csv.gz").write_bytes(gzip.compress(SMALL_CARS.encode() + b"1" * 20_000_000))  # ~20 KB file
    with pytest.raises(ChannelError, match=r"train/cars.csv.gz: channel 'train' holds more than 1000000 bytes"):
        read_channel(folder, "train", {}, "auto", max_bytes=1_000_000)
    (folder / "cars.csv.gz").unlink()
    for part in range(3):   # the budget is the channel's, not each file's
        (folder / f"part{part}.csv").write_text(SMALL_CARS)
    assert read_channel(folder, "train", {}, "auto", max_bytes=len(SMALL_CARS) * 3).n_rows == 600
    with pytest.raises(ChannelError, match=r"part2\.csv: channel 'train' holds more than"):
        read_channel(folder, "train", {}, "auto", max_bytes=len(SMALL_CARS) * 3 - 1)


def test_the_channel_budget_follows_the_cgroup_memory_limit(tmp_path: pathlib.Path) -> None:
    (tmp_path / "memory.max").write_text("1073741824\n")
    assert channel_byte_budget(tmp_path) == 1073741824 // MEMORY_SHARE
    (tmp_path / "memory.max").write_text("max\n")
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert channel_byte_budget(tmp_path) == physical // MEMORY_SHARE
