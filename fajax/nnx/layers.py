"""NNX layers that train under a learning rule, and `apply`, the call that routes direct feedback.

`Linear` and `Conv` are `flax.nnx.Linear` / `flax.nnx.Conv` with one more argument, `rule`. Like
the Linen layers (`fajax.layers`) they inject the feedback primitive through Flax's own injection
points (`dot_general`, `conv_general_dilated`), so every other argument behaves exactly as in
Flax. There is no second implementation of any rule: the rules (`fajax.rules`, `fajax.direct`)
and the glue around a layer call (`fajax.layers._run_under_rule`: hooks, force_backprop, captured
deltas and B) are the Linen ones. They talk to a layer through a few methods of a bound Linen
module (variable, make_rng, sow, perturb, path, ...); `_Face` gives an NNX layer those methods.

Where things live:
* feedback state (B, |R_0|, fixed scales, DFA/DenseFA matrices) is a `Feedback` variable in the
  layer's `feedback` dict (`nnx.state(model, Feedback)` reads it; an `nnx.Optimizer` with
  `wrt=nnx.Param` never sees it). It is made when the layer is built, except the direct-feedback
  matrices, whose shapes need a forward pass (`fajax.nnx.convert(..., sample=x)` runs it);
* per-call state (the layer path, per-step keys, the dfa taps, captured B and deltas) lives in a
  `_Call`, the NNX counterpart of a Linen root scope: one per `apply` or per bridged Linen call.
  A layer called outside of one gets a throwaway `_Call` of its own.

Per-step randomness (brsf, bp_noise): given a key for the stream "feedback" (`apply(...,
keys={"feedback": key})`, or the trainer through `fajax.nnx.Bridge`), a layer at path p draws
exactly the key a Linen layer at path p draws, so an NNX model and its Linen twin see the same B.
Without one, the layer draws from its own `nnx.RngStream` (forked at construction, the way
`nnx.Dropout` does), which advances on every call.
"""

from __future__ import annotations

import contextlib
import threading
import types
from typing import Any

import jax.numpy as jnp
from flax import nnx
from flax.core.scope import LazyRng

from fajax import direct
from fajax import layers as fajax_layers
from fajax import rules as rules_lib


class Feedback(nnx.Variable):
  """Feedback state of a layer (the Linen collection `feedback`): never trained by an optimizer."""


# The bridge to Linen (and nnx.bridge) maps this type to the collection `feedback`.
nnx.register_variable_name(rules_lib.FEEDBACK, Feedback, overwrite=True)

FEEDBACK_ATTR = "feedback"  # the layer attribute (an nnx.Dict) holding its Feedback variables.
DIRECT_RULES = (direct.DFA, direct.DenseFA)
# Rules that draw a new B every step: their layers keep a stream for calls outside `apply`.
PER_STEP_RULES = (rules_lib.BPNoise, rules_lib.BRSF)

_STATE = threading.local()


class _Call:
  """One forward pass of an NNX model under fajax: what a Linen root scope is to Linen layers.

  model: the module called (its graph gives every layer's path; None for a lone layer).
  initializing: whether layers may create missing feedback (at build time, or in Linen's init).
  rngs: stream name -> key (or LazyRng): per-layer keys are derived from it as Linen does.
  init_rngs: an `nnx.Rngs` that draws feedback created at build time.
  perturbations: the incoming `perturbations` collection (nested by layer path), for deltas.
  mutable: collection name -> whether sown values of that collection are kept.
  """

  def __init__(
    self,
    model=None,
    *,
    initializing=False,
    rngs=None,
    init_rngs=None,
    perturbations=None,
    mutable=lambda col: False,
  ):
    self.model = model
    self.explicit = model is not None
    self.initializing = initializing
    self.rngs = dict(rngs or {})
    self.init_rngs = init_rngs
    self.perturbations = perturbations or {}
    self.mutable = mutable
    self.paths = layer_paths(model) if model is not None else {}
    self.sown: dict[str, dict[tuple[str, ...], dict]] = {}
    self.counters: dict[tuple, int] = {}

  def collection(self, name) -> dict:
    """The sown values of collection `name`, nested by layer path like a Linen collection."""
    return nest(self.sown.get(name, {}))


def layer_paths(model) -> dict[int, tuple[str, ...]]:
  """id(module) -> its path in `model` (first path of a shared module), as strings."""
  paths = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module) and id(node) not in paths:
      paths[id(node)] = tuple(str(p) for p in path)
  return paths


def nest(flat: dict[tuple[str, ...], dict]) -> dict:
  """{layer path: {name: value}} -> nested dicts, as Linen collections are laid out."""
  out: dict = {}
  for path, values in flat.items():
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node.update(values)
  return out


def lookup(tree, path):
  """tree[path[0]][path[1]]... or None."""
  for part in path:
    if not hasattr(tree, "get"):
      return None
    tree = tree.get(part)
    if tree is None:
      return None
  return tree


def _stack():
  if not hasattr(_STATE, "stack"):
    _STATE.stack = []
  return _STATE.stack


@contextlib.contextmanager
def active(call: _Call):
  """Makes `call` the forward pass the fajax NNX layers called inside belong to."""
  _stack().append(call)
  try:
    yield call
  finally:
    _stack().pop()


def _current_call() -> _Call:
  return _stack()[-1] if _stack() else _Call()


class _Face:
  """What `fajax.rules`, `fajax.direct` and `fajax.layers` ask of a layer, for an NNX layer.

  They were written against a bound Linen module; these are the same methods with the same
  meaning, backed by the layer's `feedback` dict and the current `_Call`.
  """

  parent = None  # the root for fajax.direct's num_classes lookup is the face itself

  def __init__(self, layer, call: _Call):
    self.layer = layer
    self.call = call
    self.path = call.paths.get(id(layer), ())
    # fajax.layers.forward_state keys its per-call dict by `scope.root`.
    self.scope = types.SimpleNamespace(root=call)

  # --- what the rules read off the layer
  @property
  def kernel_init(self):
    return self.layer.kernel_init

  @property
  def param_dtype(self):
    return self.layer.param_dtype

  @property
  def num_classes(self):
    """The called model's `num_classes` (dfa's default width of the output error)."""
    return getattr(self.call.model, "num_classes", None)

  num_outputs = None

  def is_initializing(self) -> bool:
    return self.call.initializing

  # --- feedback variables
  def has_variable(self, col, name) -> bool:
    if col == rules_lib.FEEDBACK and name in self.layer.feedback:
      return True
    if not self.call.initializing:
      # Only asked right before reading a variable that must exist: say how to make it.
      raise ValueError(
        f"Layer '{'/'.join(self.path)}' has no Feedback variable {name!r}: build the model's "
        "feedback with fajax.nnx.convert(model, rule, rngs=..., sample=x) (dfa and densefa need "
        "the sample input), or pass the Bridge all the variables its init returned."
      )
    return False

  def variable(self, col, name, init_fn):
    if col != rules_lib.FEEDBACK:
      raise ValueError(f"fajax NNX layers keep only feedback variables, not {col!r}.")
    store = self.layer.feedback
    if name not in store:
      store[name] = Feedback(init_fn())
    return types.SimpleNamespace(value=store[name].get_value())

  # --- randomness
  def has_rng(self, name) -> bool:
    if name in self.call.rngs or (self.call.initializing and self.call.init_rngs is not None):
      return True
    return name == rules_lib.FEEDBACK_RNG and self.layer.feedback_rngs is not None

  def make_rng(self, name):
    call = self.call
    if name in call.rngs:
      # Linen: key = fold of (stream key, module path..., per-scope call count).
      count = call.counters[(self.path, name)] = call.counters.get((self.path, name), 0) + 1
      return LazyRng.create(call.rngs[name], *self.path, count).as_jax_rng()
    if call.initializing and call.init_rngs is not None:
      return call.init_rngs[name]()
    if name == rules_lib.FEEDBACK_RNG and self.layer.feedback_rngs is not None:
      return self.layer.feedback_rngs()
    raise ValueError(
      f"Layer '{'/'.join(self.path)}' needs a key for the rng stream {name!r}: build it with "
      "rngs=nnx.Rngs(...) or call fajax.nnx.apply(model, x, keys={name: key})."
    )

  # --- collections of the call (captured B, dfa taps, deltas)
  def sow(self, col, name, value, reduce_fn=lambda xs, x: xs + (x,), init_fn=tuple):
    if not self.call.mutable(col):
      return False
    values = self.call.sown.setdefault(col, {}).setdefault(self.path, {})
    values[name] = reduce_fn(values[name] if name in values else init_fn(), value)
    return True

  def perturb(self, name, value, collection=fajax_layers.DELTAS):
    given = lookup(self.call.perturbations, (*self.path, name))
    if given is not None:
      return value + given
    if self.call.mutable(collection):
      values = self.call.sown.setdefault(collection, {}).setdefault(self.path, {})
      values[name] = jnp.zeros_like(value)
    return value


def _build_feedback(layer, rule, rngs):
  """Creates the layer's feedback state for `rule` (drawn from `rngs`) at build time."""
  layer.rule = rules_lib.get(rule)
  if layer.rule.overrides:
    raise ValueError(
      "Per-layer overrides are resolved by layer path, which a layer does not know when it is "
      "built: build it with the base rule and call fajax.nnx.convert(model, rule) on the model."
    )
  layer.feedback = nnx.Dict()
  # nnx.data: a later convert may swap None for a stream (or back) on the same layer.
  layer.feedback_rngs = nnx.data(
    rngs[rules_lib.FEEDBACK_RNG].fork() if isinstance(layer.rule, PER_STEP_RULES) else None
  )
  kernel = layer.kernel.get_value()
  if getattr(layer, "mask", None) is not None:  # nnx.Conv masks the kernel before the primitive
    kernel = kernel * layer.mask
  # Linen layers see the kernel after promote_dtype: the compute dtype.
  kernel = kernel.astype(layer.dtype or kernel.dtype)
  face = _Face(layer, _Call(initializing=True, init_rngs=rngs))
  layer.rule.feedback(face, kernel)


def _run(layer, call_fn, inputs, **kwargs):
  """A layer call under its rule, through the Linen layers' own glue."""
  call = _current_call()
  if isinstance(layer.rule, DIRECT_RULES) and not call.explicit:
    raise ValueError(
      f"A layer trained with {layer.rule.name} must be called through fajax.nnx.apply(model, x) "
      "(or the trainer), which routes the error to every layer."
    )
  return fajax_layers._run_under_rule(_Face(layer, call), layer.rule, call_fn, inputs, **kwargs)


def _no_out_sharding(out_sharding):
  if out_sharding is not None:
    raise ValueError("fajax NNX layers do not take out_sharding; shard their inputs instead.")


def _dot_general(
  lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None
):
  _no_out_sharding(out_sharding)
  return fajax_layers._dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)


def _conv_general_dilated(lhs, rhs, *args, out_sharding=None, **kwargs):
  _no_out_sharding(out_sharding)
  return fajax_layers._conv_general_dilated(lhs, rhs, *args, **kwargs)


def _refuse_injection(kwargs, name):
  if kwargs.get(name) is not None or kwargs.get(name + "_cls") is not None:
    raise ValueError(f"fajax.nnx layers inject their own {name}; it cannot be passed.")


class Linear(nnx.Linear):
  """`flax.nnx.Linear` trained under `rule` (a name, a `fajax.rules.Rule`, or None for bp).

  Takes nnx.Linear's arguments plus `rule`; the feedback state the rule needs is made here (with
  `rngs`) as `Feedback` variables in `self.feedback`.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    rule: Any = None,
    kernel_init=nnx.nn.linear.default_kernel_init,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    _refuse_injection(kwargs, "dot_general")
    super().__init__(
      in_features,
      out_features,
      kernel_init=kernel_init,
      dot_general=_dot_general,
      rngs=rngs,
      **kwargs,
    )
    self.kernel_init = kernel_init  # the rules draw B from the kernel's initializer
    _build_feedback(self, rule, rngs)

  def __call__(self, inputs, out_sharding=None):
    return _run(self, super().__call__, inputs, out_sharding=out_sharding)


class Conv(nnx.Conv):
  """`flax.nnx.Conv` trained under `rule` (a name, a `fajax.rules.Rule`, or None for bp)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size,
    strides=1,
    *,
    rule: Any = None,
    kernel_init=nnx.nn.linear.default_kernel_init,
    rngs: nnx.Rngs,
    **kwargs,
  ):
    _refuse_injection(kwargs, "conv_general_dilated")
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      strides,
      kernel_init=kernel_init,
      conv_general_dilated=_conv_general_dilated,
      rngs=rngs,
      **kwargs,
    )
    self.kernel_init = kernel_init
    _build_feedback(self, rule, rngs)

  def __call__(self, inputs, out_sharding=None):
    return _run(self, super().__call__, inputs, out_sharding=out_sharding)


def apply(model, *args, keys=None, **kwargs):
  """`model(*args, **kwargs)` as one fajax forward pass; returns what the model returns.

  Needed for dfa (its output error reaches the layers through it) and densefa (its layers share
  one pass). `keys` ({stream: key}, e.g. {"feedback": fold_in(key, step)}) makes per-step rules
  (brsf, bp_noise) draw the keys the Linen layers draw, the way `fajax.apply(..., rngs=...)` does;
  it is not `rngs` so that a model's own `rngs` argument passes through untouched. For other
  rules `model(x)` is the same computation.
  """
  call = _Call(model, rngs=keys, mutable=lambda col: col == direct.ERRORS)
  with active(call), direct._inside_apply():
    out = model(*args, **kwargs)
  taps = direct._sown_taps(call.collection(direct.ERRORS))
  if taps:
    out = direct._deliver_output_error(out, taps)
  return out


__all__ = ["Conv", "Feedback", "Linear", "apply"]
