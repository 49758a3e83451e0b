"""Writes the results table (paper layout) and plots for a set of run directories.

  python launch/report.py --out=workdirs/report workdirs/mnist_table workdirs/c10a1

Each argument is a run directory or a folder of them (as launch/sweep.py makes); report.md,
errors.png and alignment.png go to --out, and the table is printed.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fajax import report  # noqa: E402

flags.DEFINE_string("out", None, "Folder for report.md and the plots (default: the first path).")
FLAGS = flags.FLAGS


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("Give one or more run directories (or folders of them).")
  print(report.write_report(paths, FLAGS.out or paths[0]))


if __name__ == "__main__":
  app.run(main)
