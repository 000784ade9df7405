"""The evaluation report: one self-contained HTML page that shows how a fitted regressor learned and how well
it does, for a person to read (evaluation.json and model-card.json are for machines).

    html = evaluation_report(regressor, table, history, best_epoch, evaluation, card, seed=config.seed)
    write_report(html, folder)                          -> folder/report.html

    # or from plain data, with no model at hand:
    html = build_report(history, best_epoch, evaluation, truth, predicted, attribution_summary(...), card)

Promises:
- Self-contained and inert: inline CSS and hand-written inline SVG only; no script, no link, no image, font or
  URL fetched, so it opens offline and from inside model.tar.gz. A Content-Security-Policy meta tag forbids
  scripts and fetches too, as a second line of defence.
- Every piece of text that comes from data or configuration (feature names, levels, the target name, the
  card's summary) is HTML-escaped, in element text and in attributes alike.
- Four figures, each a <figure> with a stable id and aria-label: `learning-curves` (training and validation
  loss, one vertex per epoch of `history`, the best epoch marked), `predicted-vs-actual` (the evaluation
  split, at most MAX_SCATTER_POINTS rows drawn with a generator seeded with `seed`, the caption says how
  many), `residuals-by-slice` (evaluation.json's slices, rmse per slice on one shared scale, the worst slice
  flagged) and `attributions` (mean |attribution| per feature over at most ATTRIBUTION_ROWS seeded rows; a
  note instead when the model has no explanation baseline). A header gives the headline metrics with their
  bootstrap standard errors, the card's summary, the data fingerprint and the rows used.
- Deterministic: the same inputs and seed give the same bytes (no timestamp, seeded samples), and the size is
  bounded whatever the number of rows: the scatter and the attribution sample are capped, the per-epoch
  hover targets are thinned beyond MAX_EPOCH_TARGETS epochs.

It knows no job layout and writes nowhere by itself: the caller decides where the page goes.
"""

from __future__ import annotations

import html
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.explanation import Explainer, ExplanationUnavailableError
from model.preprocessing import target_values
from model.regressor import Regressor
from model.table import Table
from model.training import EpochReport

REPORT_NAME = "report.html"
MAX_SCATTER_POINTS = 2000   # beyond this a scatter is a blot, and each point costs ~100 bytes
ATTRIBUTION_ROWS = 256      # enough for stable means; integrated gradients on more rows only costs time
MAX_EPOCH_TARGETS = 600     # hover targets on the learning curves; the lines themselves keep every epoch
MAX_ATTRIBUTION_BARS = 40   # more features than this are summed into one "(N more)" bar
LABEL_CHARS = 22            # slice and feature labels longer than this are cut (the full text is the tooltip)

# One palette for the whole page (Tableau 10's first colours, which stay apart for common colour blindness).
TRAIN = "#4c78a8"
VALIDATION = "#f58518"
BEST = "#2f855a"
WORST = "#d64545"
POINT = "#4c78a8"
BAR_DARK = "#4c78a8"
MUTED = "#6b7280"
INK = "#1f2937"
GRID = "#e5e7eb"


@dataclass(frozen=True)
class AttributionSummary:
    """Mean |attribution| per feature, in the target's units, over a seeded sample of rows."""

    mean_abs: dict[str, float]   # feature -> mean |attribution|, in schema order
    rows: int                    # rows explained
    of_rows: int                 # rows of the table they were drawn from
    base: float                  # the prediction at the baseline, which every explanation starts from
    seed: int


def sample_indices(n_rows: int, limit: int, seed: int) -> np.ndarray:
    """All row indices when there are at most `limit`, else `limit` of them drawn without replacement by a
    generator seeded with `seed`; sorted, so a sample keeps the table's order."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))


def attribution_summary(regressor: Regressor, table: Table, *, rows: int = ATTRIBUTION_ROWS,
                        seed: int = 0) -> AttributionSummary | None:
    """Mean |attribution| per feature over at most `rows` rows of `table` (seeded); None when the model has no
    explanation baseline (an artifact older than explanations), which the report then says."""
    try:
        explainer = Explainer(regressor)
    except ExplanationUnavailableError:
        return None
    chosen = sample_indices(table.n_rows, rows, seed)
    if len(chosen) == 0:
        means = np.zeros(len(explainer.features))
    else:
        means = np.abs(explainer.explain(table.take(chosen).select(regressor.feature_names))).mean(axis=0)
    return AttributionSummary(dict(zip(explainer.features, (float(v) for v in means), strict=True)),
                              len(chosen), table.n_rows, explainer.base, seed)


def evaluation_report(regressor: Regressor, table: Table, history: Sequence[EpochReport], best_epoch: int,
                      evaluation: Mapping[str, Any], card: Mapping[str, Any], *, seed: int = 0,
                      title: str | None = None) -> str:
    """The report of `regressor` on `table`, the split `evaluation` (evaluation.evaluate_split's report)
    measured: predicts it again for the scatter and explains a sample of it for the attributions."""
    truth = target_values(table, regressor.target)
    predicted = regressor.predict(table.select(regressor.feature_names))
    return build_report(history, best_epoch, evaluation, truth, predicted,
                        attribution_summary(regressor, table, seed=seed), card, title=title, seed=seed)


def write_report(page: str, folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    return path


def build_report(history: Sequence[EpochReport], best_epoch: int, evaluation: Mapping[str, Any],
                 truth: np.ndarray, predicted: np.ndarray, attributions: AttributionSummary | None,
                 card: Mapping[str, Any], *, title: str | None = None, seed: int = 0) -> str:
    """The page, from plain data: `history` one EpochReport per epoch run, `evaluation` the evaluation.json
    dict, `truth`/`predicted` the evaluation split's target and predictions, `card` the model-card dict
    (missing card fields are shown as "n/a", so a partial card still renders)."""
    model = _mapping(card.get("model"))
    target = str(model.get("target") or _mapping(_mapping(card.get("data")).get("columns")).get("target")
                 or "target")
    if title is None:
        name = " ".join(str(part) for part in (model.get("name"), model.get("version")) if part)
        title = f"{name or 'model'}: evaluation report"
    body = "\n".join((
        _header(title, evaluation, card),
        '<div class="pair">',
        _learning_curves(history, best_epoch, card),
        _predicted_vs_actual(np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64),
                             target, evaluation, seed),
        "</div>",
        _residuals_by_slice(evaluation, target),
        _attributions(attributions, target),
        '<footer>Generated by hyperplane from evaluation.json, the model card and the training history. '
        "This page is self-contained: it loads no script, font or image.</footer>",
    ))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Inert even if an escape were ever missed: no script runs, nothing is fetched.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n")


# --- header -------------------------------------------------------------------------------------------------

def _header(title: str, evaluation: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    metrics = _mapping(evaluation.get("regression_metrics"))
    info = _mapping(evaluation.get("evaluation"))
    split, rows = info.get("split", "evaluation"), info.get("rows")
    tiles = [_tile("RMSE", metrics.get("rmse"), _number), _tile("MAE", metrics.get("mae"), _number),
             _tile("R²", metrics.get("r2"), lambda v: _signed(f"{v:.3f}")),
             f'<div class="tile"><div class="label">rows evaluated</div><div class="value">{_e(_count(rows))}'
             f'</div><div class="se">{_e(split)} split</div></div>']
    worst = evaluation.get("worst_slice")
    if isinstance(worst, Mapping):
        where = f"{worst.get('feature')} = {worst.get('slice')}"
        tiles.append(
            f'<div class="tile tile-worst"><div class="label">worst slice</div>'
            f'<div class="value" title="{_e(where)}">{_e(_cut(where, 28))}</div>'
            f'<div class="se">RMSE {_e(_number(worst.get("rmse")))} ({_e(_signed_number(worst.get("gap")))}) '
            f"on {_e(_count(worst.get('rows')))} rows</div></div>")
    model, data = _mapping(card.get("model")), _mapping(card.get("data"))
    training = _mapping(card.get("training"))
    fingerprint = str(data.get("fingerprint") or "n/a")
    split_rows = _mapping(data.get("rows"))
    rows_used = " · ".join(f"{_e(name.replace('_', ' '))} {_e(_count(split_rows[name]))}"
                           for name in ("training_channel", "train", "validation", "test")
                           if split_rows.get(name) is not None) or "n/a"
    transform = model.get("target_transform")
    facts = [
        ("Model", f'{_e(model.get("name", "n/a"))} <code>{_e(model.get("version", "n/a"))}</code> · '
                  f'{_e(model.get("architecture", "n/a"))}'),
        ("Target", f'{_e(model.get("target", "n/a"))}'
                   + (f" (trained on log({_e(model.get('target'))}))" if transform == "log" else "")),
        ("Data fingerprint", f'<code title="{_e(fingerprint)}">{_e(fingerprint[:12])}</code> '
                             '<span class="muted">sha256 of the training channel</span>'),
        ("Rows used", rows_used),
        ("Training", f"best epoch {_e(_count(training.get('best_epoch')))} of "
                     f"{_e(_count(training.get('epochs_run')))} run"),
    ]
    facts_html = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    summary = card.get("summary")
    limitations = [str(item) for item in card.get("limitations", ()) if item]
    details = ""
    if limitations or card.get("intended_use"):
        details = ('<details><summary>Intended use and limitations</summary>'
                   + (f"<p>{_e(card['intended_use'])}</p>" if card.get("intended_use") else "")
                   + ("<ul>" + "".join(f"<li>{_e(item)}</li>" for item in limitations) + "</ul>"
                      if limitations else "")
                   + "</details>")
    deviation = info.get("standard_deviation")
    note = f'<p class="muted small">± {_e(deviation)}.</p>' if deviation else ""
    return (f'<header>\n<h1>{_e(title)}</h1>\n'
            + (f'<p class="summary">{_e(summary)}</p>\n' if summary else "")
            + f'<div class="tiles">{"".join(tiles)}</div>\n{note}\n<dl class="facts">{facts_html}</dl>\n'
            f"{details}\n</header>")


def _tile(name: str, metric: Any, show: Callable[[float], str]) -> str:
    metric = _mapping(metric)
    value, deviation = _float(metric.get("value")), _float(metric.get("standard_deviation"))
    shown = show(value) if value is not None else "n/a"
    spread = f"± {show(deviation)}" if deviation is not None else "± n/a"
    return (f'<div class="tile"><div class="label">{_e(name)}</div><div class="value">{_e(shown)}</div>'
            f'<div class="se">{_e(spread)}</div></div>')


# --- learning curves ----------------------------------------------------------------------------------------

def _learning_curves(history: Sequence[EpochReport], best_epoch: int, card: Mapping[str, Any]) -> str:
    figure_id, label = "learning-curves", "Learning curves"
    finite = [r for r in history if math.isfinite(r.train_loss) or math.isfinite(r.validation_loss)]
    if not finite:
        return _figure(figure_id, label, '<p class="empty">No per-epoch history was recorded.</p>', "")
    width, height = 600, 380
    left, right, top, bottom = 70, 20, 40, 52
    epochs = [r.epoch for r in finite]
    values = [v for r in finite for v in (r.train_loss, r.validation_loss) if math.isfinite(v)]
    x_lo, x_hi, x_ticks = _linear_ticks(min(epochs), max(epochs), 6, integer=True)
    log = min(values) > 0 and max(values) / min(values) >= 10   # losses fall by decades: a log axis shows all
    y_lo, y_hi, y_ticks = _log_ticks(min(values), max(values)) if log else _linear_ticks(0.0, max(values), 5)
    x = _Scale(x_lo, x_hi, left, width - right)
    y = _Scale(y_lo, y_hi, height - bottom, top, log)
    model = _mapping(card.get("model"))
    target = str(model.get("target") or "target")
    scaled = f"log({target})" if model.get("target_transform") == "log" else target
    parts = [_grid_and_axes(x, y, x_ticks, y_ticks, _tick_label, width, height, top, bottom, left,
                            "epoch", f"loss: MSE of standardised {scaled}" + (", log scale" if log else ""))]
    for name, colour, losses in (("train", TRAIN, [r.train_loss for r in finite]),
                                 ("validation", VALIDATION, [r.validation_loss for r in finite])):
        points = " ".join(f"{_n(x(epoch))},{_n(y(loss))}" for epoch, loss in zip(epochs, losses, strict=True)
                          if _plottable(loss, log))
        parts.append(f'<polyline class="series" data-series="{name}" points="{points}" fill="none" '
                     f'stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>')
    # The linear model keeps the epoch of least training loss, the MLPs that of least validation loss.
    linear = not _mapping(card.get("hyperparameters")).get("hidden_layers", [1])
    best = next((r for r in finite if r.epoch == best_epoch), None)
    if best is not None:
        bx = x(best.epoch)
        parts.append(f'<g class="best-epoch" data-epoch="{best.epoch}"><title>best epoch {best.epoch}: '
                     f"validation loss {_e(_tick_label(best.validation_loss))}, train loss "
                     f"{_e(_tick_label(best.train_loss))} (its weights were kept)</title>"
                     f'<line x1="{_n(bx)}" x2="{_n(bx)}" y1="{top}" y2="{height - bottom}" stroke="{BEST}" '
                     'stroke-width="1.5" stroke-dasharray="5 4"/>')
        monitored = best.train_loss if linear else best.validation_loss
        if _plottable(monitored, log):
            parts.append(f'<circle cx="{_n(bx)}" cy="{_n(y(monitored))}" r="5" fill="white" '
                         f'stroke="{BEST}" stroke-width="2.5"/>')
        anchor = "end" if bx > (left + width - right) / 2 else "start"
        parts.append(f'<text x="{_n(bx + (-6 if anchor == "end" else 6))}" y="{top + 14}" text-anchor="{anchor}" '
                     f'class="annotation" fill="{BEST}">best epoch {best.epoch}</text></g>')
    parts.append(_epoch_targets(finite, x, top, height - bottom))
    parts.append(_legend([(TRAIN, "line", "training loss"), (VALIDATION, "line", "validation loss"),
                          (BEST, "dash", "best epoch (weights kept)")], left, 16))
    rule = ("the lowest training loss (the linear model runs to the least-squares optimum)" if linear else
            "the lowest validation loss; training stopped when it no longer improved")
    caption = (f"Loss per epoch, {len(finite)} epoch{'s' if len(finite) != 1 else ''}. The best epoch is the "
               f"one with {rule}; its weights are the model's. Hover over the chart for an epoch's values.")
    return _figure(figure_id, label, _svg(width, height, label, parts), caption)


def _epoch_targets(history: Sequence[EpochReport], x: _Scale, top: float, bottom: float) -> str:
    """Invisible vertical bands, one per epoch (thinned past MAX_EPOCH_TARGETS), whose tooltip is that
    epoch's numbers: SVG's <title> is the only hover text that needs no script."""
    stride = max(1, math.ceil(len(history) / MAX_EPOCH_TARGETS))
    step = (x(history[-1].epoch) - x(history[0].epoch)) / max(1, len(history) - 1) * stride
    bands = []
    for report in history[::stride]:
        cx = x(report.epoch)
        bands.append(f'<rect x="{_n(cx - step / 2)}" y="{_n(top)}" width="{_n(max(step, 1.0))}" '
                     f'height="{_n(bottom - top)}"><title>epoch {report.epoch}\n'
                     f"training loss {_e(_tick_label(report.train_loss))}\n"
                     f"validation loss {_e(_tick_label(report.validation_loss))}\n"
                     f"validation RMSE {_e(_number(report.validation_rmse))}</title></rect>")
    return f'<g class="hover" fill="transparent">{"".join(bands)}</g>'


# --- predicted against actual -------------------------------------------------------------------------------

def _predicted_vs_actual(truth: np.ndarray, predicted: np.ndarray, target: str, evaluation: Mapping[str, Any],
                         seed: int) -> str:
    figure_id, label = "predicted-vs-actual", "Predicted against actual"
    split = str(_mapping(evaluation.get("evaluation")).get("split", "evaluation"))
    keep = np.isfinite(truth) & np.isfinite(predicted)
    truth, predicted = truth[keep], predicted[keep]
    if len(truth) == 0:
        return _figure(figure_id, label, '<p class="empty">No rows to plot.</p>', "")
    chosen = sample_indices(len(truth), MAX_SCATTER_POINTS, seed)
    width, height = 600, 380
    left, right, top, bottom = 78, 20, 40, 52
    lo = float(min(truth.min(), predicted.min()))
    hi = float(max(truth.max(), predicted.max()))
    a_lo, a_hi, ticks = _linear_ticks(lo, hi, 6)
    x = _Scale(a_lo, a_hi, left, width - right)
    y = _Scale(a_lo, a_hi, height - bottom, top)
    parts = [_grid_and_axes(x, y, ticks, ticks, _tick_label, width, height, top, bottom, left,
                            f"actual {target}", f"predicted {target}"),
             f'<line class="identity" x1="{_n(x(a_lo))}" y1="{_n(y(a_lo))}" x2="{_n(x(a_hi))}" y2="{_n(y(a_hi))}" '
             f'stroke="{MUTED}" stroke-width="1.5" stroke-dasharray="6 4"><title>y = x: a perfect prediction'
             "</title></line>"]
    # Each point's tooltip carries its numbers; the sample bounds how many there are.
    points = "".join(
        f'<circle cx="{_n(x(t))}" cy="{_n(y(p))}" r="3"><title>actual {_e(_number(t))}, predicted '
        f"{_e(_number(p))} ({_e(_signed_number(p - t))})</title></circle>"
        for t, p in zip(truth[chosen].tolist(), predicted[chosen].tolist(), strict=True))
    parts.append(f'<g class="points" fill="{POINT}" fill-opacity="0.45" stroke="{POINT}" stroke-opacity="0.7" '
                 f'stroke-width="0.6" data-points="{len(chosen)}">{points}</g>')
    parts.append(_legend([(POINT, "dot", f"one row of the {split} split"), (MUTED, "dash", "y = x")], left, 16))
    shown = (f"all {_count(len(truth))} rows are shown" if len(chosen) == len(truth) else
             f"{_count(len(chosen))} of {_count(len(truth))} rows are shown, drawn at random (seed {seed}) to keep "
             "the page small")
    caption = (f"The model's prediction against the actual {_e(target)} on the {_e(split)} split; "
               f"{_e(shown)}. Points above the dashed line are over-predictions, below it under-predictions.")
    return _figure(figure_id, label, _svg(width, height, label, parts), caption)


# --- residuals by slice -------------------------------------------------------------------------------------

def _residuals_by_slice(evaluation: Mapping[str, Any], target: str) -> str:
    figure_id, label = "residuals-by-slice", "Residuals by slice"
    slices = [s for s in evaluation.get("slices", ()) if isinstance(s, Mapping)]
    if not slices:
        return _figure(figure_id, label, '<p class="empty">evaluation.json has no slices.</p>', "")
    overall = _float(_mapping(_mapping(evaluation.get("regression_metrics")).get("rmse")).get("value"))
    by_feature: dict[str, list[Mapping[str, Any]]] = {}
    for entry in slices:
        by_feature.setdefault(str(entry.get("feature")), []).append(entry)
    rmses = [r for s in slices if (r := _float(s.get("rmse"))) is not None]
    # The slices' errors sit close to the overall one: a scale from 0 would hide exactly the differences
    # this chart is for, so it spans the observed range and draws each slice as its distance from overall.
    span = [*rmses, *([overall] if overall is not None else [])] or [0.0]
    scale = _linear_ticks(min(span), max(span), 3)
    # Features whose worst slice is worst come first: the reader starts where the model is weakest.
    order = sorted(by_feature, key=lambda name: -max((_float(s.get("rmse")) or -1.0) for s in by_feature[name]))
    panels = "".join(_slice_panel(name, by_feature[name], scale, overall, target) for name in order)
    worst = evaluation.get("worst_slice")
    min_rows = _mapping(evaluation.get("evaluation")).get("min_slice_rows", 10)
    callout = ""
    if isinstance(worst, Mapping):
        ratio = _float(worst.get("ratio"))
        callout = (f'<p class="callout"><span class="flag">worst slice</span> <strong>{_e(worst.get("feature"))} = '
                   f'{_e(worst.get("slice"))}</strong>: RMSE {_e(_number(worst.get("rmse")))} on '
                   f'{_e(_count(worst.get("rows")))} rows, {_e(_signed_number(worst.get("gap")))} over the overall '
                   f'{_e(_number(worst.get("overall_rmse")))}'
                   + (f" (&times; {ratio:.2f})" if ratio is not None else "") + ".</p>")
    legend = (f'<p class="key"><span class="dot" style="background:{BAR_DARK}"></span>RMSE of the slice, drawn '
              f'from the overall RMSE <span class="dot" style="background:{WORST}"></span>worst slice '
              f'<span class="swatch dash"></span>overall RMSE ({_e(_number(overall))})</p>')
    caption = (f"RMSE of {_e(target)} per slice of the evaluated rows: per level of each categorical feature, per "
               "quartile bin of each numeric feature (a feature with few values: per value); n is the slice's "
               f"rows. All panels share one scale. Slices of fewer than {_e(min_rows)} rows have no metrics. "
               "Features are ordered by their worst slice; hover over a slice for its MAE and bias (mean of "
               "prediction &minus; actual).")
    return _figure(figure_id, label, f'{callout}{legend}<div class="panels">{panels}</div>', caption, wide=True)


def _slice_panel(feature: str, slices: Sequence[Mapping[str, Any]], scale: tuple[float, float, list[float]],
                 overall: float | None, target: str) -> str:
    # Drawn at about the size it is shown (three panels across 1200 px), so its text reads at 12 px.
    width, row, head, axis = 360, 22, 26, 34
    label_width, value_width = 112, 86
    lo, hi, ticks = scale
    bottom = head + row * len(slices)
    x = _Scale(lo, hi, label_width + 6, width - value_width - 6)
    kind = str(slices[0].get("kind", ""))
    parts = [f'<text x="0" y="16" class="panel-title">{_e(_cut(feature, 30))}<title>{_e(feature)}</title></text>',
             f'<text x="{width}" y="16" text-anchor="end" class="muted-text small-text">{_e(kind)}</text>']
    for tick in ticks:
        tx = x(tick)
        parts.append(f'<line x1="{_n(tx)}" x2="{_n(tx)}" y1="{head}" y2="{bottom + 4}" stroke="{GRID}"/>'
                     f'<text x="{_n(tx)}" y="{bottom + 16}" text-anchor="middle" class="tick">'
                     f"{_e(_tick_label(tick))}</text>")
    parts.append(f'<text x="{_n((x.start + x.end) / 2)}" y="{bottom + 30}" text-anchor="middle" '
                 f'class="axis-label small-text">RMSE ({_e(target)})</text>')
    origin = x(overall) if overall is not None else x.start
    if overall is not None:
        parts.append(f'<line x1="{_n(origin)}" x2="{_n(origin)}" y1="{head - 2}" y2="{bottom + 4}" stroke="{INK}" '
                     f'stroke-width="1.2" stroke-dasharray="3 3"><title>overall RMSE {_e(_number(overall))}</title>'
                     "</line>")
    for index, entry in enumerate(slices):
        parts.append(_slice_row(entry, x, origin, head + index * row, row, width))
    has_worst = any(entry.get("worst") for entry in slices)
    return (f'<div class="panel{" panel-worst" if has_worst else ""}" data-feature="{_e(feature)}">'
            f'{_svg(width, bottom + axis, f"Residuals by slice of {feature}", parts)}</div>')


def _slice_row(entry: Mapping[str, Any], x: _Scale, origin: float, y: float, row: float, width: float) -> str:
    name = str(entry.get("slice"))
    rows = entry.get("rows")
    worst = bool(entry.get("worst"))
    middle = y + row / 2
    label_class = "slice-label worst-label" if worst else "slice-label"
    label = (f'<text x="{_n(x.start - 10)}" y="{_n(middle + 4)}" text-anchor="end" class="{label_class}">'
             f"{_e(_cut(name, LABEL_CHARS))}</text>")
    rmse = _float(entry.get("rmse"))
    if entry.get("too_small") or rmse is None:
        return (f'<g class="slice too-small" data-slice="{_e(name)}"><title>{_e(name)}: {_e(_count(rows))} rows, '
                f"too few for metrics</title>{label}"
                f'<text x="{_n(width)}" y="{_n(middle + 4)}" text-anchor="end" class="muted-text small-text">'
                f"too few, n={_e(_count(rows))}</text></g>")
    at = x(rmse)
    colour = WORST if worst else BAR_DARK
    tooltip = (f"{entry.get('feature')} = {name}{' (worst slice)' if worst else ''}\nrows {_count(rows)}\n"
               f"RMSE {_number(rmse)}\nMAE {_number(entry.get('mae'))}\nbias {_signed_number(entry.get('bias'))}")
    value = (f'<text x="{_n(width)}" y="{_n(middle + 4)}" text-anchor="end" class="value">'
             + (f'<tspan class="flag-text">{_e(_number(rmse))} worst</tspan>' if worst else
                f'{_e(_number(rmse))} <tspan class="muted-text">n={_e(_count(rows))}</tspan>') + "</text>")
    marked = ' data-worst="true"' if worst else ""
    return (f'<g class="slice{" worst" if worst else ""}" data-slice="{_e(name)}"{marked}>'
            f"<title>{_e(tooltip)}</title>"
            f'<rect x="0" y="{_n(y)}" width="{_n(width)}" height="{_n(row)}" fill="transparent"/>{label}'
            f'<line x1="{_n(origin)}" x2="{_n(at)}" y1="{_n(middle)}" y2="{_n(middle)}" stroke="{colour}" '
            f'stroke-width="3" stroke-linecap="round" stroke-opacity="{1 if worst else 0.55}"/>'
            f'<circle cx="{_n(at)}" cy="{_n(middle)}" r="{5 if worst else 4.5}" fill="{colour}"/>{value}</g>')


# --- attributions -------------------------------------------------------------------------------------------

def _attributions(summary: AttributionSummary | None, target: str) -> str:
    figure_id, label = "attributions", "Feature attributions"
    if summary is None:
        note = ('<p class="empty">Skipped: this model has no explanation baseline (an artifact trained before '
                "explanations existed), so its predictions cannot be attributed to features.</p>")
        return _figure(figure_id, label, note, "", wide=True)
    ranked = sorted(summary.mean_abs.items(), key=lambda item: -item[1])
    if len(ranked) > MAX_ATTRIBUTION_BARS:
        rest = ranked[MAX_ATTRIBUTION_BARS - 1:]
        ranked = [*ranked[:MAX_ATTRIBUTION_BARS - 1], (f"({len(rest)} more features, summed)",
                                                       sum(v for _, v in rest))]
    width, row, top, axis = 1000, 22, 8, 40
    label_width, value_width = 210, 90
    height = top + row * len(ranked) + axis
    _, hi, ticks = _linear_ticks(0.0, max([v for _, v in ranked] + [1e-12]), 6)
    x = _Scale(0.0, hi, label_width, width - value_width)
    bottom = top + row * len(ranked)
    parts = []
    for tick in ticks:
        tx = x(tick)
        parts.append(f'<line x1="{_n(tx)}" x2="{_n(tx)}" y1="{top}" y2="{bottom}" stroke="{GRID}"/>'
                     f'<text x="{_n(tx)}" y="{bottom + 15}" text-anchor="middle" class="tick">'
                     f"{_e(_tick_label(tick))}</text>")
    parts.append(f'<text x="{_n((x.start + x.end) / 2)}" y="{bottom + 33}" text-anchor="middle" class="axis-label">'
                 f"mean |attribution| ({_e(target)})</text>")
    for index, (name, value) in enumerate(ranked):
        y = top + index * row
        end = x(value)
        parts.append(f'<g class="feature" data-feature="{_e(name)}"><title>{_e(name)}: mean |attribution| '
                     f"{_e(_number(value))}</title>"
                     f'<text x="{_n(label_width - 8)}" y="{_n(y + row / 2 + 4)}" text-anchor="end" '
                     f'class="slice-label">{_e(_cut(name, 30))}</text>'
                     f'<rect x="{_n(x.start)}" y="{_n(y + 4)}" width="{_n(max(end - x.start, 1.0))}" '
                     f'height="{row - 8}" rx="2" fill="{TRAIN}"/>'
                     f'<text x="{_n(end + 6)}" y="{_n(y + row / 2 + 4)}" class="value">{_e(_number(value))}</text></g>')
    sample = (f"all {_count(summary.rows)} rows" if summary.rows == summary.of_rows else
              f"{_count(summary.rows)} of {_count(summary.of_rows)} rows drawn at random (seed {summary.seed})")
    caption = (f"How far, on average, each feature moves a prediction away from the baseline prediction "
               f"{_e(_number(summary.base))} (the model at the training mean), in units of {_e(target)}; over "
               f"{_e(sample)} of the evaluated split. Each row's attributions sum to its prediction minus the "
               "baseline (integrated gradients; exact for the linear model). Large means large influence, not "
               "cause.")
    return _figure(figure_id, label, _svg(width, height, label, parts), caption, wide=True)


# --- SVG and HTML pieces ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scale:
    """Maps data values in [lo, hi] to pixels in [start, end], linearly or on log10."""

    lo: float
    hi: float
    start: float
    end: float
    log: bool = False

    def __call__(self, value: float) -> float:
        if self.log:
            share = (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            share = (value - self.lo) / (self.hi - self.lo)
        return self.start + share * (self.end - self.start)


def _linear_ticks(lo: float, hi: float, count: int, integer: bool = False) -> tuple[float, float, list[float]]:
    """Round ticks (1, 2 or 5 times a power of ten apart) covering [lo, hi], and the axis range they span."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice_step((hi - lo) / count)
    if integer:
        step = max(1.0, step)
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [first + index * step for index in range(round((last - first) / step) + 1)]
    return first, last, [round(t, 12) for t in ticks]


def _nice_step(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 5.0):
        if raw <= multiple * power * (1 + 1e-9):
            return multiple * power
    return 10.0 * power


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """1-2-5 ticks on a log axis from a little below lo to a little above hi; powers of ten only when the
    range spans so many decades that 1-2-5 would crowd."""
    low, high = lo / 1.2, hi * 1.2
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks = [m * 10.0 ** k for k in decades for m in (1, 2, 5) if low <= m * 10.0 ** k <= high]
    if len(ticks) > 9:
        ticks = [t for t in ticks if math.isclose(10 ** round(math.log10(t)), t)]
    return low, high, ticks


def _grid_and_axes(x: _Scale, y: _Scale, x_ticks: Sequence[float], y_ticks: Sequence[float],
                   show: Callable[[float], str], width: float, height: float, top: float, bottom: float,
                   left: float, x_label: str, y_label: str) -> str:
    parts = []
    for tick in y_ticks:
        ty = y(tick)
        parts.append(f'<line x1="{_n(x.start)}" x2="{_n(x.end)}" y1="{_n(ty)}" y2="{_n(ty)}" stroke="{GRID}"/>'
                     f'<text x="{_n(x.start - 8)}" y="{_n(ty + 4)}" text-anchor="end" class="tick">'
                     f"{_e(show(tick))}</text>")
    for tick in x_ticks:
        tx = x(tick)
        parts.append(f'<line x1="{_n(tx)}" x2="{_n(tx)}" y1="{_n(height - bottom)}" y2="{_n(height - bottom + 5)}" '
                     f'stroke="{MUTED}"/><text x="{_n(tx)}" y="{_n(height - bottom + 19)}" text-anchor="middle" '
                     f'class="tick">{_e(show(tick))}</text>')
    parts.append(f'<line x1="{_n(x.start)}" x2="{_n(x.end)}" y1="{_n(height - bottom)}" y2="{_n(height - bottom)}" '
                 f'stroke="{MUTED}"/>')
    parts.append(f'<text x="{_n((x.start + x.end) / 2)}" y="{_n(height - 8)}" text-anchor="middle" '
                 f'class="axis-label">{_e(x_label)}</text>')
    middle = (top + height - bottom) / 2
    parts.append(f'<text transform="translate(16 {_n(middle)}) rotate(-90)" text-anchor="middle" '
                 f'class="axis-label">{_e(y_label)}</text>')
    return "".join(parts)


def _legend(entries: Sequence[tuple[str, str, str]], x: float, y: float) -> str:
    """A row of (colour, mark, text) entries; mark is line, dash or dot."""
    parts, at = [], x
    for colour, mark, text in entries:
        if mark == "dot":
            parts.append(f'<circle cx="{_n(at + 8)}" cy="{_n(y - 4)}" r="4" fill="{colour}" fill-opacity="0.6"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if mark == "dash" else ""
            parts.append(f'<line x1="{_n(at)}" x2="{_n(at + 18)}" y1="{_n(y - 4)}" y2="{_n(y - 4)}" stroke="{colour}" '
                         f'stroke-width="2.5"{dash}/>')
        parts.append(f'<text x="{_n(at + 24)}" y="{_n(y)}" class="legend">{_e(text)}</text>')
        at += 24 + 6.6 * len(text) + 18   # no text metrics in SVG: a generous average glyph width
    return f'<g class="legend-row">{"".join(parts)}</g>'


def _svg(width: float, height: float, label: str, parts: Sequence[str]) -> str:
    # viewBox + width 100%: the chart scales with the page instead of overflowing it.
    return (f'<svg viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="{_e(label)}" '
            f'preserveAspectRatio="xMidYMid meet">{"".join(parts)}</svg>')


def _figure(figure_id: str, label: str, content: str, caption: str, wide: bool = False) -> str:
    """`caption` is HTML, already escaped by the caller."""
    return (f'<figure id="{figure_id}" aria-label="{_e(label)}" class="{"wide" if wide else "half"}">'
            f"<h2>{_e(label)}</h2>{content}"
            + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")


# --- text ---------------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: float) -> str:
    """A coordinate: one decimal is finer than a pixel, and keeps the file small."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _signed(text: str) -> str:
    return text.replace("-", "\u2212")   # a typographic minus: as wide as the plus, and not a hyphen


def _number(value: Any) -> str:
    """A value in the target's units for reading: thousands separators, about four significant digits."""
    number = _float(value)
    if number is None:
        return "n/a"
    size = abs(number)
    if size >= 1000:
        text = f"{number:,.0f}"
    elif size >= 100:
        text = f"{number:,.1f}"
    elif size >= 1 or size == 0:
        text = f"{number:,.2f}".rstrip("0").rstrip(".") if size else "0"
    else:
        text = f"{number:.3g}"
    return _signed(text)


def _signed_number(value: Any) -> str:
    number = _float(value)
    return "n/a" if number is None else ("+" if number >= 0 else "") + _number(number)


def _tick_label(value: float) -> str:
    """A tick or loss value: thousands separators, as few decimals as the value needs."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1:
        decimals = 0 if float(value).is_integer() else 2 if size < 10 else 1 if size < 1000 else 0
        text = f"{value:,.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    elif size >= 1e-4:
        text = f"{value:.{min(8, 2 - math.floor(math.log10(size)))}f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:.2g}"
    return _signed(text)


def _count(value: Any) -> str:
    number = _float(value)
    if number is None:
        return "n/a"
    return f"{number:,.0f}" if number.is_integer() else f"{number:,}"


def _float(value: Any) -> float | None:
    """A finite float, or None for absent, "NaN" (Model Monitor's spelling) and anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _plottable(value: float, log: bool) -> bool:
    return math.isfinite(value) and (value > 0 or not log)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


_CSS = f"""
:root {{ color-scheme: light; --ink: {INK}; --muted: {MUTED}; --grid: {GRID}; --worst: {WORST};
  --paper: #ffffff; --page: #f6f7f9; --line: #e3e6ea; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; background: var(--page); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums; }}
main {{ max-width: 1200px; margin: 0 auto; padding: 28px 24px 40px; }}
h1 {{ font-size: 26px; line-height: 1.25; margin: 0 0 6px; letter-spacing: -0.01em; }}
h2 {{ font-size: 17px; margin: 0 0 10px; }}
header, figure {{ background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
  padding: 20px 22px; margin: 0 0 18px; }}
.summary {{ color: var(--muted); margin: 0 0 16px; font-size: 14px; overflow-wrap: anywhere; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; }}
.tile {{ border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fbfcfd; }}
.tile .label {{ font-size: 12px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); }}
.tile .value {{ font-size: 24px; font-weight: 650; line-height: 1.3; overflow-wrap: anywhere; }}
.tile .se {{ font-size: 13px; color: var(--muted); }}
.tile-worst {{ border-color: #f1c4c4; background: #fdf6f6; }}
.tile-worst .value {{ font-size: 17px; color: var(--worst); padding: 4px 0 3px; }}
.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 14px 0 0;
  font-size: 14px; }}
.facts dt {{ color: var(--muted); }} .facts dd {{ margin: 0; overflow-wrap: anywhere; }}
code {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  background: #f1f3f5; border-radius: 4px; padding: 1px 5px; }}
details {{ margin-top: 12px; font-size: 14px; }} summary {{ cursor: pointer; color: var(--muted); }}
.muted, .muted-text {{ color: var(--muted); fill: var(--muted); }} .small {{ font-size: 13px; margin: 8px 0 0; }}
.pair {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 18px; }}
.pair figure {{ margin: 0 0 18px; }}
figure svg {{ display: block; width: 100%; height: auto; }}
figcaption {{ font-size: 13px; color: var(--muted); margin-top: 10px; }}
.empty {{ color: var(--muted); font-style: italic; }}
svg text {{ font-family: inherit; fill: var(--ink); font-size: 12px; }}
svg .tick {{ fill: var(--muted); font-size: 11.5px; }}
svg .axis-label {{ font-size: 12.5px; font-weight: 600; }}
svg .legend {{ font-size: 12.5px; }}
svg .annotation, svg .flag-text {{ font-weight: 650; }}
svg .annotation {{ fill: {BEST}; }} svg .flag-text {{ fill: var(--worst); }}
svg .muted-text {{ fill: var(--muted); }}
svg .panel-title {{ font-weight: 650; font-size: 13.5px; }}
svg .worst-label {{ fill: var(--worst); font-weight: 650; }}
svg .value {{ font-size: 12px; }}
svg .small-text {{ font-size: 11.5px; }}
.slice:hover rect {{ fill: rgba(31, 41, 55, 0.05); }}
.hover rect:hover {{ fill: rgba(31, 41, 55, 0.06); }}
.points circle:hover {{ fill-opacity: 1; stroke: var(--ink); }}
.panels {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px 22px; }}
.panel {{ padding: 8px 10px; border-radius: 8px; }}
.panel-worst {{ background: #fdf6f6; outline: 1px solid #f1c4c4; }}
.callout {{ margin: 0 0 8px; font-size: 14px; }}
.flag {{ display: inline-block; background: var(--worst); color: white; font-size: 11px; font-weight: 700;
  text-transform: uppercase; letter-spacing: 0.05em; border-radius: 4px; padding: 1px 6px; }}
.key {{ font-size: 13px; color: var(--muted); margin: 0 0 12px; }}
.swatch, .dot {{ display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px;
  margin: 0 5px 0 14px; }}
.dot {{ border-radius: 50%; width: 10px; height: 10px; }}
.key .dot:first-child {{ margin-left: 0; }}
.swatch.dash {{ width: 14px; height: 0; border-top: 2px dashed var(--ink); border-radius: 0; vertical-align: 3px; }}
footer {{ font-size: 12px; color: var(--muted); text-align: center; margin-top: 8px; }}
@media (max-width: 560px) {{ main {{ padding: 12px; }} .pair {{ grid-template-columns: 1fr; }}
  .facts {{ grid-template-columns: 1fr; }} }}
"""
