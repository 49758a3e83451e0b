"""Flax layers that train under a learning rule, and a converter for unmodified Flax models.

`Dense` and `Conv` are `flax.linen.Dense` / `flax.linen.Conv` with one more argument, `rule`. They
inject the feedback primitive through Flax's own injection points (`dot_general`,
`conv_general_dilated`), so every other argument behaves exactly as in Flax.

How the primitive finds its layer: the layer pushes (module, rule) on a trace-time stack around
the Flax call; the injected primitive reads the top of the stack, asks the rule for B (creating
feedback variables in the layer's scope) and calls the custom-VJP primitive. That stack, the
context flags and the per-pass scratch dicts are fajax's whole trace-time state (`_Trace`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
import weakref
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fajax import learned
from fajax import rules as rules_lib
from fajax.primitives import feedback_conv_general_dilated, feedback_dot_general

DELTAS = "perturbations"  # Flax collection through which layer output cotangents are read.
FEEDBACK_MATRICES = "feedback_matrices"  # Flax collection where capture_feedback() sows B.


class _Trace(threading.local):
  """Everything fajax keeps while it traces, in one place, per thread (a trace runs in one).

  layers: (module, rule) of the fajax layers being called, innermost last. Flax hands the
    injected primitive arrays only; the primitive finds its layer here.
  flags: the switches of `trace_flags` (capture_deltas, capture_feedback, capture_feedback_grads,
    force_backprop, and direct_apply, set by fajax.apply); absent means False.
  passes: one scratch dict per forward pass (`forward_state`), keyed by the pass's root scope
    and dropped with it.
  """

  def __init__(self):
    self.layers: list = []
    self.flags: dict[str, bool] = {}
    self.passes = weakref.WeakKeyDictionary()


_TRACE = _Trace()


@contextlib.contextmanager
def _bound(module, rule):
  _TRACE.layers.append((module, rule))
  try:
    yield
  finally:
    _TRACE.layers.pop()


def _current():
  if not _TRACE.layers:
    raise RuntimeError("fajax's injected primitive was called outside a fajax layer.")
  return _TRACE.layers[-1]


def flag(name: str) -> bool:
  """Whether the trace-time flag `name` is on (see `trace_flags`)."""
  return _TRACE.flags.get(name, False)


@contextlib.contextmanager
def trace_flags(**values: bool):
  """Within this context the named trace-time flags take `values`; the previous ones come back
  on exit, so contexts nest. The named contexts below are the flags fajax's users set."""
  previous = dict(_TRACE.flags)
  _TRACE.flags.update(values)
  try:
    yield
  finally:
    _TRACE.flags.clear()
    _TRACE.flags.update(previous)


def capture_deltas():
  """Within this context every fajax layer exposes its output as the perturbation `delta`.

  Apply a model inside it with a `perturbations` collection of zeros (from `init` inside the same
  context) and the gradient with respect to `perturbations` is each layer's output cotangent
  (the delta the rule propagated into the layer). Used by the alignment diagnostics.
  """
  return trace_flags(capture_deltas=True)


def capture_feedback():
  """Within this context every fajax layer sows its B into the collection `feedback_matrices`.

  Apply with `mutable=["feedback_matrices"]` to read, per layer, `B` (W itself for bp, zeros for
  "no feedback"). Used by tests and the alignment diagnostics.
  """
  return trace_flags(capture_feedback=True)


def capture_feedback_grads():
  """Within this context every layer under a learned-feedback rule sows dObjective/dB.

  The gradient (`rule.feedback_gradient`, from the layer's input of this call: a
  `fajax.learned.FeedbackGrad`, whose `value(B)` is the array; `fajax.learned.gradient_values`
  converts the collection) goes to the collection `feedback_grads` at the layer's path, under the
  name of its feedback variable (`kernel`), summed over calls of a shared layer. Apply with
  `mutable=["feedback_grads"]`; the train step does, and feeds the result to B's optimizer
  (`fajax.learned.update_feedback`).
  """
  return trace_flags(capture_feedback_grads=True)


def force_backprop():
  """Within this context every fajax layer uses bp (B = W), whatever its rule says.

  Tracing a loss inside it gives the true backprop gradient of the same model on the same batch;
  the alignment diagnostics compare the rule's update against it. Direct-feedback hooks are off.
  """
  return trace_flags(force_backprop=True)


def _feedback_for(module, rule, kernel):
  """The rule's feedback for this layer, sown for inspection when capture_feedback is on."""
  fb = rule.feedback(module, kernel)
  if flag("capture_feedback"):
    b = kernel if fb is None else (jnp.zeros_like(kernel) if isinstance(fb, str) else fb)
    module.sow(FEEDBACK_MATRICES, "B", b, reduce_fn=lambda _, new: new, init_fn=lambda: None)
  return fb


def _learns_feedback(rule) -> bool:
  """Whether this layer's B is trained in this pass (a learned rule inside the capture context)."""
  on = flag("capture_feedback_grads")
  return on and isinstance(rule, rules_lib.LearnedFeedback)


def _sow_feedback_grad(module, rule, lhs, rhs, fb, apply, features):
  """Sows the learned rule's dObjective/dB at the layer's path."""
  grad = rule.feedback_gradient(module, lhs, rhs, fb, apply, features)
  module.sow(
    learned.FEEDBACK_GRADS,
    "kernel",
    grad,
    reduce_fn=lambda a, b: b if a is None else a + b,
    init_fn=lambda: None,
  )


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  module, rule = _current()
  fb = _feedback_for(module, rule, rhs)
  if _learns_feedback(rule):
    (_, contracting), (_, batch) = dimension_numbers
    free = [size for axis, size in enumerate(rhs.shape) if axis not in (*contracting, *batch)]

    def apply(x, kernel):
      return lax.dot_general(x, kernel, dimension_numbers, precision, preferred_element_type)

    _sow_feedback_grad(module, rule, lhs, rhs, fb, apply, math.prod(free))
  return feedback_dot_general(lhs, rhs, fb, dimension_numbers, precision, preferred_element_type)


def _conv_general_dilated(lhs, rhs, *args, **kwargs):
  # Flax passes lax.conv_general_dilated's arguments; the feedback primitive takes the same ones
  # after its `feedback` argument, so they are forwarded as they come.
  module, rule = _current()
  fb = _feedback_for(module, rule, rhs)
  if _learns_feedback(rule):

    def apply(x, kernel):
      return lax.conv_general_dilated(x, kernel, *args, **kwargs)

    out = jax.eval_shape(apply, lhs, rhs)
    dims = inspect.signature(lax.conv_general_dilated).bind(lhs, rhs, *args, **kwargs).arguments
    spec = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dims.get("dimension_numbers"))
    _sow_feedback_grad(module, rule, lhs, rhs, fb, apply, out.shape[spec.out_spec[1]])
  return feedback_conv_general_dilated(lhs, rhs, fb, *args, **kwargs)


def forward_state(module) -> dict:
  """Trace-time scratch dict shared by the fajax layers of one forward pass.

  Flax builds a fresh root scope for every `model.apply` / `model.init`, so the dict is keyed by
  that scope (`module.scope.root`, weakly: it dies with the scope): nothing carries over between
  calls or traces. Key "layers_called" counts the fajax layers that have run so far (whatever
  their rule); direct-feedback rules (`fajax.direct`) use it to find the first layer and keep
  their own keys here. (An NNX layer's root is its `fajax.nnx` call.)
  """
  return _TRACE.passes.setdefault(module.scope.root, {})


def _run_under_rule(module, rule_spec, call, inputs, *args, **kwargs):
  """Runs a Dense/Conv call under its resolved rule, with the rule's hooks around it."""
  if flag("force_backprop"):
    rule = rules_lib.get("bp")
  else:
    rule = rules_lib.resolve(rule_spec, rules_lib.module_path(module))
  x = rule.input_hook(module, inputs)
  with _bound(module, rule):
    y = call(x, *args, **kwargs)
  y = rule.output_hook(module, y)
  if flag("capture_deltas"):
    y = module.perturb("delta", y, collection=DELTAS)
  state = forward_state(module)
  state["layers_called"] = state.get("layers_called", 0) + 1
  return y


class Dense(nn.Dense):
  """`flax.linen.Dense` trained under `rule` (a name, a `fajax.rules.Rule`, or None for bp)."""

  rule: Any = None
  dot_general: Any = _dot_general

  @nn.compact
  def __call__(self, inputs):
    return _run_under_rule(self, self.rule, super().__call__, inputs)


class Conv(nn.Conv):
  """`flax.linen.Conv` trained under `rule` (a name, a `fajax.rules.Rule`, or None for bp).

  Only shared-weight convolutions (`shared_weights=True`, Flax's default) take a feedback rule.
  """

  rule: Any = None
  conv_general_dilated: Any = _conv_general_dilated

  @nn.compact
  def __call__(self, inputs):
    if not self.shared_weights:
      raise ValueError("fajax.layers.Conv supports shared_weights=True only; use nn.ConvLocal.")
    return _run_under_rule(self, self.rule, super().__call__, inputs)


def _interceptor(rule_spec):
  """A Flax method interceptor that runs plain nn.Dense / nn.Conv calls under `rule_spec`."""

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or isinstance(module, Dense | Conv):
      return next_fun(*args, **kwargs)
    if isinstance(module, nn.Dense):
      attr, fn = "dot_general", _dot_general
    elif isinstance(module, nn.Conv) and module.shared_weights:
      attr, fn = "conv_general_dilated", _conv_general_dilated
    else:
      return next_fun(*args, **kwargs)
    if getattr(module, attr) is not None or getattr(module, attr + "_cls") is not None:
      raise ValueError(
        f"Layer '{rules_lib.module_path(module)}' already injects its own {attr}; "
        "fajax.convert cannot combine it with a feedback rule."
      )
    # Kept on purpose: the interceptor is the only hook Flax gives into an unmodified model, and
    # it hands over the bound module, whose injection field is the only way in. The bound module
    # is a per-call clone, so setting the field is local to this call (and undone below); Flax
    # modules are frozen dataclasses, hence object.__setattr__.
    object.__setattr__(module, attr, fn)
    try:
      return _run_under_rule(module, rule_spec, next_fun, *args, **kwargs)
    finally:
      object.__setattr__(module, attr, None)

  return intercept


class Converted(nn.Module):
  """An unmodified Flax model whose nn.Dense / nn.Conv layers train under `rule`.

  Shares its scope with the wrapped module, so variables keep the paths the plain model has
  (plain checkpoints load as they are), plus the `feedback` collection the rule needs.
  """

  module: nn.Module
  rule: Any = None

  def setup(self):
    nn.share_scope(self, self.module)

  def __call__(self, *args, **kwargs):
    with nn.intercept_methods(_interceptor(self.rule)):
      return self.module(*args, **kwargs)


def convert(module: nn.Module, rule: Any = "bp", **rule_options) -> Converted:
  """Runs an unmodified Flax model that uses nn.Dense / nn.Conv under a learning rule.

  model = fajax.convert(MyNet(), "usf", scale="sn")
  variables = model.init(rng, x)          # {'params': ..., 'feedback': ...}
  """
  return Converted(module=module, rule=rules_lib.get(rule, **rule_options))
