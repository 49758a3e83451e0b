"""ImageNet arch 1 (paper.md): the arch-1 net on 32x32 downsampled ImageNet (imagenet_resized).

  python -m launch.main --config=experiments/imagenet_arch1.py:usf_sn --workdir=workdirs/in1/usf_sn
  python -m launch.sweep --config=experiments/imagenet_arch1.py --workdir=workdirs/in1
  python -m launch.main --config=experiments/imagenet_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet_resized/32x32 prepared. Expected top-1 error: `REFERENCE` below (the
paper's).
"""

from experiments import common

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
) + common.LEARNED_ROWS  # fmt: skip
COLUMN = "imagenet_arch1"
# The paper's top-1 error (%), full datasets (paper.md): the report's reference column.
REFERENCE_SOURCE = common.PAPER
REFERENCE = dict(
  bp=79.5,
  bp_noise=79.2,
  bp_align=79.4,
  fa=95.2,
  usf_init_ei=86.9,
  usf_init=79.6,
  usf_sn=78.9,
)

SETTINGS = {
  **common.IMAGENET_RECIPE,
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
  return common.experiment_config(arg, SETTINGS, runlocal_size=32)


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return common.sweep(ROWS, seeds=(0,))
