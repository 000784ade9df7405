"""Channel folders in every supported layout and format, and the errors for the broken ones."""

import gzip
import json
import pathlib

import pytest

from container.channels import ChannelError, read_channels
from container.paths import SageMakerPaths

HEADER = "price,km,color\n"
ROWS = "100,1,red\n200,2,blue\n300,3,red\n"


def _write(root: pathlib.Path, channel: str, name: str, content: str | bytes) -> None:
    folder = root / "input" / "data" / channel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)


def _read(root: pathlib.Path, config: dict[str, dict[str, str]] | None = None, header: str = "auto"):
    return read_channels(SageMakerPaths(root), config, header)


def test_header_csv_names_the_columns(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "train", "cars.csv", HEADER + ROWS)
    train = _read(tmp_path).train
    assert train.names == ["price", "km", "color"]
    assert train.n_rows == 3
    assert train.label(0) == "train/cars.csv line 2"


def test_headerless_csv_gets_positional_names(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "training", "cars.csv", ROWS)
    train = _read(tmp_path).train
    assert train.names == ["c0", "c1", "c2"]
    assert list(train.columns["c0"]) == ["100", "200", "300"]


def test_several_files_gzip_and_subfolders_are_all_read(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "train", "a.csv", HEADER + ROWS)
    _write(tmp_path, "train", "b.csv.gz", gzip.compress((HEADER + ROWS).encode()))
    _write(tmp_path, "train", "part-0003", gzip.compress(ROWS.encode()))    # gzip recognised by content
    _write(tmp_path, "train", ".DS_Store", "junk")
    (tmp_path / "input/data/train/more").mkdir()
    _write(tmp_path, "train", "more/c.csv", HEADER + ROWS)
    train = _read(tmp_path).train
    assert train.names == ["price", "km", "color"]
    assert train.n_rows == 12


def test_json_lines_objects_and_arrays(tmp_path: pathlib.Path) -> None:
    lines = [{"price": 100, "km": 1, "color": "red"}, {"price": 200, "color": "blue", "km": 2}]
    _write(tmp_path, "train", "cars.jsonl", "\n".join(map(json.dumps, lines)) + "\n")
    _write(tmp_path, "validation", "cars.data", '[300, 3, "red"]\n')
    channels = _read(tmp_path, {"train": {}, "validation": {"ContentType": "application/jsonlines"}})
    assert channels.train.names == ["price", "km", "color"]
    assert list(channels.train.columns["km"]) == [1, 2]
    assert channels.validation is not None and channels.validation.names == ["price", "km", "color"]


def test_content_type_overrides_the_file_name(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "train", "cars.json", HEADER + ROWS)
    train = _read(tmp_path, {"train": {"ContentType": "text/csv; header=present"}}).train
    assert train.n_rows == 3


def test_forced_header_setting(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "train", "all-words.csv", "colour,fuel\nred,petrol\nblue,diesel\n")
    assert _read(tmp_path, header="present").train.names == ["colour", "fuel"]
    assert _read(tmp_path, header="absent").train.n_rows == 3


@pytest.mark.parametrize(("layout", "fragment"), [
    ({}, "no training data"),
    ({"train": None}, "folder .* does not exist"),
    ({"train": []}, "channel 'train' is empty"),
    ({"train": ["", "\n"]}, "has no rows"),
    ({"train": [HEADER + ROWS], "training": [HEADER + ROWS]}, "both 'train' and 'training'"),
    ({"train": [HEADER + ROWS], "validaton": [HEADER + ROWS]}, "unknown channel 'validaton'"),
    ({"train": [HEADER + ROWS, "a,b\n1,2\n"]}, "has columns a, b but"),
    ({"train": [HEADER + "1,2\n"]}, r"train/f0 line 2: expected 3 values, found 2"),
    ({"train": ["price,km,km\n1,2,3\n"]}, r"train/f0: column 'km': the column 'km' is named twice"),
    ({"train": [b"\x1f\x8b\x08broken"]}, "cannot read train/f0"),
    ({"train": [b"\xff\xfe\x00bad"]}, "cannot read train/f0"),
    ({"train": ['{"a": 1}\n{oops\n']}, "train/f0 line 2: not valid JSON"),
])
def test_broken_channels_say_what_is_wrong(tmp_path: pathlib.Path, layout: dict, fragment: str) -> None:
    config = {}
    for channel, files in layout.items():
        config[channel] = {}
        if files is None:
            continue
        (tmp_path / "input" / "data" / channel).mkdir(parents=True)
        for index, content in enumerate(files):
            _write(tmp_path, channel, f"f{index}", content)
    with pytest.raises(ChannelError, match=fragment):
        _read(tmp_path, config)


def test_pipe_mode_is_refused_clearly(tmp_path: pathlib.Path) -> None:
    _write(tmp_path, "train", "cars.csv", HEADER + ROWS)
    with pytest.raises(ChannelError, match="Pipe input mode"):
        _read(tmp_path, {"train": {"TrainingInputMode": "Pipe"}})
