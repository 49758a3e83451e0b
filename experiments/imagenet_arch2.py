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
from fajax.train import default_config

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn",
  "bp_const", "usf_const", "usf_const_ei",
)  # fmt: skip
COLUMN = "imagenet_arch2"


def get_config(arg=None):
  """The config of one table row: 'usf_sn', 'usf_const_ei', 'fa,runlocal', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "imagenet_arch2"
  c.dataset = "imagenet2012"
  c.dataset_options = {"image_size": 224}
  c.dtype = "bfloat16"
  c.optimizer = "momentum"
  c.learning_rate = 0.1
  c.lr_schedule = "warmup_cosine"
  c.warmup_steps = 2500
  c.weight_decay = 5e-4
  c.batch_size = 512
  c.num_steps = None
  c.num_epochs = 90.0
  c.eval_every = 10000
  c.checkpoint_every = 5000
  c.diagnostics_every = 5000
  c.log_every = 200
  table.apply_variant(c, row)
  if "runlocal" in modifiers:
    table.runlocal(c, image_size=64)
    c.dtype = "float32"
  return c


def get_sweep(arg=None):
  """Every row of the column, one seed."""
  return table.sweep(ROWS, seeds=(0,))
