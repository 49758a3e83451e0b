"""The report: runs' final errors in a results table, with error and alignment plots.

Reads run directories written by `launch/sweep.py` (each has `experiment.json`: column, row, seed)
and the trainer (`metrics.jsonl`). The rows' labels and order and the numbers shown beside ours
come from the caller as a `Table` (the experiment configs' `experiments.common.report_table`): the
library knows no paper. `launch/report.py` is the command-line front end.
"""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np

from fajax.train import metrics as metrics_lib
from fajax.train import paths as paths_lib
from fajax.train.metrics import METRICS_FILE  # noqa: F401 (the run files this module reads)

EXPERIMENT_FILE = "experiment.json"


@dataclasses.dataclass(frozen=True)
class Table:
  """What the report shows besides our errors.

  labels: row name -> its label, in table order (rows not in it follow, by name, as named).
  references: column -> row -> the reference cell's text (e.g. '0.8' or '8.6 (BioTorch)').
  footnote: the paragraph under the table, saying what the numbers are.
  """

  labels: dict = dataclasses.field(default_factory=dict)
  references: dict = dataclasses.field(default_factory=dict)
  footnote: str = "Top-1 test error, %. Ours: one run per seed, mean ± sample std where n > 1."

  def label(self, row: str) -> str:
    return self.labels.get(row, row)

  def order(self, rows) -> list[str]:
    """`rows` in table order."""
    known = [r for r in self.labels if r in set(rows)]
    return known + sorted(set(rows) - set(known))


def read_metrics(run_dir: str) -> list[dict]:
  """The records of `<run_dir>/metrics.jsonl` (an empty list if there are none)."""
  return metrics_lib.read_metrics(run_dir, missing_ok=True)


def read_run(run_dir: str) -> dict | None:
  """{column, row, seed, error (%), steps, records} of a finished run, None if it has no result."""
  meta_path = paths_lib.join(run_dir, EXPERIMENT_FILE)
  if not paths_lib.exists(meta_path):
    return None
  meta = json.loads(paths_lib.read_text(meta_path))
  records = read_metrics(run_dir)
  evals = [r for r in records if r.get("split") == "test" and "top1_error" in r]
  if not evals:
    return None
  final = max(evals, key=lambda r: r["step"])
  return {**meta, "error": 100.0 * final["top1_error"], "step": final["step"], "records": records}


def find_runs(paths) -> list[dict]:
  """Every finished run in `paths` (run directories, or folders holding them)."""
  runs = []
  for path in paths:
    candidates = [path] + [
      paths_lib.join(path, d)
      for d in paths_lib.listdir(path)
      if paths_lib.isdir(paths_lib.join(path, d))
    ]
    for candidate in candidates:
      run = read_run(candidate)
      if run is not None:
        run["dir"] = candidate
        runs.append(run)
  return runs


def _mean_std(values: list[float]) -> str:
  if not values:
    return "not run"
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def markdown_table(runs: list[dict], table: Table) -> str:
  """Our error (mean ± std over seeds, with n) per row and column, next to the reference numbers
  of `table` ('-' where it has none)."""
  errors = collections.defaultdict(list)
  for run in runs:
    errors[(run["row"], run["column"])].append(run["error"])
  columns = sorted({run["column"] for run in runs})
  datasets = {
    c: ", ".join(sorted({run.get("dataset", "?") for run in runs if run["column"] == c}))
    for c in columns
  }
  rows = table.order({run["row"] for run in runs})
  header = "| method | " + " | ".join(
    f"{c}: ours on {datasets[c]} | n | {c}: reference" for c in columns
  )
  lines = [header + " |", "|---|" + "---|---:|---|" * len(columns)]
  for row in rows:
    cells = []
    for column in columns:
      reference = table.references.get(column, {}).get(row, "-")
      ours = errors.get((row, column), [])
      cells.append(f"{_mean_std(ours)} | {len(ours)} | {reference}")
    lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\n" + table.footnote + "\n"


def _curve(records, split):
  points = sorted(
    (r["step"], 100 * r["top1_error"])
    for r in records
    if r.get("split") == split and "top1_error" in r
  )
  return [p[0] for p in points], [p[1] for p in points]


def by_row(runs: list[dict], table: Table, column: str | None = None) -> dict[str, list[dict]]:
  """{row: [its runs, one per seed]} in the table's row order (of one column, or all)."""
  grouped = collections.defaultdict(list)
  for run in runs:
    if column is None or run["column"] == column:
      grouped[run["row"]].append(run)
  return {row: grouped[row] for row in table.order(grouped)}


def row_colors(runs: list[dict], table: Table) -> dict[str, str]:
  """One colour per table row, fixed by the row's place in the table (same in every figure)."""
  from fajax import plotting

  return plotting.color_map(list(by_row(runs, table)), order=list(table.labels))


def plot_error_curves(runs: list[dict], path: str, table: Table, colors=None) -> str:
  """Test top-1 error against step: a panel per column, a line per row (mean over seeds, ±1 std
  band), the row colours of `row_colors`."""
  from fajax import plotting

  colors = colors or row_colors(runs, table)
  columns = sorted({run["column"] for run in runs})
  plt, fig, axes = plotting.new_figure(1, len(columns), width=5.5, height=4.0)
  for ax, column in zip(axes[0], columns, strict=True):
    for row, seeds in by_row(runs, table, column).items():
      curves = [_curve(run["records"], "test") for run in seeds]
      label = table.label(row) + (f" (n={len(seeds)})" if len(seeds) > 1 else "")
      plotting.draw_curve(ax, curves, colors[row], label)
    ax.set_title(column, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("test top-1 error (%)")
    ax.grid(alpha=0.3)
  return plotting.save_figure(plt, fig, path, None)


def plot_alignment(runs: list[dict], path: str, table: Table, colors=None) -> str | None:
  """Update and delta angles per layer, a line per row (mean over seeds), for the runs that
  logged diagnostics; None when none did. Several columns: the first one with diagnostics."""
  from fajax import plotting

  logged = [r for r in runs if any(k.startswith("align/") for x in r["records"] for k in x)]
  if not logged:
    return None
  column = sorted({r["column"] for r in logged})[0]
  grouped = by_row(logged, table, column)
  return plotting.plot_alignment_runs(
    {row: [run["records"] for run in seeds] for row, seeds in grouped.items()},
    path,
    title=f"{column}: alignment with backprop (mean over seeds, band ±1 std)",
    colors=colors or row_colors(runs, table),
    labels={row: table.label(row) for row in grouped},
  )


def axis_table(runs: list[dict], table: Table) -> str:
  """Final test error per row (lines) and value of the sweep's axis (columns, e.g. depth):
  mean ± sample std over seeds, with n."""
  label = runs[0]["axis"][0]
  values = sorted({run["axis"][1] for run in runs})
  errors = collections.defaultdict(list)
  for run in runs:
    errors[(run["row"], run["axis"][1])].append(run["error"])
  rows = table.order({run["row"] for run in runs})
  lines = [
    "| method | " + " | ".join(f"{label} {v}" for v in values) + " |",
    "|---|" + "---|" * len(values),
  ]
  for row in rows:
    cells = []
    for v in values:
      ours = errors.get((row, v), [])
      cells.append(_mean_std(ours) + (f" (n={len(ours)})" if len(ours) > 1 else ""))
    lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
  datasets = ", ".join(sorted({run.get("dataset", "?") for run in runs}))
  note = f"Top-1 test error, % on {datasets}; mean ± sample std over n seeds where n > 1."
  return "\n".join(lines) + "\n\n" + note + "\n"


def plot_axis(runs: list[dict], path: str, table: Table, colors=None) -> str:
  """Final test error against the sweep's axis (e.g. depth, log2 scale): a line per row, mean
  over seeds with ±1 std error bars, the row colours of `row_colors`."""
  from fajax import plotting

  colors = colors or row_colors(runs, table)
  label = runs[0]["axis"][0]
  plt, fig, axes = plotting.new_figure(1, 1, width=5.5, height=4.0)
  ax = axes[0][0]
  for row, seeds in by_row(runs, table).items():
    by_value = collections.defaultdict(list)
    for run in seeds:
      by_value[run["axis"][1]].append(run["error"])
    values = sorted(by_value)
    n = max(len(v) for v in by_value.values())
    curves = [(values, [by_value[v][k] for v in values]) for k in range(n)]
    if any(len(by_value[v]) != n for v in values):  # unequal seeds: plain means, no bars
      curves = [(values, [float(np.mean(by_value[v])) for v in values])]
    plotting.draw_curve(ax, curves, colors[row], table.label(row))
  values = sorted({run["axis"][1] for run in runs})
  ax.set_xscale("log", base=2)
  ax.set_xticks(values, [str(v) for v in values])
  ax.set_xlabel(label)
  ax.set_ylabel("test top-1 error (%)")
  ax.grid(alpha=0.3)
  return plotting.save_figure(plt, fig, path, f"test error vs {label}")


def write_report(paths, out_dir: str, table: Table | None = None) -> str:
  """Writes report.md, errors.png and (where diagnostics were logged) alignment.png to out_dir;
  for a sweep along an axis (experiment.json has `axis`, e.g. depth): report.md and <axis>.png.
  `table`: the rows' labels and order and the reference numbers (default: row names, none).

  Returns the markdown table.
  """
  runs = find_runs(paths)
  if not runs:
    raise FileNotFoundError(
      f"No finished runs (experiment.json with test metrics) under {list(paths)}; "
      "run `python -m launch.sweep` first or point the report at its workdir."
    )
  paths_lib.makedirs(out_dir)
  table = table or Table()
  colors = row_colors(runs, table)
  if any("axis" in run for run in runs):  # A sweep along an axis (depth): error vs the axis.
    runs = [run for run in runs if "axis" in run]
    text = axis_table(runs, table)
    name = f"{runs[0]['axis'][0]}.png"
    plot_axis(runs, paths_lib.join(out_dir, name), table, colors)
    body = f"# Results\n\n{text}\n![test error vs {name[:-4]}]({name})\n"
    paths_lib.write_text(paths_lib.join(out_dir, "report.md"), body)
    return text
  text = markdown_table(runs, table)
  body = "# Results\n\n" + text + "\n![test error](errors.png)\n"
  plot_error_curves(runs, paths_lib.join(out_dir, "errors.png"), table, colors)
  if plot_alignment(runs, paths_lib.join(out_dir, "alignment.png"), table, colors):
    body += "\n![alignment angles](alignment.png)\n"
  paths_lib.write_text(paths_lib.join(out_dir, "report.md"), body)
  return text
