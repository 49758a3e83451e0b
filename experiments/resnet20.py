"""CIFAR-10 ResNet-20 (He et al. 2016), to hold fajax against BioTorch's published numbers.

  python launch/main.py --config=experiments/resnet20.py:usf_std --workdir=workdirs/r20/usf_std
  python launch/sweep.py --config=experiments/resnet20.py --workdir=workdirs/r20
  python launch/main.py --config=experiments/resnet20.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10. Expected top-1 error (BioTorch, SGD): BP 8.6, uSF 10.1, brSF 11.0, frSF 11.2,
FA 32.2, DFA 45.9 (%). `resnet56` is the same config with model=resnet56
(`--config.model=resnet56`).
"""

from fajax import table

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa") + table.LEARNED_ROWS
COLUMN = "resnet20"

SETTINGS = {
  **table.CIFAR10_RECIPE,
  "model": "resnet20",
  "dataset_options": {"crop": 32},
  "learning_rate": 0.1,
  "lr_schedule": "step",
  "lr_boundaries": (0.5, 0.75),
  "weight_decay": 1e-4,
  "num_epochs": 160.0,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """BioTorch's rows, three seeds."""
  return table.sweep(ROWS, seeds=(0, 1, 2))
