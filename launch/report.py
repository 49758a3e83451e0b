"""Writes the results table (paper layout) and plots for a set of run directories.

Run from the repository root:

  python -m launch.report --out=workdirs/report workdirs/mnist_table workdirs/c10a1

Each argument is a run directory or a folder of them (as launch/sweep.py makes); report.md,
errors.png and alignment.png go to --out, and the table is printed.
"""

from absl import app, flags

from experiments import common
from fajax import report
from fajax.train import errors

flags.DEFINE_string("out", None, "Folder for report.md and the plots (default: the first path).")
FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more run directories (or folders of them).")
  # The labels, row order and reference numbers of every experiment config (experiments/*.py).
  print(report.write_report(paths, FLAGS.out or paths[0], common.report_table()))


if __name__ == "__main__":
  app.run(errors.one_sentence_errors(main), flags_parser=errors.parse_flags)
