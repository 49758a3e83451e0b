"""Checks a run makes before it writes or compiles anything: the data is there and big enough for
the batch, and the workdir is a folder this process can write. Each failure is a UserError of one
sentence saying what to do (the launchers print it without a traceback).
"""

from __future__ import annotations

import os
import socket

from etils import epath

from fajax.data import registry
from fajax.train.errors import UserError


def check_data(config, info, *, injected: bool) -> None:
  """The dataset is prepared (registry datasets) and holds at least one global batch."""
  if not injected:
    try:
      registry.check_prepared(config.dataset, config.data_dir, **dict(config.dataset_options))
    except FileNotFoundError as e:
      raise UserError(str(e)) from None
  if config.batch_size > info.num_train:
    raise UserError(
      f"config.batch_size = {config.batch_size} is larger than the {info.num_train} training "
      f"examples of {info.name!r}; use a batch_size of at most {info.num_train}."
    )


def check_workdir(workdir, checkpoint_dir: str) -> epath.Path:
  """Creates `workdir` if needed and checks this process can write it; returns it as a Path."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise UserError(f"--workdir {workdir} is a file; give a folder (a new one or a run's workdir).")
  checkpoints = path / checkpoint_dir
  if checkpoints.exists() and not checkpoints.is_dir():
    raise UserError(
      f"{checkpoints} is a file where the run keeps its checkpoints; move it away or use "
      "another --workdir."
    )
  probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    reason = e.strerror or str(e) or type(e).__name__
    raise UserError(
      f"Cannot write to the workdir {workdir} ({reason}); choose a folder this user can write."
    ) from None
  return path
