"""The trainer: `train_and_evaluate(config, workdir)`, `dry_run(config)` and the config they take.

    config = fajax.train.default_config()
    config.rule = "usf"
    state = fajax.train.train_and_evaluate(config, "/tmp/run")

Modules, one job each: config (fields, defaults, validation), state (TrainState), optim (optax
chain), mesh (device mesh and shardings), step (pure train/eval steps and their jit), build
(config -> model, optimizer, mesh, jitted steps), checkpoint (orbax), metrics (jsonl and its
reader, TensorBoard, progress bar), loop (train_and_evaluate), periodic (when the loop logs,
evaluates and saves), profiling (jax.profiler traces of a few steps), dry_run (compile-only
memory and FLOPs report), paths (local and gs:// workdirs), distributed (joining a
multi-process run), preemption (SIGTERM/SIGINT: save and stop); and the hardening around a run:
errors (UserError, one sentence in the launchers), preflight (data and workdir checks), lock (the
workdir lock), resume (what may change on resume), integrity (checkpoint checksums), skips (skip
storms). Importing this package
does not import orbax or TensorBoard; they load when a run starts. See docs/training.md.
"""

from fajax.train.config import default_config, validate
from fajax.train.dry_run import dry_run, format_report
from fajax.train.errors import NonFiniteLossError, UserError
from fajax.train.loop import evaluate, train_and_evaluate
from fajax.train.preemption import Preempted
from fajax.train.state import TrainState

__all__ = [
  "NonFiniteLossError",
  "Preempted",
  "TrainState",
  "UserError",
  "default_config",
  "dry_run",
  "evaluate",
  "format_report",
  "train_and_evaluate",
  "validate",
]
