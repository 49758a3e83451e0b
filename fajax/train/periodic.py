"""When the training loop acts, and how long its steps took between actions.

`Every(n, last)` says whether to log, evaluate or save after a step, as clu's periodic actions do:
every `n` steps (0: never) and always on the last step. Only step counts, no wall-clock periods:
a step-based cadence is the same in an interrupted and an uninterrupted run, so their
metrics.jsonl and checkpoints agree record for record.

`StepTimer` measures the mean wall time of the steps since it was last restarted; the loop
restarts it after the first step (which compiles) and after every action (evaluation and saving
are not step time).
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Every:
  """True after step `n`, `2n`, ... (never when n is 0) and after the last step `last`."""

  n: int
  last: int

  def __call__(self, step: int) -> bool:
    return step == self.last or (self.n > 0 and step % self.n == 0)


class StepTimer:
  """Wall time per step since `restart(step)` (created restarted at `step`)."""

  def __init__(self, step: int):
    self.restart(step)

  def restart(self, step: int) -> None:
    self._start, self._step = time.perf_counter(), step

  def elapsed(self) -> float:
    """Seconds since the last restart."""
    return time.perf_counter() - self._start

  def rates(self, step: int, batch_size: int) -> dict[str, float]:
    """{"step_time": seconds per step, "images_per_sec"} over the steps up to `step`."""
    elapsed, steps = self.elapsed(), max(step - self._step, 1)
    return {"step_time": elapsed / steps, "images_per_sec": batch_size * steps / max(elapsed, 1e-9)}
