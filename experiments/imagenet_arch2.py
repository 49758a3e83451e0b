"""ImageNet arch 2 (paper.md): AlexNet with batch norm at 224x224, Inception-style crops.

  python -m launch.main --config=experiments/imagenet_arch2.py:usf_sn --workdir=gs://b/in2/usf_sn
  python -m launch.sweep --config=experiments/imagenet_arch2.py --emit_commands --workdir=gs://b/in2
  python -m launch.main --config=experiments/imagenet_arch2.py --dry_run   # memory for the mesh
  python -m launch.main --config=experiments/imagenet_arch2.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet2012 prepared (manual download). Expected top-1 error: `REFERENCE` below (the
paper's, with the three Const. rows).
"""

from experiments import common

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
  "bp_const", "usf_const", "usf_const_ei",
) + common.LEARNED_ROWS  # fmt: skip
COLUMN = "imagenet_arch2"
# The paper's top-1 error (%), full datasets (paper.md): the report's reference column.
# The summary prints the three Const. rows under arch 1; their size says arch 2 (paper.md).
REFERENCE_SOURCE = common.PAPER
REFERENCE = dict(
  bp=45.5, bp_noise=46.0, bp_align=45.9, fa=94.5, usf_init_ei=67.8, usf_init=60.1, usf_sn=54.4,
  bp_const=46.9, usf_const=51.2, usf_const_ei=66.1,
)  # fmt: skip

SETTINGS = {
  **common.IMAGENET_RECIPE,
  "model": "imagenet_arch2",
  "learning_rate": 0.1,
  "weight_decay": 5e-4,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return common.experiment_config(arg, SETTINGS, runlocal_size=64)


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return common.sweep(ROWS, seeds=(0,))
