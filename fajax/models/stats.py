"""Model sizes from shapes alone: parameter counts, feedback memory and forward FLOPs.

    python -m fajax.models.stats            # the table in docs/models.md (all models)
    python -m fajax.models.stats resnet20   # some models

Nothing is initialized: variable shapes come from `jax.eval_shape(model.init)` and FLOPs from
XLA's cost analysis of the compiled forward pass (`jit(apply).lower(shapes).compile()`), so even
ResNet-50 and AlexNet at 224x224 cost only their compile time.

Feedback memory (`feedback_memory`, `check_feedback_budget`) is the `feedback` collection of a
model under a rule: the B matrices of fa / usf / ..., and the D matrices of dfa / densefa, which
grow with activation sizes (densefa with depth squared), so a run checks it against a budget before
it allocates anything (the trainer does, from the abstract state it builds anyway).
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp

from fajax import models as models_lib
from fajax import rules as rules_lib


def _model(model_or_name, num_classes=None):
  if isinstance(model_or_name, str):
    return models_lib.get(model_or_name, num_classes=num_classes)
  return model_or_name


def _init_shapes(model, x: jax.ShapeDtypeStruct, **call_kwargs):
  """`model.init(..., x, **call_kwargs)`'s variables as ShapeDtypeStructs (nothing allocated)."""

  def init(x):
    key = jax.random.key(0)
    return model.init({"params": key, "dropout": key}, x, **call_kwargs)

  return jax.eval_shape(init, x)


def variable_shapes(model, input_shape, batch_size: int = 1):
  """`model.init`'s variables as ShapeDtypeStructs, for an NHWC batch of `input_shape` images."""
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32)
  return _init_shapes(model, x, train=False)


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


@dataclasses.dataclass(frozen=True)
class FeedbackMemory:
  """What a model's variables take, from shapes alone.

  rule: the rule's `describe()`, e.g. "densefa".
  bytes_feedback: the `feedback` collection (B, D matrices, scales), per replica.
  bytes_params: the trainable parameters.
  per_layer: feedback bytes by module path (e.g. "fc1" for `feedback/fc1/...`).
  """

  rule: str
  bytes_feedback: int
  bytes_params: int
  per_layer: dict[str, int]

  @property
  def gib_feedback(self) -> float:
    return self.bytes_feedback / 2**30

  @property
  def gib_params(self) -> float:
    return self.bytes_params / 2**30


def _nbytes(leaf) -> int:
  return int(leaf.size) * jnp.dtype(leaf.dtype).itemsize


def memory_of(params, feedback, rule) -> FeedbackMemory:
  """The FeedbackMemory of a `params` and a `feedback` collection (arrays or ShapeDtypeStructs)
  under `rule` (a name, a Rule or None for bp): what the trainer's abstract state holds."""
  per_layer: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(feedback):
    layer = "/".join(str(getattr(p, "key", p)) for p in path[:-1])
    per_layer[layer] = per_layer.get(layer, 0) + _nbytes(leaf)
  bytes_params = sum(_nbytes(leaf) for leaf in jax.tree.leaves(params))
  name = rules_lib.get(rule).describe()
  return FeedbackMemory(name, sum(per_layer.values()), bytes_params, per_layer)


def feedback_memory(
  model, input_shape, rule=None, *, input_dtype=jnp.float32, **call_kwargs
) -> FeedbackMemory:
  """The feedback memory `model` needs under `rule`, computed from shapes (nothing is allocated).

  Args:
    model: a Flax module; with `rule` given it must have a `rule` field (every fajax model does),
      and is re-built as `model.clone(rule=rule)`.
    input_shape: the shape of one input batch, batch first (the batch size does not matter).
    rule: a rule name or `Rule` (None: the model's own rule).
    input_dtype: dtype of the example input.
    **call_kwargs: passed to the model's call, e.g. `train=False`.
  """
  if rule is not None:
    if "rule" not in {f.name for f in dataclasses.fields(model)}:
      raise ValueError(
        f"{type(model).__name__} has no `rule` field to set; build the model with the rule and "
        "call feedback_memory(model, input_shape)."
      )
    model = model.clone(rule=rules_lib.get(rule))
  x = jax.ShapeDtypeStruct(tuple(input_shape), input_dtype)
  shapes = _init_shapes(model, x, **call_kwargs)
  # A model without a rule field is a plain (bp) Flax model.
  return memory_of(
    shapes.get("params", {}), shapes.get(rules_lib.FEEDBACK, {}), getattr(model, "rule", None)
  )


def within_budget(
  report: FeedbackMemory,
  budget_gb: float | None,
  field: str = "config.feedback_memory_budget_gb",
) -> FeedbackMemory:
  """`report` if its feedback fits in `budget_gb` GiB (None: no budget); else a ValueError whose
  one sentence names the budget's `field` and what to change."""
  if budget_gb is not None and report.bytes_feedback > budget_gb * 2**30:
    advice = (
      "use dfa or a smaller model"
      if report.rule.startswith("densefa")
      else ("use a smaller model or input")
    )
    raise ValueError(
      f"{report.rule} feedback for this model needs {report.gib_feedback:.2f} GiB, over the "
      f"budget of {budget_gb:g} GiB ({field}); {advice}, or raise {field}."
    )
  return report


def check_feedback_budget(
  model,
  input_shape,
  budget_gb: float | None,
  rule=None,
  *,
  field: str = "config.feedback_memory_budget_gb",
  **kwargs,
) -> FeedbackMemory:
  """Raises ValueError if the model's feedback would not fit in `budget_gb` GiB; else the report.

  Call it before building a train state, so that an oversized dfa/densefa configuration is
  refused at start instead of running out of memory mid-run. `budget_gb=None` checks nothing.
  Arguments are those of `feedback_memory`; `field` names the config field in the message.
  (The trainer checks `memory_of` its abstract state with `within_budget` instead.)
  """
  return within_budget(feedback_memory(model, input_shape, rule, **kwargs), budget_gb, field)


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
