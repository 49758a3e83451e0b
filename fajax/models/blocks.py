"""Building blocks shared by the model zoo: rule-aware layer factories and pooling.

Pooling. `max_pool_2x2` is an exact, faster formulation of
`nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`: XLA:CPU lowers the gradient of
`reduce_window` max to `select_and_scatter`, which is several times slower than the elementwise
selects used here (benchmarks: about 5x on the gradient for 64x32x32x64 inputs on 2 CPU cores).
It is exact in value and in gradient, including for

- odd sizes: the last row / column is dropped, as VALID padding does (floor(H/2) x floor(W/2));
- ties: the whole cotangent goes to the FIRST maximal element of each window in row-major order
  (top-left, top-right, bottom-left, bottom-right), which is the element XLA's
  `select_and_scatter` (hence `nn.max_pool`'s gradient) picks. A plain `x.reshape(...).max(...)`
  would split the cotangent evenly among tied elements instead;
- NaN: a NaN in a window gives NaN, as `lax.max` does (the cotangent then goes to the NaN
  element, where `nn.max_pool`'s gradient skips it: gradients are exact on finite inputs).

Every other window, stride and padding (3x3 stride 2: TF's CIFAR-10 net, AlexNet, the ResNet
stem) goes through `max_pool`, which pools separably: the max over the window's columns (k strided
slices along W), then over its rows (k strided slices along H), with the same tie-keeping max.
Two passes of k selects instead of a k x k window, the column maxima are shared by the rows of
overlapping windows, and the gradient is selects and strided pads that XLA fuses. Ties go to the
first maximal element in row-major window order as above (the column pass keeps the first maximal
column of each row, the row pass the first row holding the window's maximum). Where windows
overlap, an element that is the maximum of several windows receives the sum of their cotangents,
as with `select_and_scatter`, possibly added in another order (a difference in the last bit).
Gradient of a 3x3 stride-2 SAME pool on 64x24x24x64 inputs (2-core Xeon, fajax's CPU options):
35 ms with `nn.max_pool`, 4.7 ms here; the CIFAR-10 arch 1 train step spent most of its time in
`nn.max_pool`'s gradient (benchmarks/README.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

ModuleDef = Any


def _accepts_rule(layer_type) -> bool:
  """Whether a layer type (a Module class or a functools.partial of one) has a `rule` field."""
  while isinstance(layer_type, functools.partial):
    if "rule" in layer_type.keywords:
      return True
    layer_type = layer_type.func
  return dataclasses.is_dataclass(layer_type) and any(
    f.name == "rule" for f in dataclasses.fields(layer_type)
  )


def with_rule(layer_type: ModuleDef, rule: Any, dtype: Any) -> Callable[..., nn.Module]:
  """`layer_type` with the model's rule and compute dtype bound.

  fajax layers (`fajax.layers.Dense` / `Conv`) get `rule=rule`; plain Flax layers (`nn.Dense`,
  `nn.Conv`) get no `rule` argument, so a model built with them is the plain backprop model that
  `jax.grad` differentiates (and that `fajax.convert` can wrap).

  Raises:
    ValueError: if a rule is given but the layer type cannot take one.
  """
  if _accepts_rule(layer_type):
    return functools.partial(layer_type, rule=rule, dtype=dtype)
  if rule is not None:
    name = getattr(layer_type, "__name__", repr(layer_type))
    raise ValueError(
      f"Layer type {name} takes no `rule`, but rule={rule!r} was given: use fajax.layers.Dense / "
      "fajax.layers.Conv as dense/conv, or build the model with rule=None and wrap it with "
      "fajax.convert(model, rule)."
    )
  return functools.partial(layer_type, dtype=dtype)


def _first_max(a, b):
  """max(a, b) keeping `a` on ties (first in window order) and propagating NaN from either side."""
  return jnp.where((a >= b) | jnp.isnan(a), a, b)


def max_pool_2x2(x):
  """2x2 max pooling with stride 2 and VALID padding on NHWC inputs.

  Equals `nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")` in value and gradient (ties
  included: the first maximum in row-major window order gets the cotangent), faster on XLA:CPU.
  See the module docstring.
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool_2x2 expects NHWC inputs (4 dims); got shape {x.shape}.")
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  if h2 == 0 or w2 == 0:
    raise ValueError(f"max_pool_2x2 needs height and width >= 2; got shape {x.shape}.")
  x = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
  rows = _first_max(x[:, :, :, :, 0], x[:, :, :, :, 1])  # [b, h2, 2, w2, c]: max within each row
  return _first_max(rows[:, :, 0], rows[:, :, 1])


def _pool_pads(size: int, window: int, stride: int, padding) -> tuple[tuple[int, int], int]:
  """((lo, hi) padding, output size) along one axis; SAME and VALID as `lax.padtype_to_pads`."""
  if isinstance(padding, str):
    if padding.upper() not in ("VALID", "SAME"):
      raise ValueError(f"max_pool padding must be 'VALID', 'SAME' or pairs; got {padding!r}.")
    (pads,) = lax.padtype_to_pads((size,), (window,), (stride,), padding.upper())
  else:
    pads = tuple(padding) if isinstance(padding, Sequence) else ()
    if len(pads) != 2 or not all(isinstance(p, int | np.integer) for p in pads):
      raise ValueError(f"max_pool padding pairs must be two ints (lo, hi); got {padding!r}.")
  padded = size + pads[0] + pads[1]
  if padded < window:
    raise ValueError(f"max_pool window {window} is larger than the padded input ({padded}).")
  return pads, (padded - window) // stride + 1


def _pad_axis(x, axis: int, lo: int, hi: int):
  """x padded with -inf along `axis` (a negative amount crops, as lax.pad does)."""
  n = x.shape[axis]
  x = lax.slice_in_dim(x, max(-lo, 0), n - max(-hi, 0), axis=axis)
  widths = [(0, 0)] * x.ndim
  widths[axis] = (max(lo, 0), max(hi, 0))
  return jnp.pad(x, widths, constant_values=-jnp.inf)


def max_pool(x, window: int, stride: int, padding: str | Sequence[tuple[int, int]] = "VALID"):
  """Square max pooling on NHWC inputs; `nn.max_pool`'s value, its gradient computed faster.

  The 2x2 stride-2 VALID case takes `max_pool_2x2`; every other case pools separably (columns,
  then rows; see the module docstring). Values equal nn.max_pool's, and so do gradients on finite
  inputs (ties included). A NaN makes its windows NaN as in nn.max_pool, but the cotangent goes to
  the NaN element where nn.max_pool's gradient skips it.

  Args:
    x: NHWC input.
    window: window side (>= 1).
    stride: stride in both spatial dimensions (>= 1).
    padding: "VALID", "SAME" or explicit ((lo, hi), (lo, hi)) padded with -inf (negative amounts
      crop), as nn.max_pool; or one of these per spatial axis.

  Raises:
    ValueError: on a non-NHWC input, a window or stride below 1, padding that is not one of the
      above, or a window larger than the padded input (nn.max_pool returns an empty array there).
  """
  if window == 2 and stride == 2 and padding == "VALID":
    return max_pool_2x2(x)
  if x.ndim != 4:
    raise ValueError(f"max_pool expects NHWC inputs (4 dims); got shape {x.shape}.")
  if window < 1 or stride < 1:
    raise ValueError(f"max_pool window and stride must be >= 1; got {window} and {stride}.")
  per_axis = (padding, padding) if isinstance(padding, str) else tuple(padding)
  if len(per_axis) != 2:
    raise ValueError(
      f"max_pool padding must be 'VALID', 'SAME' or two (lo, hi) pairs (H, W); got {padding!r}."
    )
  sizes = []
  for axis, pad in zip((1, 2), per_axis, strict=True):
    (lo, hi), n = _pool_pads(x.shape[axis], window, stride, pad)
    x = _pad_axis(x, axis, lo, hi)
    sizes.append(n)

  def pool_along(x, axis, out):
    last = stride * (out - 1) + 1
    parts = [lax.slice_in_dim(x, d, d + last, stride, axis) for d in range(window)]
    return functools.reduce(_first_max, parts)

  return pool_along(pool_along(x, 2, sizes[1]), 1, sizes[0])


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] averaging matrix of PyTorch's adaptive average pooling along one axis.

  Bin i averages inputs floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1.
  """
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    lo = (i * n_in) // n_out
    hi = -((-(i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x, output_size: tuple[int, int]):
  """PyTorch's `AdaptiveAvgPool2d(output_size)` on NHWC inputs (torchvision's AlexNet uses 6x6).

  Identity when the input already has `output_size` (AlexNet at 224x224); at smaller inputs the
  bins overlap or repeat exactly as in PyTorch, so the classifier keeps its parameter count.
  """
  _, h, w, _ = x.shape
  if (h, w) == tuple(output_size):
    return x
  mh = jnp.asarray(_adaptive_matrix(h, output_size[0]), x.dtype)
  mw = jnp.asarray(_adaptive_matrix(w, output_size[1]), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", mh, mw, x)


def flatten(x):
  """[B, ...] -> [B, prod(...)] (NHWC order; a PyTorch port would flatten NCHW)."""
  return x.reshape(x.shape[0], -1)
