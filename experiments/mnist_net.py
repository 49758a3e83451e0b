"""MNIST net (paper.md): the MNIST column of the paper's table.

The default is the miniature on the embedded digits (4,000 train / 1,000 test real MNIST digits,
no download); `full` is tfds `mnist`. The README's main job runs the whole column:

  python launch/sweep.py --config=experiments/mnist_net.py --workdir=workdirs/mnist_table

One row:        python launch/main.py --config=experiments/mnist_net.py:usf_sn --workdir=/tmp/usf
Full size:      python launch/sweep.py --config=experiments/mnist_net.py:full --workdir=w/mnist
Seconds on CPU: python launch/main.py --config=experiments/mnist_net.py:fa,runlocal --workdir=/tmp/r

Expected top-1 error (paper, full MNIST): BP 0.8, BP + Noise 0.8, BP + Alignment 0.9, FA 1.1,
FA-uSF Init. E/I 0.9, FA-uSF Init. 0.7, FA-uSF SN 0.7, DFA 1.0, DenseFA 0.7 (%). The
learned-feedback rows (bp_wm, bp_sa, bp_aa, bp_ia; docs/learned_feedback.md) have no paper
number and are not in the default sweep (the README's main job):

  python launch/sweep.py --config=experiments/mnist_net.py --rows=bp,bp_wm,bp_sa,bp_ia --workdir=w

The miniature (4,000 training digits, 6 epochs) gets about 2-3% error for BP: see
RESULTS.md.
"""

from fajax import table

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa",
) + table.LEARNED_ROWS  # fmt: skip
COLUMN = "mnist"

SETTINGS = {
  "model": "mnist_net",
  "dataset": "mnist5k",
  "optimizer": "adam",
  "learning_rate": 1e-3,
  "lr_schedule": "cosine",
  "batch_size": 64,
  "num_steps": None,
  "num_epochs": 6.0,
  "log_every": 25,
  "eval_every": 75,
  "diagnostics_every": 25,
  "checkpoint_every": 1000,
}
FULL = {"dataset": "mnist", "num_epochs": 20.0}  # the 'full' modifier: tfds mnist


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', 'bp,full', ..."""
  _, modifiers = table.parse_arg(arg)
  settings = {**SETTINGS, **FULL} if "full" in modifiers else SETTINGS
  return table.experiment_config(arg, settings, runlocal_size=28, runlocal_channels=1)


def get_sweep(arg=None):
  """The paper's rows of the column, one seed (--seeds=3 for error bars). The learned-feedback
  rows run on request: --rows=bp,bp_wm,bp_sa,bp_aa,bp_ia (docs/learned_feedback.md)."""
  return table.sweep([r for r in ROWS if r not in table.LEARNED_ROWS], seeds=(0,))
