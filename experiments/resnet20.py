"""CIFAR-10 ResNet-20 (He et al. 2016), to hold fajax against BioTorch's published numbers.

  python launch/main.py --config=experiments/resnet20.py:usf_std --workdir=workdirs/r20/usf_std
  python launch/sweep.py --config=experiments/resnet20.py --workdir=workdirs/r20
  python launch/main.py --config=experiments/resnet20.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10. Expected top-1 error (BioTorch, SGD): BP 8.6, uSF 10.1, brSF 11.0, frSF 11.2,
FA 32.2, DFA 45.9 (%). `resnet56` is the same config with model=resnet56
(`--config.model=resnet56`).
"""

from fajax import table
from fajax.train import default_config

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa")
COLUMN = "resnet20"


def get_config(arg=None):
  """The config of one row: 'usf_std', 'brsf', 'fa,runlocal', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "resnet20"
  c.dataset = "cifar10"
  c.dataset_options = {"crop": 32}
  c.optimizer = "momentum"
  c.learning_rate = 0.1
  c.lr_schedule = "step"
  c.lr_boundaries = (0.5, 0.75)
  c.weight_decay = 1e-4
  c.batch_size = 128
  c.num_steps = None
  c.num_epochs = 160.0
  c.eval_every = 4000
  c.checkpoint_every = 2000
  c.diagnostics_every = 1000
  table.apply_variant(c, row)
  if "runlocal" in modifiers:
    table.runlocal(c, image_size=32)
  return c


def get_sweep(arg=None):
  """BioTorch's rows, three seeds."""
  return table.sweep(ROWS, seeds=(0, 1, 2))
