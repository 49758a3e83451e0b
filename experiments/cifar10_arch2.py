"""CIFAR-10 arch 2 (paper.md): a VGG-style net with batch norm, pad-4 random crops + flips.

  python launch/main.py --config=experiments/cifar10_arch2.py:usf_sn --workdir=workdirs/c10a2/usf_sn
  python launch/sweep.py --config=experiments/cifar10_arch2.py --workdir=workdirs/c10a2
  python launch/main.py --config=experiments/cifar10_arch2.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10 prepared. Expected top-1 error (paper): BP 11.0, BP + Noise 11.0,
BP + Alignment 11.2, FA 35.6, FA-uSF Init. E/I 17.8, FA-uSF Init. 13.1, FA-uSF SN 12.6 (%).
"""

from fajax import table

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
) + table.LEARNED_ROWS  # fmt: skip
COLUMN = "cifar10_arch2"

SETTINGS = {
  **table.CIFAR10_RECIPE,
  "model": "cifar10_arch2",
  "dataset_options": {"crop": 32},
  "learning_rate": 0.05,
  "num_epochs": 160.0,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """Every row of the column, three seeds."""
  return table.sweep(ROWS, seeds=(0, 1, 2))
