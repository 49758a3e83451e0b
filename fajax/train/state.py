"""TrainState: everything a run needs to continue bit for bit, as one pytree.

Kept as a flax struct dataclass of plain arrays (the rng is a raw uint32 key), so it jits,
donates, shards and checkpoints as a pytree. The feedback collection sits beside the parameters,
never inside them: the optimizer, weight decay and gradient norms never see it.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from fajax import learned

Variables = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  """The training state.

  Attributes:
    step: int32 scalar, the number of updates applied (the next batch is batch `step`).
    params: the `params` collection.
    feedback: the `feedback` collection (B matrices, fixed scales); updated only by kp layers
      and by learned-feedback layers (wm, sa, aa, ia, learned).
    batch_stats: the `batch_stats` collection (empty for models without batch norm).
    extra: any other collection `model.init` made, passed to the model unchanged.
    opt_state: the optax state.
    feedback_opt_state: the optax state of B's optimizer, over the learned B matrices only
      (empty when no layer learns its feedback).
    rng: uint32[2] base key; step randomness is `fold_in(rng, step)`, so it does not advance.
    skipped: int32 scalar, updates dropped for a non-finite loss (config.on_nan = 'skip').
    nonfinite_step: int32 scalar, the first step whose loss was not finite under
      config.on_nan = 'stop' (-1: none); from then on updates are frozen so that the state stays
      the last good one until the host notices.
  """

  step: jax.Array
  params: Any
  feedback: Any
  batch_stats: Any
  extra: Any
  opt_state: Any
  feedback_opt_state: Any
  rng: jax.Array
  skipped: jax.Array
  nonfinite_step: jax.Array

  def variables(self, params=None) -> Variables:
    """The model's variables ({'params', 'feedback', 'batch_stats', ...}), non-empty ones only."""
    out = {"params": self.params if params is None else params}
    for name, value in (("feedback", self.feedback), ("batch_stats", self.batch_stats)):
      if value:
        out[name] = value
    out.update(self.extra)
    return out


def split_variables(variables: Variables):
  """model.init's output -> (params, feedback, batch_stats, extra collections).

  The `feedback_grads` collection (sown when init ran inside `capture_feedback_grads`) is dropped.
  """
  variables = dict(variables)
  variables.pop(learned.FEEDBACK_GRADS, None)
  params = variables.pop("params", {})
  feedback = variables.pop("feedback", {})
  batch_stats = variables.pop("batch_stats", {})
  return params, feedback, batch_stats, variables


def create(
  variables: Variables,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  feedback_tx: optax.GradientTransformation | None = None,
) -> TrainState:
  """A fresh state at step 0 from model.init's variables (traceable: used under jit/eval_shape).

  `feedback_tx` is B's optimizer; the B matrices it trains are those with a gradient in the
  variables' `feedback_grads` collection (build.py runs init inside capture_feedback_grads).
  """
  grads = variables.get(learned.FEEDBACK_GRADS, {})
  params, feedback, batch_stats, extra = split_variables(variables)
  feedback_tx = feedback_tx or optax.identity()
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    feedback=feedback,
    batch_stats=batch_stats,
    extra=extra,
    opt_state=tx.init(params),
    feedback_opt_state=learned.init_feedback_state(feedback_tx, feedback, grads),
    rng=rng,
    skipped=jnp.zeros((), jnp.int32),
    nonfinite_step=jnp.full((), -1, jnp.int32),
  )


def num_bytes(tree) -> int:
  """Total bytes of the arrays (or ShapeDtypeStructs) in a pytree."""
  return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
