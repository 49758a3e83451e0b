"""Metric writers: `<workdir>/metrics.jsonl`, TensorBoard event files, and a progress bar.

metrics.jsonl has one JSON object per logged step and split:
  {"step": 100, "split": "train", "loss": ..., "top1_error": ..., "learning_rate": ..., ...}
It is strict JSON: a NaN or infinite value is written as null (TensorBoard keeps the value).
Only process 0 writes. On resume from step k the lines after k (written by the interrupted run
after its last checkpoint) are dropped, so the file of a resumed run equals that of an
uninterrupted one, except for the wall-clock fields in TIMING_KEYS. `read_metrics` reads it back
(the report, the plots and the tests all read it through this one function).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

import jax
from absl import logging as absl_logging

from fajax.train import paths

TIMING_KEYS = ("step_time", "images_per_sec")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalar(value) -> float | int:
  value = value.item() if hasattr(value, "item") else value
  return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _finite_or_none(value):
  """NaN and infinities as null: JSON has no spelling for them that every reader accepts."""
  return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(
  workdir_or_path: str | os.PathLike, *, drop_timing: bool = False, missing_ok: bool = False
) -> list[dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl` (or of that file), in file order; local or gs://.

  Without the timing fields (TIMING_KEYS) when `drop_timing`. Raises FileNotFoundError when there
  is no such file, unless `missing_ok` (then an empty list).
  """
  path = os.fspath(workdir_or_path)
  if paths.isdir(path):
    path = paths.join(path, METRICS_FILE)
  if not paths.exists(path):
    if missing_ok:
      return []
    raise FileNotFoundError(
      f"No metrics file at {path}: pass a run's workdir (holding {METRICS_FILE}) "
      "or the file itself."
    )
  records = []
  with paths.open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        if drop_timing:
          record = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        records.append(record)
  return records


def _truncate_after(path: str, step: int) -> None:
  """Keeps the records with record['step'] <= step (and drops a torn last line)."""
  if not paths.exists(path):
    return
  kept = []
  with paths.open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # A line cut by a kill mid-write.
        continue
      if record.get("step", math.inf) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  paths.write_text(path, "".join(kept))


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard (`<workdir>/tensorboard/`)."""

  def __init__(self, workdir: str, *, start_step: int = 0, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self.path = paths.join(workdir, METRICS_FILE)
    self._tb = None
    if not self._active:
      return
    paths.makedirs(workdir)
    _truncate_after(self.path, start_step)
    self._file = paths.open_append(self.path)
    if tensorboard:
      import tensorboardX  # Lazy: only a run with a workdir needs it.

      # The event writer needs a local folder: a remote workdir gets a mirrored temporary one.
      self._tb_dir = paths.LocalMirror(paths.join(workdir, TENSORBOARD_DIR))
      self._tb = tensorboardX.SummaryWriter(self._tb_dir.local)

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Writes one record; returns it (python scalars)."""
    record = {"step": int(step), "split": split}
    record.update({k: _scalar(v) for k, v in metrics.items()})
    if not self._active:
      return record
    line = {k: _finite_or_none(v) for k, v in record.items()}
    self._file.write(json.dumps(line, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key not in ("step", "split"):
          self._tb.add_scalar(f"{split}/{key}", value, int(step))
    return record

  def flush(self) -> None:
    if self._active:
      self._file.flush()
      if self._tb is not None:
        self._tb.flush()
        self._tb_dir.sync()

  def close(self) -> None:
    if self._active:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
        self._tb_dir.close()


class Progress:
  """A tqdm progress bar with ETA, shown only for interactive runs (stderr is a terminal)."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self._bar = None
    if enabled and jax.process_index() == 0 and sys.stderr.isatty():
      import tqdm

      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logging() -> None:
  """Hides orbax's INFO lines from absl's log handler (launchers call this once)."""
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
