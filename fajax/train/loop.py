"""`train_and_evaluate(config, workdir)`: the training loop behind launcher, tests and notebooks.

Sections of one run, in order: validate and assemble (nothing compiled yet); resume from the
newest valid checkpoint or initialise; train, logging every `log_every` steps, evaluating every
`eval_every`, saving every `checkpoint_every` (`fajax.train.periodic`), tracing `profile_steps`
steps (`fajax.train.profiling`); at the end evaluate, save and wait for the saves.

Step numbering: "step s" in logs, metrics and checkpoints means "after s updates"; the train
record at step s describes the batch of update s (batch index s - 1).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import logging

from fajax import diagnostics
from fajax.data.prefetch import prefetch_to_device
from fajax.train import build as build_lib
from fajax.train import config as config_lib
from fajax.train import distributed, paths, periodic, preemption, preflight, profiling
from fajax.train import lock as lock_lib
from fajax.train import metrics as metrics_lib
from fajax.train import resume as resume_lib
from fajax.train import skips as skips_lib
from fajax.train import state as state_lib
from fajax.train.errors import NonFiniteLossError

CHECKPOINT_DIR = "checkpoints"

Callback = Callable[[int, Any, dict[str, Any]], None]


def _device_batches(exp: build_lib.Experiment, split: str, batch_size: int, **kwargs):
  """Global batches of `split` as this process reads them, two in flight to the devices."""
  config = exp.config
  local = exp.data.get(
    config.dataset,
    split,
    batch_size,
    seed=config.seed,
    data_dir=config.data_dir,
    **kwargs,
    **dict(config.dataset_options),
  )
  # Queued transfers let host-to-device copies overlap the steps.
  return prefetch_to_device(local, size=2, sharding=exp.batch_sharding)


def train_batches(exp: build_lib.Experiment, start_step: int):
  """Global train batches from step `start_step` on, as this process reads them."""
  return _device_batches(exp, "train", exp.process_batch, start_step=start_step)


def evaluate(exp: build_lib.Experiment, state) -> dict[str, float]:
  """Loss and exact top-1 error over the whole test split (padding masked out)."""
  config = exp.config
  batches = _device_batches(exp, "test", exp.process_eval_batch)
  outputs = [exp.eval_step(state, batch) for batch in batches]
  outputs = jax.device_get(outputs)
  count = sum(int(o["count"]) for o in outputs)
  if count == 0:
    raise ValueError(f"The test split of config.dataset = {config.dataset!r} is empty.")
  loss = sum(float(o["loss_sum"]) for o in outputs) / count
  errors = sum(int(o["errors"]) for o in outputs)
  return {"loss": loss, "top1_error": errors / count, "num_examples": count}


def _write_run_files(workdir: str, exp: build_lib.Experiment) -> None:
  """config.json (the config as given) and run.json (what it resolved to on this machine)."""
  if jax.process_index() != 0:
    return
  config = exp.config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  paths.write_text(paths.join(workdir, "config.json"), config)
  abstract = exp.abstract_state
  run = {
    "num_steps": exp.num_steps,
    "mesh": dict(exp.mesh.shape),
    "devices": [str(d) for d in exp.mesh.devices.flat],
    "process_count": jax.process_count(),
    "rule": exp.rule.describe(),
    "dataset": {
      "name": exp.info.name,
      "num_classes": exp.info.num_classes,
      "image_shape": list(exp.info.image_shape),
      "num_train": exp.info.num_train,
      "num_test": exp.info.num_test,
    },
    "num_params": sum(int(x.size) for x in jax.tree.leaves(abstract.params)),
    "feedback_bytes": state_lib.num_bytes(abstract.feedback),
    "jax": jax.__version__,
    "host": platform.node(),
  }
  run = json.dumps(run, indent=2, sort_keys=True) + "\n"
  paths.write_text(paths.join(workdir, "run.json"), run)


def train_and_evaluate(
  config,
  workdir: str,
  *,
  model=None,
  dataset=None,
  callbacks: Sequence[Callback] = (),
):
  """Trains and evaluates the model `config` describes, resuming from `workdir` if it has a run.

  Writes to `workdir`: checkpoints/ (orbax), metrics.jsonl, tensorboard/ (event files),
  config.json and run.json, and with config.profile_steps a profiler trace in profile/. A run
  killed at any moment and started again with the same config and workdir ends with exactly the
  parameters of an uninterrupted run.

  Args:
    config: a trainer config; start from `fajax.train.default_config()` (fields documented there).
    workdir: the run directory (created if needed).
    model: optional stand-in for the model registry (tests, notebooks): a Flax Module, or a
      factory called like `fajax.models.get` minus the name. The config's rule still drives the
      Kolen-Pollack feedback update, so build the module with the same rule.
    dataset: optional stand-in for `fajax.data` (an object with its `info` and `get`).
    callbacks: functions `f(step, state, metrics)` called after every step (metrics may still be
      device arrays; do not keep `state`, the next step donates it).

  Returns:
    The final TrainState.

  Raises:
    fajax.train.errors.UserError (a ValueError): a mistake the user can fix, said in one sentence,
      before anything is compiled or written: an invalid config value, a missing dataset, a batch
      larger than the data, a workdir that is a file or cannot be written, a workdir another live
      run holds (lock.WorkdirLocked), a resume under a changed config (resume.ConfigChanged).
    NonFiniteLossError: the loss became non-finite and config.on_nan is 'stop' (or 'skip' hit
      config.max_consecutive_skips in a row); the last good state is saved as a checkpoint first,
      and a rerun with a lower learning rate (or on_nan='skip') resumes from it.
    Preempted: SIGTERM or SIGINT arrived; the run stopped after the current step and saved it
      (fajax.train.preemption; launchers exit with status 75 then).
  """
  config_lib.validate(config, check_dataset=dataset is None, check_model=model is None)
  if config.distributed:  # Before anything asks for devices.
    distributed.initialize()
  exp = build_lib.assemble(config, model=model, dataset=dataset)  # Of the validated config.
  preflight.check_data(config, exp.info, injected=dataset is not None)
  workdir = paths.resolve(workdir)  # A local folder or a URL such as gs://bucket/run.
  preflight.check_workdir(workdir, CHECKPOINT_DIR)
  lock = lock_lib.acquire_for_run(workdir)
  try:
    return _train(exp, workdir, callbacks)
  finally:  # Every way out (an error, a NaN stop, a preemption) releases the workdir.
    if lock is not None:
      lock.release()


def _train(exp: build_lib.Experiment, workdir: str, callbacks: Sequence[Callback]):
  """The run itself, while this process holds the workdir lock."""
  config = exp.config
  from fajax.train import checkpoint as checkpoint_lib  # Lazy: orbax is heavy to import.

  ckpt = checkpoint_lib.Checkpointer(
    paths.join(workdir, CHECKPOINT_DIR),
    keep=config.keep_checkpoints,
    async_save=config.checkpoint_async,
  )
  state, start = _restore_or_init(exp, ckpt, workdir)
  _write_run_files(workdir, exp)
  writer = metrics_lib.MetricWriter(workdir, start_step=start)
  progress = metrics_lib.Progress(exp.num_steps, start, config.progress_bar)
  profiler = profiling.Profiler(workdir, start, config.profile_steps)
  meta = {"config": json.loads(config.to_json_best_effort())}

  def save(step, state):
    ckpt.save(step, state, {**meta, "step": int(step), "data_position": int(step)})

  skips = None
  if config.on_nan == "skip":
    skips = skips_lib.SkipWatch(config.max_consecutive_skips, int(state.skipped))
  last = exp.num_steps
  log_due = periodic.Every(config.log_every, last)
  eval_due = periodic.Every(config.eval_every, last)
  save_due = periodic.Every(config.checkpoint_every, last)

  watcher = preemption.Watcher().start()  # SIGTERM/SIGINT: stop after the current step.
  try:
    batches = train_batches(exp, start)
    timer = periodic.StepTimer(start)
    for s in range(start + 1, last + 1):  # s: the step after this update.
      diagnose = diagnostics.should_run(s, config.diagnostics_every)
      with jax.profiler.StepTraceAnnotation("train", step_num=s):
        train_step = exp.diagnostics_step if diagnose else exp.train_step
        state, metrics = train_step(state, next(batches))
      if skips is not None and (skips.push(s, metrics) or (s == last and skips.flush())):
        _stop_skip_storm(s, state, ckpt, save, skips, workdir)
      if s == start + 1:  # The first step includes compilation: time the others only.
        jax.block_until_ready(metrics)
        logging.info("Compiled and ran the first step in %.1f s.", timer.elapsed())
        timer.restart(s)
      profiler.after_step(s, metrics)
      log_now, eval_now, save_now = log_due(s) or diagnose, eval_due(s), save_due(s)
      postfix = {}
      if log_now or eval_now or save_now:
        metrics = jax.device_get(metrics)
        _stop_if_nonfinite(metrics, state, ckpt, save, exp, workdir)
      if log_now:
        record = _train_record(metrics, config) | timer.rates(s, config.batch_size)
        writer.write(s, "train", record)
        postfix = {"loss": float(metrics["loss"])}
      if eval_now:
        writer.write(s, "test", evaluate(exp, state))
      if log_now or eval_now:
        writer.flush()  # Before the checkpoint: a checkpoint at s implies the records up to s.
      if save_now:
        save(s, state)
      if s != last and watcher.reached(s):
        _stop_preempted(s, state, ckpt, save, last, watcher.signal)
      progress.update(1, **postfix)
      for callback in callbacks:
        callback(s, state, metrics)
      if log_now or eval_now or save_now:  # Evaluating and saving are not step time.
        timer.restart(s)
  finally:
    profiler.close()
    watcher.stop()
    progress.close()
    writer.close()
    ckpt.close()
  return state


def _restore_or_init(exp: build_lib.Experiment, ckpt, workdir: str):
  """(state, step): the newest valid checkpoint (rolled back first when a remedy asks for it), or
  a freshly initialised state at step 0."""
  config = exp.config
  restored = ckpt.restore_latest(exp.abstract_state)
  if restored is not None and resume_lib.roll_back_for_remedy(workdir, ckpt, restored[1], config):
    restored = ckpt.restore_latest(exp.abstract_state)
  if restored is None:
    return exp.init(jax.random.PRNGKey(config.seed)), 0
  state, meta = restored
  start = int(meta.get("step", int(state.step)))
  after_nonfinite = resume_lib.after_nonfinite(workdir, start)
  resume_lib.check(
    meta.get("config"), config, step=start, where=ckpt.directory, after_nonfinite=after_nonfinite
  )
  if int(state.nonfinite_step) >= 0:  # Saved at a NaN stop by an older fajax.
    state = resume_lib.clear_nonfinite(state, exp.state_sharding)
  logging.info("Resumed from step %d of %s.", start, ckpt.directory)
  return state, start


def _train_record(metrics: dict[str, Any], config) -> dict[str, Any]:
  """The step's metrics as logged: without the NaN flag, and skipped_steps only under 'skip'."""
  record = {k: v for k, v in metrics.items() if k != "nonfinite_step"}
  if config.on_nan != "skip":
    record.pop("skipped_steps", None)
  return record


def _save_now(ckpt, save, step, state) -> None:
  """Saves `state` as `step` synchronously, after any save in flight, unless that step is
  already the newest checkpoint."""
  ckpt.wait()
  if ckpt.latest_step() != step:
    save(step, state)
    ckpt.wait()


def _stop_preempted(step, state, ckpt, save, num_steps, signal_name) -> None:
  """Saves `step` synchronously (after any save in flight), logs where it stopped, raises."""
  if ckpt.saving():
    logging.info("Preempted: waiting for the checkpoint save in flight.")
  _save_now(ckpt, save, step, state)
  message = preemption.stop_message(signal_name, step, num_steps, ckpt.directory)
  logging.warning(message)
  raise preemption.Preempted(step, message)


def _stop_if_nonfinite(metrics, state, ckpt, save, exp, workdir) -> None:
  """Raises NonFiniteLossError (after saving the last good state) when a loss went non-finite."""
  bad = int(metrics["nonfinite_step"])
  if bad < 0:
    return
  # Updates froze at the first bad step, so `state` is the good state after `bad` updates. It is
  # saved without the non-finite flag, and marked, so that both remedies can resume from it.
  _save_now(ckpt, save, bad, resume_lib.clear_nonfinite(state, exp.state_sharding))
  resume_lib.mark_nonfinite(workdir, bad + 1, bad)
  raise NonFiniteLossError(
    f"Loss became non-finite at step {bad + 1}; the last good checkpoint (step {bad}) is in "
    f"{ckpt.directory}; lower the learning rate or set config.on_nan='skip'."
  )


def _stop_skip_storm(step, state, ckpt, save, skips, workdir) -> None:
  """Raises NonFiniteLossError after config.max_consecutive_skips skipped steps in a row."""
  # Skipped updates left the parameters as they were before the storm: save them at this step.
  _save_now(ckpt, save, step, state)
  # The parameters went bad in the update before the streak's first step.
  resume_lib.mark_nonfinite(workdir, skips.first_step, step, diverged_at=skips.first_step - 1)
  raise NonFiniteLossError(
    f"Loss was non-finite for {skips.streak} steps in a row, steps {skips.first_step} to "
    f"{skips.last_step} "
    f"(config.max_consecutive_skips = {skips.limit}); the last good state (step {step}) is in "
    f"{ckpt.directory}; lower the learning rate or raise config.max_consecutive_skips."
  )
