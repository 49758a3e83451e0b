"""The optax chain a config asks for: constraints, weight decay, optimizer and lr schedule.

Order of the chain (each piece only when configured):
  batch_manhattan  ->  add_decayed_weights  ->  optimizer(schedule)  ->  sign / norm constraint
Batch Manhattan replaces kernel gradients by their signs before anything else sees them; the
weight decay is L2 added to the gradient (adamw decays inside the optimizer instead, decoupled);
the constraints project the final update, so they come last.
"""

from __future__ import annotations

import jax
import optax

from fajax import constraints as constraints_lib
from fajax.train.config import parse_constraints


def make_schedule(config, num_steps: int, learning_rate=None, warmup=None) -> optax.Schedule:
  """The learning rate at each step: linear warmup, then constant, cosine or step decay.

  `learning_rate` and `warmup` replace config.learning_rate (the peak) and config.warmup_steps
  (B's optimizer uses them).
  """
  lr = float(config.learning_rate if learning_rate is None else learning_rate)
  warmup = int(config.warmup_steps if warmup is None else warmup)
  rest = max(num_steps - warmup, 1)
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.lr_schedule in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(lr, rest)
  elif config.lr_schedule == "step":
    boundaries = {
      max(int(round(b * num_steps)) - warmup, 1): float(config.lr_decay_factor)
      for b in config.lr_boundaries
    }
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"config.lr_schedule = {config.lr_schedule!r} is not valid.")
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(config, params):
  """Which parameters weight decay touches: kernels, or every parameter ('all')."""
  if config.weight_decay_on == "all":
    return jax.tree.map(lambda _: True, params)
  return constraints_lib.kernel_mask(params)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The full optax chain for `config` (see the module docstring for the order)."""
  chosen = parse_constraints(config.constraints)
  wd = float(config.weight_decay)
  mask = lambda params: decay_mask(config, params)
  parts = []
  if "batch_manhattan" in chosen:
    parts.append(constraints_lib.batch_manhattan())
  if wd > 0 and config.optimizer != "adamw":
    parts.append(optax.add_decayed_weights(wd, mask=mask))
  parts.append(_optimizer(config, config.optimizer, schedule, wd, mask))
  if "ei" in chosen:
    parts.append(constraints_lib.sign_constraint())
  if "const" in chosen:
    parts.append(constraints_lib.norm_constraint())
  return optax.chain(*parts)


def _optimizer(config, name, schedule, wd=0.0, mask=None) -> optax.GradientTransformation:
  if name == "sgd":
    return optax.sgd(schedule)
  if name == "momentum":
    return optax.sgd(schedule, momentum=config.momentum)
  if name == "nesterov":
    return optax.sgd(schedule, momentum=config.momentum, nesterov=True)
  if name == "adam":
    return optax.adam(schedule)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd, mask=mask)
  raise ValueError(f"config.optimizer = {name!r} is not valid.")


def make_feedback_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  """B's optimizer for learned-feedback rules: config.feedback_optimizer (None: config.optimizer)
  at config.feedback_learning_rate (None: W's) on W's schedule shape without its warmup.

  B learns at its full rate from the first step, so that W's warmup is a phase in which B aligns
  before W moves much (a mirror phase, as Akrout et al. run one before training). No weight decay
  and no constraints: B's decay is a term of its objective (`decay`); adamw runs as adam.
  """
  name = config.get("feedback_optimizer") or config.optimizer
  schedule = make_schedule(config, num_steps, config.get("feedback_learning_rate"), warmup=0)
  return _optimizer(config, "adam" if name == "adamw" else name, schedule)
