"""The Python half of scripts/screenshot-report: a real evaluation report from an in-process training run, and
the trimming of the browser's screenshot to the page's own height.

    python scripts/lib/screenshot_report.py make FOLDER      trains the default model on data/toyota_corolla.csv
                                                             (the first 1148 cars train, the last 288 test, as
                                                             the README's example) and writes FOLDER/report.html
                                                             with the evaluation.json and model card beside it
    python scripts/lib/screenshot_report.py trim PNG         cuts the empty page colour below the last content
                                                             and rewrites it as a 256-colour PNG

Headless Chromium's --screenshot captures a fixed window, so the script shoots a tall window and `trim` cuts
it to the content. That needs a PNG decoder and encoder, written here with zlib and numpy because the venv
has no imaging library (and must not grow one for a docs picture).
"""

from __future__ import annotations

import csv
import json
import pathlib
import struct
import sys
import tempfile
import time
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from model import artifact  # noqa: E402
from model.card import build_card, write_card  # noqa: E402
from model.config import TrainingConfig  # noqa: E402
from model.evaluation import evaluate_split  # noqa: E402
from model.report import evaluation_report, write_report  # noqa: E402
from model.table import Table  # noqa: E402
from model.training import EpochReport, fit  # noqa: E402

DATA = ROOT / "data" / "toyota_corolla.csv"
TRAIN_ROWS = 1148
MARGIN = 24   # pixels of page colour kept under the last content


def make(folder: pathlib.Path) -> None:
    with DATA.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    train, test = Table.from_rows(header, rows[:TRAIN_ROWS]), Table.from_rows(header, rows[TRAIN_ROWS:])
    config = TrainingConfig()
    history: list[EpochReport] = []
    started = time.monotonic()
    result = fit(train, config, test=test, on_epoch=history.append)
    print(f"trained {result.epochs_run} epochs (best {result.best_epoch}) in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    report = evaluate_split(result.regressor, test, "test", seed=config.seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = artifact.save(result.regressor, pathlib.Path(tmp))
        card = build_card(result.regressor, path, {k: int(v["rows"]) for k, v in result.metrics.items()}, report)
    write_card(card, folder)
    started = time.monotonic()
    page = evaluation_report(result.regressor, test, history, result.best_epoch, report, card, seed=config.seed)
    written = write_report(page, folder)
    print(f"report built in {time.monotonic() - started:.1f} s: {written} ({written.stat().st_size:,} bytes)",
          file=sys.stderr)


def trim(path: pathlib.Path) -> None:
    width, height, rows = _read_png(path)
    background = rows[-1][:3]   # the page colour, where the window runs past the page
    last = height - 1
    while last > 0 and all(rows[last][i:i + 3] == background for i in range(0, width * 3, 3)):
        last -= 1
    _write_png(path, width, rows[:min(height, last + 1 + MARGIN)])


def _read_png(path: pathlib.Path) -> tuple[int, int, list[bytes]]:
    """8-bit RGB or RGBA, non-interlaced (what Chromium writes) to rows of RGB bytes."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path} is not a PNG")
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise SystemExit(f"{path}: only 8-bit RGB/RGBA non-interlaced PNGs are handled")
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(chunks))
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind, line, previous, channels)
        previous = line
        rgb = line if channels == 3 else bytearray(b for i, b in enumerate(line) if i % 4 != 3)
        rows.append(bytes(rgb))
    return width, height, rows


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        corner = previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF


def _write_png(path: pathlib.Path, width: int, rows: list[bytes]) -> None:
    """An 8-bit palette PNG: the page's 256 most frequent colours, every other pixel (anti-aliased glyph and
    line edges, ~1% of them) mapped to its nearest palette colour. A third of the size of the RGB
    screenshot, and no difference a reader can see."""
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 3)
    colours, inverse, counts = np.unique(pixels, axis=0, return_inverse=True, return_counts=True)
    palette = colours[np.argsort(-counts, kind="stable")[:256]].astype(np.int32)
    distances = ((colours[:, None, :].astype(np.int32) - palette[None, :, :]) ** 2).sum(axis=2)
    indices = distances.argmin(axis=1).astype(np.uint8)[inverse.reshape(-1)].reshape(len(rows), width)
    # Filter type 0 on every row: the PNG specification's advice for palette images.
    raw = np.hstack([np.zeros((len(rows), 1), np.uint8), indices]).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, len(rows), 8, 3, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"PLTE", palette.astype(np.uint8).tobytes())
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    command, target = sys.argv[1], pathlib.Path(sys.argv[2])
    {"make": make, "trim": trim}[command](target)
