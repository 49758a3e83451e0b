"""CIFAR-10 ResNet-20 (He et al. 2016), to hold fajax against BioTorch's published numbers.

  python -m launch.main --config=experiments/resnet20.py:usf_std --workdir=workdirs/r20/usf_std
  python -m launch.sweep --config=experiments/resnet20.py --workdir=workdirs/r20
  python -m launch.main --config=experiments/resnet20.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10. Expected top-1 error: `REFERENCE` below (BioTorch's, SGD). `resnet56` is the
same config with model=resnet56 (`--config.model=resnet56`).
"""

from experiments import common

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa") + common.LEARNED_ROWS
COLUMN = "resnet20"
# BioTorch's top-1 error (%) (Sanfiz & Akrout 2021): the report's reference column. Their uSF
# uses the std scale (row usf_std).
REFERENCE_SOURCE = common.BIOTORCH
REFERENCE = dict(bp=8.6, usf_std=10.1, brsf=11.0, frsf=11.2, fa=32.2, dfa=45.9)

SETTINGS = {
  **common.CIFAR10_RECIPE,
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
  return common.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """BioTorch's rows, three seeds."""
  return common.sweep(ROWS, seeds=(0, 1, 2))
