"""Learned feedback: B trained by a local alignment objective (Akrout 2019, Kunin 2020).

A linear layer computes r = x W (W has the kernel's shape); its backward pass sends the input
cotangent through the feedback B (`fajax.primitives`). The rules `wm`, `sa`, `aa`, `ia` and
`learned` (`fajax.rules`) train B by gradient descent on an objective that only uses what the
layer sees: its input x of the step (or noise), W and B. W and x are constants; only B moves.

The objectives are weighted sums of five primitives, E being the mean over the output positions of
the layer (the examples of the batch for a dense layer; examples x spatial positions for a
convolution, our reading: then the fixed points below have W's scale for both) and sums running over
the features:

    decay  = 1/2 ||B||^2                 self  = -sum(W * B)
    amp    = -E[(x W) . (x B)]           sparse = 1/2 E ||x B||^2
    null   = 1/2 E ||(x W) B^T||^2

For a convolution, x W is the layer's convolution of x with W, x B the same convolution with B, and
(x W) B^T the transpose of the convolution with B applied to x W (back to x's shape): the primitives
call the layer's own `lax.dot_general` / `lax.conv_general_dilated` with its own arguments, so every
layout, stride, padding, dilation and group count the layer supports is supported here.

A new objective is a tuple of (primitive, coefficient) pairs:

    my_objective = fajax.learned.terms(decay=0.5, amp=1.0)
    rule = fajax.rules.get("learned", terms=my_objective)      # or terms={"decay": 0.5, "amp": 1.0}
    fajax.learned.register_primitive("mine", lambda layer: ...)  # a primitive of your own

How B is trained (docs/learned_feedback.md): inside `fajax.layers.capture_feedback_grads()`, every
layer under a learned rule sows dObjective/dB (`feedback_gradient_parts`, a pure function of x, W,
B, as a `FeedbackGrad`: the decay term apart, so that it is added where B's optimizer reads B) into
the collection `feedback_grads`; the train step applies B's own optax optimizer to those gradients
(`update_feedback`, which converts them), next to W's update, inside the same jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

FEEDBACK_GRADS = "feedback_grads"  # the Flax collection where layers sow dObjective/dB.


@dataclasses.dataclass(frozen=True)
class Layer:
  """What an objective sees of one layer on one step.

  Attributes:
    x: the layer's input (or the noise that replaces it), float32.
    w: the forward kernel W (a constant of the objective), float32.
    b: the feedback B (the variable), float32.
    apply: the layer's linear map, apply(x, kernel) (its own primitive and arguments).
    features: the number of output features of the map (the rest of its output are positions).
  """

  x: jax.Array
  w: jax.Array
  b: jax.Array
  apply: Callable[[jax.Array, jax.Array], jax.Array]
  features: int

  # Each product is computed once per Layer and shared by the terms that use it, so that autodiff
  # sums their cotangents and transposes the map once (two calls would cost two transposes).

  @functools.cached_property
  def positions(self) -> int:
    """The number of output positions E averages over: examples (x spatial positions for convs)."""
    out = jax.eval_shape(self.apply, self.x, self.w)
    return max(out.size // self.features, 1)

  @functools.cached_property
  def forward(self) -> jax.Array:
    """x W: the layer's output (before the bias)."""
    return self.apply(self.x, self.w)

  @functools.cached_property
  def backward_projection(self) -> jax.Array:
    """x B: the layer's map applied with B."""
    return self.apply(self.x, self.b)

  @functools.cached_property
  def reconstruction(self) -> jax.Array:
    """(x W) B^T: x W sent back to x's shape by the transpose of the map with B."""
    (out,) = jax.linear_transpose(lambda z: self.apply(z, self.b), self.x)(self.forward)
    return out


def _sum(x):
  return jnp.sum(x.astype(jnp.float32))


def decay(layer: Layer):
  """1/2 ||B||^2 (gradient: B)."""
  return 0.5 * _sum(jnp.square(layer.b))


def self_(layer: Layer):
  """-sum(W * B) (gradient: -W)."""
  return -_sum(layer.w * layer.b)


def amp(layer: Layer):
  """-E[(x W) . (x B)] (dense gradient: -x^T x W / n)."""
  return -_sum(layer.forward * layer.backward_projection) / layer.positions


def sparse(layer: Layer):
  """1/2 E ||x B||^2 (dense gradient: x^T x B / n)."""
  return 0.5 * _sum(jnp.square(layer.backward_projection)) / layer.positions


def null(layer: Layer):
  """1/2 E ||(x W) B^T||^2 (dense gradient: B W^T x^T x W / n)."""
  return 0.5 * _sum(jnp.square(layer.reconstruction)) / layer.positions


PRIMITIVES: dict[str, Callable[[Layer], jax.Array]] = {
  "decay": decay,
  "self": self_,
  "amp": amp,
  "sparse": sparse,
  "null": null,
}
_BUILTIN = dict(PRIMITIVES)  # Their gradients have closed forms (`_builtin_gradient`).


def register_primitive(name: str, fn: Callable[[Layer], jax.Array]) -> None:
  """Makes `fn(layer) -> scalar` usable as a term of objectives under `name`."""
  PRIMITIVES[name] = fn


Terms = tuple[tuple[str, float], ...]


def terms(spec: Mapping[str, float] | Terms | None = None, **coefficients: float) -> Terms:
  """A canonical (hashable, sorted) objective: terms(decay=1.0, self=1.0) or terms({...}).

  Raises ValueError for an unknown primitive or a non-finite coefficient.
  """
  items = dict(spec.items() if hasattr(spec, "items") else (spec or ()))
  items.update(coefficients)
  out = []
  for name, coefficient in sorted(items.items()):
    if name not in PRIMITIVES:
      raise ValueError(
        f"Unknown objective term {name!r}; valid terms are: {', '.join(sorted(PRIMITIVES))}."
      )
    coefficient = float(coefficient)
    if not math.isfinite(coefficient):
      raise ValueError(f"The coefficient of {name!r} must be finite, got {coefficient!r}.")
    if coefficient:
      out.append((name, coefficient))
  return tuple(out)


def value(objective: Terms, layer: Layer) -> jax.Array:
  """The objective sum(c * primitive(layer)) on one layer."""
  return sum((c * PRIMITIVES[name](layer) for name, c in objective), jnp.float32(0.0))


def needs_input(objective: Terms) -> bool:
  """Whether any term uses x (decay and self do not: no data work at all)."""
  return any(name not in ("decay", "self") for name, _ in objective)


@flax.struct.dataclass
class FeedbackGrad:
  """dObjective/dB of one layer, held as `part + decay * B`: what the layers sow.

  The decay term (c_decay * B) is kept apart so that it is added where B's optimizer reads B
  anyway, inside the train step's guarded update, instead of in a pass over the whole kernel of
  its own before it (wm on the MNIST net: that pass was 2 ms of a 50 ms step, fc1's 3136x1024 B).
  `value(b)` is the gradient; sums over calls of a shared layer add both parts.
  """

  part: jax.Array  # float32, the kernel's shape: every term but decay.
  decay: float = flax.struct.field(pytree_node=False, default=0.0)

  def value(self, b) -> jax.Array:
    """The gradient at B (the feedback the layer used), in B's dtype."""
    grad = self.part
    if self.decay:  # Without decay B is not read: 0 * B would still be a pass (NaN semantics).
      grad = grad + self.decay * b.astype(jnp.float32)
    return grad.astype(b.dtype)

  def __add__(self, other: FeedbackGrad) -> FeedbackGrad:
    return FeedbackGrad(self.part + other.part, self.decay + other.decay)


def feedback_gradient(objective: Terms, x, w, b, apply, features: int) -> jax.Array:
  """dObjective/dB at (x, W, B), with x and W held constant; in B's dtype.

  Pure and jit-friendly; `apply(x, kernel)` is the layer's linear map with `features` output
  features. Computed in float32. The built-in primitives use their closed forms
  (`_builtin_gradient`: fewer linear maps than autodiff of their values); primitives registered
  by the user are differentiated with `jax.grad`, and the two parts are summed.
  """
  return feedback_gradient_parts(objective, x, w, b, apply, features).value(b)


def feedback_gradient_parts(objective: Terms, x, w, b, apply, features: int) -> FeedbackGrad:
  """`feedback_gradient` as a FeedbackGrad: the built-in decay term apart from the rest."""
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  w = jax.lax.stop_gradient(w).astype(jnp.float32)
  b32 = b.astype(jnp.float32)
  builtin = {n: c for n, c in objective if PRIMITIVES.get(n) is _BUILTIN.get(n)}
  others = tuple((n, c) for n, c in objective if n not in builtin)
  layer = Layer(x=x, w=w, b=b32, apply=apply, features=features)
  part = _builtin_gradient({n: c for n, c in builtin.items() if n != "decay"}, layer)
  if others:

    def objective_of(b):
      return value(others, Layer(x=x, w=w, b=b, apply=apply, features=features))

    part = part + jax.grad(objective_of)(b32)
  return FeedbackGrad(part, float(builtin.get("decay", 0.0)))


def gradient_values(grads, feedback):
  """The sown FeedbackGrads of `grads` (the `feedback_grads` collection) as arrays, at the B of
  `feedback` at the same paths."""
  part = learned_part(feedback, grads)
  is_grad = lambda g: isinstance(g, FeedbackGrad)
  return jax.tree.map(lambda g, b: g.value(b) if is_grad(g) else g, grads, part, is_leaf=is_grad)


def _kernel_transpose(layer: Layer, z, cotangent):
  """d/dK <cotangent, apply(z, K)>: the map's transpose with respect to its kernel, at input z.

  Every data primitive's gradient is one of these (the map is bilinear in input and kernel).
  """
  (out,) = jax.linear_transpose(lambda k: layer.apply(z, k), layer.w)(cotangent)
  return out


def _builtin_gradient(c: Mapping[str, float], layer: Layer) -> jax.Array:
  """The gradient of sum(c[name] * name) over the built-in primitives, in closed form.

  With K(z, g) = d/dB <g, apply(z, B)> and E over the P output positions (dense: K(z, g) = z^T g):
    decay: B    self: -W    amp: -K(x, x W) / P    sparse: K(x, x B) / P
    null: K((x W) B^T, x W) / P   (1/2 ||r||^2 with r = (x W) B^T linear in B; <r, T_B(y)> =
          <apply(r, B), y> for the transpose T_B of apply(., B), so its gradient is K(r, y))
  The maps are shared: amp and sparse are one K at the kernel c_sparse B - c_amp W (apply is
  linear in it): 2 maps for wm and aa, where autodiff of the values takes 3 for aa; amp and null
  share y = x W, so without sparse they are one K at the input c_null r - c_amp x: 3 maps for ia,
  where autodiff takes 4.
  """
  grad = jnp.zeros_like(layer.b)
  if c.get("decay"):  # (feedback_gradient_parts keeps decay apart: FeedbackGrad)
    grad = grad + c["decay"] * layer.b
  if c.get("self"):
    grad = grad - c["self"] * layer.w
  a, s, n = c.get("amp", 0.0), c.get("sparse", 0.0), c.get("null", 0.0)
  if not (a or s or n):
    return grad
  scale = 1.0 / layer.positions
  if not n:
    # With one of the two terms the coefficient scales the (small) map output, not a kernel: XLA
    # keeps 0 * B (NaN semantics), and either product would be a pass over a whole kernel.
    if s and a:
      out = scale * layer.apply(layer.x, s * layer.b - a * layer.w)
    elif s:
      out = (s * scale) * layer.backward_projection
    else:
      out = (-a * scale) * layer.forward
    return grad + _kernel_transpose(layer, layer.x, out)
  y = layer.forward
  r = layer.reconstruction
  if s:
    grad = grad + _kernel_transpose(layer, layer.x, scale * (s * layer.backward_projection - a * y))
    return grad + _kernel_transpose(layer, r, (n * scale) * y)
  return grad + _kernel_transpose(layer, n * r - a * layer.x, scale * y)


def subsample(x, every: int):
  """Every `every`-th example of the batch (x's leading axis), as a [n // every, ...] array.

  Taken as x.reshape(n // every, every, ...)[:, 0], so that a batch split over devices stays
  split evenly (each device keeps its own rows); falls back to the whole batch when `every` does
  not divide it.
  """
  n = x.shape[0]
  if every <= 1 or n % every:
    return x
  return x.reshape((n // every, every, *x.shape[1:]))[:, 0]


# -- Training B: the feedback optimizer ------------------------------------------------------------


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree) if tree else {})


def learned_part(feedback, grads):
  """The leaves of `feedback` at the paths of `grads` (the learned B matrices), as a nested dict."""
  flat, wanted = _flat(feedback), _flat(grads)
  return flax.traverse_util.unflatten_dict({k: flat[k] for k in wanted})


def init_feedback_state(tx: optax.GradientTransformation, feedback, grads):
  """B's optimizer state for the learned part of `feedback` (`grads` gives its paths)."""
  return tx.init(learned_part(feedback, grads))


def update_feedback(tx: optax.GradientTransformation, feedback, opt_state, grads):
  """(new feedback, new opt_state) after one optimizer step of the learned B on `grads`.

  `grads`: the sown collection (FeedbackGrads, or arrays). Leaves of `feedback` without a
  gradient (fixed feedback, scales, other rules) are unchanged.
  """
  part = learned_part(feedback, grads)
  grads = gradient_values(grads, feedback)
  updates, opt_state = tx.update(grads, opt_state, part)
  flat = _flat(feedback)
  flat.update(_flat(optax.apply_updates(part, updates)))
  return flax.traverse_util.unflatten_dict(flat), opt_state
