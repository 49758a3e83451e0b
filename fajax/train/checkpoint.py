"""Checkpoints of the TrainState with orbax: async saves, keep the newest K, resume from the newest
valid one.

A checkpoint holds the whole state (params, feedback, batch stats, optimizer state, step, rng,
counters) and a small JSON `meta` item (step, data position, config). The data position is the
step: training batch k is a pure function of (seed, k), so resuming at step k reads exactly the
batches an uninterrupted run would have read.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save leaves no half checkpoint under a step name. A step directory that still fails to
restore (a damaged disk, a truncated copy) is moved aside to `<workdir>/corrupt_checkpoints/` with
a warning, and the previous step is tried. So is a step whose restored bytes do not match the
checksums saved in its meta (`fajax.train.integrity`): silent bit rot never resumes a run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from fajax.train import integrity, paths
from fajax.train.errors import UserError

_CORRUPT_DIR = "corrupt_checkpoints"


class Checkpointer:
  """Saves and restores TrainStates in `directory` (created if needed)."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)  # Local, or a URL like gs://bucket/run/checkpoints.
    self._options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=True,  # Leftovers of saves killed midway.
    )
    self._manager = self._open()
    self.save_seconds: list[float] = []  # Blocking time of each save call (for benchmarks).

  def _open(self):
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=handlers)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Starts saving `state` as `step` (in the background when async); returns quickly."""
    start = time.perf_counter()
    meta = {**meta, integrity.META_KEY: integrity.checksums(state)}
    self._manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self.save_seconds.append(time.perf_counter() - start)

  def saving(self) -> bool:
    """True while an async save is still being written."""
    return self._manager.is_saving_in_progress()

  def wait(self) -> None:
    """Blocks until every pending save is on disk."""
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest checkpoint that restores, or None when there is none.

    `abstract_state` gives shapes, dtypes and shardings of the result (so a run can resume on
    another mesh). A checkpoint that fails to restore is moved aside with a warning.

    Raises:
      ValueError: the newest readable checkpoint holds a state of another structure (the workdir
        belongs to a different model, rule or optimizer); nothing is moved then.
    """
    expected = _shapes(abstract_state)
    for step in reversed(self.all_steps()):
      try:
        saved = _shapes(self._manager.item_metadata(step)["state"])
        if not saved:
          raise ValueError("the checkpoint has no state metadata")
      except Exception as e:  # Unreadable metadata: a damaged or partial checkpoint.
        self._set_aside(step, e)
        continue
      if saved != expected:
        raise UserError(
          f"The checkpoint of step {step} in {self.directory} holds a different training state "
          f"than this config builds ({_difference(saved, expected)}); resume with the config it "
          "was written with (config.json beside it) or use a new workdir."
        )
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
          ),
        )
      except Exception as e:  # Orbax raises many types for damaged files; all mean "unusable".
        self._set_aside(step, e)
        continue
      state, meta = restored["state"], dict(restored["meta"] or {})
      damage = integrity.mismatch(state, meta.get(integrity.META_KEY))
      if damage:  # Bit rot that orbax read without complaint.
        self._set_aside(step, ValueError(damage))
        continue
      return state, meta
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step out of the checkpoint directory, so it is neither retried nor
    overwritten, and reopens the manager."""
    target = self.move_aside(step, _CORRUPT_DIR)
    message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    logging.warning(
      "Checkpoint step %d in %s cannot be restored (%s: %s); moved to %s, trying the previous one.",
      step,
      self.directory,
      type(error).__name__,
      message,
      target,
    )

  def move_aside(self, step: int, folder: str) -> str:
    """Moves step `step` to `<workdir>/<folder>/<step>-<time>` (kept, never resumed from) and
    reopens the manager; returns the new path."""
    target = os.path.join(os.path.dirname(self.directory), folder, f"{step}-{int(time.time())}")
    source = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and paths.exists(source):
      paths.makedirs(os.path.dirname(target))
      paths.move(source, target)
    self._manager.close()
    self._manager = self._open()
    return target

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  """{'params/Dense_0/kernel': (64, 16), ...} for arrays, abstract arrays or orbax metadata."""
  if tree is None:
    return {}
  return {
    "/".join(_key(k) for k in path): tuple(getattr(leaf, "shape", ()))
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _difference(saved: dict, expected: dict) -> str:
  missing = sorted(set(expected) - set(saved))
  extra = sorted(set(saved) - set(expected))
  shapes = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
  parts = []
  if missing:
    parts.append(f"it lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
  if extra:
    parts.append(f"it has extra {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else ""))
  for k in shapes[:3]:
    parts.append(f"{k} is {saved[k]}, expected {expected[k]}")
  return "; ".join(parts)
