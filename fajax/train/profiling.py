"""A `jax.profiler` trace of a few training steps (config.profile_steps) in `<workdir>/profile/`.

The trace starts after the first step a run takes (which compiles: compilation would fill the
trace) and covers the next `profile_steps` steps; the loop marks every step with
`jax.profiler.StepTraceAnnotation("train", step_num=step)`, so the profile plugin's step view
and Perfetto show one "train <step>" event per step. Only process 0 traces (the other processes
run the same program). The profiler writes `profile/plugins/profile/<date>/<host>.xplane.pb`
(TensorBoard's profile plugin: `tensorboard --logdir <workdir>/profile`) and
`perfetto_trace.json.gz` beside it (https://ui.perfetto.dev). The profiler writes local files
only: a remote workdir (gs://) is traced into a temporary folder copied there when it stops.
"""

from __future__ import annotations

import jax
from absl import logging

from fajax.train import paths

PROFILE_DIR = "profile"


class Profiler:
  """Traces steps `first_step + 2` to `first_step + 1 + count` (none when count is 0)."""

  def __init__(self, workdir: str, first_step: int, count: int):
    self._path = paths.join(workdir, PROFILE_DIR)
    self._start_after = first_step + 1
    self._stop_after = first_step + 1 + count
    self._enabled = count > 0 and jax.process_index() == 0
    self._mirror = None

  def after_step(self, step: int, outputs) -> None:
    """Call after every step with its outputs (waited for before the trace stops)."""
    if not self._enabled:
      return
    if step == self._start_after:
      self._mirror = paths.LocalMirror(self._path)
      jax.profiler.start_trace(self._mirror.local, create_perfetto_trace=True)
    elif step == self._stop_after:
      jax.block_until_ready(outputs)  # The trace holds the steps' device work, not just dispatch.
      self.close()

  def close(self) -> None:
    """Stops a running trace (a run shorter than the traced steps, or an error) and saves it."""
    if self._mirror is None:
      return
    jax.profiler.stop_trace()
    self._mirror.close()
    self._mirror = None
    logging.info("Wrote a profile of the training steps to %s.", self._path)
