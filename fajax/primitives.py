"""Feedback primitives: `lax.dot_general` and `lax.conv_general_dilated` with a swappable backward.

The forward pass is the plain primitive with the forward weights W. The backward pass computes

* the weight cotangent exactly as autodiff would (it only needs the layer input and the output
  cotangent, so it is local under every rule), and
* the input cotangent as the transpose of the *same primitive evaluated with the feedback B*.

Because the input cotangent is the linear transpose of the same primitive, every stride,
padding, dilation, feature-group count, batch-group count, dimension layout and dtype that the
primitive supports is handled by JAX's own transpose rules, and `feedback=None` (B = W) gives
exactly what `jax.grad` gives.

`feedback` may also be the string "zero": the input cotangent is then zero (no layer-to-layer
feedback), which direct feedback alignment builds on.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

ZERO = "zero"


def _transpose_wrt(fn, primal, cotangent):
  """Cotangent of `primal` through the linear map `fn`, without evaluating `fn` forward."""
  (ct,) = jax.linear_transpose(fn, jax.ShapeDtypeStruct(primal.shape, primal.dtype))(cotangent)
  return ct


def _make_feedback_primitive(primitive, static_names):
  """Builds `f(lhs, rhs, feedback, **static)` = primitive(lhs, rhs) with feedback in the VJP."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def apply(lhs, rhs, feedback, static):
    del feedback
    return primitive(lhs, rhs, **_kwargs(static))

  def fwd(lhs, rhs, feedback, static):
    out = primitive(lhs, rhs, **_kwargs(static))
    return out, (lhs, rhs, feedback)

  def bwd(static, residuals, g):
    lhs, rhs, feedback = residuals
    kwargs = _kwargs(static)
    # The weight cotangent is the usual one: it only uses the input and the output cotangent.
    d_rhs = _transpose_wrt(lambda w: primitive(lhs, w, **kwargs), rhs, g)
    if dict(static)[_BLOCK]:  # ZERO: no feedback through this layer (DFA).
      d_lhs = jnp.zeros_like(lhs)
    else:
      b = rhs if feedback is None else feedback.astype(rhs.dtype)
      d_lhs = _transpose_wrt(lambda x: primitive(x, b, **kwargs), lhs, g)
    d_feedback = None if feedback is None else jnp.zeros_like(feedback)
    return d_lhs, d_rhs, d_feedback

  apply.defvjp(fwd, bwd)

  def call(lhs, rhs, feedback=None, **kwargs):
    unknown = set(kwargs) - set(static_names)
    if unknown:
      raise TypeError(f"unexpected arguments {sorted(unknown)}; valid: {sorted(static_names)}")
    if feedback is not None and not isinstance(feedback, str):
      if feedback.shape != rhs.shape:
        raise ValueError(
          f"feedback shape {feedback.shape} must equal the kernel shape {rhs.shape}."
        )
      # The feedback matrix is never trained through this primitive.
      feedback = lax.stop_gradient(feedback)
    elif isinstance(feedback, str) and feedback != ZERO:
      raise ValueError(f"feedback must be an array, None or {ZERO!r}, got {feedback!r}.")
    block = isinstance(feedback, str)
    static = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())) + ((_BLOCK, block),)
    if block:
      feedback = None
    return apply(lhs, rhs, feedback, static)

  return call


_BLOCK = "_block_input_cotangent"


def _kwargs(static):
  return {k: v for k, v in static if k != _BLOCK}


def _hashable(value):
  """Makes list-valued primitive arguments (padding, strides) hashable for nondiff_argnums."""
  if isinstance(value, list) or type(value) is tuple:  # keep namedtuples (ConvDimensionNumbers)
    return tuple(_hashable(v) for v in value)
  return value


_feedback_dot_general = _make_feedback_primitive(
  lax.dot_general, ("dimension_numbers", "precision", "preferred_element_type")
)
_feedback_conv = _make_feedback_primitive(
  lax.conv_general_dilated,
  (
    "window_strides",
    "padding",
    "lhs_dilation",
    "rhs_dilation",
    "dimension_numbers",
    "feature_group_count",
    "batch_group_count",
    "precision",
    "preferred_element_type",
  ),
)


def feedback_dot_general(
  lhs, rhs, feedback=None, dimension_numbers=None, precision=None, preferred_element_type=None
):
  """`lax.dot_general(lhs, rhs, ...)` whose input cotangent is carried by `feedback`.

  Args:
    lhs: layer input.
    rhs: forward weights W.
    feedback: B with W's shape, None for B = W (exact backprop), or "zero" for no feedback.
    dimension_numbers, precision, preferred_element_type: as in `lax.dot_general`.
  """
  if dimension_numbers is None:
    raise TypeError("feedback_dot_general needs dimension_numbers, as lax.dot_general does.")
  return _feedback_dot_general(
    lhs,
    rhs,
    feedback,
    dimension_numbers=dimension_numbers,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def feedback_conv_general_dilated(
  lhs,
  rhs,
  feedback=None,
  window_strides=None,
  padding="VALID",
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated(lhs, rhs, ...)` whose input cotangent is carried by `feedback`.

  The input cotangent is the transposed convolution with B (weight-shared feedback).
  Arguments are those of `lax.conv_general_dilated`, plus `feedback` as in
  `feedback_dot_general`.
  """
  if window_strides is None:
    window_strides = (1,) * (lhs.ndim - 2)
  return _feedback_conv(
    lhs,
    rhs,
    feedback,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
