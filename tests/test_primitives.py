"""The feedback primitives against hand-computed transposed products and convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fajax.primitives import feedback_conv_general_dilated, feedback_dot_general

DN = (((1,), (0,)), ((), ()))  # x @ W


def _rand(key, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(key), shape, dtype)


def test_dense_cotangents_hand_computed():
  x, w, b, g = _rand(0, (5, 4)), _rand(1, (4, 3)), _rand(2, (4, 3)), _rand(3, (5, 3))
  out, vjp = jax.vjp(lambda x, w: feedback_dot_general(x, w, b, DN), x, w)
  dx, dw = vjp(g)
  xn, wn, bn, gn = map(np.asarray, (x, w, b, g))
  np.testing.assert_allclose(out, xn @ wn, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, gn @ bn.T, rtol=1e-5, atol=1e-5)  # carried by B, not W
  np.testing.assert_allclose(dw, xn.T @ gn, rtol=1e-5, atol=1e-5)  # the true weight gradient


def test_dense_none_is_exact_backprop_and_zero_blocks():
  x, w, g = _rand(0, (5, 4)), _rand(1, (4, 3)), _rand(3, (5, 3))
  _, vjp = jax.vjp(lambda x, w: feedback_dot_general(x, w, None, DN), x, w)
  _, vjp_ref = jax.vjp(lambda x, w: lax.dot_general(x, w, DN), x, w)
  for a, r in zip(vjp(g), vjp_ref(g), strict=True):
    np.testing.assert_array_equal(a, r)
  _, vjp0 = jax.vjp(lambda x, w: feedback_dot_general(x, w, "zero", DN), x, w)
  dx, dw = vjp0(g)
  np.testing.assert_array_equal(dx, np.zeros_like(x))
  np.testing.assert_array_equal(dw, vjp_ref(g)[1])


def test_feedback_gets_no_gradient_and_shape_is_checked():
  x, w, b = _rand(0, (5, 4)), _rand(1, (4, 3)), _rand(2, (4, 3))
  db = jax.grad(lambda b: jnp.sum(feedback_dot_general(x, w, b, DN)))(b)
  np.testing.assert_array_equal(db, np.zeros_like(b))
  with pytest.raises(ValueError, match="kernel shape"):
    feedback_dot_general(x, w, b[:2], DN)


CONV_CASES = [
  # (spatial dims, strides, padding, lhs_dilation, rhs_dilation, groups, batch_groups)
  (2, (2, 2), "SAME", None, None, 1, 1),
  (2, (1, 2), ((1, 2), (0, 1)), None, (2, 1), 2, 1),
  (2, (1, 1), ((0, 0), (1, 1)), (2, 2), None, 1, 1),
  (1, (2,), "SAME", None, (3,), 1, 1),
  (3, (1, 2, 1), "SAME", None, None, 2, 1),
  (2, (1, 1), "VALID", None, None, 1, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_cotangents_are_transposed_convolution_with_b(case):
  nd, strides, padding, lhs_dil, rhs_dil, groups, batch_groups = case
  spatial = (7,) * nd
  cin, cout = 4, 6
  x = _rand(0, (4, *spatial, cin))
  w = _rand(1, (3,) * nd + (cin // groups, cout))
  b = _rand(2, w.shape)
  letters = "DHW"[-nd:] if nd <= 3 else None
  dn = lax.conv_dimension_numbers(
    x.shape, w.shape, ("N" + letters + "C", letters + "IO", "N" + letters + "C")
  )
  kw = dict(
    window_strides=strides,
    padding=padding,
    lhs_dilation=lhs_dil,
    rhs_dilation=rhs_dil,
    dimension_numbers=dn,
    feature_group_count=groups,
    batch_group_count=batch_groups,
  )
  out, vjp = jax.vjp(lambda x, w: feedback_conv_general_dilated(x, w, b, **kw), x, w)
  g = _rand(3, out.shape)
  dx, dw = vjp(g)
  ref_out, ref_vjp_with_b = jax.vjp(lambda x: lax.conv_general_dilated(x, b, **kw), x)
  _, ref_vjp_w = jax.vjp(lambda w: lax.conv_general_dilated(x, w, **kw), w)
  np.testing.assert_allclose(out, lax.conv_general_dilated(x, w, **kw), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, ref_vjp_with_b(g)[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, ref_vjp_w(g)[0], rtol=1e-4, atol=1e-4)
  assert not np.allclose(dx, jax.vjp(lambda x: lax.conv_general_dilated(x, w, **kw), x)[1](g)[0])


def test_conv_transpose_by_hand_1x1():
  # A 1x1 convolution is a per-pixel matmul: its input cotangent is g @ B^T at every pixel.
  x, w, b = _rand(0, (2, 3, 3, 4)), _rand(1, (1, 1, 4, 5)), _rand(2, (1, 1, 4, 5))
  dn = ("NHWC", "HWIO", "NHWC")
  out, vjp = jax.vjp(lambda x: feedback_conv_general_dilated(x, w, b, dimension_numbers=dn), x)
  g = _rand(3, out.shape)
  np.testing.assert_allclose(
    vjp(g)[0], np.einsum("nhwo,io->nhwi", g, np.asarray(b[0, 0])), rtol=1e-5, atol=1e-5
  )


def test_bfloat16_and_preferred_element_type():
  x, w, b = (_rand(i, s, jnp.bfloat16) for i, s in ((0, (5, 4)), (1, (4, 3)), (2, (4, 3))))
  out, vjp = jax.vjp(
    lambda x, w: feedback_dot_general(x, w, b, DN, preferred_element_type=jnp.float32), x, w
  )
  assert out.dtype == jnp.float32
  dx, dw = vjp(jnp.ones_like(out))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    dx.astype(np.float32), np.ones((5, 3)) @ np.asarray(b, np.float32).T, rtol=2e-2, atol=2e-2
  )


def test_jit_vmap_and_grad_of_grad():
  x, w, b = _rand(0, (5, 4)), _rand(1, (4, 3)), _rand(2, (4, 3))
  f = lambda x, w: jnp.sum(jnp.tanh(feedback_dot_general(x, w, b, DN)))
  dx_eager = jax.grad(f)(x, w)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x, w), dx_eager, rtol=1e-5, atol=1e-6)
  # vmap over a batch of weights: each member gets its own weight cotangent.
  ws = jnp.stack([w, 2 * w])
  dws = jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0))(x, ws)
  np.testing.assert_allclose(dws[0], jax.grad(f, argnums=1)(x, w), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dws[1], jax.grad(f, argnums=1)(x, 2 * w), rtol=1e-5, atol=1e-6)
  # grad of grad (reverse over reverse): d/dx of sum(dL/dW) equals the plain-lax value, since the
  # weight cotangent does not involve B.
  h = lambda x: jnp.sum(jax.grad(f, argnums=1)(x, w))
  ref = lambda x: jnp.sum(
    jax.grad(lambda x, w: jnp.sum(jnp.tanh(lax.dot_general(x, w, DN))), argnums=1)(x, w)
  )
  np.testing.assert_allclose(jax.grad(h)(x), jax.grad(ref)(x), rtol=1e-4, atol=1e-5)
