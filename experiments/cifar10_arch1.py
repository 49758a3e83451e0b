"""CIFAR-10 arch 1 (paper.md): 24x24 random crops + flips, conv64-pool-conv64-pool-fc384-fc192-fc10.

  python launch/main.py --config=experiments/cifar10_arch1.py:usf_sn --workdir=workdirs/c10a1/usf_sn
  python launch/sweep.py --config=experiments/cifar10_arch1.py --workdir=workdirs/c10a1
  python launch/main.py --config=experiments/cifar10_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10 prepared in --config.data_dir. Expected top-1 error (paper): BP 17.2,
BP + Noise 17.4, BP + Alignment 17.4, FA 26.6, FA-uSF Init. E/I 18.9, FA-uSF Init. 17.6,
FA-uSF SN 17.7, DFA 28.6, DenseFA 16.9 (%).
"""

from fajax import table
from fajax.train import default_config

ROWS = ("bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa")
COLUMN = "cifar10_arch1"


def get_config(arg=None):
  """The config of one table row: 'usf_sn', 'fa,runlocal', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "cifar10_arch1"
  c.dataset = "cifar10"
  c.dataset_options = {"crop": 24}
  c.optimizer = "momentum"
  c.learning_rate = 0.02
  c.lr_schedule = "cosine"
  c.weight_decay = 5e-4
  c.batch_size = 128
  c.num_steps = None
  c.num_epochs = 100.0
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.diagnostics_every = 500
  table.apply_variant(c, row)
  if "runlocal" in modifiers:
    table.runlocal(c, image_size=24)
  return c


def get_sweep(arg=None):
  """Every row of the column, three seeds."""
  return table.sweep(ROWS, seeds=(0, 1, 2))
