"""CIFAR-10 arch 1 (paper.md): 24x24 random crops + flips, conv64-pool-conv64-pool-fc384-fc192-fc10.

  python -m launch.main --config=experiments/cifar10_arch1.py:usf_sn --workdir=workdirs/c10a1/usf_sn
  python -m launch.sweep --config=experiments/cifar10_arch1.py --workdir=workdirs/c10a1
  python -m launch.main --config=experiments/cifar10_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds cifar10 prepared in --config.data_dir. Expected top-1 error: `REFERENCE` below (the
paper's).
"""

from experiments import common

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa",
) + common.LEARNED_ROWS  # fmt: skip
COLUMN = "cifar10_arch1"
# The paper's top-1 error (%), full datasets (paper.md): the report's reference column.
REFERENCE_SOURCE = common.PAPER
REFERENCE = dict(
  bp=17.2, bp_noise=17.4, bp_align=17.4, fa=26.6, usf_init_ei=18.9, usf_init=17.6, usf_sn=17.7,
  dfa=28.6, densefa=16.9,
)  # fmt: skip

SETTINGS = {
  **common.CIFAR10_RECIPE,
  "model": "cifar10_arch1",
  "dataset_options": {"crop": 24},
  "learning_rate": 0.02,
  "num_epochs": 100.0,
  "eval_every": 2000,
  "diagnostics_every": 500,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return common.experiment_config(arg, SETTINGS, runlocal_size=24)


def get_sweep(arg=None):
  """Every row of the column, three seeds."""
  return common.sweep(ROWS, seeds=(0, 1, 2))
