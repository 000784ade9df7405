"""report.py: one self-contained HTML page with four plots, safe with hostile names, bounded in size."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest

from model import artifact
from model.card import build_card
from model.config import TrainingConfig
from model.evaluation import evaluate_split
from model.explanation import Explainer
from model.regressor import Regressor
from model.report import (
    MAX_SCATTER_POINTS,
    REPORT_NAME,
    AttributionSummary,
    attribution_summary,
    build_report,
    evaluation_report,
    write_report,
)
from model.table import Table
from model.training import EpochReport, fit
from tests.conftest import read_cars

HOSTILE = "<script>alert(1)</script>"
PLOTS = ("learning-curves", "predicted-vs-actual", "residuals-by-slice", "attributions")


@dataclasses.dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = dataclasses.field(default_factory=list)
    text: str = ""

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str, **attrs: str) -> list[Node]:
        return [n for n in self.walk() if n.tag == tag and all(n.attrs.get(k) == v for k, v in attrs.items())]

    def by_id(self, element_id: str) -> Node:
        (node,) = [n for n in self.walk() if n.attrs.get("id") == element_id]
        return node

    def all_text(self) -> str:
        return self.text + "".join(child.all_text() for child in self.children)


class _TreeBuilder(HTMLParser):
    """A strict tree: every non-void element must be closed, in order, or parsing fails."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(page: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], f"unclosed: {[n.tag for n in builder.stack[1:]]}"
    return builder.root


def history(epochs: int, best: int) -> list[EpochReport]:
    return [EpochReport(e, 1.0 / e, 0.5 / e + 0.01 * abs(e - best), 1000.0 + e) for e in range(1, epochs + 1)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small real model with a hostile Color level that has enough rows for metrics: the report of it,
    and what made it."""
    cars = read_cars(400)
    colours = cars.columns["Color"].copy()
    colours[::8] = HOSTILE   # 50 rows: every split holds well over MIN_SLICE_ROWS of them
    cars = Table({**cars.columns, "Color": colours})
    train, test = cars.take(np.arange(0, 300)), cars.take(np.arange(300, 400))
    epochs: list[EpochReport] = []
    config = TrainingConfig(hidden_layers=(8,), ensemble_size=1, epochs=12, patience=4)
    result = fit(train, config, test=test, on_epoch=epochs.append)
    evaluation = evaluate_split(result.regressor, test, "test", seed=0)
    path = artifact.save(result.regressor, tmp_path_factory.mktemp("model"))
    card = build_card(result.regressor, path, {k: int(v["rows"]) for k, v in result.metrics.items()}, evaluation)
    page = evaluation_report(result.regressor, test, epochs, result.best_epoch, evaluation, card, seed=0)
    return {"page": page, "history": epochs, "result": result, "evaluation": evaluation, "card": card,
            "test": test}


def test_the_page_parses_and_has_the_four_plots_and_the_header(fitted: dict[str, Any]) -> None:
    root = parse(fitted["page"])
    for plot in PLOTS:
        figure = root.by_id(plot)
        assert figure.tag == "figure" and figure.attrs["aria-label"]
        assert figure.find("svg"), plot   # each is a drawn chart, not a note
    header = root.find("header")[0].all_text()
    rmse = fitted["evaluation"]["regression_metrics"]["rmse"]
    shown = f"{rmse['value']:,.0f}" if rmse["value"] >= 1000 else f"{rmse['value']:,.1f}"   # ~4 digits
    assert f"{shown}±" in header.replace(" ", "")   # the value, then its bootstrap standard error
    assert fitted["card"]["summary"] in header
    assert fitted["card"]["data"]["fingerprint"][:12] in header
    assert "train 240" in header and "test 100" in header   # rows used (hold-out: 20% of 300)


def test_nothing_is_loaded_from_elsewhere(fitted: dict[str, Any]) -> None:
    page = fitted["page"]
    root = parse(page)
    tags = {node.tag for node in root.walk()}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use", "foreignobject"}
    for node in root.walk():
        assert not {"src", "href", "xlink:href"} & set(node.attrs), node.tag
    assert "http://" not in page and "https://" not in page and "url(" not in page and "@import" not in page
    (policy,) = root.find("meta", **{"http-equiv": "Content-Security-Policy"})
    assert "default-src 'none'" in policy.attrs["content"]


def test_a_hostile_level_from_the_data_is_escaped(fitted: dict[str, Any]) -> None:
    page = fitted["page"]
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    (panel,) = [n for n in parse(page).walk() if n.attrs.get("data-feature") == "Color" and n.tag == "div"]
    slices = {n.attrs["data-slice"] for n in panel.walk() if "data-slice" in n.attrs}
    assert HOSTILE in slices   # the parser reads it back as text: it is the level's name, not markup


def test_every_text_from_data_or_the_card_is_escaped() -> None:
    hostile_feature = '"><svg onload=alert(1)>'
    evaluation = _evaluation(feature=hostile_feature, level=HOSTILE)
    card = {"summary": HOSTILE, "model": {"name": HOSTILE, "target": "<b>Price</b>", "architecture": HOSTILE},
            "data": {"fingerprint": HOSTILE}, "limitations": [HOSTILE], "intended_use": HOSTILE}
    summary = attribution_summary_of({hostile_feature: 3.0, HOSTILE: 1.0})
    page = build_report(history(5, 3), 3, evaluation, np.arange(20.0), np.arange(20.0) + 1, summary, card,
                        title=HOSTILE)
    assert HOSTILE not in page and "<b>" not in page and "<svg onload" not in page
    root = parse(page)
    assert not root.find("script") and not root.find("b")
    assert all(not name.startswith("on") for node in root.walk() for name in node.attrs)


def test_a_big_split_is_subsampled_with_a_seed_and_the_caption_says_so() -> None:
    def page(rows: int, seed: int) -> str:
        rng = np.random.default_rng(1)
        truth = rng.uniform(5_000, 30_000, rows)
        return build_report(history(3, 2), 2, _evaluation(), truth, truth + rng.normal(0, 900, rows), None, {},
                            seed=seed)

    small, big, bigger = page(300, 0), page(20_000, 0), page(200_000, 0)
    for text, shown in ((small, 300), (big, MAX_SCATTER_POINTS), (bigger, MAX_SCATTER_POINTS)):
        scatter = parse(text).by_id("predicted-vs-actual")
        assert len(scatter.find("circle")) - 1 == shown   # one circle is the legend's
    assert "all 300 rows are shown" in small
    assert f"{MAX_SCATTER_POINTS:,} of 20,000 rows are shown, drawn at random (seed 0)" in big
    assert big == page(20_000, 0) and big != page(20_000, 1)   # seeded: same seed, same page
    assert abs(len(bigger) - len(big)) < 2_000 and len(bigger) < 400_000   # bounded, whatever the rows
    ticks = [n.all_text() for n in parse(big).by_id("predicted-vs-actual").find("text")]
    assert "10,000" in ticks and "20,000" in ticks   # round ticks with thousands separators


def test_the_learning_curve_has_one_point_per_epoch_and_marks_the_best(fitted: dict[str, Any]) -> None:
    curves = parse(fitted["page"]).by_id("learning-curves")
    epochs = fitted["history"]
    for series in ("train", "validation"):
        (line,) = curves.find("polyline", **{"data-series": series})
        assert len(line.attrs["points"].split()) == len(epochs)
    (best,) = [n for n in curves.walk() if "best-epoch" in n.attrs.get("class", "")]
    assert best.attrs["data-epoch"] == str(fitted["result"].best_epoch)

    long = parse(build_report(history(1500, 700), 700, _evaluation(), np.ones(3), np.ones(3), None, {}))
    (line,) = long.by_id("learning-curves").find("polyline", **{"data-series": "validation"})
    assert len(line.attrs["points"].split()) == 1500   # thinning the hover targets never drops an epoch


def test_the_worst_slice_is_flagged_once(fitted: dict[str, Any]) -> None:
    worst = fitted["evaluation"]["worst_slice"]
    figure = parse(fitted["page"]).by_id("residuals-by-slice")
    flagged = [n for n in figure.walk() if n.attrs.get("data-worst") == "true"]
    assert [n.attrs["data-slice"] for n in flagged] == [worst["slice"]]
    (panel,) = [n for n in figure.walk() if "panel-worst" in n.attrs.get("class", "")]
    assert panel.attrs["data-feature"] == worst["feature"]
    assert "worst slice" in figure.all_text()
    slices = fitted["evaluation"]["slices"]
    assert len([n for n in figure.walk() if "data-slice" in n.attrs]) == len(slices)   # every slice drawn
    small = [n for n in figure.walk() if "too-small" in n.attrs.get("class", "")]
    assert len(small) == sum(1 for s in slices if s.get("too_small"))


def test_attributions_are_mean_absolute_values_over_a_seeded_sample(fitted: dict[str, Any]) -> None:
    regressor: Regressor = fitted["result"].regressor
    test: Table = fitted["test"]
    summary = attribution_summary(regressor, test, rows=40, seed=3)
    assert summary is not None and summary.rows == 40 and summary.of_rows == test.n_rows
    assert list(summary.mean_abs) == regressor.feature_names
    again = attribution_summary(regressor, test, rows=40, seed=3)
    assert again is not None and again.mean_abs == summary.mean_abs
    everything = attribution_summary(regressor, test, rows=1000)
    assert everything is not None and everything.rows == test.n_rows
    expected = np.abs(Explainer(regressor).explain(test.select(regressor.feature_names))).mean(axis=0)
    np.testing.assert_allclose(list(everything.mean_abs.values()), expected, rtol=1e-9)
    bars = parse(fitted["page"]).by_id("attributions").find("g", **{"class": "feature"})
    assert len(bars) == len(regressor.feature_names)


def test_a_model_without_a_baseline_gets_a_note_instead_of_attributions(fitted: dict[str, Any]) -> None:
    regressor = dataclasses.replace(fitted["result"].regressor, baseline=None)
    assert attribution_summary(regressor, fitted["test"]) is None
    page = build_report(history(4, 2), 2, _evaluation(), np.ones(5), np.ones(5), None, {})
    figure = parse(page).by_id("attributions")
    assert not figure.find("svg") and "no explanation baseline" in figure.all_text()


def test_write_report_puts_report_html_in_the_folder(tmp_path: pathlib.Path) -> None:
    page = build_report([], 0, {}, np.array([]), np.array([]), None, {})   # nothing at all still renders
    root = parse(page)
    assert {plot for plot in PLOTS if root.by_id(plot)} == set(PLOTS)
    path = write_report(page, tmp_path / "model")
    assert path == tmp_path / "model" / REPORT_NAME and path.read_text(encoding="utf-8") == page


def attribution_summary_of(values: dict[str, float]) -> AttributionSummary:
    return AttributionSummary(values, rows=10, of_rows=10, base=100.0, seed=0)


def _evaluation(feature: str = "Color", level: str = "Grey") -> dict[str, Any]:
    """evaluation.json's shape, with one worst slice and one slice too small for metrics."""
    return {
        "regression_metrics": {name: {"value": value, "standard_deviation": 0.1 * value} for name, value in
                               (("mse", 1e6), ("rmse", 1000.0), ("mae", 800.0), ("r2", 0.8))},
        "evaluation": {"split": "test", "rows": 100, "min_slice_rows": 10,
                       "standard_deviation": "bootstrap standard error over 200 resamples of the rows (seed 0)"},
        "slices": [{"feature": feature, "kind": "categorical", "slice": level, "rows": 40, "rmse": 1200.0,
                    "mae": 900.0, "bias": 50.0, "worst": True},
                   {"feature": feature, "kind": "categorical", "slice": "Blue", "rows": 55, "rmse": 900.0,
                    "mae": 700.0, "bias": -20.0},
                   {"feature": feature, "kind": "categorical", "slice": "Beige", "rows": 5, "too_small": True},
                   {"feature": "KM", "kind": "numeric", "slice": "[1, 5e+04]", "rows": 100, "rmse": 1000.0,
                    "mae": 800.0, "bias": 0.0}],
        "worst_slice": {"feature": feature, "slice": level, "rows": 40, "rmse": 1200.0, "overall_rmse": 1000.0,
                        "gap": 200.0, "ratio": 1.2},
    }


def test_tooltips_carry_the_numbers(fitted: dict[str, Any]) -> None:
    root = parse(fitted["page"])
    titles = [n.all_text() for n in root.by_id("learning-curves").find("title")]
    assert any(re.match(r"epoch 1\ntraining loss [0-9.]+\nvalidation loss", t) for t in titles)
    slice_titles = [n.all_text() for n in root.by_id("residuals-by-slice").find("title")]
    assert any("RMSE" in t and "bias" in t for t in slice_titles)
