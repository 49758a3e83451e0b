"""ImageNet ResNet-18, to hold fajax against BioTorch's published numbers.

  python launch/main.py --config=experiments/resnet18.py:usf_std --workdir=gs://b/r18/usf_std
  python launch/sweep.py --config=experiments/resnet18.py --emit_commands --workdir=gs://b/r18
  python launch/main.py --config=experiments/resnet18.py --dry_run
  python launch/main.py --config=experiments/resnet18.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet2012. Expected top-1 error (BioTorch): BP 30.4, uSF 35.0, frSF 36.5,
brSF 37.2, DFA 82.5, FA 85.3 (%).
"""

from fajax import table
from fajax.train import default_config

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa")
COLUMN = "resnet18"


def get_config(arg=None):
  """The config of one row: 'usf_std', 'brsf', 'fa,runlocal', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "resnet18"
  c.dataset = "imagenet2012"
  c.dataset_options = {"image_size": 224}
  c.dtype = "bfloat16"
  c.optimizer = "nesterov"
  c.learning_rate = 0.2
  c.lr_schedule = "warmup_cosine"
  c.warmup_steps = 2500
  c.weight_decay = 1e-4
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
  """BioTorch's rows, one seed."""
  return table.sweep(ROWS, seeds=(0,))
