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


def make_schedule(config, num_steps: int) -> optax.Schedule:
  """The learning rate at each step: linear warmup, then constant, cosine or step decay."""
  lr = float(config.learning_rate)
  warmup = int(config.warmup_steps)
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
  name = config.optimizer
  if name == "sgd":
    parts.append(optax.sgd(schedule))
  elif name == "momentum":
    parts.append(optax.sgd(schedule, momentum=config.momentum))
  elif name == "nesterov":
    parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  elif name == "adam":
    parts.append(optax.adam(schedule))
  elif name == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=wd, mask=mask))
  else:
    raise ValueError(f"config.optimizer = {name!r} is not valid.")
  if "ei" in chosen:
    parts.append(constraints_lib.sign_constraint())
  if "const" in chosen:
    parts.append(constraints_lib.norm_constraint())
  return optax.chain(*parts)
