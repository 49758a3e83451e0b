"""The XLA compiler options of the jits fajax compiles (train, eval, diagnostics, init, demo).

On CPU, jaxlib 0.10's XLA fuses both matmuls and convolutions into YNNPACK kernels by default,
and a YNNPACK convolution runs on one thread: on 2 cores a conv net's train step ran at CPU time /
wall time = 1.0. Keeping YNNPACK for matmuls (each dot its own fusion) and reductions only hands
the convolutions back to XLA's multi-threaded Eigen kernels: train steps of the MNIST net and
ResNet-20 are 1.1-1.4x faster on 2 cores (benchmarks/README.md); gradients change by float32
rounding only. The reductions stay in YNNPACK because XLA's own sum batch-norm statistics slower
and less accurately.

A model may add YNNPACK fusion types for itself (`fajax.models.ModelSpec.cpu_fusions`, measured
per model). The CIFAR ResNets add ELTWISE: XLA otherwise fuses (and recomputes) the batch-norm /
residual / ReLU chain of up to four blocks into each transposed copy that the weight gradients
need; with elementwise fusions in YNNPACK every activation is computed once. ResNet-20's train
step takes 0.93x the time and ResNet-56's 0.78x on a quiet machine (0.87x and 0.64x loaded); the
MNIST net, CIFAR-10 arch 1 and the VGG net (no residual chains) are 5-14% slower with it, hence
per model (benchmarks/README.md). The price is memory: kept activations, +60% temporary buffers
for the ResNets' compiled step (docs/training.md).

The options go to each fajax jit through `jax.jit(..., compiler_options=...)`, never into global
flags, so a user's own jits keep XLA's defaults. An option that the user already sets in
XLA_FLAGS is left to the user, and one that the installed jaxlib does not know (older or newer
versions) is dropped silently: the jit then compiles with XLA's default.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

# Option name -> value, as `jax.jit(compiler_options=...)` spells it (XLA's DebugOptions field and
# enum name; the XLA_FLAGS spelling is --xla_cpu_experimental_ynn_fusion_type=individual_dot).
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(
  enabled: bool = True, platform: str | None = None, extra_fusions: tuple[str, ...] = ()
) -> dict[str, str] | None:
  """The `compiler_options` for a jit fajax compiles: fajax's CPU options, or None.

  Args:
    enabled: False returns None (XLA's defaults): the trainer's `config.fast_cpu`.
    platform: the platform the jit compiles for (default: jax's default backend); the options
      are for 'cpu' only.
    extra_fusions: YNNPACK fusion types added to CPU_OPTIONS' (e.g. ("ELTWISE",)): a model's
      `cpu_fusions`. Dropped (CPU_OPTIONS alone) where this jaxlib does not know them.

  Returns:
    The subset of CPU_OPTIONS that the user does not set in XLA_FLAGS and that this jaxlib
    accepts, or None when that is empty (or not on CPU, or not enabled).
  """
  if not enabled or (platform or jax.default_backend()) != "cpu":
    return None
  user_flags = os.environ.get("XLA_FLAGS", "")
  options = {}
  for name, value in CPU_OPTIONS.items():
    if f"--{name}" in user_flags:
      continue
    if name == YNN_FUSION_TYPE and extra_fusions:
      wider = ",".join([value, *(f"LIBRARY_FUSION_TYPE_{t}" for t in extra_fusions)])
      if _accepted(name, wider):
        options[name] = wider
        continue
    if _accepted(name, value):
      options[name] = value
  return options or None


@functools.cache
def _accepted(name: str, value: str) -> bool:
  """Whether this jaxlib compiles with the option (one tiny CPU compile, once per process)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
  except Exception:  # Unknown name or enum value: XLA raises while setting the option.
    return False
  return True
