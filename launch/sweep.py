"""Runs the sweep a config declares: every point in turn on this machine, or one command each.

  python -m launch.sweep --config=experiments/mnist_net.py --workdir=workdirs/mnist_table
  python -m launch.sweep --config=experiments/mnist_net.py:full --config.num_epochs=10 --workdir=w
  python -m launch.sweep --config=experiments/mnist_net.py --seeds=3 --workdir=workdirs/mnist3
  python -m launch.sweep --config=experiments/resnet18.py --emit_commands --workdir=gs://b/r18

Run from the repository root. A config module declares its sweep with `get_sweep(arg)` (see
experiments.common.sweep). Locally, points run one after another, each in
<workdir>/<row>-seed<k>; a finished point is skipped and an unfinished one resumes from its
checkpoint, so the command can be rerun after a crash. A finished point made with other settings
(another learning rate, say) is not reused: the sweep names the point and the values and stops,
asking for another workdir. Overrides given as --config.<field>=<value> (or
--config.rule_options.<key>=<value>) apply to every point; --seeds=N runs seeds 0..N-1 of every
point and the report shows their mean ± std (n). At the end the table is printed and written with
its plots to <workdir>/report.md. With --emit_commands nothing runs: one `python -m launch.main`
command per point is printed, for a cluster's launcher or a TPU VM script.
"""

import importlib.util
import json
import shlex
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import common
from fajax import report
from fajax.train import (
  Preempted,
  distributed,
  errors,
  paths,
  preemption,
  resume,
  train_and_evaluate,
)
from fajax.train import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file[:arg].", lock_config=False, accept_new_attributes=True
)
flags.DEFINE_string("workdir", None, "Folder holding one run directory per sweep point.")
flags.DEFINE_bool("emit_commands", False, "Print one launch.main command per point; run none.")
flags.DEFINE_bool("report", True, "Print and write the table when the sweep is done.")
flags.DEFINE_list(
  "rows", None, "Run these rows of the config (default: the rows of its sweep, get_sweep)."
)
flags.DEFINE_integer("seeds", None, "Run seeds 0..N-1 of every point (default: the config's).")
FLAGS = flags.FLAGS
DONE_FILE = "done.json"


def _load_module(path):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("get_config", "get_sweep", "COLUMN"):
    if not hasattr(module, name):
      raise errors.UserError(
        f"{path} declares no sweep: it needs get_config, get_sweep and COLUMN."
      )
  return module


def _override_flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in sorted(overrides.items())]


def _settings_changed(run_dir: str, config) -> str | None:
  """'' when a finished point was made with `config` (up to fields that may change on resume),
  None when only its length differs (it resumes), else the differing values."""
  try:
    saved = json.loads(paths.read_text(paths.join(run_dir, "config.json")))
  except (OSError, ValueError):
    return ""  # No record of its settings (an older sweep): trust the name.
  length = ("num_steps", "num_epochs")
  diffs = resume.changes(saved, config, tuple(k for k in resume.FREE if k not in length))
  if diffs and all(k in length for k, _, _ in diffs):
    return None
  return resume.describe(diffs)


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("Give --workdir: the folder where the sweep's runs go.")
  from fajax.train import metrics as metrics_lib

  metrics_lib.quiet_orbax_logging()
  if not FLAGS["verbosity"].present:  # The sweep prints its own progress; -v 0 shows INFO logs.
    logging.set_verbosity(logging.WARNING)
  spec = config_flags.get_config_filename(FLAGS["config"])
  path, _, arg = spec.partition(":")
  _, modifiers = common.parse_arg(arg)
  module = _load_module(path)
  overrides = config_flags.get_override_values(FLAGS["config"])
  points = module.get_sweep(arg)
  if "seed" in overrides:  # Each point sets its own seed; an override would mislabel them all.
    raise app.UsageError("Give --seeds=N (seeds 0..N-1 per point) instead of --config.seed.")
  if FLAGS.seeds is not None:
    points = common.with_seeds(points, FLAGS.seeds)
  if FLAGS.rows:
    unknown = sorted(set(FLAGS.rows) - set(module.ROWS))
    if unknown:
      raise app.UsageError(f"--rows {unknown} are not rows of this config; it has {module.ROWS}.")
    # A row of the config outside its default sweep (e.g. the learned-feedback rows of the main
    # job) runs with the seeds of the default sweep.
    extra = [r for r in FLAGS.rows if r not in {p["row"] for p in points}]
    seeds = sorted({p["seed"] for p in points}) or [0]
    points = [p for p in points if p["row"] in FLAGS.rows] + common.sweep(extra, seeds=seeds)
  run_dirs, other_settings = [], []
  for i, point in enumerate(points):
    name = common.point_name(point)
    run_dir = paths.join(FLAGS.workdir, name)
    run_dirs.append(run_dir)
    config_arg = ",".join([point["row"], *sorted(modifiers)])
    point_overrides = {k: v for k, v in point.items() if k != "row"}
    # Built for --emit_commands too: a refused argument (e.g. 'full' where the config has no
    # full-size variant) stops here rather than in every emitted command.
    config = module.get_config(config_arg)
    if FLAGS.emit_commands:
      command = [
        "python",
        "-m",
        "launch.main",
        f"--config={path}:{config_arg}",
        f"--workdir={run_dir}",
      ]
      command += _override_flags({**point_overrides, **overrides})
      print(shlex.join(command))
      continue
    config_lib.apply_overrides(config, {**point_overrides, **overrides})
    if paths.exists(paths.join(run_dir, DONE_FILE)):
      diffs = _settings_changed(run_dir, config)
      if diffs:
        print(f"[{i + 1}/{len(points)}] {name}: made with other settings ({diffs}), not reused")
        other_settings.append(name)
        continue
      if diffs is not None:  # None: only the length changed; resume and train on.
        print(f"[{i + 1}/{len(points)}] {name}: done, skipped")
        continue
    print(f"[{i + 1}/{len(points)}] {name}: {common.label(point['row'])}", flush=True)
    if config.distributed:  # Before the first file is written: only process 0 writes them.
      distributed.initialize()
    primary = jax.process_index() == 0
    meta = {
      "column": module.COLUMN,
      "row": point["row"],
      "seed": config.seed,
      "dataset": config.dataset,
      "config": f"{path}:{config_arg}",
    }
    if hasattr(module, "axis"):  # The report's x axis (e.g. depth), when the sweep has one.
      meta["axis"] = list(module.axis(point))
    if primary:
      paths.makedirs(run_dir)
      paths.write_text(paths.join(run_dir, report.EXPERIMENT_FILE), json.dumps(meta, indent=2))
    try:
      train_and_evaluate(config, run_dir)
    except Preempted:  # The loop saved the step and logged where; a rerun resumes this point.
      sys.exit(preemption.EXIT_CODE)
    if primary:
      paths.write_text(paths.join(run_dir, DONE_FILE), json.dumps({"point": point}))
  if other_settings:
    raise errors.UserError(
      f"{len(other_settings)} finished points in {FLAGS.workdir} were made with other settings "
      f"({', '.join(other_settings)}); use a new --workdir for these settings, or rerun with the "
      "old ones."
    )
  if FLAGS.report and not FLAGS.emit_commands and jax.process_index() == 0:
    print(report.write_report(run_dirs, FLAGS.workdir, common.report_table(module)))
    print(f"Report with plots: {paths.join(FLAGS.workdir, 'report.md')}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(errors.one_sentence_errors(main), flags_parser=errors.parse_flags)
