"""What the experiment configs share (as big_vision's configs/common.py): the table's rows, the
config helpers and the training recipes.

A row is a variant of a config: a label in the results table and the trainer settings it sets
(rule, rule options, constraints, and any other field the rule needs). Each experiment file
(`experiments/*.py`) names its rows, its settings and its own expected numbers (`REFERENCE`, from
`REFERENCE_SOURCE`); `report_table` hands the labels, the row order and those numbers to
`fajax.report`, which knows no paper.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import ml_collections

from fajax import report
from fajax.train import default_config

# Kolen-Pollack's weight decay (row bp_align): the paper's CIFAR-10 and ImageNet value.
KP_WEIGHT_DECAY = 5e-4

# Row name -> (label in the paper's table, trainer settings).
ROWS: dict[str, tuple[str, dict]] = {
  "bp": ("BP", {"rule": "bp"}),
  "bp_noise": ("BP + Noise", {"rule": "bp_noise", "rule_options": {"sigma": 1.0}}),
  # Kolen-Pollack aligns B with W only through weight decay, so its row sets it (the paper's 5e-4).
  "bp_align": ("BP + Alignment", {"rule": "kp", "weight_decay": KP_WEIGHT_DECAY}),
  "fa": ("FA", {"rule": "fa"}),
  "usf_init_ei": (
    "FA-uSF Init. E/I",
    {"rule": "usf", "rule_options": {"scale": "init"}, "constraints": "ei"},
  ),
  "usf_init": ("FA-uSF Init.", {"rule": "usf", "rule_options": {"scale": "init"}}),
  "usf_sn": ("FA-uSF SN", {"rule": "usf", "rule_options": {"scale": "sn"}}),
  "dfa": ("DFA", {"rule": "dfa"}),
  "densefa": ("DenseFA", {"rule": "densefa"}),
  "bp_const": ("BP Const.", {"rule": "bp", "constraints": "const"}),
  "usf_const": (
    "FA-uSF Const.",
    {"rule": "usf", "rule_options": {"scale": "init"}, "constraints": "const"},
  ),
  "usf_const_ei": (
    "FA-uSF Const. E/I",
    {"rule": "usf", "rule_options": {"scale": "init"}, "constraints": "const,ei"},
  ),
  # Not rows of the paper, but of BioTorch's tables.
  "usf_std": ("uSF (std scale)", {"rule": "usf", "rule_options": {"scale": "std"}}),
  "brsf": ("brSF", {"rule": "brsf"}),
  "frsf": ("frSF", {"rule": "frsf"}),
  # Learned feedback (docs/learned_feedback.md): Akrout et al. 2019, Kunin et al. 2020.
  # 300 B-only noise steps before training (Akrout et al.'s mirror phase; fajax/train/mirror.py):
  # MNIST miniature, seeds 0-2: 4.13% -> 3.63% mean test error, bp 2.80% (RESULTS.md), for 300
  # inference-mode forward passes at init.
  "bp_wm": ("Weight Mirror", {"rule": "wm", "feedback_mirror_steps": 300}),
  # B by plain SGD at 0.5 (ours, not the paper's): every step moves B half way to (beta/alpha) W in
  # every layer alike; with W's Adam, B trails a fast-moving W and the loss spikes (RESULTS.md).
  "bp_sa": (
    "Symmetric Alignment",
    {"rule": "sa", "feedback_optimizer": "sgd", "feedback_learning_rate": 0.5},
  ),
  "bp_aa": ("Activation Alignment", {"rule": "aa"}),
  "bp_ia": ("Information Alignment", {"rule": "ia"}),
}
# The learned-feedback rows, added to every experiment config's sweep.
LEARNED_ROWS = ("bp_wm", "bp_sa", "bp_aa", "bp_ia")


def label(row: str) -> str:
  """The table label of a row name, e.g. 'usf_sn' -> 'FA-uSF SN'."""
  return ROWS[row][0]


def apply_variant(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets the settings of table row `row` on `config` (in place): its rule, rule options and
  constraints (none where the row names none), and any other field the row sets."""
  if row not in ROWS:
    raise ValueError(f"Unknown table row {row!r}; valid rows are: {', '.join(ROWS)}.")
  settings = {"rule_options": {}, "constraints": "", **ROWS[row][1]}
  for key, value in settings.items():
    config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return config


MODIFIERS = ("runlocal", "full")


def parse_arg(arg: str | None, default_row: str = "bp") -> tuple[str, frozenset[str]]:
  """Splits a config argument into a table row and modifiers.

  'usf_sn,runlocal' -> ('usf_sn', {'runlocal'}); None or '' -> (default_row, {}). Modifiers:
  'runlocal' (a CPU run of seconds on embedded data) and 'full' (the full-size dataset where the
  default is a miniature).
  """
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  modifiers = frozenset(p for p in parts if p in MODIFIERS)
  rows = [p for p in parts if p not in MODIFIERS]
  if len(rows) > 1:
    raise ValueError(f"Give one table row in the config argument, got {rows}.")
  if rows and rows[0] not in ROWS:
    raise ValueError(
      f"Unknown table row {rows[0]!r}; valid rows are {', '.join(ROWS)}, "
      f"and modifiers {', '.join(MODIFIERS)}."
    )
  return (rows[0] if rows else default_row), modifiers


def runlocal(config: ml_collections.ConfigDict, image_size: int, channels: int = 3):
  """Shrinks `config` to a CPU run of seconds on the embedded MNIST digits (in place).

  The digits are resized to the model's input size and repeated over `channels`, so any model
  runs on real data offline; a smoke test, not a result.
  """
  config.dataset = "mnist5k"
  config.dataset_options = ml_collections.ConfigDict(
    {"image_size": image_size, "channels": channels}
  )
  config.data_dir = None
  config.batch_size = 16
  config.num_epochs = None
  config.num_steps = 6
  config.log_every = 2
  config.eval_every = 0
  config.checkpoint_every = 6
  config.lr_schedule = "constant"
  config.warmup_steps = 0
  return config


def sweep(rows, seeds=(0,), learning_rates=None) -> list[dict]:
  """The points of a sweep: every row x seed (x learning rate), as dicts `launch/sweep.py` runs.

  Each point has `row` (a table row name) and trainer overrides (`seed`, `learning_rate`).
  """
  for row in rows:
    if row not in ROWS:
      raise ValueError(f"Unknown table row {row!r}; valid rows are: {', '.join(ROWS)}.")
  points = []
  for row in rows:
    for seed in seeds:
      for lr in learning_rates or (None,):
        point = {"row": row, "seed": seed}
        if lr is not None:
          point["learning_rate"] = lr
        points.append(point)
  return points


def with_seeds(points: list[dict], count: int) -> list[dict]:
  """The sweep's points with seeds 0 .. count-1 each (in place of the seeds they had)."""
  if count < 1:
    raise ValueError(f"--seeds = {count} is not valid; use 1 or more.")
  bases = {}
  for point in points:
    base = {k: v for k, v in point.items() if k != "seed"}
    bases.setdefault(tuple(sorted(base.items())), base)
  return [{**base, "seed": seed} for base in bases.values() for seed in range(count)]


def point_name(point: dict) -> str:
  """A run's directory name, e.g. 'usf_sn-seed0', 'fa-seed1-lr0.01', 'bp-seed2-convs_per_stage4'
  (every override of the point but the seed, by the last part of its name)."""
  name = f"{point['row']}-seed{point['seed']}"
  for key, value in sorted(point.items()):
    if key not in ("row", "seed"):
      short = "lr" if key == "learning_rate" else key.rsplit(".", 1)[-1]
      name += f"-{short}{value:g}" if isinstance(value, float) else f"-{short}{value}"
  return name


# Shared training recipes; experiment configs start from one and change what differs.
# The miniature on the embedded MNIST digits (CPU, minutes): the main job and the depth study.
MNIST5K_RECIPE = dict(
  dataset="mnist5k",
  optimizer="adam",
  learning_rate=1e-3,
  lr_schedule="cosine",
  batch_size=64,
  num_steps=None,
  checkpoint_every=1000,
)
CIFAR10_RECIPE = dict(
  dataset="cifar10",
  optimizer="momentum",
  lr_schedule="cosine",
  weight_decay=5e-4,
  batch_size=128,
  num_steps=None,
  eval_every=4000,
  checkpoint_every=2000,
  diagnostics_every=1000,
)
IMAGENET_RECIPE = dict(
  dataset="imagenet2012",
  dataset_options={"image_size": 224},
  dtype="bfloat16",
  optimizer="momentum",
  lr_schedule="warmup_cosine",
  warmup_steps=2500,
  batch_size=512,
  num_steps=None,
  num_epochs=90.0,
  eval_every=10000,
  checkpoint_every=5000,
  diagnostics_every=5000,
  log_every=200,
)


def experiment_config(
  arg, settings: dict, *, full: dict | None = None, runlocal_size: int, runlocal_channels: int = 3
):
  """The trainer config of one experiment row.

  Args:
    arg: the config argument, 'row[,modifier...]' (see `parse_arg`).
    settings: trainer fields that differ from `fajax.train.default_config()`.
    full: what the 'full' modifier changes in `settings` (the full-size dataset); None for a config
      that has no full-size variant, which then refuses 'full'.
    runlocal_size, runlocal_channels: the embedded digits' shape for the 'runlocal' modifier.
  """
  row, modifiers = parse_arg(arg)
  if "full" in modifiers:
    if full is None:
      raise ValueError(
        f"This config has no full-size variant (it runs {settings.get('dataset', 'one dataset')} "
        "only); drop 'full' from the config argument."
      )
    settings = {**settings, **full}
  config = default_config()
  config.update_from_flattened_dict({k: v for k, v in settings.items() if not isinstance(v, dict)})
  for key, value in settings.items():
    if isinstance(value, dict):
      config[key] = ml_collections.ConfigDict(value)
  apply_variant(config, row)
  if "runlocal" in modifiers:
    runlocal(config, image_size=runlocal_size, channels=runlocal_channels)
    config.dtype = "float32"
  return config


# The sources of the expected numbers (an experiment's REFERENCE_SOURCE). The paper's are printed
# plain in the report, any other's marked with the source's name.
PAPER = "Moskovitz, Litwin-Kumar & Abbott 2018"
BIOTORCH = "BioTorch"
FOOTNOTE = (
  "Top-1 test error, %. Ours: one run per seed, mean ± sample std where n > 1 (n: seeds). "
  "Reference: the paper's number (Moskovitz, Litwin-Kumar & Abbott 2018, full datasets); "
  "marked (BioTorch) where the paper has no such row and the number is BioTorch's "
  "(Sanfiz & Akrout 2021), and with its source's name where it is another paper's; "
  "- where none reports one."
)


def experiment_modules() -> list:
  """Every experiment config module of the `experiments` package (not this one)."""
  names = sorted(m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)]))
  return [importlib.import_module(f"experiments.{name}") for name in names if name != "common"]


def report_table(*modules) -> report.Table:
  """What the report shows beside our errors: the rows' labels in table order, and each column's
  expected numbers, from the REFERENCE of the experiment modules of this folder and of `modules`
  (a config loaded from elsewhere, whose column then takes its numbers from it).

  A number's source is the module's REFERENCE_SOURCE (default: the paper), or, for a row named in
  its REFERENCE_SOURCES ({row: source}), that row's own: one column can then hold BioTorch's
  numbers for the fixed-feedback rows and, say, Akrout et al.'s for bp_wm. Numbers that are not
  the paper's are marked with their source's name."""
  references = {}
  for module in [*experiment_modules(), *modules]:
    default = getattr(module, "REFERENCE_SOURCE", PAPER)
    sources = getattr(module, "REFERENCE_SOURCES", {})
    references[module.COLUMN] = {}
    for row, value in getattr(module, "REFERENCE", {}).items():
      source = sources.get(row, default)
      references[module.COLUMN][row] = f"{value}" if source == PAPER else f"{value} ({source})"
  labels = {row: label for row, (label, _) in ROWS.items()}
  return report.Table(labels=labels, references=references, footnote=FOOTNOTE)
