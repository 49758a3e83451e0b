"""`convert`: an existing NNX model's nnx.Linear / nnx.Conv layers, trained under a rule.

The layers are replaced in place by `fajax.nnx.Linear` / `Conv` that hold the *same* kernel and
bias `nnx.Param` objects, so parameter paths, values and sharing are unchanged and optimizer
state built on the old model still matches; each replacement gets the rule resolved at its path
(per-layer overrides) and the feedback state that rule needs. fajax layers already in the model
are re-ruled the same way, which is how a model built with fajax layers gets path overrides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
from jax import lax

from fajax import layers as fajax_layers
from fajax import rules as rules_lib
from fajax.nnx import layers

_LINEAR_ARGS = (
  "use_bias",
  "dtype",
  "param_dtype",
  "precision",
  "promote_dtype",
  "preferred_element_type",
)
_CONV_ARGS = _LINEAR_ARGS + (
  "padding",
  "input_dilation",
  "kernel_dilation",
  "feature_group_count",
  "mask",
)


def _twin(layer, kernel_init):
  """A fajax layer configured as `layer` (bp for now), holding `layer`'s kernel and bias."""
  zeros = nnx.initializers.zeros_init()  # the fresh parameters are replaced just below
  if type(layer) is nnx.Linear:
    if layer.dot_general is not lax.dot_general:
      raise ValueError("An nnx.Linear with its own dot_general cannot take a feedback rule.")
    kwargs = {k: getattr(layer, k) for k in _LINEAR_ARGS}
    new = layers.Linear(
      layer.in_features, layer.out_features, kernel_init=zeros, rngs=nnx.Rngs(0), **kwargs
    )
  else:
    if layer.conv_general_dilated is not lax.conv_general_dilated:
      raise ValueError("An nnx.Conv with its own conv_general_dilated cannot take a feedback rule.")
    kwargs = {k: getattr(layer, k) for k in _CONV_ARGS}
    new = layers.Conv(
      layer.in_features,
      layer.out_features,
      layer.kernel_size,
      layer.strides,
      kernel_init=zeros,
      rngs=nnx.Rngs(0),
      **kwargs,
    )
  new.kernel, new.bias = layer.kernel, layer.bias
  new.kernel_init = kernel_init
  return new


def _is_layer(node) -> bool:
  if isinstance(node, layers.Linear | layers.Conv):
    return True
  if isinstance(node, nnx.Linear | nnx.Conv):
    if type(node) not in (nnx.Linear, nnx.Conv):
      raise ValueError(
        f"{type(node).__name__} subclasses nnx.Linear/nnx.Conv with its own behaviour, which "
        "convert would drop: build it on fajax.nnx.Linear / Conv instead."
      )
    return True
  return False


def _children(node):
  """(key, child) of a graph node's direct children, for in-place replacement."""
  if isinstance(node, nnx.List | list):
    return list(enumerate(node))
  if isinstance(node, nnx.Dict | dict):
    return list(node.items())
  return [(k, v) for k, v in vars(node).items() if not k.startswith("_")]


def _set_child(node, key, value):
  if isinstance(node, nnx.List | nnx.Dict | list | dict):
    node[key] = value
  else:
    setattr(node, key, value)


def convert(
  model,
  rule: Any = "bp",
  *,
  rngs: nnx.Rngs,
  sample=None,
  kernel_init=None,
  **rule_options,
):
  """Trains an existing NNX model's nnx.Linear / nnx.Conv layers under a learning rule.

      model = fajax.nnx.convert(MyNet(rngs=nnx.Rngs(0)), "usf", scale="sn", rngs=nnx.Rngs(1))

  Args:
    model: an NNX module; changed in place (a lone nnx.Linear / nnx.Conv is returned replaced).
    rule: a rule name or `fajax.rules.Rule`, with `overrides` by layer path ("fc1", "blocks/0/*").
    rngs: draws the feedback state (fixed B, |R_0|, D matrices).
    sample: example positional input(s) of the model (an array or a tuple); dfa and densefa need
      it to size their matrices (one forward pass).
    kernel_init: the initializer plain layers were built with (rules such as fa draw B from it);
      default nnx's default kernel initializer. fajax layers keep their own.
    **rule_options: options of the rule (`scale="sn"`, `overrides={...}`).

  Returns:
    The model (the same object, unless it is itself a layer).
  """
  rule = rules_lib.get(rule, **rule_options)
  kernel_init = kernel_init or nnx.nn.linear.default_kernel_init
  found = {}
  for path, node in nnx.iter_graph(model):
    if _is_layer(node) and id(node) not in found:
      found[id(node)] = ("/".join(str(p) for p in path), node)
  # Build all replacements first: iter_graph must not see the graph change under it.
  new = {}
  for key, (path, layer) in found.items():
    twin = layer if isinstance(layer, layers.Linear | layers.Conv) else _twin(layer, kernel_init)
    # The resolved rule, with the overrides already applied at this path.
    layers._build_feedback(twin, dataclasses.replace(rule.resolve(path), overrides=()), rngs)
    new[key] = twin
  if id(model) in new:
    model = new[id(model)]
  parents = [n for _, n in nnx.iter_graph(model) if not isinstance(n, nnx.Variable)]
  for node in parents:
    if isinstance(node, nnx.Module | nnx.List | nnx.Dict | list | dict):
      for key, child in _children(node):
        if id(child) in new and child is not new[id(child)]:
          _set_child(node, key, new[id(child)])
  needs_pass = any(isinstance(layer.rule, layers.DIRECT_RULES) for layer in new.values())
  if needs_pass:
    build_direct_feedback(model, sample, rngs)
  return model


def _rules_as_they_are():
  """Turns fajax.layers' trace-time flags off, e.g. when the Bridge builds a model while the
  diagnostics trace under force_backprop (which would hide the taps that size D)."""
  off = dict(force_backprop=False, capture_deltas=False, capture_feedback=False)
  return fajax_layers.trace_flags(**off)


def build_direct_feedback(model, sample, rngs):
  """Runs one forward pass that creates the dfa / densefa matrices (their shapes need it)."""
  if sample is None:
    raise ValueError(
      "dfa and densefa size their feedback from the layers' activations: pass convert an "
      "example input, sample=x (one batch row is enough)."
    )
  args = sample if isinstance(sample, tuple) else (sample,)
  from fajax import direct

  # The pass must leave the model as it was (batch statistics, rng counts): only feedback is new.
  saved = [
    (v, v.get_value())
    for _, v in nnx.iter_graph(model)
    if isinstance(v, nnx.Variable) and not isinstance(v, layers.Feedback)
  ]
  call = layers._Call(model, initializing=True, init_rngs=rngs)
  with layers.active(call), direct._inside_apply(), _rules_as_they_are():
    model(*args)
  for variable, value in saved:
    variable.set_value(value)
