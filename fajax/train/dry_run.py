"""Dry run: compile the train step for the configured mesh without training, and report its cost.

For checking a config before paying for the hardware: run it on CPU with as many fake devices as
the target slice (XLA_FLAGS=--xla_force_host_platform_device_count=64, or the launcher's
`--fake_devices=64`) and read the per-device memory XLA plans for the step, the FLOPs per step
and where every array lives. Nothing big is allocated: the state is abstract (jax.eval_shape) and
the step is lowered and compiled ahead of time from shapes only.

Numbers come from the compiled executable of the backend it runs on: CPU numbers are a guide for
TPU/GPU (layouts, fusion and padding differ), not a promise.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from fajax.train import build as build_lib
from fajax.train import mesh as mesh_lib
from fajax.train import state as state_lib


def memory_bytes(compiled) -> dict[str, int] | None:
  """Bytes XLA plans for a compiled executable (None where the backend does not say)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  fields = ("argument", "output", "temp", "alias", "generated_code")
  out = {f: int(getattr(stats, f"{f}_size_in_bytes", 0) or 0) for f in fields}
  # Donated state aliases the outputs onto the arguments: count those bytes once.
  out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def flops(compiled) -> float | None:
  """FLOPs of one run of a compiled executable, from XLA's cost analysis (None if unknown)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # Older JAX: one dict per computation.
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def dry_run(config, *, model=None, dataset=None, devices=None) -> dict[str, Any]:
  """Compiles the train step for `config`'s mesh and reports memory, FLOPs and shardings.

  Args:
    config: a trainer config (validated first, exactly as for training).
    model, dataset: optional stand-ins, as for `train_and_evaluate`.
    devices: the devices of the mesh (default jax.devices()).

  Returns:
    A dict: mesh (axis sizes), num_devices, num_steps, batch_size, num_params, memory_per_device
    (bytes: argument, output, temp, alias, generated_code, total = argument + output + temp -
    alias; None when the backend does not report it), flops_per_device (one step, from the
    compiled executable) and flops_per_step (x devices), state_bytes, feedback_bytes,
    compile_seconds, and shardings {array path: "dtype[shape] PartitionSpec"} for the state and
    the batch.
  """
  exp = build_lib.build(config, model=model, dataset=dataset, devices=devices)
  batch = exp.abstract_batch(train=True)
  start = time.perf_counter()
  compiled = exp.train_step.lower(exp.abstract_state, batch).compile()
  seconds = time.perf_counter() - start
  step_flops = flops(compiled)
  num_devices = exp.mesh.devices.size
  shardings = {f"state/{k}": v for k, v in mesh_lib.describe(exp.abstract_state).items()}
  shardings.update({f"batch/{k}": v for k, v in mesh_lib.describe(batch).items()})
  return {
    "mesh": dict(exp.mesh.shape),
    "num_devices": int(num_devices),
    "num_steps": exp.num_steps,
    "batch_size": config.batch_size,
    "rule": exp.rule.describe(),
    "num_params": sum(int(x.size) for x in _leaves(exp.abstract_state.params)),
    "state_bytes": state_lib.num_bytes(exp.abstract_state),
    "feedback_bytes": state_lib.num_bytes(exp.abstract_state.feedback),
    "memory_per_device": memory_bytes(compiled),
    "flops_per_device": step_flops,
    "flops_per_step": None if step_flops is None else step_flops * num_devices,
    "compile_seconds": seconds,
    "shardings": shardings,
  }


def _leaves(tree):
  return jax.tree.leaves(tree)


def _gib(n) -> str:
  return f"{n / 2**30:.3f} GiB"


def format_report(report: dict[str, Any], *, max_arrays: int | None = None) -> str:
  """A human-readable summary of `dry_run`'s report."""
  lines = [
    f"mesh {report['mesh']} on {report['num_devices']} devices, global batch "
    f"{report['batch_size']}, rule {report['rule']}",
    f"parameters {report['num_params']:,}; state {_gib(report['state_bytes'])} "
    f"(feedback {_gib(report['feedback_bytes'])}), before sharding",
  ]
  mem = report["memory_per_device"]
  if mem is None:
    lines.append("memory per device: not reported by this backend")
  else:
    parts = ", ".join(f"{k} {_gib(v)}" for k, v in mem.items() if k != "total")
    lines.append(f"memory per device: {_gib(mem['total'])} ({parts})")
  if report["flops_per_device"] is not None:
    lines.append(
      f"FLOPs per step: {report['flops_per_step']:.4g} "
      f"({report['flops_per_device']:.4g} per device)"
    )
  lines.append(f"compiled in {report['compile_seconds']:.1f} s; shardings:")
  items = sorted(report["shardings"].items())
  shown = items if max_arrays is None else items[:max_arrays]
  lines += [f"  {k}: {v}" for k, v in shown]
  if len(shown) < len(items):
    lines.append(f"  ... and {len(items) - len(shown)} more arrays")
  return "\n".join(lines)
