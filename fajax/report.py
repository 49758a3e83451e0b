"""The report: runs' final errors in the paper's table layout, with error and alignment plots.

Reads run directories written by `launch/sweep.py` (each has `experiment.json`: column, row, seed)
and the trainer (`metrics.jsonl`). `launch/report.py` is the command-line front end.
"""

from __future__ import annotations

import collections
import json

import numpy as np

from fajax import table
from fajax.train import paths as paths_lib

EXPERIMENT_FILE = "experiment.json"
METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str) -> list[dict]:
  """The records of `<run_dir>/metrics.jsonl` (an empty list if there are none)."""
  path = paths_lib.join(run_dir, METRICS_FILE)
  if not paths_lib.exists(path):
    return []
  with paths_lib.open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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


def _cell(values: list[float]) -> str:
  if not values:
    return "not run"
  if len(values) == 1:
    return f"{values[0]:.1f}"
  return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} (n={len(values)})"


def markdown_table(runs: list[dict]) -> str:
  """Our error (mean ± std over seeds) per row and column, next to the paper's and BioTorch's."""
  errors = collections.defaultdict(list)
  for run in runs:
    errors[(run["row"], run["column"])].append(run["error"])
  columns = sorted({run["column"] for run in runs})
  datasets = {
    c: ", ".join(sorted({run.get("dataset", "?") for run in runs if run["column"] == c}))
    for c in columns
  }
  rows = [r for r in table.ROWS if any((r, c) in errors for c in columns)]
  header = (
    "| method | " + " | ".join(f"{c}: ours on {datasets[c]} | {c}: paper " for c in columns) + "|"
  )
  lines = [header, "|---|" + "---|---|" * len(columns)]
  for row in rows:
    cells = []
    for column in columns:
      reference = table.PAPER.get(column, {}).get(row)
      if reference is None:
        reference = table.BIOTORCH.get(column, {}).get(row)
        reference = "-" if reference is None else f"{reference} (BioTorch)"
      cells.append(f"{_cell(errors.get((row, column), []))} | {reference}")
    lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\nTop-1 error, %. Ours: mean ± std over seeds where n > 1.\n"


def _curve(records, split):
  points = sorted(
    (r["step"], 100 * r["top1_error"])
    for r in records
    if r.get("split") == split and "top1_error" in r
  )
  return [p[0] for p in points], [p[1] for p in points]


def plot_error_curves(runs: list[dict], path: str) -> str:
  """Test top-1 error against step, one line per run, one panel per column (matplotlib PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = sorted({run["column"] for run in runs})
  fig, axes = plt.subplots(1, len(columns), figsize=(7 * len(columns), 4.5), squeeze=False)
  for ax, column in zip(axes[0], columns, strict=True):
    ordered = sorted(
      (r for r in runs if r["column"] == column), key=lambda r: list(table.ROWS).index(r["row"])
    )
    for i, run in enumerate(ordered):
      color = f"C{i % 10}"
      label = f"{table.label(run['row'])} (seed {run['seed']})"
      ax.plot(*_curve(run["records"], "test"), color=color, marker="o", label=label)
    ax.set_title(column)
    ax.set_xlabel("step")
    ax.set_ylabel("test top-1 error (%)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  with paths_lib.open(path, "wb") as f:  # A local file or a gs:// object alike.
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)
  return path


def write_report(paths, out_dir: str) -> str:
  """Writes report.md, errors.png and (where diagnostics were logged) alignment.png to out_dir.

  Returns the markdown table.
  """
  runs = find_runs(paths)
  if not runs:
    raise FileNotFoundError(
      f"No finished runs (experiment.json with test metrics) under {list(paths)}; "
      "run launch/sweep.py first or point the report at its workdir."
    )
  paths_lib.makedirs(out_dir)
  text = markdown_table(runs)
  body = "# Results\n\n" + text + "\n![test error](errors.png)\n"
  plot_error_curves(runs, paths_lib.join(out_dir, "errors.png"))
  with_alignment = {
    f"{run['column']}/{run['row']}/seed{run['seed']}": run["records"]
    for run in runs
    if any(k.startswith("align/") for r in run["records"] for k in r)
  }
  if with_alignment:
    from fajax import plotting

    plotting.plot_alignment_runs(with_alignment, paths_lib.join(out_dir, "alignment.png"))
    body += "\n![alignment angles](alignment.png)\n"
  paths_lib.write_text(paths_lib.join(out_dir, "report.md"), body)
  return text
