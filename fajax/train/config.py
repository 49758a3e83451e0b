"""The trainer config: every field with its default (`default_config`) and checks (`validate`).

Experiment files start from `default_config()` and change what they need, so a config always has
every field and a typo on the command line (`--config.lerning_rate=...`) fails in absl before any
work. `validate` refuses bad values before anything is compiled, with one sentence naming the
field and what it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from fajax import data as data_lib
from fajax import models as models_lib
from fajax import rules as rules_lib
from fajax.train.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
CONSTRAINTS = ("ei", "const", "batch_manhattan")
DTYPES = ("float32", "bfloat16")
ON_NAN = ("stop", "skip")
WEIGHT_DECAY_ON = ("kernels", "all")
MESH_AXES = ("data", "model")


def default_config() -> ml_collections.ConfigDict:
  """All trainer fields with their defaults: a 1k-step bp run of mnist_net on mnist5k."""
  c = ml_collections.ConfigDict()

  # Data: a name from fajax.data.names(), its options (e.g. {'crop': 24}) and the tfds directory.
  c.dataset = "mnist5k"
  c.dataset_options = ml_collections.ConfigDict()
  c.data_dir = config_dict.placeholder(str)  # None: tfds' default; ignored by embedded sets.

  # Model: a name from fajax.models.names() and its keyword options.
  c.model = "mnist_net"
  c.model_options = ml_collections.ConfigDict()
  c.dtype = "float32"  # Computation dtype ('bfloat16' on TPU); parameters stay float32.

  # Learning rule: a name from fajax.rules.names(), its options (e.g. {'scale': 'sn'} for usf) and
  # per-layer overrides {module-path pattern: rule name}, e.g. {'Dense_2': 'bp'}.
  c.rule = "bp"
  c.rule_options = ml_collections.ConfigDict()
  c.overrides = ml_collections.ConfigDict()
  # Constraints on forward weights: a comma-separated string or tuple of 'ei' (weights keep their
  # initial sign), 'const' (kernels keep their initial norm), 'batch_manhattan' (sign of gradient).
  c.constraints = ""

  # Optimizer and learning rate.
  c.optimizer = "sgd"  # One of OPTIMIZERS; 'momentum'/'nesterov' use `momentum`.
  c.learning_rate = 0.1  # Peak learning rate (for the global batch).
  c.lr_schedule = "constant"  # One of LR_SCHEDULES; every schedule starts with `warmup_steps`.
  c.warmup_steps = 0  # Linear warmup from 0; 'warmup_cosine' is cosine that requires warmup.
  c.lr_boundaries = (0.5, 0.75)  # 'step' schedule: fractions of num_steps where lr is multiplied
  c.lr_decay_factor = 0.1  # ... by this factor.
  c.momentum = 0.9
  # L2 weight decay, added to the gradient (optax.add_decayed_weights; adamw: decoupled) of the
  # kernels only, or of all parameters (biases, batch-norm scales) with weight_decay_on='all'.
  c.weight_decay = 0.0
  c.weight_decay_on = "kernels"
  # B's optimizer under learned-feedback rules (wm, sa, aa, ia, learned): one of OPTIMIZERS (None:
  # `optimizer`) at this peak learning rate (None: `learning_rate`) on the same schedule.
  c.feedback_optimizer = config_dict.placeholder(str)
  c.feedback_learning_rate = config_dict.placeholder(float)
  # The mirror phase (fajax/train/mirror.py): this many B-only SGD steps on noise at init, before
  # step 0, for rules that need no data (wm, sa, learned with noise_std); step k's rate is
  # feedback_mirror_learning_rate / (k + 1), which makes wm's B the mean of the steps' estimates.
  c.feedback_mirror_steps = 0
  c.feedback_mirror_learning_rate = 1.0

  # Length and batch: set exactly one of num_steps and num_epochs (the other None).
  c.batch_size = 128  # Global batch, over all devices and processes.
  # Fields that may be None are untyped so that `--config.num_epochs=None` parses (validate checks).
  c.eval_batch_size = _optional(None)  # None: batch_size.
  c.num_steps = _optional(1000)
  c.num_epochs = _optional(None)  # steps = ceil(epochs * num_train / batch_size).

  # Intervals, in steps (0: only at the end of training; diagnostics: 0 is off).
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 3  # The newest K checkpoints are kept.
  c.checkpoint_async = True  # Save in a background thread while training continues.
  c.diagnostics_every = 0  # Alignment angles against true backprop (fajax.diagnostics).
  c.progress_bar = True  # tqdm bar with ETA when stderr is a terminal.
  # Trace this many steps, from the second step a run takes (after the compiling first), with
  # jax.profiler into <workdir>/profile/ (TensorBoard's profile plugin, Perfetto); 0: off.
  c.profile_steps = 0

  c.seed = 0  # Parameters, feedback, dropout, per-step feedback and data order.

  # Devices: mesh axis sizes; -1 takes all remaining devices. The batch is split over 'data';
  # parameters are replicated, except that with model > 1 kernels whose last axis divides by it
  # are split over 'model'. A mesh smaller than the device count uses the first devices.
  c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1})
  c.distributed = False  # True: jax.distributed.initialize() (multi-host pods and clusters).
  # CPU only: fajax's XLA:CPU compiler options on every jit the trainer compiles (YNNPACK for
  # matmuls and reductions, see fajax/compile.py; conv nets 1.1-1.4x faster). False: XLA's defaults.
  c.fast_cpu = True

  # Failure handling: 'stop' raises NonFiniteLossError at a non-finite loss (keeping the last good
  # checkpoint); 'skip' drops that update, counts it (metric skipped_steps) and continues.
  c.on_nan = "stop"
  # 'skip': stop (like 'stop') after this many non-finite steps in a row; 0: never stop.
  c.max_consecutive_skips = 10
  # Refuse to start when the feedback collection needs more than this many GiB (None: no check);
  # uses fajax.models.stats.check_feedback_budget (dfa/densefa feedback grows with activations).
  c.feedback_memory_budget_gb = _optional(None)
  return c


def _optional(value) -> config_dict.FieldReference:
  return config_dict.FieldReference(value, field_type=object)


def apply_overrides(config: ml_collections.ConfigDict, flat: Mapping[str, Any]) -> None:
  """Sets dotted keys {'rule_options.scale': 'sn', 'num_epochs': None}, adding keys to option dicts
  (what `--config.<key>=<value>` does in the launchers, for the sweep's per-point configs)."""
  with config.unlocked():
    for key, value in flat.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value


def _fail(field: str, value: Any, valid: str):
  raise UserError(f"config.{field} = {value!r} is not valid; {valid}.")


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_constraints(value) -> tuple[str, ...]:
  """'ei, const' or ('ei', 'const') -> ('ei', 'const'); '' or None -> ()."""
  if value is None:
    return ()
  if isinstance(value, str):
    items = [v.strip() for v in value.split(",")]
  else:
    items = [str(v).strip() for v in value]
  return tuple(v for v in items if v)


def _check_int(c, field, minimum, allow_none=False):
  value = c[field]
  if value is None and allow_none:
    return
  if not _is_int(value) or value < minimum:
    _fail(field, value, f"use an integer >= {minimum}" + (" or None" if allow_none else ""))


def _check_choice(c, field, choices):
  if c[field] not in choices:
    _fail(field, c[field], f"choose one of {', '.join(map(repr, choices))}")


def _check_options(c, field):
  if not isinstance(c[field], Mapping | ml_collections.ConfigDict):
    _fail(field, c[field], "use a dict of keyword options, e.g. {}")


def validate(
  config: ml_collections.ConfigDict, *, check_dataset: bool = True, check_model: bool = True
) -> None:
  """Raises UserError (a ValueError) naming the first invalid field and its valid values.

  Checks the fields themselves and the names against the registries: rules always, datasets and
  models unless `check_dataset` / `check_model` is False (a dataset or model injected into the
  trainer). Checks that need the devices (batch vs mesh) are done by `fajax.train.mesh` and
  `fajax.train.build`, still before any compilation.
  """
  _check_fields(config)
  _check_rule(config)
  if check_dataset:
    _check_dataset(config)
  if check_model:
    _check_choice(config, "model", tuple(models_lib.names()))
  _check_constraints(config)
  _check_optimizer(config)
  _check_length(config)
  _check_intervals(config)
  _check_mesh(config)
  _check_budget(config)


def _check_fields(c) -> None:
  """Exactly the fields of default_config(): no unknown one (a typo), none missing."""
  known = set(default_config().keys())
  unknown = sorted(set(c.keys()) - known)
  if unknown:
    _fail(unknown[0], c[unknown[0]], f"it is not a trainer field; valid fields are {sorted(known)}")
  missing = sorted(known - set(c.keys()))
  if missing:
    raise UserError(
      f"config.{missing[0]} is missing; build configs from fajax.train.default_config()."
    )


def _check_rule(c) -> None:
  """The rule's name, the option dicts, and the rule's options and overrides (rules.get)."""
  _check_choice(c, "rule", tuple(rules_lib.names()))
  for field in ("rule_options", "model_options", "dataset_options", "overrides", "mesh"):
    _check_options(c, field)
  try:
    rule = rules_lib.get(c.rule, **dict(c.rule_options), overrides=dict(c.overrides))
  except ValueError as e:
    raise UserError(f"config.rule_options / config.overrides are not valid: {e}") from None
  if _is_int(c.feedback_mirror_steps) and c.feedback_mirror_steps > 0:
    from fajax.train import mirror  # Lazy: it imports the layers.

    if not mirror.has_mirror_phase(rule):
      with_data = mirror.needs_data(rule)
      why = (
        f"{', '.join(map(repr, with_data))} learns B from data"
        if with_data
        else f"rule {c.rule!r} learns no B"
      )
      _fail(
        "feedback_mirror_steps",
        c.feedback_mirror_steps,
        f"{why} (overrides included), so it has no mirror phase; use 0 (or the rule wm or sa)",
      )


def _check_dataset(c) -> None:
  """The dataset's name and options against the registry (fajax.data)."""
  _check_choice(c, "dataset", tuple(data_lib.names()))
  try:
    data_lib.info(c.dataset, **dict(c.dataset_options))
  except ValueError as e:
    raise UserError(f"config.dataset_options are not valid: {e}") from None


def _check_constraints(c) -> None:
  for item in parse_constraints(c.constraints):
    if item not in CONSTRAINTS:
      valid = f"use a comma-separated subset of {', '.join(CONSTRAINTS)}"
      _fail("constraints", c.constraints, valid)


def _check_optimizer(c) -> None:
  """The optimizers, the learning rates and their schedule, weight decay, dtype and NaN policy."""
  _check_choice(c, "optimizer", OPTIMIZERS)
  _check_choice(c, "lr_schedule", LR_SCHEDULES)
  _check_choice(c, "dtype", DTYPES)
  _check_choice(c, "on_nan", ON_NAN)
  _check_choice(c, "weight_decay_on", WEIGHT_DECAY_ON)
  if not _is_number(c.learning_rate) or c.learning_rate < 0:
    _fail("learning_rate", c.learning_rate, "use a finite number >= 0")
  if not _is_number(c.momentum) or not 0 <= c.momentum < 1:
    _fail("momentum", c.momentum, "use a number in [0, 1)")
  if c.feedback_optimizer is not None:
    _check_choice(c, "feedback_optimizer", OPTIMIZERS)
  lr_b = c.feedback_learning_rate
  if lr_b is not None and (not _is_number(lr_b) or lr_b < 0):
    _fail("feedback_learning_rate", lr_b, "use a finite number >= 0 or None")
  if not _is_number(c.weight_decay) or c.weight_decay < 0:
    _fail("weight_decay", c.weight_decay, "use a finite number >= 0")
  if not _is_number(c.lr_decay_factor) or c.lr_decay_factor < 0:
    _fail("lr_decay_factor", c.lr_decay_factor, "use a finite number >= 0")
  bounds = c.lr_boundaries
  if not isinstance(bounds, tuple | list) or not all(_is_number(b) and 0 < b < 1 for b in bounds):
    _fail("lr_boundaries", bounds, "use a tuple of fractions of num_steps in (0, 1)")
  _check_int(c, "warmup_steps", 0)
  _check_int(c, "feedback_mirror_steps", 0)
  lr_m = c.feedback_mirror_learning_rate
  if not _is_number(lr_m) or lr_m <= 0:
    _fail("feedback_mirror_learning_rate", lr_m, "use a finite number > 0")
  if c.lr_schedule == "warmup_cosine" and c.warmup_steps == 0:
    _fail("warmup_steps", 0, "'warmup_cosine' needs warmup_steps >= 1 (or use 'cosine')")


def _check_length(c) -> None:
  """The batch sizes, and exactly one of num_steps and num_epochs (longer than the warmup)."""
  _check_int(c, "batch_size", 1)
  _check_int(c, "eval_batch_size", 1, allow_none=True)
  if (c.num_steps is None) == (c.num_epochs is None):
    _fail(
      "num_steps",
      c.num_steps,
      f"set exactly one of num_steps and num_epochs (num_epochs = {c.num_epochs!r}), "
      "the other to None",
    )
  _check_int(c, "num_steps", 1, allow_none=True)
  if c.num_epochs is not None and (not _is_number(c.num_epochs) or c.num_epochs <= 0):
    _fail("num_epochs", c.num_epochs, "use a number > 0 or None")
  if c.num_steps is not None and c.warmup_steps >= c.num_steps:
    _fail("warmup_steps", c.warmup_steps, f"use fewer than num_steps = {c.num_steps}")


def _check_intervals(c) -> None:
  """The intervals, counts, seed and on/off switches."""
  for field in ("log_every", "eval_every", "checkpoint_every", "diagnostics_every"):
    _check_int(c, field, 0)
  _check_int(c, "keep_checkpoints", 1)
  _check_int(c, "max_consecutive_skips", 0)
  _check_int(c, "profile_steps", 0)
  _check_int(c, "seed", 0)
  for field in ("checkpoint_async", "distributed", "progress_bar", "fast_cpu"):
    if not isinstance(c[field], bool):
      _fail(field, c[field], "use True or False")


def _check_mesh(c) -> None:
  mesh = dict(c.mesh)
  if not mesh or set(mesh) - set(MESH_AXES):
    _fail("mesh", mesh, f"use a dict with axes from {MESH_AXES}, e.g. {{'data': -1, 'model': 1}}")
  sizes = list(mesh.values())
  if not all(_is_int(s) and (s >= 1 or s == -1) for s in sizes) or sizes.count(-1) > 1:
    _fail("mesh", mesh, "use positive axis sizes and at most one -1 (all remaining devices)")


def _check_budget(c) -> None:
  budget = c.feedback_memory_budget_gb
  if budget is not None and (not _is_number(budget) or budget <= 0):
    _fail("feedback_memory_budget_gb", budget, "use a number of GiB > 0 or None")


def num_steps(config, num_train: int) -> int:
  """config.num_steps, or num_epochs converted with the training-set size (rounded up)."""
  if config.num_steps is not None:
    return int(config.num_steps)
  return max(1, math.ceil(config.num_epochs * num_train / config.batch_size))
