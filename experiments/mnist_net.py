"""MNIST net (paper.md): the MNIST column of the paper's table.

The default is the miniature on the embedded digits (4,000 train / 1,000 test real MNIST digits,
no download); `full` is tfds `mnist`. The README's main job runs the whole column:

  python -m launch.sweep --config=experiments/mnist_net.py --workdir=workdirs/mnist_table

One row:        python -m launch.main --config=experiments/mnist_net.py:usf_sn --workdir=/tmp/usf
Full size:      python -m launch.sweep --config=experiments/mnist_net.py:full --workdir=w/mnist
Seconds on CPU: python -m launch.main --config=experiments/mnist_net.py:fa,runlocal --workdir=/tmp/r

Expected top-1 error: `REFERENCE` below (the paper's, on full MNIST). The learned-feedback
rows (bp_wm, bp_sa, bp_aa, bp_ia; docs/learned_feedback.md) have no paper number and are not in
the default sweep (the README's main job):

  python -m launch.sweep --config=experiments/mnist_net.py --rows=bp,bp_wm,bp_sa,bp_ia --workdir=w

The miniature (4,000 training digits, 6 epochs) gets about 2-3% error for BP: see
RESULTS.md.
"""

from experiments import common

ROWS = (
  "bp", "bp_noise", "bp_align", "fa", "usf_init_ei", "usf_init", "usf_sn", "dfa", "densefa",
) + common.LEARNED_ROWS  # fmt: skip
COLUMN = "mnist"
# The paper's top-1 error (%), full datasets (paper.md): the report's reference column.
REFERENCE_SOURCE = common.PAPER
REFERENCE = dict(
  bp=0.8, bp_noise=0.8, bp_align=0.9, fa=1.1, usf_init_ei=0.9, usf_init=0.7, usf_sn=0.7,
  dfa=1.0, densefa=0.7,
)  # fmt: skip

SETTINGS = {
  **common.MNIST5K_RECIPE,
  "model": "mnist_net",
  "num_epochs": 6.0,
  "log_every": 25,
  "eval_every": 75,
  "diagnostics_every": 25,
}
FULL = {"dataset": "mnist", "num_epochs": 20.0}  # the 'full' modifier: tfds mnist


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', 'bp,full', ..."""
  return common.experiment_config(arg, SETTINGS, full=FULL, runlocal_size=28, runlocal_channels=1)


def get_sweep(arg=None):
  """The paper's rows of the column, one seed (--seeds=3 for error bars). The learned-feedback
  rows run on request: --rows=bp,bp_wm,bp_sa,bp_aa,bp_ia (docs/learned_feedback.md)."""
  return common.sweep([r for r in ROWS if r not in common.LEARNED_ROWS], seeds=(0,))
