"""Alignment diagnostics: how far each layer's learning signal is from true backprop.

Per linear layer (every fajax `Dense` / `Conv`, or converted `nn.Dense` / `nn.Conv`), on one batch:

- `update_angle`: angle between the rule's weight gradient and the true backprop gradient (kernel);
- `delta_angle`: angle between the delta the rule propagated into the layer (the cotangent of the
  layer's output) and backprop's delta, flattened over the whole (global) batch;
- `wb_angle`: angle between the flattened forward kernel W and the feedback B;
- `norm_ratio`: ||B|| / ||W|| (Frobenius);
- `sign_agreement`: fraction of entries with sign(B) == sign(W).

The true gradient comes from a second backward pass of the same loss on the same batch and rngs
inside `fajax.layers.force_backprop()` (every layer uses B = W). Deltas are read through
`fajax.layers.capture_deltas()` (gradients with respect to zero perturbations on layer outputs),
B through `fajax.layers.capture_feedback()`. Everything is a pure function of arrays, so it runs
inside the jitted, sharded train step; sums run over global arrays (no per-device averaging).

    def loss_fn(params, extra_variables, mutable):
      variables = {**model_vars, "params": params, **extra_variables}
      logits, mutated = fajax.apply(model, variables, batch["image"], train=True, rngs=rngs,
                                    mutable=list(mutable) + ["batch_stats"])
      return cross_entropy(logits, batch["label"]), mutated

    metrics = alignment_metrics(loss_fn, params, rule_grads=grads)
    # {"align/Dense_0/update_angle": 63.2, "align/Dense_0/delta_angle": 58.9, ...}

Angles are in degrees, computed in float32 as 2*atan2(|u^ - v^|, |u^ + v^|) with u^ = u/|u|:
the same angle as arccos(cos), but exact (0) for identical vectors and well conditioned near 0
and 180 degrees, where a clipped arccos loses half its digits. A zero vector has no direction:
an angle with a zero vector is reported as 90 degrees (no alignment, and logs stay finite for
JSON and averaging). Layers without layer-to-layer feedback (B = "zero", DFA) report
norm_ratio 0, wb_angle 90 and the fraction of zero entries of W as sign_agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
from jax import lax

from fajax import layers

PREFIX = "align"
METRICS = ("update_angle", "delta_angle", "wb_angle", "norm_ratio", "sign_agreement")
ZERO_VECTOR_ANGLE = 90.0  # the angle reported when either vector is zero (documented above).

LossFn = Callable[[Any, dict, tuple], tuple[jax.Array, Mapping]]


def should_run(step, every: int):
  """Whether the diagnostics run at `step` when they run every `every` steps (0 = never).

  Works on Python ints and on traced steps (returns a traced bool then).
  """
  if every < 0:
    raise ValueError(f"diagnostics_every must be >= 0 (0 turns diagnostics off), got {every}.")
  if every == 0:
    return False
  return step % every == 0


def angle(u: jax.Array, v: jax.Array) -> jax.Array:
  """Angle in degrees between flattened `u` and `v` (float32); 90 if either is zero."""
  u = jnp.ravel(u).astype(jnp.float32)
  v = jnp.ravel(v).astype(jnp.float32)
  nu = jnp.linalg.norm(u)
  nv = jnp.linalg.norm(v)
  ok = (nu > 0) & (nv > 0)
  uh = u / jnp.where(ok, nu, 1.0)
  vh = v / jnp.where(ok, nv, 1.0)
  radians = 2.0 * jnp.arctan2(jnp.linalg.norm(uh - vh), jnp.linalg.norm(uh + vh))
  return jnp.where(ok, jnp.degrees(radians), jnp.float32(ZERO_VECTOR_ANGLE))


def norm_ratio(b: jax.Array, w: jax.Array) -> jax.Array:
  """||B|| / ||W|| (Frobenius, float32); inf or NaN only if W is all zeros."""
  return jnp.linalg.norm(jnp.ravel(b).astype(jnp.float32)) / jnp.linalg.norm(
    jnp.ravel(w).astype(jnp.float32)
  )


def sign_agreement(b: jax.Array, w: jax.Array) -> jax.Array:
  """Fraction of entries where sign(B) == sign(W) (zeros count as their own sign)."""
  return jnp.mean((jnp.sign(b) == jnp.sign(w)).astype(jnp.float32))


def _flat(tree) -> dict[tuple[str, ...], Any]:
  if not tree:
    return {}
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _delta_zeros(loss_fn: LossFn, params) -> dict:
  """Zeros shaped like every layer's output: the perturbations whose gradients are the deltas."""
  with layers.capture_deltas():
    _, mutated = jax.eval_shape(lambda p: loss_fn(p, {}, (layers.DELTAS,)), params)
  shapes = flax.core.unfreeze(mutated).get(layers.DELTAS, {})
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _rule_pass(loss_fn: LossFn, params, zeros, rule_grads):
  """The rule's weight gradients, deltas and feedback matrices on the step's batch."""

  def loss(p, deltas):
    value, mutated = loss_fn(p, {layers.DELTAS: deltas}, (layers.FEEDBACK_MATRICES,))
    return value, flax.core.unfreeze(mutated).get(layers.FEEDBACK_MATRICES, {})

  with layers.capture_deltas(), layers.capture_feedback():
    if rule_grads is None:
      (grads, deltas), feedback = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, zeros)
    else:
      # The train step already has the weight gradients: only the deltas are needed.
      deltas, feedback = jax.grad(lambda d: loss(params, d), has_aux=True)(zeros)
      grads = rule_grads
  return grads, deltas, feedback


def _backprop_pass(loss_fn: LossFn, params, zeros):
  """The true backprop weight gradients and deltas (every layer with B = W)."""

  def loss(p, deltas):
    value, _ = loss_fn(p, {layers.DELTAS: deltas}, ())
    return value

  with layers.force_backprop(), layers.capture_deltas():
    return jax.grad(loss, argnums=(0, 1))(params, zeros)


def alignment_metrics(loss_fn: LossFn, params, rule_grads=None) -> dict[str, jax.Array]:
  """Per-layer alignment of the rule with backprop on one batch, as a flat dict of scalars.

  Args:
    loss_fn: `loss_fn(params, extra_variables, mutable) -> (loss, mutated)` runs the model's
      training loss on the step's batch, with variables `{**model_vars, "params": params,
      **extra_variables}`, the step's rngs (dropout, feedback) and `mutable` collections added
      to any the model needs in training (e.g. batch_stats); it returns the loss and the mutated
      collections as `model.apply(..., mutable=...)` does. It must call the model through
      `fajax.apply` / `model.apply` directly, not through its own `jax.jit` (the fajax context
      flags are read at trace time).
    params: the parameters the step differentiates.
    rule_grads: the train step's gradients of the same `loss_fn` with respect to `params` under
      the rule (saves one backward pass); computed here if None.

  Returns:
    {"align/<layer path>/<metric>": float32 scalar} for every metric in `METRICS` and every
    fajax layer, the layer path being "/".join of its module path (e.g. "Block_0/Conv_1").
  """
  zeros = _delta_zeros(loss_fn, params)
  grads, deltas, feedback = _rule_pass(loss_fn, params, zeros, rule_grads)
  return _compare(loss_fn, params, zeros, grads, deltas, feedback)


def _compare(loss_fn: LossFn, params, zeros, grads, deltas, feedback) -> dict[str, jax.Array]:
  """Runs the backprop pass and compares it with the rule's gradients, deltas and B per layer."""
  bp_grads, bp_deltas = _backprop_pass(loss_fn, params, zeros)
  flat_params, flat_grads, flat_bp_grads = _flat(params), _flat(grads), _flat(bp_grads)
  flat_deltas, flat_bp_deltas, flat_feedback = _flat(deltas), _flat(bp_deltas), _flat(feedback)
  metrics = {}
  for key in _flat(zeros):
    layer = key[:-1]  # key = (*module path, "delta")
    name = f"{PREFIX}/{'/'.join(layer)}"
    metrics[f"{name}/delta_angle"] = angle(flat_deltas[key], flat_bp_deltas[key])
    kernel = layer + ("kernel",)
    if kernel in flat_params:
      metrics[f"{name}/update_angle"] = angle(flat_grads[kernel], flat_bp_grads[kernel])
      b = flat_feedback.get(layer + ("B",))
      if b is not None:
        w = flat_params[kernel]
        metrics[f"{name}/wb_angle"] = angle(b, w)
        metrics[f"{name}/norm_ratio"] = norm_ratio(b, w)
        metrics[f"{name}/sign_agreement"] = sign_agreement(b, w)
  return metrics


def maybe_alignment_metrics(
  step, every: int, loss_fn: LossFn, params, rule_grads=None
) -> dict[str, jax.Array]:
  """`alignment_metrics` on steps where `should_run(step, every)`, NaNs on the others.

  For a single jitted train step: `lax.cond` runs the two extra passes only on diagnostic steps.
  Not free: benchmarks/diagnostics_cost.py measured the other steps 13-30% slower than a step
  without it, so a trainer should rather jit a separate diagnostics step. Returns {} when `every`
  is 0. The caller writes the metrics only when `should_run(step, every)` holds on the host.
  """
  if not every:
    return {}
  shapes = jax.eval_shape(lambda p: alignment_metrics(loss_fn, p, rule_grads), params)

  def off(p):
    del p
    return jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), shapes)

  return lax.cond(
    should_run(step, every), lambda p: alignment_metrics(loss_fn, p, rule_grads), off, params
  )


def layer_names(metrics: Mapping[str, Any]) -> list[str]:
  """The layer paths present in a metrics dict (keys "align/<layer>/<metric>"), in order seen."""
  out = []
  for key in metrics:
    if key.startswith(PREFIX + "/"):
      layer, _, metric = key[len(PREFIX) + 1 :].rpartition("/")
      if metric in METRICS and layer not in out:
        out.append(layer)
  return out
