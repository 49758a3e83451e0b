"""ImageNet ResNet-18, to hold fajax against BioTorch's published numbers.

  python -m launch.main --config=experiments/resnet18.py:usf_std --workdir=gs://b/r18/usf_std
  python -m launch.sweep --config=experiments/resnet18.py --emit_commands --workdir=gs://b/r18
  python -m launch.main --config=experiments/resnet18.py --dry_run
  python -m launch.main --config=experiments/resnet18.py:fa,runlocal --workdir=/tmp/r  # CPU

Needs tfds imagenet2012. Expected top-1 error: `REFERENCE` below (BioTorch's). The
learned-feedback rows (bp_wm, bp_sa, bp_aa, bp_ia) are those of Akrout et al. 2019 and Kunin et
al. 2020, who report ResNet-18/50 ImageNet errors close to BP's for WM, SA and IA
(docs/learned_feedback.md). Their numbers are not here: no source that could be read offline
holds those papers' results tables (issue 16). They go in REFERENCE, with the paper's name in
REFERENCE_SOURCES (e.g. {"bp_wm": "Akrout et al. 2019"}), and the report marks them so.
"""

from experiments import common

ROWS = ("bp", "fa", "usf_std", "usf_sn", "brsf", "frsf", "dfa") + common.LEARNED_ROWS
COLUMN = "resnet18"
# BioTorch's top-1 error (%) (Sanfiz & Akrout 2021): the report's reference column. Their uSF
# uses the std scale (row usf_std).
REFERENCE_SOURCE = common.BIOTORCH
REFERENCE = dict(bp=30.4, usf_std=35.0, frsf=36.5, brsf=37.2, dfa=82.5, fa=85.3)
REFERENCE_SOURCES = {}  # row -> source, for numbers that are not BioTorch's (report_table).

SETTINGS = {
  **common.IMAGENET_RECIPE,
  "model": "resnet18",
  "optimizer": "nesterov",
  "learning_rate": 0.2,
  "weight_decay": 1e-4,
}


def get_config(arg=None):
  """The config of one row: 'usf_sn', 'fa,runlocal', ..."""
  return common.experiment_config(arg, SETTINGS, runlocal_size=64)


def get_sweep(arg=None):
  """BioTorch's rows, one seed."""
  return common.sweep(ROWS, seeds=(0,))
