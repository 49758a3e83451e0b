"""Pure train and eval steps, and their jit with shardings and donation.

One train step, in order (the big_vision layout): per-step keys from fold_in(rng, step); forward
with `fajax.apply` (never model.apply: direct-feedback rules route the output error through it);
softmax cross-entropy; the rule's gradients via `jax.value_and_grad`; the optax update; the
Kolen-Pollack update of the feedback for kp layers; B's optimizer step for learned-feedback layers
(wm, sa, aa, ia: their gradients are sown by the forward pass); non-finite handling; metrics. The
diagnostics variant also calls `fajax.diagnostics.alignment_metrics` on the same batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

import fajax
from fajax import constraints as constraints_lib
from fajax import diagnostics as diagnostics_lib
from fajax import learned as learned_lib
from fajax import rules as rules_lib


def cross_entropy(logits, labels):
  """Per-example softmax cross-entropy in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def step_rngs(rng, step):
  """The rngs of one step: dropout and per-step feedback (brsf, bp_noise), from fold_in(rng, step).

  Identical on every device and after a resume, since they depend only on (seed, step).
  """
  dropout, feedback = jax.random.split(jax.random.fold_in(rng, step))
  return {"dropout": dropout, rules_lib.FEEDBACK_RNG: feedback}


def forward(model, state, params, images, rngs, *, train, extra_variables=None, mutable=()):
  """Logits and the mutated collections (train mode always updates `batch_stats`)."""
  variables = state.variables(params)
  variables.update(extra_variables or {})
  wanted = list(dict.fromkeys([*(["batch_stats"] if train else []), *mutable]))
  if wanted:
    logits, mutated = fajax.apply(model, variables, images, train=train, rngs=rngs, mutable=wanted)
    return logits, dict(mutated)
  return fajax.apply(model, variables, images, train=train, rngs=rngs), {}


def uses_kp(rule) -> bool:
  """True when some layer may resolve to Kolen-Pollack (its feedback then follows W's updates)."""
  return any(isinstance(r, rules_lib.KP) for r in rules_lib.get(rule).every_rule())


def uses_learned_feedback(rule) -> bool:
  """True when some layer may resolve to a learned-feedback rule (wm, sa, aa, ia, learned)."""
  return any(isinstance(r, rules_lib.LearnedFeedback) for r in rules_lib.get(rule).every_rule())


# The TrainState fields a step updates (all of them, or none on a dropped step).
UPDATED_FIELDS = ("params", "feedback", "batch_stats", "opt_state", "feedback_opt_state")


def train_step(
  state,
  batch,
  *,
  model,
  tx,
  schedule,
  rule,
  weight_decay: float,
  on_nan: str,
  diagnostics: bool = False,
  feedback_tx=None,
):
  """One update. Returns (new_state, metrics); pure, so it can be jitted and donated.

  Non-finite loss or gradient: with on_nan='skip' the update is dropped (`skipped` counts it);
  with 'stop' it is dropped too and `nonfinite_step` records the step, after which every update
  is a no-op, so the host finds the last good state intact when it next looks.
  """
  step = state.step
  rngs = step_rngs(state.rng, step)
  images, labels = batch["image"], batch["label"]

  learns_feedback = uses_learned_feedback(rule)

  def loss_fn(params):
    if not learns_feedback:
      logits, mutated = forward(model, state, params, images, rngs, train=True)
    else:  # The layers also sow dObjective/dB from their inputs of this step.
      with fajax.layers.capture_feedback_grads():
        mutable = (learned_lib.FEEDBACK_GRADS,)
        logits, mutated = forward(model, state, params, images, rngs, train=True, mutable=mutable)
    return jnp.mean(cross_entropy(logits, labels)), (logits, mutated)

  (loss, (logits, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  # The optimizer's schedule count does not advance on skipped steps (their opt_state is dropped),
  # so the rate it used is schedule(step - skipped); KP's decay and the logged rate must match it.
  lr = schedule(step - state.skipped)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  if on_nan == "skip":
    keep = finite
    nonfinite_step = state.nonfinite_step
  else:
    keep = finite & (state.nonfinite_step < 0)
    first_bad = (~finite) & (state.nonfinite_step < 0)
    nonfinite_step = jnp.where(first_bad, step, state.nonfinite_step)

  def update(operands):
    grads, mutated, state = operands
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    feedback = state.feedback
    if uses_kp(rule):
      feedback = constraints_lib.kolen_pollack_update(
        rule, feedback, state.params, updates, decay=lr * weight_decay
      )
    feedback_opt_state = state.feedback_opt_state
    if learns_feedback:
      feedback, feedback_opt_state = learned_lib.update_feedback(
        feedback_tx, feedback, feedback_opt_state, mutated[learned_lib.FEEDBACK_GRADS]
      )
    return dict(
      params=optax.apply_updates(state.params, updates),
      feedback=feedback,
      batch_stats=mutated.get("batch_stats", state.batch_stats),
      opt_state=opt_state,
      feedback_opt_state=feedback_opt_state,
    )

  def no_update(operands):
    state = operands[2]
    return {k: getattr(state, k) for k in UPDATED_FIELDS}

  # The update is computed inside the cond, not selected afterwards with jnp.where: a select
  # needs the old and the new optimizer state at once, so XLA copies every donated buffer first.
  # MNIST net at batch 64, 2-core Xeon, against the same step with no guard: the select +15-36%,
  # the cond +1-18% from run to run (the update then cannot overlap the backward pass); at batch
  # 128 the cond costs nothing measurable (benchmarks/README.md).
  new = jax.lax.cond(keep, update, no_update, (grads, mutated, state))
  advance = keep if on_nan == "stop" else jnp.bool_(True)
  new_state = state.replace(
    **new,
    step=jnp.where(advance, step + 1, step),
    skipped=state.skipped + (~finite).astype(jnp.int32) * (on_nan == "skip"),
    nonfinite_step=nonfinite_step,
  )
  metrics = {
    "loss": loss,
    "top1_error": jnp.mean((jnp.argmax(logits, -1) != labels).astype(jnp.float32)),
    "learning_rate": jnp.asarray(lr, jnp.float32),
    "grad_norm": grad_norm,
    "skipped_steps": new_state.skipped,
    "nonfinite_step": nonfinite_step,
  }
  if diagnostics:
    metrics.update(_alignment(model, state, images, labels, rngs, grads))
  return new_state, metrics


def _alignment(model, state, images, labels, rngs, grads):
  """fajax.diagnostics.alignment_metrics on this step's batch."""

  def loss_fn(params, extra_variables, mutable):
    logits, mutated = forward(
      model,
      state,
      params,
      images,
      rngs,
      train=True,
      extra_variables=extra_variables,
      mutable=tuple(mutable),
    )
    wanted = {k: v for k, v in mutated.items() if k in tuple(mutable)}
    return jnp.mean(cross_entropy(logits, labels)), wanted

  return diagnostics_lib.alignment_metrics(loss_fn, state.params, rule_grads=grads)


def eval_step(state, batch, *, model):
  """Masked sums over one eval batch: loss, top-1 errors and real examples."""
  rngs = step_rngs(state.rng, state.step)
  logits, _ = forward(model, state, state.params, batch["image"], rngs, train=False)
  mask = batch["mask"].astype(jnp.float32)
  wrong = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
  return {
    "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
    "errors": jnp.sum(wrong * mask).astype(jnp.int32),
    "count": jnp.sum(mask).astype(jnp.int32),
  }


def jit_train_step(state_sharding, batch_sharding, replicated, compiler_options=None, **kwargs):
  """train_step jitted with the state donated and sharded, the batch over 'data'.

  compiler_options: XLA options of this jit (`fajax.compile.compiler_options`), or None.
  """
  return jax.jit(
    functools.partial(train_step, **kwargs),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
    compiler_options=compiler_options,
  )


def jit_eval_step(state_sharding, batch_sharding, replicated, *, model, compiler_options=None):
  return jax.jit(
    functools.partial(eval_step, model=model),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=replicated,
    compiler_options=compiler_options,
  )
