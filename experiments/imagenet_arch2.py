"""ImageNet arch 2 (paper.md): AlexNet with batch norm at 224x224, Inception-style crops.

  python launch/main.py --config=experiments/imagenet_arch2.py:usf_sn --workdir=gs://b/in2/usf_sn
  python launch/sweep.py --config=experiments/imagenet_arch2.py --emit_commands --workdir=gs://b/in2
  python launch/main.py --config=experiments/imagenet_arch2.py --dry_run   # memory for the mesh
  python launch/main.py --config=experiments/imagenet_arch2.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet2012 prepared (manual download). Expected top-1 error (paper): BP 45.5,
BP + Noise 46.0, BP + Alignment 45.9, FA 94.5, FA-uSF Init. E/I 67.8, FA-uSF Init. 60.1,
FA-uSF SN 54.4, BP Const. 46.9, FA-uSF Const. 51.2, FA-uSF Const. E/I 66.1 (%). The summary
prints the three Const. rows under arch 1; their size says arch 2 (paper.md), so they are here.
"""

from fajax import table

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
  "bp_const", "usf_const", "usf_const_ei",
) + table.LEARNED_ROWS  # fmt: skip
COLUMN = "imagenet_arch2"

SETTINGS = {
  **table.IMAGENET_RECIPE,
  "model": "imagenet_arch2",
  "learning_rate": 0.1,
  "weight_decay": 5e-4,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=64)


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return table.sweep(ROWS, seeds=(0,))
