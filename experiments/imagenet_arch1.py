"""ImageNet arch 1 (paper.md): the arch-1 net on 32x32 downsampled ImageNet (imagenet_resized).

  python launch/main.py --config=experiments/imagenet_arch1.py:usf_sn --workdir=workdirs/in1/usf_sn
  python launch/sweep.py --config=experiments/imagenet_arch1.py --workdir=workdirs/in1
  python launch/main.py --config=experiments/imagenet_arch1.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet_resized/32x32 prepared. Expected top-1 error (paper): BP 79.5,
BP + Noise 79.2, BP + Alignment 79.4, FA 95.2, FA-uSF Init. E/I 86.9, FA-uSF Init. 79.6,
FA-uSF SN 78.9 (%).
"""

from fajax import table
from fajax.train import default_config

ROWS = ("bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn")
COLUMN = "imagenet_arch1"


def get_config(arg=None):
  """The config of one table row: 'usf_sn', 'fa,runlocal', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "imagenet_arch1"
  c.dataset = "imagenet_resized"
  c.dataset_options = {"image_size": 32}
  c.optimizer = "momentum"
  c.learning_rate = 0.05
  c.lr_schedule = "cosine"
  c.weight_decay = 5e-4
  c.batch_size = 256
  c.num_steps = None
  c.num_epochs = 30.0
  c.eval_every = 10000
  c.checkpoint_every = 5000
  c.diagnostics_every = 2000
  table.apply_variant(c, row)
  if "runlocal" in modifiers:
    table.runlocal(c, image_size=32)
  return c


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return table.sweep(ROWS, seeds=(0,))
