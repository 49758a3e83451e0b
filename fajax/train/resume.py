"""What may change when a run resumes, and the marker a non-finite stop leaves for its remedies.

Every checkpoint carries the config it was made with (its `meta`). On resume the new config is
compared with it field by field:
- FREE fields may change on any resume. They say how long the run is and how it is watched,
  saved and placed, not what a step computes: the length (num_steps / num_epochs: extend a run),
  the intervals, the progress bar and profiling, how many checkpoints to keep and whether saves are
  async, the eval batch, the mesh and devices (checkpoints reshard), the data folder, the NaN
  policy and the feedback memory check. A longer run with a length-dependent schedule (cosine,
  step) follows the new length's schedule from the resumed step on: a warning says so.
- REMEDIES (the learning rate and its schedule) may change only when resuming from the checkpoint
  a non-finite stop left (`nonfinite.json` in the workdir names it): lowering the learning rate is
  the remedy the NonFiniteLossError names. The stop's state holds the parameters whose loss was
  not finite; when the data was to blame (resume with on_nan='skip') they are fine, but after a
  divergent update no smaller rate can rescue them. So a resume that changes a remedy field rolls
  back (`roll_back_for_remedy`) to the newest checkpoint made before the parameters that first
  gave a non-finite loss (for a skip storm: before its first skipped step), or to step 0 when
  there is none; the later checkpoints move to `<workdir>/nonfinite_checkpoints/` with a copy of
  metrics.jsonl, nothing is deleted.
- Every other field (data, model, rule, optimizer, batch, seed, ...) must be equal: otherwise
  `ConfigChanged` names the fields and both values, and nothing in the workdir is touched.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath

from fajax.train import metrics as metrics_lib
from fajax.train.errors import UserError

FREE = (
  "num_steps",
  "num_epochs",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "keep_checkpoints",
  "checkpoint_async",
  "diagnostics_every",
  "profile_steps",
  "progress_bar",
  "eval_batch_size",
  "mesh",
  "distributed",
  "data_dir",
  "on_nan",
  "max_consecutive_skips",
  "feedback_memory_budget_gb",
)
REMEDIES = ("learning_rate", "lr_schedule", "warmup_steps", "lr_boundaries", "lr_decay_factor")
NONFINITE_FILE = "nonfinite.json"
NONFINITE_DIR = "nonfinite_checkpoints"


class ConfigChanged(UserError):
  """The workdir's run was made with other values of fields that may not change on resume."""


def as_dict(config) -> dict[str, Any]:
  """The config as JSON values (tuples as lists), as checkpoints and config.json store it."""
  return json.loads(config.to_json_best_effort())


def changes(saved: dict[str, Any], config, allowed=FREE) -> list[tuple[str, Any, Any]]:
  """[(field, saved value, new value)] for the fields outside `allowed` that differ.

  A field the saved config lacks (added to fajax since) counts as unchanged.
  """
  new = as_dict(config)
  return [
    (k, saved[k], new.get(k))
    for k in sorted(set(saved) & set(new))
    if k not in allowed and saved[k] != new.get(k)
  ]


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
  return "; ".join(f"{k} {old!r} there, {new!r} now" for k, old, new in diffs)


def check(saved: dict[str, Any] | None, config, *, step: int, where, after_nonfinite: bool):
  """Raises ConfigChanged when `config` may not resume the checkpoint made with `saved`."""
  if not saved:  # A checkpoint of an older fajax without its config: nothing to compare.
    return
  allowed = FREE + REMEDIES if after_nonfinite else FREE
  diffs = changes(saved, config, allowed)
  if diffs:
    hint = "" if after_nonfinite else f" ({', '.join(REMEDIES)} only after a non-finite stop)"
    raise ConfigChanged(
      f"The checkpoint of step {step} in {where} was made with another config: "
      f"{describe(diffs)}; resume with the values it was made with (config.json) or use a new "
      f"--workdir (fields that may change on resume: {', '.join(FREE)}{hint})."
    )
  new = as_dict(config)
  length = [k for k in ("num_steps", "num_epochs") if saved.get(k, new[k]) != new[k]]
  if length and new["lr_schedule"] != "constant":
    logging.warning(
      "Resuming step %d with %s; the %r schedule follows the new length from here on.",
      step,
      describe([(k, saved[k], new[k]) for k in length]),
      new["lr_schedule"],
    )


def mark_nonfinite(workdir, bad_step: int, checkpoint_step: int, diverged_at=None) -> None:
  """Records that a non-finite stop at step `bad_step` left its state as `checkpoint_step`, and
  that the parameters after `diverged_at` updates (default: checkpoint_step) gave a non-finite
  loss, so that a remedy rolls back before them."""

  if jax.process_index() == 0:
    diverged_at = checkpoint_step if diverged_at is None else diverged_at
    record = {
      "nonfinite_step": bad_step,
      "checkpoint_step": checkpoint_step,
      "diverged_at": diverged_at,
    }
    (epath.Path(workdir) / NONFINITE_FILE).write_text(json.dumps(record) + "\n")


def _marker(workdir) -> dict[str, Any]:
  try:
    return json.loads((epath.Path(workdir) / NONFINITE_FILE).read_text())
  except (OSError, ValueError):
    return {}


def after_nonfinite(workdir, step: int) -> bool:
  """True when checkpoint `step` is the last good state a non-finite stop left."""
  return _marker(workdir).get("checkpoint_step") == step


def roll_back_for_remedy(workdir, ckpt, meta: dict[str, Any], config) -> bool:
  """Rolls back a resumed non-finite stop whose config changes a remedy field (see the module
  docstring); True when it did (restore again). `ckpt` is the run's Checkpointer."""
  step = int(meta.get("step", -1))
  saved = meta.get("config") or {}
  new = as_dict(config)
  record = _marker(workdir)
  if record.get("checkpoint_step") != step or record.get("rolled_back"):
    return False
  if all(saved.get(k) == new[k] for k in REMEDIES):
    return False
  diverged_at = int(record.get("diverged_at", step))
  earlier = [s for s in ckpt.all_steps() if s < diverged_at]
  target = epath.Path(workdir) / NONFINITE_DIR
  metrics = epath.Path(workdir) / metrics_lib.METRICS_FILE
  if jax.process_index() == 0 and metrics.exists():
    target.mkdir(parents=True, exist_ok=True)
    metrics.copy(target / f"metrics-{step}.jsonl", overwrite=True)
  moved = [ckpt.move_aside(s, NONFINITE_DIR) for s in ckpt.all_steps() if s >= diverged_at]
  back = earlier[-1] if earlier else 0
  if jax.process_index() == 0:
    record.update(checkpoint_step=back, rolled_back=True)
    (epath.Path(workdir) / NONFINITE_FILE).write_text(json.dumps(record) + "\n")
  logging.warning(
    "Resuming the non-finite stop of step %d with %s: starting again from step %d, before the "
    "update that diverged; checkpoints moved to %s.",
    record.get("nonfinite_step", step + 1),
    describe([(k, saved.get(k), new[k]) for k in REMEDIES if saved.get(k) != new[k]]),
    back,
    ", ".join(moved),
  )
  return True


def clear_nonfinite(state, state_sharding):
  """`state` with the non-finite flag reset, so a resumed run trains on (a checkpoint saved by an
  older fajax at a NaN stop still carries it)."""
  fresh = jax.jit(
    lambda: jnp.full((), -1, jnp.int32), out_shardings=state_sharding.nonfinite_step
  )()
  return state.replace(nonfinite_step=fresh)
