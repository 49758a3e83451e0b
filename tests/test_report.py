"""The report: its table (seeds, references) and its figures (one line per rule, fixed colours)."""

import json

import pytest

from experiments import common
from fajax import plotting, report

TABLE = common.report_table()  # the experiment configs' labels, row order and numbers

LAYERS = ("conv1", "fc1", "head")


def _records(row: str, seed: int) -> list[dict]:
  """metrics.jsonl records of a finished run: alignment every 10 steps, a test error at the end.

  bp's angles are 0 by definition; the others fall from 90 degrees (the output layer: 0, exact).
  """
  records = []
  for step in (10, 20, 30):
    record = {"step": step, "split": "train", "loss": 1.0}
    for layer in LAYERS:
      for metric in ("update_angle", "delta_angle", "wb_angle"):
        value = 0.0 if row == "bp" or layer == "head" else 90.0 - step - seed
        record[f"align/{layer}/{metric}"] = value
    records.append(record)
  error = {"bp": 0.02, "fa": 0.05, "usf_sn": 0.03}[row] + 0.01 * seed
  records.append({"step": 30, "split": "test", "top1_error": error, "loss": 0.1})
  return records


def _write_runs(root, seeds):
  for row, count in seeds.items():
    for seed in range(count):
      run = root / f"{row}-seed{seed}"
      run.mkdir(parents=True)
      meta = {"column": "mnist", "row": row, "seed": seed, "dataset": "mnist5k"}
      (run / report.EXPERIMENT_FILE).write_text(json.dumps(meta))
      lines = [json.dumps(r) for r in _records(row, seed)]
      (run / report.METRICS_FILE).write_text("\n".join(lines) + "\n")


@pytest.fixture
def drawn(monkeypatch):
  """{png name: [data-line labels of each panel]} of every figure saved while the test runs."""
  figures = {}
  save = plotting.save_figure

  def spy(plt, fig, path, *args, **kwargs):
    figures[str(path).rsplit("/", 1)[-1]] = [plotting.curve_labels(ax) for ax in fig.axes]
    colors = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
    figures[str(path).rsplit("/", 1)[-1] + ":colors"] = colors
    return save(plt, fig, path, *args, **kwargs)

  monkeypatch.setattr(plotting, "save_figure", spy)
  return figures


def test_report_table_has_seed_counts_means_and_reference_footnote(tmp_path, drawn):
  _write_runs(tmp_path, {"bp": 1, "fa": 3, "usf_sn": 2})
  text = report.write_report([tmp_path], tmp_path / "out", TABLE)
  assert "| BP | 2.0 | 1 | 0.8 |" in text
  # fa: errors 5, 6, 7 -> mean 6.0, sample std 1.0, n = 3, the paper's 1.1 beside it.
  assert "| FA | 6.0 ± 1.0 | 3 | 1.1 |" in text
  assert "| FA-uSF SN | 3.5 ± 0.7 | 2 | 0.7 |" in text
  assert "BioTorch" in text and "paper" in text  # the footnote says whose numbers are which
  for name in ("report.md", "errors.png", "alignment.png"):
    assert (tmp_path / "out" / name).read_bytes()[:4] in (b"# Re", b"\x89PNG")


def test_the_library_report_knows_no_paper(tmp_path, drawn):
  """Without the experiments' Table: row names, no reference numbers, no source named."""
  _write_runs(tmp_path, {"bp": 1, "fa": 3})
  text = report.write_report([tmp_path], tmp_path / "out")
  assert "| bp | 2.0 | 1 | - |" in text and "| fa | 6.0 ± 1.0 | 3 | - |" in text
  assert "BioTorch" not in text and "Moskovitz" not in text
  assert text.index("| bp |") < text.index("| fa |")


def test_report_figures_draw_one_line_per_rule_in_fixed_colours(tmp_path, drawn):
  _write_runs(tmp_path, {"bp": 1, "fa": 3, "usf_sn": 2})
  report.write_report([tmp_path], tmp_path / "out", TABLE)
  # Errors: one panel (one column), one line per row; seeds are its band, not more lines.
  assert drawn["errors.png"] == [["BP", "FA (n=3)", "FA-uSF SN (n=2)"]]
  # Alignment: update and delta rows x 3 layers; bp (0 by definition) left out of every panel.
  panels = drawn["alignment.png"]
  assert len(panels) == 2 * len(LAYERS)
  assert all(labels == ["FA", "FA-uSF SN"] for labels in panels)
  # One colour per rule, the same in both figures and fixed by the row's place in the table.
  errors, alignment = drawn["errors.png:colors"], drawn["alignment.png:colors"]
  assert errors["FA (n=3)"] == alignment["FA"] == plotting.PALETTE[list(common.ROWS).index("fa")]
  assert errors["FA-uSF SN (n=2)"] == alignment["FA-uSF SN"]
  assert len({errors["BP"], errors["FA (n=3)"], errors["FA-uSF SN (n=2)"]}) == 3


def test_alignment_runs_mean_over_seeds_and_layer_subset(tmp_path, drawn):
  runs = {"fa": [_records("fa", 0), _records("fa", 2)], "bp": _records("bp", 0)}
  many = [dict(r) for r in runs["fa"][0]]
  for record in many:  # 12 layers: only 4 columns are drawn, first and last among them
    for i in range(12):
      record[f"align/Dense_{i}/update_angle"] = 45.0
  path = tmp_path / "many.png"
  plotting.plot_alignment_runs({"fa": many}, path, metrics=("update_angle",), max_layers=4)
  assert len(drawn["many.png"]) == 4
  names = plotting.layers(many)  # Dense_0 .. Dense_11, conv1, fc1, head in natural order
  assert plotting.pick_layers(names, 4) == [names[0], names[5], names[9], names[14]]
  steps, mean, std = plotting.mean_band(
    [plotting.alignment_curves(r, "fc1", "update_angle") for r in runs["fa"]]
  )
  assert steps == [10, 20, 30] and list(mean) == [79.0, 69.0, 59.0] and list(std) == [2**0.5] * 3
  plotting.plot_alignment_runs(runs, tmp_path / "two.png")
  assert drawn["two.png"] == [["fa"]] * 6  # bp left out


def test_color_map_is_stable_and_distinct():
  order = list(common.ROWS)
  a = plotting.color_map(["fa", "bp"], order=order)
  b = plotting.color_map(["usf_sn", "fa"], order=order)
  assert a["fa"] == b["fa"] and a["fa"] != a["bp"]
  assert len(set(plotting.color_map(order, order=order).values())) == len(order)
  assert plotting.color_map(["x", "y"]) == {"x": plotting.PALETTE[0], "y": plotting.PALETTE[1]}


def test_with_seeds_replaces_the_seeds_of_every_point():
  points = common.sweep(["bp", "fa"], seeds=(0,), learning_rates=(0.1, 0.01))
  seeded = common.with_seeds(points, 3)
  assert len(seeded) == 2 * 2 * 3
  assert {common.point_name(p) for p in seeded} >= {"fa-seed2-lr0.01", "bp-seed0-lr0.1"}
  assert common.with_seeds(common.with_seeds(points, 3), 2) == common.with_seeds(points, 2)
  with pytest.raises(ValueError, match="--seeds"):
    common.with_seeds(points, 0)


def test_axis_sweep_reports_error_vs_depth(tmp_path, drawn):
  """A sweep along an axis (experiment.json's `axis`, as experiments/depth.py writes it): a table
  of rows x depths and depth.png with one line per rule."""
  errors = {("bp", 2): [2.0, 4.0], ("bp", 8): [3.0, 5.0], ("fa", 2): [6.0, 8.0], ("fa", 8): [9, 13]}
  for (row, depth), values in errors.items():
    for seed, error in enumerate(values):
      run = tmp_path / f"{row}-seed{seed}-d{depth}"
      run.mkdir()
      meta = {"column": "depth", "row": row, "seed": seed, "axis": ["depth", depth]}
      (run / report.EXPERIMENT_FILE).write_text(json.dumps(meta))
      test = {"step": 9, "split": "test", "top1_error": error / 100}
      (run / report.METRICS_FILE).write_text(json.dumps(test) + "\n")
  text = report.write_report([tmp_path], tmp_path / "out", TABLE)
  assert text.splitlines()[0] == "| method | depth 2 | depth 8 |"
  assert "| BP | 3.0 ± 1.4 (n=2) | 4.0 ± 1.4 (n=2) |" in text
  assert "| FA | 7.0 ± 1.4 (n=2) | 11.0 ± 2.8 (n=2) |" in text
  assert drawn["depth.png"] == [["BP", "FA"]]
  assert (tmp_path / "out" / "depth.png").read_bytes()[:4] == b"\x89PNG"
  assert "depth.png" in (tmp_path / "out" / "report.md").read_text()
