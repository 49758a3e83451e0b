"""Direct and dense feedback alignment (DFA, DenseFA), and `apply`, the model.apply every step uses.

Notation (paper.md): layer l computes a_l = W_l h_{l-1} + b_l; the model applies its activation,
pooling, batch norm, ... to get h_l, the input of layer l+1; e = dL/da_L is the output error.

* `dfa`: delta_l = (D_l e) * f'(a_l) for every layer below the output.
* `densefa` (our reading): delta_l = f'(a_l) * sum_{k>l} D_{k->l} delta_k, with delta_L = e and the
  k = l+1 term carried by layer l+1's own fixed random feedback B_{l+1} (the `fa` term).

Mechanism. Every dfa/densefa layer except the first one of the forward pass puts a *tap* on its
input h_{l-1}: a custom-VJP identity that also emits a zero token of the input's shape; whatever
cotangent the token receives is added to h_{l-1}'s cotangent. The projected errors are injected
there, at the input of the next layer, so the path from a_l to h_l (activation, pooling, batch
norm, dropout, residual additions) back-propagates exactly and turns D_l e into
delta_l = (D_l e) * f'(a_l) for an elementwise f.

* dfa: each layer's primitive gets `feedback="zero"` (its input cotangent is 0), and each tap's
  token is sent D_l e. The output error e only exists in the backward pass of the *model output*,
  so the taps are sown into the internal collection `direct_feedback_errors` and `apply` ends
  with `_project(logits, tokens, D)`, whose backward maps the logits cotangent e to every token.
  D_l is `feedback/<consumer>/direct`, shape [num_outputs, prod(h_{l-1}.shape[1:])], stored at
  the path of the layer whose *input* it feeds.
* densefa: each layer's primitive uses its fixed random B (exactly as `fa`), which is the k = l+1
  term; each layer's output a_k gets a *relay*, a custom-VJP identity whose backward also sends
  D_{k->l} delta_k to the token of every tap opened before the layer's own input tap. The output
  layer's relay receives delta_L = e directly, so densefa needs no help from `apply`.
  D_{k->l} is `feedback/<source>/to_<consumer>` ('/' in the consumer path written '.', and
  `_call<n>` appended for the n-th later call of a shared layer), shape
  [prod(a_k.shape[1:]), prod(h.shape[1:])], stored at the layer whose delta it sends.

Dense matrices everywhere: for a conv layer, D maps the error onto the full H x W x C activation
(flattened in NHWC order, no weight sharing), which is paper.md's "maps e onto the CxHxW
activation" and the reason the memory grows with activation size (see
`fajax.models.stats.feedback_memory`).

Scale: every D is drawn N(0, 1 / n_in) with n_in = prod of the shape of the activation it feeds,
i.e. D^T is a LeCun-normal dense kernel from that activation to the sender. For the last hidden
layer this is the distribution of a dense output layer's `fa` feedback, so DFA, DenseFA and FA
deliver deltas of the same size there.

Layer order is call order: "first layer" and "higher layer" mean called first / called later in
the forward pass, which is the depth order of sequential nets.

Parameter initialization is independent of the rule: taps and relays draw their matrices after
the layer's own parameters, so W is the same under bp, fa, dfa and densefa for the same key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from flax.core.scope import union_filters

from fajax import layers, primitives, rules

ERRORS = "direct_feedback_errors"  # internal Flax collection: dfa taps waiting for e.
DIRECT = "direct"  # feedback/<consumer>/direct: D_l of dfa.
DENSE_PREFIX = "to_"  # feedback/<source>/to_<consumer>: D_{k->l} of densefa.


@dataclasses.dataclass(frozen=True)
class _Tap:
  """An injection point on a layer's input (one per call of a dfa/densefa layer)."""

  path: str  # path of the layer whose input is tapped
  call: int  # 0 for the layer's first call in this forward pass, 1 for its second, ...
  shape: tuple[int, ...]  # shape of that input (batch first)
  token: Any  # zero array of `shape` whose cotangent is added to the input's; None at init

  @property
  def name(self) -> str:
    """`to_<path>` ('/' written '.'), plus `_call<n>` for a shared layer's later calls."""
    suffix = f"_call{self.call}" if self.call else ""
    return DENSE_PREFIX + self.path.replace("/", ".") + suffix


# --- custom-VJP pieces --------------------------------------------------------------------------


@jax.custom_vjp
def _inject(x):
  """Identity on x that also returns a zero token; the token's cotangent is added to x's."""
  return x, jnp.zeros_like(x)


def _inject_fwd(x):
  return _inject(x), None


def _inject_bwd(_, cotangents):
  g_x, g_token = cotangents
  return (g_x + g_token,)


_inject.defvjp(_inject_fwd, _inject_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _project(y, tokens, matrices, token_specs):
  """Identity on y whose backward sends (g_y flattened) @ D_i to token i (and g_y on to y)."""
  del tokens, matrices, token_specs
  return y


def _project_fwd(y, tokens, matrices, token_specs):
  del tokens
  return y, matrices


def _project_bwd(token_specs, matrices, g):
  flat = g.reshape(g.shape[0], -1)
  d_tokens = []
  for m, (shape, dtype) in zip(matrices, token_specs, strict=True):
    d = jnp.dot(flat.astype(m.dtype), m)
    d_tokens.append(d.reshape((g.shape[0],) + shape[1:]).astype(dtype))
  # The matrices are fixed: no cotangent (None is a symbolic zero, nothing is allocated).
  return g, d_tokens, [None] * len(matrices)


_project.defvjp(_project_fwd, _project_bwd)


def _send(y, tokens, matrices):
  """`_project` with the static token shapes filled in."""
  specs = tuple((tuple(t.shape), jnp.dtype(t.dtype).name) for t in tokens)
  matrices = [jax.lax.stop_gradient(m) for m in matrices]
  return _project(y, list(tokens), matrices, specs)


# --- taps and relays ----------------------------------------------------------------------------


def _open_tap(module, x):
  """Taps a layer's input unless the layer is the first of the forward pass."""
  state = layers.forward_state(module)
  tap = None
  if state.get("layers_called", 0):
    token = None
    if not module.is_initializing():
      x, token = _inject(x)
    taps = state.setdefault("direct_taps", [])
    path = rules.module_path(module)
    tap = _Tap(path, sum(t.path == path for t in taps), tuple(x.shape), token)
    taps.append(tap)
  state.setdefault("direct_open", []).append(tap)
  return x


def _close_tap(module) -> _Tap | None:
  """The tap this layer opened on its input (None for the first layer)."""
  return layers.forward_state(module)["direct_open"].pop()


def _fixed_matrix(module, name, shape):
  """The fixed random matrix `feedback/<module>/<name>`, drawn N(0, 1/shape[1]) at init.

  A None in `shape` (only at apply) accepts whatever size the stored matrix has there.
  """

  def init():
    std = 1.0 / math.sqrt(shape[1])
    return std * jax.random.normal(module.make_rng("params"), shape, module.param_dtype)

  d = rules.feedback_variable(module, name, init)
  if d.ndim != 2 or any(w is not None and h != w for h, w in zip(d.shape, shape, strict=True)):
    raise ValueError(
      f"Layer '{rules.module_path(module)}': feedback/{name} has shape {tuple(d.shape)}, but this "
      f"model needs {tuple(shape)}; initialize the variables with the model as it is now."
    )
  return d


def _root_module(module):
  while isinstance(module.parent, nn.Module):
    module = module.parent
  return module


def _num_outputs(rule, module) -> int:
  """K, the width of the output error e: the rule's num_outputs, else the model's num_classes."""
  if rule.num_outputs is not None:
    return int(rule.num_outputs)
  candidate = _root_module(module)
  while candidate is not None:
    for attr in ("num_classes", "num_outputs"):
      value = getattr(candidate, attr, None)
      if isinstance(value, int | np.integer) and value > 0:
        return int(value)
    inner = getattr(candidate, "module", None)  # fajax.convert wraps the model as `.module`
    candidate = inner if isinstance(inner, nn.Module) else None
  raise ValueError(
    f"Rule 'dfa' needs the width of the output error to draw its feedback for layer "
    f"'{rules.module_path(module)}': give the model a `num_classes` field or use "
    f"fajax.rules.get('dfa', num_outputs=K)."
  )


def _prod(shape) -> int:
  return int(np.prod(shape, dtype=np.int64))


@rules.register
@dataclasses.dataclass(frozen=True)
class DFA(rules.Rule):
  """Direct feedback alignment: delta_l = (D_l e) * f'(a_l), D_l fixed random per layer.

  No layer-to-layer feedback: every dfa layer's input cotangent is zero, and D_l e is added at
  the input of the next layer (see the module docstring). Needs `fajax.apply` (the output error
  reaches the layers through it); a plain `model.apply` raises.

  num_outputs: width K of the output error; by default the model's `num_classes`.
  """

  name: ClassVar[str] = "dfa"
  num_outputs: int | None = None

  def __post_init__(self):
    if self.num_outputs is not None and not (
      isinstance(self.num_outputs, int | np.integer) and self.num_outputs > 0
    ):
      raise ValueError(f"dfa num_outputs must be a positive int or None, got {self.num_outputs!r}.")

  def feedback(self, module, kernel):
    return primitives.ZERO

  def input_hook(self, module, x):
    if not module.is_initializing() and not layers.flag("direct_apply"):
      raise ValueError(
        f"Layer '{rules.module_path(module)}' trains with dfa, whose output error reaches the "
        "layers through fajax.apply: call fajax.apply(model, variables, ...) instead of "
        "model.apply (same arguments)."
      )
    return _open_tap(module, x)

  def output_hook(self, module, y):
    tap = _close_tap(module)
    if tap is None:
      return y
    # K comes from the model at init; at apply the stored matrix fixes it.
    k = _num_outputs(self, module) if module.is_initializing() else None
    d = _fixed_matrix(module, DIRECT, (k, _prod(tap.shape[1:])))
    if not module.is_initializing():
      module.sow(ERRORS, "taps", (tap.token, d))
    return y


@rules.register
@dataclasses.dataclass(frozen=True)
class DenseFA(rules.FA):
  """Dense feedback alignment (our reading): delta_l = f'(a_l) * sum_{k>l} D_{k->l} delta_k.

  The k = l+1 term is `fa` (layer l+1's fixed random B, `feedback/<layer>/kernel`); every other
  higher layer k, the output included (delta_L = e), sends D_{k->l} delta_k
  (`feedback/<k>/to_<l+1>`) to the input of layer l+1. Memory grows with depth squared: check it
  with `fajax.models.stats.feedback_memory` before building a large model.
  """

  name: ClassVar[str] = "densefa"

  def input_hook(self, module, x):
    return _open_tap(module, x)

  def output_hook(self, module, y):
    own = _close_tap(module)
    taps = layers.forward_state(module).get("direct_taps", [])
    lower = taps[: taps.index(own)] if own is not None else list(taps)
    if not lower:
      return y
    width = _prod(y.shape[1:])
    matrices = [_fixed_matrix(module, t.name, (width, _prod(t.shape[1:]))) for t in lower]
    if module.is_initializing():
      return y
    return _send(y, [t.token for t in lower], matrices)


# --- apply --------------------------------------------------------------------------------------


def _inside_apply():
  """Within this context dfa layers may run: the caller (fajax.apply, fajax.nnx.apply) delivers
  the output error to their taps when the forward pass ends."""
  return layers.trace_flags(direct_apply=True)


def _sown_taps(tree) -> list:
  """The (token, D) pairs dfa layers sowed, from the nested ERRORS collection."""
  found = []
  for key, value in tree.items():
    if key == "taps" and isinstance(value, tuple):
      found.extend(value)
    elif hasattr(value, "items"):
      found.extend(_sown_taps(value))
  return found


def apply(model, variables, *args, **kwargs):
  """`model.apply(variables, *args, **kwargs)`, routing direct feedback where a rule needs it.

  Takes and returns exactly what `model.apply` does (`mutable`, `rngs`, `method`,
  `capture_intermediates`, ...). For dfa layers it also ends the forward pass with the op whose
  backward sends the output error e (the cotangent of the returned array) to every layer's
  feedback matrix; the internal collection that carries it never reaches the caller. For every
  other rule it is `model.apply`.
  """
  mutable = kwargs.pop("mutable", False)
  returns_state = mutable is not False or bool(kwargs.get("capture_intermediates", False))
  with _inside_apply():
    out, state = model.apply(variables, *args, mutable=union_filters(mutable, ERRORS), **kwargs)
  frozen = isinstance(state, FrozenDict)
  state = dict(state)
  taps = _sown_taps(state.pop(ERRORS, {}))
  if taps:
    out = _deliver_output_error(out, taps)
  if not returns_state:
    return out
  return out, (FrozenDict(state) if frozen else state)


def _deliver_output_error(out, taps):
  tokens = [t for t, _ in taps]
  matrices = [d for _, d in taps]
  k = matrices[0].shape[0]
  if not (hasattr(out, "shape") and out.ndim == 2 and out.shape[1] == k):
    shape = getattr(out, "shape", type(out).__name__)
    raise ValueError(
      f"dfa sends the error of the model's output to its layers, so the model must return one "
      f"array [batch, {k}] (its feedback was drawn for {k} outputs); it returned {shape}."
    )
  if any(t.shape[0] != out.shape[0] for t in tokens):
    raise ValueError(
      "dfa needs the batch dimension first in every layer input and in the model's output."
    )
  return _send(out, tokens, matrices)
