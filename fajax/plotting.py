"""Figures from runs' metrics: alignment angles per layer and error curves, as PNG files.

Records are the trainer's metrics.jsonl lines, e.g.
{"step": 100, "split": "train", "align/Dense_0/update_angle": 63.1, ...}; records without
"align/..." keys (eval lines, losses) are ignored, and NaN points are skipped.

Every figure follows one style, after the paper's alignment figures: one panel per layer (or per
column), one colour per rule that stays the same in every figure drawn with the same `colors`
(`color_map`), one legend for the whole figure outside the panels, and seeds drawn as their mean
with a band of one standard deviation.

    records = fajax.plotting.read_metrics(workdir)
    fajax.plotting.plot_alignment(records, "fa.png", title="fa")
    fajax.plotting.plot_alignment_runs({"fa": fa, "usf": usf, "bp": bp}, "alignment.png")
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from fajax import diagnostics
from fajax.train import paths
from fajax.train.metrics import read_metrics  # noqa: F401 (the records these figures draw)

ANGLES = ("update_angle", "delta_angle", "wb_angle")
ANGLE_TITLES = {
  "update_angle": "update angle to backprop",
  "delta_angle": "delta angle to backprop",
  "wb_angle": "angle between W and B",
}
# Angles below this many degrees count as 0 (bp's are 0 up to float rounding of the two passes).
ZERO_DEGREES = 1e-3
# Distinct colours, dark enough on white; assigned in order by `color_map`.
PALETTE = (
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
  "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd",
  "#e6550d", "#31a354", "#756bb1", "#636363",
)  # fmt: skip


def _natural_key(text: str):
  """ "Dense_2" before "Dense_10"."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def layers(records: Sequence[Mapping]) -> list[str]:
  """The layer paths with alignment metrics in `records`, in natural order (Dense_2 < Dense_10)."""
  found = set()
  for record in records:
    found.update(diagnostics.layer_names(record))
  return sorted(found, key=_natural_key)


def alignment_curves(records: Sequence[Mapping], layer: str, metric: str):
  """(steps, values) of `align/<layer>/<metric>` over `records`, NaN / missing points skipped."""
  key = f"{diagnostics.PREFIX}/{layer}/{metric}"
  steps, values = [], []
  for i, record in enumerate(records):
    value = record.get(key)
    if value is None or not math.isfinite(float(value)):
      continue
    steps.append(int(record.get("step", i)))
    values.append(float(value))
  return steps, values


def color_map(names: Sequence[str], order: Sequence[str] = ()) -> dict[str, str]:
  """A colour per name. Names in `order` (e.g. every row of a table) get the colour of their
  position there, so a rule keeps its colour across figures and reports; others follow."""
  order = list(order)
  colors = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(order)}
  extra = [n for n in dict.fromkeys(names) if n not in colors]
  for i, name in enumerate(extra):
    colors[name] = PALETTE[(len(order) + i) % len(PALETTE)]
  return {n: colors[n] for n in names}


def mean_band(curves: Sequence[tuple[Sequence, Sequence]]):
  """(steps, mean, std) over seeds' (steps, values) curves, at the steps every curve has."""
  curves = [dict(zip(s, v, strict=True)) for s, v in curves]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  values = np.array([[c[s] for s in steps] for c in curves], dtype=float).reshape(len(curves), -1)
  std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
  return steps, values.mean(axis=0) if len(curves) else values[:0], std


def new_figure(rows: int, cols: int, width: float = 3.6, height: float = 2.9):
  import matplotlib

  matplotlib.use("Agg")  # files only, never a display
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    rows, cols, figsize=(width * cols + 2.2, height * rows), squeeze=False, sharex=True
  )
  return plt, fig, axes


def draw_curve(ax, curves, color: str, label: str) -> None:
  """The mean of seeds' (steps, values) curves as a line, with ±1 std (a band, or error bars on
  curves of few points) when n > 1."""
  steps, mean, std = mean_band(curves)
  if not steps:
    return
  few = len(steps) <= 12  # a few evaluations: mark each, with error bars rather than a band
  ax.plot(steps, mean, color=color, lw=1.6, marker="o" if few else None, ms=3.5, label=label)
  if len(curves) > 1 and few:
    ax.errorbar(steps, mean, yerr=std, fmt="none", ecolor=color, capsize=2.5, label="_std")
  elif len(curves) > 1:
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.18, lw=0, label="_std")


def curve_labels(ax) -> list[str]:
  """The labels of the data lines of a panel (reference lines and std marks start with '_')."""
  return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def save_figure(plt, fig, path, title: str | None, note: str | None = None) -> str:
  handles, labels = {}, {}
  for ax in fig.axes:  # one legend for the figure, each rule once, right of the panels
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
      if not label.startswith("_") and label not in labels:
        handles[label], labels[label] = handle, label
  if handles:
    fig.legend(list(handles.values()), list(labels), loc="center right", fontsize=9, frameon=False)
  if title:
    fig.suptitle(title, fontsize=11)
  if note:
    fig.text(0.01, 0.005, note, fontsize=8, color="0.35", ha="left", va="bottom")
  right = 1 - 2.0 / fig.get_figwidth() if handles else 1
  fig.tight_layout(rect=(0, 0.03 if note else 0, right, 1))
  path = os.fspath(path)
  if os.path.dirname(path):
    paths.makedirs(os.path.dirname(path))
  with paths.open(path, "wb") as f:
    fig.savefig(f, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
  plt.close(fig)
  return path


def _require_layers(found, what):
  if not found:
    raise ValueError(
      f"No '{diagnostics.PREFIX}/<layer>/<metric>' keys in {what}: run with diagnostics on "
      "(config.diagnostics_every > 0)."
    )


def pick_layers(names: Sequence[str], max_layers: int) -> list[str]:
  """At most `max_layers` of `names`, evenly spaced, always the first and the last."""
  if len(names) <= max_layers:
    return list(names)
  picks = np.linspace(0, len(names) - 1, max_layers).round().astype(int)
  return [names[i] for i in dict.fromkeys(picks.tolist())]


def _angle_panel(ax, layer: str, metric: str, first_row: bool, first_col: bool, last_row: bool):
  if first_row:
    ax.set_title(layer, fontsize=10)
  if first_col:
    ax.set_ylabel(f"{ANGLE_TITLES.get(metric, metric)} (°)", fontsize=9)
  if last_row:
    ax.set_xlabel("step")
  ax.axhline(90, color="0.7", lw=0.8, ls=":", label="_90")
  ax.grid(alpha=0.3)


def _as_seeds(records) -> list[Sequence[Mapping]]:
  """A run's records, or a list of seeds' records -> a list of seeds' records."""
  records = list(records)
  if records and isinstance(records[0], Mapping):
    return [records]
  return records


def plot_alignment(
  metrics_records: Sequence[Mapping], path, title: str | None = None, metrics=ANGLES
) -> str:
  """One panel per layer with one run's angle curves (update, delta, W-B); returns `path`."""
  names = layers(metrics_records)
  _require_layers(names, "these records")
  plt, fig, axes = new_figure(1, len(names))
  colors = color_map(list(metrics))
  for ax, layer in zip(axes[0], names, strict=True):
    _angle_panel(ax, layer, "angle", True, ax is axes[0][0], True)
    top = 0.0
    for metric in metrics:
      curve = alignment_curves(metrics_records, layer, metric)
      draw_curve(ax, [curve], colors[metric], ANGLE_TITLES.get(metric, metric))
      top = max([top, *curve[1]])
    ax.set_ylim(0, min(185.0, max(100.0, top + 5.0)))
  return save_figure(plt, fig, path, title)


def plot_alignment_runs(
  runs: Mapping[str, Sequence],
  path,
  title: str | None = None,
  metrics: Sequence[str] = ("update_angle", "delta_angle"),
  *,
  colors: Mapping[str, str] | None = None,
  labels: Mapping[str, str] | None = None,
  max_layers: int = 6,
) -> str:
  """Runs side by side: a row of panels per metric, a column per layer, a line per run.

  Args:
    runs: {name: records} or {name: [records of each seed]} (seeds: mean and ±1 std band).
    path: the PNG to write; returned.
    title: the figure's title.
    metrics: the angles to draw, one row of panels each (update and delta angle by default).
    colors: {name: colour} (default `color_map(list(runs))`); pass the same map to every figure.
    labels: legend text per name (default: the name).
    max_layers: at most this many layer columns, evenly spaced from first to last.

  A run whose angle is 0 (below ZERO_DEGREES) at every point of every layer of a row (bp: 0 by
  definition) is left out of that row, and a note under the figure says so.
  """
  runs = {name: _as_seeds(records) for name, records in runs.items()}
  found = layers([r for seeds in runs.values() for records in seeds for r in records])
  _require_layers(found, f"runs {list(runs)}")
  shown = pick_layers(found, max_layers)
  colors = dict(colors or color_map(list(runs)))
  labels = dict(labels or {})
  plt, fig, axes = new_figure(len(metrics), len(shown))
  zero = set()
  for i, metric in enumerate(metrics):
    curves = {
      (name, layer): [alignment_curves(records, layer, metric) for records in seeds]
      for name, seeds in runs.items()
      for layer in shown
    }
    row_zero = set()
    for name in runs:  # 0 in every layer (not just the output layer, where fa is exact too)
      values = [v for layer in shown for _, vs in curves[name, layer] for v in vs]
      if values and max(map(abs, values)) < ZERO_DEGREES:
        row_zero.add(name)
    zero.update(labels.get(name, name) for name in row_zero)
    for j, layer in enumerate(shown):
      ax = axes[i][j]
      _angle_panel(ax, layer, metric, i == 0, j == 0, i == len(metrics) - 1)
      top = 0.0
      for name in runs:
        if name in row_zero:
          continue
        draw_curve(ax, curves[name, layer], colors[name], labels.get(name, name))
        top = max([top, *(v for _, vs in curves[name, layer] for v in vs)])
      ax.set_ylim(0, min(185.0, max(100.0, top + 5.0)))
  notes = []
  if zero:
    notes.append(f"Not drawn where 0° by definition: {', '.join(sorted(zero))}.")
  if len(shown) < len(found):
    notes.append(f"{len(shown)} of {len(found)} layers shown.")
  return save_figure(plt, fig, path, title, " ".join(notes) or None)
