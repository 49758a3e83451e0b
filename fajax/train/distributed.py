"""Joining a multi-process run (several hosts, or several processes on one machine).

`initialize()` calls `jax.distributed.initialize` with the coordinator address, process count
and process id taken from, first found wins:

1. its arguments (launch/main.py's --coordinator_address, --num_processes, --process_id);
2. the environment: JAX_COORDINATOR_ADDRESS (host:port of process 0's coordinator service),
   JAX_NUM_PROCESSES, JAX_PROCESS_ID;
3. JAX's cluster detection (Cloud TPU pods, SLURM, Open MPI, Kubernetes), for what is still
   missing.

Processes on CPUs exchange collectives through gloo (set here before JAX starts its backends;
XLA's default CPU client cannot talk across processes). GPUs use NCCL and TPUs their own links.
"""

from __future__ import annotations

import os

import jax

ENV = {
  "coordinator_address": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


def settings(coordinator_address=None, num_processes=None, process_id=None) -> dict:
  """The arguments for jax.distributed.initialize: given values, else the ENV variables."""
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  out = {}
  for key, value in given.items():
    if value is None:
      value = os.environ.get(ENV[key]) or None
    if value is not None and key != "coordinator_address":
      try:
        value = int(value)
      except ValueError:
        raise ValueError(f"{ENV[key]} = {value!r} is not valid; use an integer.") from None
    if value is not None:
      out[key] = value
  count, index = out.get("num_processes"), out.get("process_id")
  if count is not None and count < 1:
    raise ValueError(f"The process count is {count}; use 1 or more processes.")
  if index is not None and count is not None and not 0 <= index < count:
    raise ValueError(f"The process id is {index}; with {count} processes use 0 to {count - 1}.")
  return out


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> None:
  """Joins the run (once per process; later calls do nothing). Call before anything uses JAX."""
  if jax.distributed.is_initialized():
    return
  kwargs = settings(coordinator_address, num_processes, process_id)
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # JAX found no cluster to fill in what is missing.
    if "defined" not in str(e):
      raise
    reason = str(e).rstrip(".")
    raise ValueError(
      f"config.distributed is True but JAX cannot tell how to join the run ({reason}); pass "
      "--coordinator_address, --num_processes and --process_id (or set JAX_COORDINATOR_ADDRESS, "
      "JAX_NUM_PROCESSES and JAX_PROCESS_ID), or run under Cloud TPU, SLURM, Open MPI or "
      "Kubernetes."
    ) from None
