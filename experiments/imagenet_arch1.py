"""ImageNet arch 1 (paper.md): the arch-1 net on 32x32 downsampled ImageNet (imagenet_resized).

  python launch/main.py --config=experiments/imagenet_arch1.py:usf_sn --workdir=workdirs/in1/usf_sn
  python launch/sweep.py --config=experiments/imagenet_arch1.py --workdir=workdirs/in1
  python launch/main.py --config=experiments/imagenet_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet_resized/32x32 prepared. Expected top-1 error (paper): BP 79.5,
BP + Noise 79.2, BP + Alignment 79.4, FA 95.2, FA-uSF Init. E/I 86.9, FA-uSF Init. 79.6,
FA-uSF SN 78.9 (%).
"""

from fajax import table

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
) + table.LEARNED_ROWS  # fmt: skip
COLUMN = "imagenet_arch1"

SETTINGS = {
  **table.IMAGENET_RECIPE,
  "model": "imagenet_arch1",
  "dataset": "imagenet_resized",
  "dataset_options": {"image_size": 32},
  "dtype": "float32",
  "learning_rate": 0.05,
  "lr_schedule": "cosine",
  "warmup_steps": 0,
  "weight_decay": 5e-4,
  "batch_size": 256,
  "num_epochs": 30.0,
  "diagnostics_every": 2000,
  "log_every": 50,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return table.sweep(ROWS, seeds=(0,))
