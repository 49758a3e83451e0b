"""Model sizes from shapes alone: parameter counts and XLA-measured forward FLOPs.

    python -m fajax.models.stats            # the table in docs/models.md (all models)
    python -m fajax.models.stats resnet20   # some models

Nothing is initialized: parameter shapes come from `jax.eval_shape(model.init)` and FLOPs from
XLA's cost analysis of the compiled forward pass (`jit(apply).lower(shapes).compile()`), so even
ResNet-50 and AlexNet at 224x224 cost only their compile time.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from fajax import models as models_lib


def _model(model_or_name, num_classes=None):
  if isinstance(model_or_name, str):
    return models_lib.get(model_or_name, num_classes=num_classes)
  return model_or_name


def variable_shapes(model, input_shape, batch_size: int = 1):
  """`model.init`'s variables as ShapeDtypeStructs, for an NHWC batch of `input_shape` images."""
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)

  def init(x):
    key = jax.random.key(0)
    return model.init({"params": key, "dropout": key}, x, train=False)

  return jax.eval_shape(init, x)


def param_count(model_or_name, input_shape=None, num_classes=None) -> int:
  """Number of trainable parameters (the `params` collection; no feedback, no batch stats).

  `model_or_name`: a registry name (then `input_shape` defaults to its default input) or a
  Module (then `input_shape`, (H, W, C), is required).
  """
  if input_shape is None:
    if not isinstance(model_or_name, str):
      raise ValueError("param_count of a Module needs input_shape=(H, W, C).")
    input_shape = models_lib.input_shape(model_or_name)
  shapes = variable_shapes(_model(model_or_name, num_classes), input_shape)
  return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def forward_flops(model_or_name, input_shape=None, num_classes=None) -> float:
  """FLOPs of one eval-mode forward pass on one image, from XLA's compiled cost analysis.

  `jax.jit(apply).lower(...).compile().cost_analysis()["flops"]` at batch size 1: XLA counts a
  multiply-add as 2 FLOPs in convolutions and dot products, and 1 FLOP per element for
  elementwise ops (ReLU, batch norm, pooling comparisons), on the backend JAX runs on.
  """
  if input_shape is None:
    if not isinstance(model_or_name, str):
      raise ValueError("forward_flops of a Module needs input_shape=(H, W, C).")
    input_shape = models_lib.input_shape(model_or_name)
  model = _model(model_or_name, num_classes)
  shapes = variable_shapes(model, input_shape)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, x).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # older JAX: one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])


def table(names=None) -> str:
  """A markdown table: model, input, parameters, forward FLOPs per image, reference."""
  rows = [
    "| model | input (H, W, C) | classes | parameters | forward FLOPs / image "
    "| meant to reproduce |",
    "|---|---|---|---|---|---|",
  ]
  for name in names or models_lib.names():
    spec = models_lib.spec(name)
    shape = models_lib.input_shape(name)
    params = param_count(name)
    flops = forward_flops(name)
    rows.append(
      f"| `{name}` | {shape} | {spec.num_classes} | {params:,} | {flops / 1e6:,.1f} M | "
      f"{spec.reference} |"
    )
  return "\n".join(rows)


if __name__ == "__main__":
  print(table(sys.argv[1:] or None))
