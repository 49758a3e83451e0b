"""A tiny smoke config: the MNIST net on the embedded 8x8 digits, 50 steps, about a minute on CPU.

  python -m launch.main --config=experiments/tiny.py --workdir=/tmp/tiny
  python -m launch.main --config=experiments/tiny.py:usf --workdir=/tmp/tiny_usf  # another rule
  python -m launch.main --config=experiments/tiny.py --dry_run --fake_devices=64
  python -m launch.sweep --config=experiments/tiny.py --workdir=/tmp/tiny_sweep  # bp and fa

The argument after ':' is a rule name (default bp). It checks the whole pipeline (data, model,
rule, sharded step, checkpoints, metrics, eval), not accuracy: expect a test top-1 error of about
0.1-0.3 after 50 steps for bp.
"""

from experiments import common
from fajax.train import default_config

ROWS = ("bp", "fa")  # Table rows that are also rule names: the smallest sweep.
COLUMN = "tiny"


def get_config(arg=None):
  """The tiny run; `arg` is the rule (e.g. 'fa', 'usf', 'brsf', 'dfa'), default 'bp'."""
  c = default_config()
  c.dataset = "digits"
  c.model = "mnist_net"
  c.rule = arg or "bp"
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.batch_size = 32
  c.num_steps = 50
  c.log_every = 10
  c.eval_every = 25
  c.checkpoint_every = 25
  c.keep_checkpoints = 2
  return c


def get_sweep(arg=None):
  """bp and fa, one seed: a smoke test of launch/sweep.py and of its --emit_commands."""
  del arg
  return common.sweep(ROWS, seeds=(0,))
