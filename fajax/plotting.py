"""Alignment curves from a run's metrics: per-layer angles against backprop, as PNG files.

Records are the trainer's metrics.jsonl lines, e.g.
{"step": 100, "split": "train", "align/Dense_0/update_angle": 63.1, ...}; records without
"align/..." keys (eval lines, losses) are ignored, and NaN points are skipped.

    records = fajax.plotting.read_metrics(workdir)
    fajax.plotting.plot_alignment(records, "fa.png", title="fa")
    fajax.plotting.plot_alignment_runs({"fa": fa, "usf": usf, "bp": bp}, "docs/alignment_mnist.png")
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence

from fajax import diagnostics

METRICS_FILE = "metrics.jsonl"
ANGLES = ("update_angle", "delta_angle", "wb_angle")


def read_metrics(workdir_or_path: str | os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl file (or of `<workdir>/metrics.jsonl`), in file order.

  Uses the trainer's reader (`fajax.train.metrics.read_jsonl`) when it is installed.
  """
  path = os.fspath(workdir_or_path)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No metrics file at {path}: pass a run's workdir (holding {METRICS_FILE}) "
      "or the file itself."
    )
  try:
    from fajax.train.metrics import read_jsonl
  except ImportError:  # the library without its trainer: the format is one JSON object a line
    with open(path) as f:
      return [json.loads(line) for line in f if line.strip()]
  return read_jsonl(path)


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


def _figure(n_panels: int):
  import matplotlib

  matplotlib.use("Agg")  # files only, never a display
  import matplotlib.pyplot as plt

  cols = 2 if n_panels == 4 else min(n_panels, 3)
  rows = math.ceil(n_panels / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax in axes.flat[n_panels:]:
    ax.set_visible(False)
  return plt, fig, list(axes.flat[:n_panels])


def _angle_axes(ax, layer):
  ax.set_title(layer, fontsize=10)
  ax.set_xlabel("step")
  ax.set_ylabel("degrees")
  ax.axhline(90, color="0.7", lw=0.8, ls=":")
  ax.grid(alpha=0.3)


def _finish_axes(ax, top):
  """0 at the bottom; the top a little above 90 degrees, or above the curves when they go higher."""
  ax.set_ylim(0, min(185.0, max(100.0, top + 5.0)))


def _save(plt, fig, axes, path, title):
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:  # one legend for the figure, below the panels, so it hides no curve
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
  if title:
    fig.suptitle(title)
  rows = len({round(ax.get_position().y0, 3) for ax in axes})
  fig.tight_layout(rect=(0, 0.1 / rows if handles else 0, 1, 1))
  from fajax.train import paths  # A local file or a gs:// object alike.

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


def plot_alignment(
  metrics_records: Sequence[Mapping], path, title: str | None = None, metrics=ANGLES
) -> str:
  """One panel per layer with its angle curves (update, delta, W-B) over steps; returns `path`."""
  names = layers(metrics_records)
  _require_layers(names, "these records")
  plt, fig, axes = _figure(len(names))
  for ax, layer in zip(axes, names, strict=True):
    _angle_axes(ax, layer)
    top = 0.0
    for metric in metrics:
      steps, values = alignment_curves(metrics_records, layer, metric)
      ax.plot(steps, values, label=metric.replace("_angle", ""))
      top = max([top, *values])
    _finish_axes(ax, top)
  return _save(plt, fig, axes, path, title)


def plot_alignment_runs(
  runs: Mapping[str, Sequence[Mapping]],
  path,
  title: str | None = None,
  metric: str = "update_angle",
  delta: bool = True,
) -> str:
  """Overlays runs (e.g. {"fa": records, "usf": records, "bp": records}), one panel per layer.

  Solid lines: `metric` (the update angle by default); dashed, same colour: the delta angle when
  `delta` is True. Returns `path`.
  """
  names = layers([r for records in runs.values() for r in records])
  _require_layers(names, f"runs {list(runs)}")
  plt, fig, axes = _figure(len(names))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, layer in zip(axes, names, strict=True):
    _angle_axes(ax, layer)
    top = 0.0
    for i, (run, records) in enumerate(runs.items()):
      color = colors[i % len(colors)]
      steps, values = alignment_curves(records, layer, metric)
      ax.plot(steps, values, color=color, label=f"{run} {metric.replace('_angle', '')}")
      top = max([top, *values])
      if delta and metric != "delta_angle":
        steps, values = alignment_curves(records, layer, "delta_angle")
        ax.plot(steps, values, color=color, ls="--", lw=1, label=f"{run} delta")
        top = max([top, *values])
    _finish_axes(ax, top)
  return _save(plt, fig, axes, path, title)
