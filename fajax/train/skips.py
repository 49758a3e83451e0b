"""With config.on_nan = 'skip': a warning for every skipped step, and a stop in a skip storm.

The train step counts skipped updates in its metrics (`skipped_steps`, a running total). The
watcher reads that total one step late, after the next step has been dispatched, so the host never
makes the devices wait; a storm is noticed one step after its limit is reached.
"""

from __future__ import annotations

from absl import logging


class SkipWatch:
  """Counts consecutive skipped steps; `push` says when `limit` of them came in a row."""

  def __init__(self, limit: int, skipped: int):
    self.limit = limit  # 0: never stop.
    self.total = skipped  # Skipped steps so far (from the restored state).
    self.streak = 0
    self.first_step = self.last_step = None  # The first and last step of the current streak.
    self._pending = None

  def push(self, step: int, metrics) -> bool:
    """Records step `step`'s metrics; checks the previous step's. True: stop the run now."""
    pending, self._pending = self._pending, (step, metrics["skipped_steps"])
    return pending is not None and self._check(*pending)

  def flush(self) -> bool:
    """Checks the last pushed step (at the end of a run)."""
    pending, self._pending = self._pending, None
    return pending is not None and self._check(*pending)

  def _check(self, step: int, skipped) -> bool:
    total = int(skipped)
    if total == self.total:
      self.streak = 0
      return False
    if self.streak == 0:
      self.first_step = step
    self.streak += total - self.total
    self.total, self.last_step = total, step
    limit = f"; the run stops at {self.limit} in a row" if self.limit else ""
    logging.warning(
      "Step %d: the loss is not finite, its update was skipped (%d in a row, %d in total%s).",
      step,
      self.streak,
      total,
      limit,
    )
    return bool(self.limit) and self.streak >= self.limit
