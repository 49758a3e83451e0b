"""Optimizer-side pieces for NNX models: the Kolen-Pollack feedback update next to nnx.Optimizer.

Constraints (`fajax.constraints`) are optax transforms and go into `nnx.Optimizer`'s `tx` as they
are; only Kolen-Pollack changes state outside the parameters (B), so it needs this step.
"""

from __future__ import annotations

import jax
from flax import nnx

from fajax import constraints, rules
from fajax.nnx import layers


def _kp_layers(model):
  seen = set()
  for _, node in nnx.iter_graph(model):
    if isinstance(node, layers.Linear | layers.Conv) and isinstance(node.rule, rules.KP):
      if id(node) not in seen:
        seen.add(id(node))
        yield node


def update(optimizer, model, grads, *, kp_decay=0.0):
  """`optimizer.update(model, grads)`, then the Kolen-Pollack step B <- B + dW - decay (B - W).

  dW is the change the optimizer made to each kp layer's kernel; pass kp_decay = lr * weight
  decay (see `fajax.constraints.kolen_pollack_update`, which this calls per layer). Without kp
  layers this is `optimizer.update(model, grads)`.
  """
  kp = list(_kp_layers(model))
  before = [jax.numpy.asarray(layer.kernel.get_value()) for layer in kp]
  optimizer.update(model, grads)
  for layer, w in zip(kp, before, strict=True):
    b = layer.feedback["kernel"]
    new = constraints.kolen_pollack_update(
      layer.rule,
      {"kernel": b.get_value()},
      {"kernel": w},
      {"kernel": layer.kernel.get_value() - w},
      kp_decay,
    )
    b.set_value(new["kernel"])
