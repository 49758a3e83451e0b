"""The device mesh and how each array is laid out on it.

Axes ('data', 'model'). The batch is split over 'data' (and replicated over 'model'). The state
is replicated, except that with a 'model' axis larger than 1, every array named `kernel` (in
params, feedback and the optimizer state alike) with at least 2 dimensions whose last axis
divides by the 'model' size is split along that last axis: the memory of large dense and conv
kernels (and their B matrices and optimizer moments) is then divided by the 'model' size, and XLA
inserts the collectives. Everything else (biases, norms, scalars, small kernels) stays
replicated.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "model")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int]:
  """(data, model) sizes with -1 resolved; refuses shapes that do not fit the devices."""
  sizes = {"data": 1, "model": 1, **dict(mesh_config)}
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if -1 in sizes.values():
    if num_devices % fixed:
      raise ValueError(
        f"config.mesh = {dict(mesh_config)} is not valid; the fixed axes ({fixed}) must divide "
        f"the {num_devices} devices."
      )
    sizes = {k: (num_devices // fixed if v == -1 else v) for k, v in sizes.items()}
  total = sizes["data"] * sizes["model"]
  if total > num_devices:
    raise ValueError(
      f"config.mesh = {dict(mesh_config)} is not valid; it needs {total} devices and only "
      f"{num_devices} are available."
    )
  return sizes["data"], sizes["model"]


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A Mesh with axes ('data', 'model') over `devices` (default: all), first devices if smaller."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  n = shape[0] * shape[1]
  if n == len(devices) and jax.process_count() == 1:
    try:  # Lets XLA place the axes on the physical topology (TPU/GPU); CPUs get a plain grid.
      from jax.experimental import mesh_utils

      return Mesh(mesh_utils.create_device_mesh(shape, devices), AXES)
    except Exception:  # Topology-aware placement is an optimisation only.
      pass
  if n != len(devices) and jax.process_count() > 1:
    raise ValueError(
      f"config.mesh = {shape} is not valid; with several processes it must use all "
      f"{len(devices)} devices."
    )
  return Mesh(np.asarray(devices[:n]).reshape(shape), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over 'data', the rest replicated."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _leaf_name(path) -> str | None:
  last = path[-1] if path else None
  return getattr(last, "key", getattr(last, "name", None))


def state_sharding(mesh: Mesh, abstract_state):
  """A NamedSharding per leaf of the (abstract) state: see the module docstring."""
  model = mesh.shape["model"]

  def spec(path, x):
    shape = getattr(x, "shape", ())
    if model > 1 and _leaf_name(path) == "kernel" and len(shape) >= 2 and shape[-1] % model == 0:
      return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), "model"))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(spec, abstract_state)


def describe(tree) -> dict[str, str]:
  """{'params/Dense_0/kernel': 'f32[784,300] P(None, model)', ...} for arrays or abstract arrays."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    name = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
    sharding = getattr(x, "sharding", None)
    spec = getattr(sharding, "spec", None)
    dtype = np.dtype(x.dtype).name if hasattr(x, "dtype") else type(x).__name__
    out[name] = f"{dtype}{list(getattr(x, 'shape', ()))} {spec if spec is not None else sharding}"
  return out
