"""Depth study: does FA fall behind backprop as nets get deeper while sign-concordant feedback
keeps up (the paper's central claim), in miniature on the embedded real MNIST digits?

The net is the paper's CIFAR-10 arch 2 family (VGG-style: 3x3 conv - batch norm - ReLU, 2x2 max
pooling after each stage, fc - BN - ReLU, classifier), narrowed to stages of 16 and 32 channels
and fc 64, with 1, 2, 4 or 8 convs per stage: 2, 4, 8 or 16 conv layers (+ 2 dense layers).
Each point trains 3 epochs of the 4,000 mnist5k training digits (28x28x1, Adam 1e-3, cosine,
batch 64) and is tested on the 1,000 test digits. Rows: BP, FA, FA-uSF SN, FA-uSF Init.,
FA-uSF Init. E/I, DFA and BP + Alignment (Kolen-Pollack); 7 rows x 4 depths x 3 seeds = 84 runs.

  python -m launch.sweep --config=experiments/depth.py --seeds=3 --workdir=workdirs/depth
  python -m launch.sweep --config=experiments/depth.py:runlocal --workdir=/tmp/depth  # seconds

The report (workdir/report.md, depth.png) gives test error vs depth per rule, mean ± std over
seeds. CPU time of the whole study: 41 min (2,177 s user + 310 s sys) on a 2-core Intel Xeon,
2026-12-01 (88 min wall while other jobs shared the cores; not yet timed on a quiet machine).
Expected test error (%, mean of 3 seeds, RESULTS.md) at depth 2 / 4 / 8 / 16: BP 4.1 / 3.2 /
3.0 / 4.2; FA 10.2 / 11.8 / 16.7 / 40.8; FA-uSF SN 4.1 / 3.7 / 3.9 / 7.0; DFA 13.6 / 11.7 /
17.2 / 41.4.
"""

from experiments import common

ROWS = ("bp", "fa", "usf_sn", "usf_init", "usf_init_ei", "dfa", "bp_align")
COLUMN = "depth"
DEPTHS = (2, 4, 8, 16)  # conv layers: 2 stages x convs_per_stage
STAGES = (16, 32)
RUNLOCAL_DEPTHS = (2, 4)

SETTINGS = {
  **common.MNIST5K_RECIPE,
  "model": "cifar10_arch2",
  "model_options": {"stages": STAGES, "convs_per_stage": 1, "fc_features": 64},
  "num_epochs": 3.0,
  "log_every": 50,
  "eval_every": 0,
}


def get_config(arg=None):
  """The config of one row at depth 2: 'usf_sn', 'fa,runlocal', ... (the sweep sets the depth)."""
  return common.experiment_config(arg, SETTINGS, runlocal_size=28, runlocal_channels=1)


def axis(point) -> tuple[str, int]:
  """The report's x axis: the number of conv layers of a sweep point."""
  return "depth", len(STAGES) * point["model_options.convs_per_stage"]


def get_sweep(arg=None):
  """Every row at every depth, one seed (--seeds=3 for the study)."""
  _, modifiers = common.parse_arg(arg)
  depths = RUNLOCAL_DEPTHS if "runlocal" in modifiers else DEPTHS
  return [
    {**point, "model_options.convs_per_stage": depth // len(STAGES)}
    for depth in depths
    for point in common.sweep(ROWS, seeds=(0,))
  ]
