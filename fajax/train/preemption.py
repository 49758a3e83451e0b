"""Preemption: SIGTERM and SIGINT end a run at a step boundary, with a checkpoint of that step.

A preempted Cloud TPU VM, a SLURM job at its time limit and Ctrl-C all send a signal. While
`train_and_evaluate` runs, a `Watcher` turns SIGTERM and SIGINT into a request; the loop checks
it after every step, finishes that step, waits for any async save in flight, saves the step
synchronously, logs one line saying where it stopped and raises `Preempted`. The launchers then
exit with EXIT_CODE so that a scheduler (or launch/*.sh) runs the same command again, which
resumes from that checkpoint: no completed step is lost. A second SIGINT while the run is
stopping ends the process at once (Ctrl-C twice); repeated SIGTERMs change nothing (a scheduler
may send several, and a launch script may forward one the trainer also got).

EXIT_CODE is 75, EX_TEMPFAIL of sysexits.h ("temporary failure; try again later"): distinct from
0 (done), 1 (errors) and the 128 + N of a process killed by signal N (143 for SIGTERM), so a
requeue rule can match it alone.

Several processes must all save at the same step (orbax's save is collective). There JAX's
preemption sync manager, started by `jax.distributed.initialize`, catches SIGTERM itself and
spreads the notice; `multihost_utils.reached_preemption_sync_point(step)` then returns True on
every process at the same step (one past the largest step any process had reached). SIGINT is
forwarded to it as a SIGTERM to this process.
"""

from __future__ import annotations

import os
import signal
import threading

import jax

EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # noqa: N818 (an event, not an error)
  """Training stopped at `step` on SIGTERM/SIGINT after saving that step; rerun to resume."""

  def __init__(self, step: int, message: str):
    super().__init__(message)
    self.step = step


def _synced() -> bool:
  """True when JAX's preemption sync manager decides the step (a jax.distributed run)."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


class Watcher:
  """Turns SIGTERM / SIGINT into a stop request between `start()` and `stop()`.

  Signal handlers can only be set from the main thread; elsewhere the watcher does nothing and
  signals keep their previous handlers.
  """

  def __init__(self):
    self.signal: str | None = None  # Name of the first signal received ('SIGTERM', ...).
    self._previous: dict[int, object] = {}
    self._synced = False

  def start(self) -> Watcher:
    if threading.current_thread() is not threading.main_thread():
      return self
    self._synced = _synced()
    for signum in SIGNALS:
      if self._synced and signum == signal.SIGTERM:
        continue  # JAX's sync manager has its own SIGTERM handler; keep it.
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def stop(self) -> None:
    """Restores the handlers that were there before `start()`."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:
      if signum == signal.SIGINT:  # Ctrl-C twice: stop waiting, let it act as it would.
        self.stop()
        signal.raise_signal(signum)
      return
    self.signal = signal.Signals(signum).name
    if self._synced:
      os.kill(os.getpid(), signal.SIGTERM)  # Hands the request to JAX's sync manager.

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (call after every step, on every process)."""
    if self._synced:
      from jax.experimental import multihost_utils

      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal is not None


def stop_message(signal_name: str | None, step: int, num_steps: int, directory: str) -> str:
  """The one line a preempted run leaves."""
  cause = signal_name or "a preemption notice"
  processes = f" (all {jax.process_count()} processes)" if jax.process_count() > 1 else ""
  return (
    f"Stopped by {cause} after step {step} of {num_steps}{processes}: checkpoint {step} is in "
    f"{directory}; run the same command again to resume (exit status {EXIT_CODE})."
  )
