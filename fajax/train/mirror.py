"""The mirror phase: B-only steps on noise before training (Akrout et al. 2019's weight mirror).

Akrout et al. let the feedback path learn in a "mirror mode" with no data: noise is sent through
each layer and B takes steps of its own learning rule. `config.feedback_mirror_steps` > 0 runs
such a phase inside the trainer's init, for rules whose objective needs no data (`wm`, or any
`learned` objective with `noise_std`, and `sa`): each step is one forward pass in inference mode
on a batch of zeros of the training batch's shape, inside `fajax.layers.capture_feedback_grads()`
(every learned layer replaces its input by fresh noise of the shape its rule draws in training,
from the key of that step), then one SGD step on B alone.

The rate of step k is `config.feedback_mirror_learning_rate / (k + 1)`. With wm's default
coefficients (alpha = 1) and rate 1 this makes B after K steps exactly the mean of the K noise
estimates of sigma^2 W (step 0 forgets the random B): its error falls as 1/sqrt(K * noise batch),
the best a fixed W allows. W, the optimizers and the step counter are untouched, and the phase is a
pure function of the init key, so a resumed run (which restores the checkpoint) is unaffected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import fajax
from fajax import layers, learned
from fajax import rules as rules_lib
from fajax.train import step as step_lib

# Folded into the init key for the mirror's noise, so that init's own keys stay as they were.
MIRROR_KEY = 0x6D6972


def has_mirror_phase(rule) -> bool:
  """Whether `rule` trains some B (a learned-feedback rule) and every such B without data."""
  return step_lib.uses_learned_feedback(rule) and not needs_data(rule)


def needs_data(rule) -> list[str]:
  """The names of the learned-feedback rules in `rule` (overrides included) that need data."""
  found = []
  for r in rules_lib.get(rule).every_rule():
    data = isinstance(r, rules_lib.LearnedFeedback) and r.noise_std is None
    if data and learned.needs_input(r.objective()) and r.name not in found:
      found.append(r.name)
  return found


def mirror_feedback(module, variables, batch_shape, steps: int, learning_rate: float, rng):
  """The `feedback` collection after `steps` mirror steps (see the module docstring).

  Args:
    module: the model (Flax module) with its learned-feedback rule.
    variables: its variables (params, feedback, batch_stats), as init returns them.
    batch_shape: the shape of a training batch of images (the noise takes its layer-wise shapes).
    steps: the number of B-only steps.
    learning_rate: the rate of step 0; step k uses learning_rate / (k + 1).
    rng: the key of the phase; step k draws its noise from fold_in(rng, k).
  """
  images = jnp.zeros(batch_shape, jnp.float32)
  # Without init's sown gradients: sow would add each step's to them.
  variables = {k: v for k, v in variables.items() if k != learned.FEEDBACK_GRADS}

  def feedback_grads(feedback, key):
    with layers.capture_feedback_grads():
      _, mutated = fajax.apply(
        module,
        {**variables, "feedback": feedback},
        images,
        train=False,  # Batch-norm statistics stay as they are.
        rngs={rules_lib.FEEDBACK_RNG: key},
        mutable=[learned.FEEDBACK_GRADS],
      )
    return mutated[learned.FEEDBACK_GRADS]

  tx = optax.sgd(lambda k: learning_rate / (k + 1.0))
  feedback = variables["feedback"]
  state = learned.init_feedback_state(tx, feedback, feedback_grads(feedback, rng))

  def step(k, carry):
    feedback, state = carry
    grads = feedback_grads(feedback, jax.random.fold_in(rng, k))
    return learned.update_feedback(tx, feedback, state, grads)

  feedback, _ = jax.lax.fori_loop(0, steps, step, (feedback, state))
  return feedback
