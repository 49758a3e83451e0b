"""ImageNet ResNet-18, to hold fajax against BioTorch's published numbers.

  python launch/main.py --config=experiments/resnet18.py:usf_std --workdir=gs://b/r18/usf_std
  python launch/sweep.py --config=experiments/resnet18.py --emit_commands --workdir=gs://b/r18
  python launch/main.py --config=experiments/resnet18.py --dry_run
  python launch/main.py --config=experiments/resnet18.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet2012. Expected top-1 error (BioTorch): BP 30.4, uSF 35.0, frSF 36.5,
brSF 37.2, DFA 82.5, FA 85.3 (%). The learned-feedback rows (bp_wm, bp_sa, bp_aa, bp_ia) are those
of Akrout et al. 2019 and Kunin et al. 2020, who report ResNet-18/50 ImageNet errors close to BP's
for WM, SA and IA (docs/learned_feedback.md).
"""

from fajax import table

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa") + table.LEARNED_ROWS
COLUMN = "resnet18"

SETTINGS = {
  **table.IMAGENET_RECIPE,
  "model": "resnet18",
  "optimizer": "nesterov",
  "learning_rate": 0.2,
  "weight_decay": 1e-4,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return table.experiment_config(arg, SETTINGS, runlocal_size=64)


def get_sweep(arg=None):
  """BioTorch's rows, one seed."""
  return table.sweep(ROWS, seeds=(0,))
