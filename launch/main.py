"""Trains one config: parses flags and calls fajax.train.train_and_evaluate (or dry_run).

Run from the repository root (the experiment configs import `experiments.common` from there):

  python -m launch.main --config=experiments/tiny.py --workdir=/tmp/tiny
  python -m launch.main --config=experiments/mnist_net.py:usf_sn --config.rule=fa --workdir=/tmp/r
  python -m launch.main --config=experiments/resnet18.py --dry_run --fake_devices=64

--config=<file>.py[:<arg>] loads get_config(<arg>) from the file; --config.<field>=<value>
overrides any field. Running the same command again resumes from the workdir's newest checkpoint.
--dry_run compiles the train step for the configured mesh and prints per-device memory, FLOPs per
step and each array's sharding, without training; with --fake_devices=N it does so on N fake CPU
devices, to check a config for an N-chip slice from a laptop.

Several processes (hosts): run the same command on every host with --config.distributed=True, a
shared workdir (gs://...) and, where JAX does not detect the cluster (Cloud TPU, SLURM, ...),
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the environment variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); these flags imply distributed=True.
On SIGTERM or SIGINT the run saves the current step and exits with status 75: rerun to resume.

A mistake (a bad value, a missing config file or dataset, an unusable or busy workdir, a resume
under a changed config) prints one sentence and exits with status 2; a non-finite loss with 3.
FAJAX_TRACEBACK=1 (or --verbosity=1) shows the traceback. Keys of the option dicts can be given
one by one: --config.rule_options.scale=sn, --config.overrides.Dense_0=bp.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# New attributes: `--config.rule_options.scale=sn` adds a key to an option dict (a misspelt
# top-level field is still refused, by fajax.train.validate).
_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file[:arg].", lock_config=False, accept_new_attributes=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, events.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step and report; no training.")
_FAKE_DEVICES = flags.DEFINE_integer(
  "fake_devices", None, "Run on this many fake CPU devices (for --dry_run of a large slice)."
)
_REPORT = flags.DEFINE_string("report", None, "--dry_run: also write the report as JSON here.")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Multi-process: HOST:PORT of process 0 (JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-process: how many processes (JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-process: this process's index, 0 to N-1 (JAX_PROCESS_ID)."
)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  from fajax.train import metrics as metrics_lib

  metrics_lib.quiet_orbax_logging()
  if _FAKE_DEVICES.value:
    # Must happen before JAX creates its backends (importing jax does not).
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={_FAKE_DEVICES.value}"
    )
    import jax

    jax.config.update("jax_platforms", "cpu")
  from fajax import train
  from fajax.train import preemption

  config = _CONFIG.value  # A config file that failed to load raises its error here.
  if _DRY_RUN.value:
    report = train.dry_run(config)
    print(train.format_report(report))
    if _REPORT.value:
      with open(_REPORT.value, "w") as f:
        json.dump(report, f, indent=2)
    return
  if not _WORKDIR.value:
    raise app.UsageError("Give --workdir: the folder where this run's checkpoints and logs go.")
  distributed = dict(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )
  if any(v is not None for v in distributed.values()):
    from fajax.train import distributed as distributed_lib

    config.distributed = True
    distributed_lib.initialize(**distributed)
  logging.info("Config:\n%s", config)
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted:  # The loop saved the step and logged where it stopped.
    sys.exit(preemption.EXIT_CODE)


if __name__ == "__main__":
  from fajax.train import errors

  app.run(errors.one_sentence_errors(main), flags_parser=errors.parse_flags)
