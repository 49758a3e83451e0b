"""CIFAR-10 arch 1 (paper.md): 24x24 random crops + flips, conv64-pool-conv64-pool-fc384-fc192-fc10.

  python launch/main.py --config=experiments/cifar10_arch1.py:usf_sn --workdir=workdirs/c10a1/usf_sn
  python launch/sweep.py --config=experiments/cifar10_arch1.py --workdir=workdirs/c10a1
  python launch/main.py --config=experiments/cifar10_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10 prepared in --config.data_dir. Expected top-1 error (paper): BP 17.2,
BP + Noise 17.4, BP + Alignment 17.4, FA 26.6, FA-uSF Init. E/I 18.9, FA-uSF Init. 17.6,
FA-uSF SN 17.7, DFA 28.6, DenseFA 16.9 (%).
"""

from fajax import table

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa",
) + table.LEARNED_ROWS  # fmt: skip
COLUMN = "cifar10_arch1"

SETTINGS = {
  **table.CIFAR10_RECIPE,
  "model": "cifar10_arch1",
  "dataset_options": {"crop": 24},
  "learning_rate": 0.02,
  "num_epochs": 100.0,
  "eval_every": 2000,
  "diagnostics_every": 500,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=24)


def get_sweep(arg=None):
  """Every row of the column, three seeds."""
  return table.sweep(ROWS, seeds=(0, 1, 2))
