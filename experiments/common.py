"""The paper's results table as data: its rows (config variants), its numbers, and BioTorch's.

Experiment configs (`experiments/*.py`) turn a row name into trainer settings with
`apply_variant`; the report (`launch/report.py`) puts our errors next to `PAPER` and `BIOTORCH`.
Numbers are top-1 error in percent, from paper.md.
"""

from __future__ import annotations

import ml_collections

# Row name -> (label in the paper's table, trainer settings).
ROWS: dict[str, tuple[str, dict]] = {
  "bp": ("BP", {"rule": "bp"}),
  "bp_noise": ("BP + Noise", {"rule": "bp_noise", "rule_options": {"sigma": 1.0}}),
  "bp_align": ("BP + Alignment", {"rule": "kp"}),
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
  "bp_wm": ("Weight Mirror", {"rule": "wm"}),
  "bp_sa": ("Symmetric Alignment", {"rule": "sa"}),
  "bp_aa": ("Activation Alignment", {"rule": "aa"}),
  "bp_ia": ("Information Alignment", {"rule": "ia"}),
}
# The learned-feedback rows, added to every experiment config's sweep.
LEARNED_ROWS = ("bp_wm", "bp_sa", "bp_aa", "bp_ia")

PAPER_ROWS = list(ROWS)[:12]
# Kolen-Pollack only aligns B with W through weight decay; rows that leave it at 0 get this.
KP_WEIGHT_DECAY = 5e-4

# Column -> row -> the paper's top-1 error (%). The three Const. rows are printed under ImageNet
# arch 1 in the summary, but their size says they belong to arch 2 (see paper.md): kept there.
PAPER = {
  "mnist": dict(
    bp=0.8, bp_noise=0.8, bp_align=0.9, fa=1.1, usf_init_ei=0.9, usf_init=0.7, usf_sn=0.7,
    dfa=1.0, densefa=0.7,
  ),
  "cifar10_arch1": dict(
    bp=17.2, bp_noise=17.4, bp_align=17.4, fa=26.6, usf_init_ei=18.9, usf_init=17.6, usf_sn=17.7,
    dfa=28.6, densefa=16.9,
  ),
  "cifar10_arch2": dict(
    bp=11.0, bp_noise=11.0, bp_align=11.2, fa=35.6, usf_init_ei=17.8, usf_init=13.1, usf_sn=12.6
  ),
  "imagenet_arch1": dict(
    bp=79.5, bp_noise=79.2, bp_align=79.4, fa=95.2, usf_init_ei=86.9, usf_init=79.6, usf_sn=78.9
  ),
  "imagenet_arch2": dict(
    bp=45.5, bp_noise=46.0, bp_align=45.9, fa=94.5, usf_init_ei=67.8, usf_init=60.1, usf_sn=54.4,
    bp_const=46.9, usf_const=51.2, usf_const_ei=66.1,
  ),
}  # fmt: skip

# BioTorch (Sanfiz & Akrout 2021), top-1 error (%). Their uSF uses the std scale.
BIOTORCH = {
  "resnet18": dict(bp=30.4, usf_std=35.0, frsf=36.5, brsf=37.2, dfa=82.5, fa=85.3),
  "resnet20": dict(bp=8.6, usf_std=10.1, brsf=11.0, frsf=11.2, fa=32.2, dfa=45.9),
}


def label(row: str) -> str:
  """The table label of a row name, e.g. 'usf_sn' -> 'FA-uSF SN'."""
  return ROWS[row][0]


def apply_variant(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets the rule, rule options and constraints of table row `row` on `config` (in place)."""
  if row not in ROWS:
    raise ValueError(f"Unknown table row {row!r}; valid rows are: {', '.join(ROWS)}.")
  settings = ROWS[row][1]
  config.rule = settings["rule"]
  config.rule_options = ml_collections.ConfigDict(settings.get("rule_options", {}))
  config.constraints = settings.get("constraints", "")
  if settings["rule"] == "kp" and not config.weight_decay:
    config.weight_decay = KP_WEIGHT_DECAY
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


def experiment_config(arg, settings: dict, *, runlocal_size: int, runlocal_channels: int = 3):
  """The trainer config of one experiment row.

  Args:
    arg: the config argument, 'row[,modifier...]' (see `parse_arg`).
    settings: trainer fields that differ from `fajax.train.default_config()`.
    runlocal_size, runlocal_channels: the embedded digits' shape for the 'runlocal' modifier.
  """
  from fajax.train import default_config  # Lazy: fajax.table is imported by the report too.

  row, modifiers = parse_arg(arg)
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
