"""CIFAR-10 arch 2 (paper.md): a VGG-style net with batch norm, pad-4 random crops + flips.

  python -m launch.main --config=experiments/cifar10_arch2.py:usf_sn --workdir=workdirs/c10a2/usf_sn
  python -m launch.sweep --config=experiments/cifar10_arch2.py --workdir=workdirs/c10a2
  python -m launch.main --config=experiments/cifar10_arch2.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10 prepared. Expected top-1 error: `REFERENCE` below (the paper's).
"""

from experiments import common

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
) + common.LEARNED_ROWS  # fmt: skip
COLUMN = "cifar10_arch2"
# The paper's top-1 error (%), full datasets (paper.md): the report's reference column.
REFERENCE_SOURCE = common.PAPER
REFERENCE = dict(
  bp=11.0,
  bp_noise=11.0,
  bp_align=11.2,
  fa=35.6,
  usf_init_ei=17.8,
  usf_init=13.1,
  usf_sn=12.6,
)

SETTINGS = {
  **common.CIFAR10_RECIPE,
  "model": "cifar10_arch2",
  "dataset_options": {"crop": 32},
  "learning_rate": 0.05,
  "num_epochs": 160.0,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return common.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """Every row of the column, three seeds."""
  return common.sweep(ROWS, seeds=(0, 1, 2))
