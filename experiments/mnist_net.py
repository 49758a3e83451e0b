"""MNIST net (paper.md): the MNIST column of the paper's table.

The default is the miniature on the embedded digits (4,000 train / 1,000 test real MNIST digits,
no download); `full` is tfds `mnist`. The README's main job runs the whole column:

  python launch/sweep.py --config=experiments/mnist_net.py --workdir=workdirs/mnist_table

One row:        python launch/main.py --config=experiments/mnist_net.py:usf_sn --workdir=/tmp/usf
Full size:      python launch/sweep.py --config=experiments/mnist_net.py:full --workdir=w/mnist
Seconds on CPU: python launch/main.py --config=experiments/mnist_net.py:fa,runlocal --workdir=/tmp/r

Expected top-1 error (paper, full MNIST): BP 0.8, BP + Noise 0.8, BP + Alignment 0.9, FA 1.1,
FA-uSF Init. E/I 0.9, FA-uSF Init. 0.7, FA-uSF SN 0.7, DFA 1.0, DenseFA 0.7 (%). The miniature
(4,000 training digits, 6 epochs) gets about 2-3% error for BP: see RESULTS.md.
"""

from fajax import table
from fajax.train import default_config

ROWS = ("bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa")
COLUMN = "mnist"


def get_config(arg=None):
  """The config of one table row: 'usf_sn', 'fa,runlocal', 'bp,full', ..."""
  row, modifiers = table.parse_arg(arg)
  c = default_config()
  c.model = "mnist_net"
  c.dataset = "mnist" if "full" in modifiers else "mnist5k"
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.lr_schedule = "cosine"
  c.batch_size = 64
  c.num_steps = None
  c.num_epochs = 20.0 if "full" in modifiers else 6.0
  c.log_every = 40
  c.checkpoint_every = 1000
  table.apply_variant(c, row)
  if "runlocal" in modifiers:
    table.runlocal(c, image_size=28, channels=1)
  return c


def get_sweep(arg=None):
  """Every row of the column, one seed (add seeds for error bars: seeds=(0, 1, 2))."""
  return table.sweep(ROWS, seeds=(0,))
