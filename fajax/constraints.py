"""Constraints on the forward weights, as optax transforms usable with any optimizer.

All of them touch kernels only (leaves named `kernel`), never biases or normalisation scales.

* `batch_manhattan()`: the optimizer sees sign(gradient) (Liao et al.). Put it *before* the
  optimizer: `optax.chain(batch_manhattan(), optax.sgd(lr))`.
* `sign_constraint()` (E/I): every kernel entry keeps its initial sign; an update that would flip it
  leaves it at zero. Put it *after* the optimizer (it projects the new weights).
* `norm_constraint()` (Const.): W <- W * ||W_0|| / ||W|| per kernel after every update. After the
  optimizer.
* `kolen_pollack_update(...)`: the Kolen-Pollack step for the `feedback` collection (dB = dW with
  weight decay on both), applied by the training step next to the optax update.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fajax import rules as rules_lib


def _is_kernel_path(path) -> bool:
  # In NNX states (nnx.Optimizer) a leaf's path ends with the Variable's `.value`: skip it.
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  last = path[-1] if path else None
  key = getattr(last, "key", getattr(last, "name", None))
  return key == "kernel"


def kernel_mask(params):
  """A pytree of bools over `params`: True for leaves named `kernel`."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _is_kernel_path(p), params)


def _map_kernels(fn, tree, *rest):
  """Applies fn(leaf, *rest_leaves) on kernel leaves; other leaves of `tree` pass unchanged."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x, *r: fn(x, *r) if _is_kernel_path(p) else x, tree, *rest
  )


def batch_manhattan() -> optax.GradientTransformation:
  """Replaces each kernel's gradient by its sign (Batch Manhattan); other gradients pass."""

  def update(updates, state, params=None):
    del params
    return _map_kernels(jnp.sign, updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


class SignConstraintState(NamedTuple):
  initial_sign: optax.Params


def sign_constraint() -> optax.GradientTransformation:
  """E/I: kernel entries keep their initial sign; an update that would flip one sets it to zero.

  Entries that were exactly zero at init are unconstrained. Must come after the optimizer in an
  `optax.chain`, because it needs the final update to project the new weights.
  """

  def init(params):
    return SignConstraintState(_map_kernels(jnp.sign, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("sign_constraint needs params: call optimizer.update(grads, state, params).")

    def project(u, w, s0):
      new = w + u
      return jnp.where(new * s0 < 0, -w, u)

    return _map_kernels(project, updates, params, state.initial_sign), state

  return optax.GradientTransformation(init, update)


class NormConstraintState(NamedTuple):
  initial_norm: optax.Params


def norm_constraint() -> optax.GradientTransformation:
  """Const.: after the update each kernel is rescaled to its initial Frobenius norm.

  Must come after the optimizer in an `optax.chain`.
  """

  def norm(w):
    return jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32))))

  def init(params):
    return NormConstraintState(_map_kernels(norm, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("norm_constraint needs params: call optimizer.update(grads, state, params).")

    def project(u, w, n0):
      new = w + u
      target = new * (n0 / jnp.maximum(norm(new), 1e-30)).astype(new.dtype)
      return target - w

    return _map_kernels(project, updates, params, state.initial_norm), state

  return optax.GradientTransformation(init, update)


def kolen_pollack_update(rule, feedback, params, updates, decay):
  """New feedback after a Kolen-Pollack step: B <- B + dW - decay * (B - W), for `kp` layers.

  With an optimizer that applies weight decay wd at learning rate lr (dW = -lr * (g + wd * W)),
  pass decay = lr * wd: then dB = -lr * (g + wd * B), Akrout et al.'s update, and B - W shrinks
  by (1 - decay) every step. Layers whose resolved rule is not `kp` keep their feedback. With an
  adaptive optimizer (adam) the decay of W is rescaled by the optimizer while B's is not, and
  lr * wd is tiny at adam-sized rates: B then aligns very slowly (see RESULTS.md's MNIST row).

  Args:
    rule: the model's rule (overrides are resolved per layer path).
    feedback: the `feedback` collection.
    params: the parameters *before* the update.
    updates: the optax updates applied to params (W_new = W + updates).
    decay: the per-step decay (a float or a scalar array).
  """
  rule = rules_lib.get(rule)

  def walk(fb, p, u, path):
    out = {}
    for key, value in fb.items():
      sub = f"{path}/{key}" if path else str(key)
      if isinstance(value, dict) or hasattr(value, "items"):
        out[key] = walk(value, p[key], u[key], sub)
      elif key == "kernel" and isinstance(rule.resolve(path), rules_lib.KP):
        w = p["kernel"].astype(value.dtype)
        out[key] = value + u["kernel"].astype(value.dtype) - decay * (value - w)
      else:
        out[key] = value
    return out

  return walk(feedback, params, updates, "")
