"""One training run in its own OS process, so that tests/test_kill.py can kill -9 it for real.

  python tests/kill_driver.py WORKDIR KIND

KIND 'sa': the Linen MNIST net under Symmetric Alignment (B learned, with its own optimizer
state); 'nnx': the NNX MNIST net (fajax.nnx.models) under brsf (fresh feedback every step). Both
on the embedded 8x8 digits, a checkpoint every 4 steps. The last line printed is
`final <sha256>` of the final params, feedback and both optimizer states, in tree order.
"""

import functools
import hashlib
import sys

import jax
import numpy as np

from fajax.nnx import models as nnx_models
from fajax.train import default_config, train_and_evaluate

NUM_STEPS = 24
CHECKPOINT_EVERY = 4


def config(kind):
  """The run's config: every step logged (the test watches progress), evaluation at the end."""
  c = default_config()
  c.dataset, c.model, c.rule = "digits", "mnist_net", {"sa": "sa", "nnx": "brsf"}[kind]
  c.optimizer, c.learning_rate, c.lr_schedule, c.batch_size = "adam", 1e-3, "cosine", 32
  c.num_steps, c.log_every, c.eval_every = NUM_STEPS, 1, 0
  c.checkpoint_every, c.keep_checkpoints, c.progress_bar = CHECKPOINT_EVERY, 2, False
  return c


def digest(state) -> str:
  """sha256 over the bytes of every array the run carries from step to step."""
  h = hashlib.sha256()
  for name in ("params", "feedback", "opt_state", "feedback_opt_state"):
    for leaf in jax.tree.leaves(getattr(state, name)):
      h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()


if __name__ == "__main__":
  workdir, kind = sys.argv[1:3]
  model = functools.partial(nnx_models.MnistNet, input_shape=(8, 8, 1)) if kind == "nnx" else None
  state = train_and_evaluate(config(kind), workdir, model=model)
  print("final", digest(state), flush=True)
