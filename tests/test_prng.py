"""Tests of fajax.prng: brsf's random bits from XLA's Threefry RngBitGenerator.

The sampler may change the stream, never the distribution: initializers fed with its keys must
draw exactly their own distribution, and brsf's B must stay |R| * sign(W) with R from W's
initializer, identical however the kernel is sharded.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import fajax
from fajax import layers, prng


def test_keys_split_and_fold_in_like_threefry_and_bits_are_uniform():
  key = jax.random.key(3)
  fast = prng.xla_threefry(key)
  np.testing.assert_array_equal(jax.random.key_data(fast), jax.random.key_data(key))
  for a, b in ((jax.random.split(fast), jax.random.split(key)), (jax.random.fold_in(fast, 7),) * 2):
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
  np.testing.assert_array_equal(
    jax.random.key_data(jax.random.fold_in(fast, 7)),
    jax.random.key_data(jax.random.fold_in(key, 7)),
  )
  bits = np.asarray(jax.random.bits(fast, (1 << 16,)))
  assert not np.array_equal(
    bits, np.asarray(jax.random.bits(prng.xla_threefry(jax.random.key(4)), (1 << 16,)))
  )
  # Each of the 32 bit planes is a fair coin (|z| < 5 for 65536 flips), bytes are uniform.
  planes = (bits[:, None] >> np.arange(32)) & 1
  z = (planes.mean(0) - 0.5) / np.sqrt(0.25 / len(bits))
  assert np.abs(z).max() < 5
  counts = np.bincount((bits & 0xFF).astype(np.int64), minlength=256)
  assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize(
  "init,reference",
  [
    # lecun_normal = truncated normal on [-2, 2], rescaled to variance 1 / fan_in (fan_in 256).
    (nn.initializers.lecun_normal(), stats.truncnorm(-2, 2, scale=1 / 16 / 0.87962566)),
    (nn.initializers.uniform(0.5), stats.uniform(0, 0.5)),
  ],
)
def test_initializers_draw_their_own_distribution(init, reference):
  r = np.asarray(init(prng.xla_threefry(jax.random.key(0)), (256, 512), jnp.float32)).ravel()
  assert stats.kstest(r, reference.cdf).pvalue > 1e-3


class Net(nn.Module):
  """512 -> 256 -> 8 under brsf (Dense_0's kernel is 512 x 256)."""

  @nn.compact
  def __call__(self, x):
    x = fajax.Dense(256, rule=fajax.rules.get("brsf"))(x)
    return fajax.Dense(8, rule=fajax.rules.get("brsf"))(x)


def test_brsf_magnitudes_follow_the_kernel_initializer():
  """B = |R| * sign(W), R ~ lecun_normal (Dense's initializer) over a 512 x 256 kernel."""
  x = jnp.ones((2, 512))
  model = Net()
  variables = model.init(jax.random.key(0), x)
  with layers.capture_feedback():
    _, st = model.apply(
      variables, x, rngs={"feedback": jax.random.key(1)}, mutable=[layers.FEEDBACK_MATRICES]
    )
  b = np.asarray(st[layers.FEEDBACK_MATRICES]["Dense_0"]["B"])
  w = np.asarray(variables["params"]["Dense_0"]["kernel"])
  np.testing.assert_array_equal(np.sign(b), np.sign(w))
  magnitude = stats.truncnorm(0, 2, scale=1 / np.sqrt(512) / 0.87962566)  # |R| is half of it.
  assert stats.kstest(np.abs(b).ravel(), magnitude.cdf).pvalue > 1e-3


def test_brsf_is_the_same_with_kernels_split_over_devices():
  """The trainer splits kernels over the 'model' axis: R_t must not depend on that sharding."""
  x = jax.random.normal(jax.random.key(0), (8, 512))
  model = Net()
  variables = model.init(jax.random.key(1), x)
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))

  def grads(params):
    loss = lambda p: jnp.sum(
      model.apply({"params": p}, x, rngs={"feedback": jax.random.key(5)}) ** 2
    )
    return jax.grad(loss)(params)

  split = jax.tree.map(
    lambda a: jax.device_put(
      a,
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * (a.ndim - 1), "model")),
    ),
    variables["params"],
  )
  g1, g8 = jax.jit(grads)(variables["params"]), jax.jit(grads)(split)
  assert split["Dense_0"]["kernel"].addressable_shards[0].data.shape == (512, 128)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Summation order only.


def test_keys_of_other_implementations_pass_through():
  """rbg keys (4 words, already XLA's RngBitGenerator) are left as they are: brsf runs on them."""
  for impl in ("rbg", "unsafe_rbg"):
    key = jax.random.key(3, impl=impl)
    assert prng.xla_threefry(key) is key
  key = jax.random.key(3, impl="threefry2x32")
  same_bits = jax.random.key_data(prng.xla_threefry(key))
  assert (same_bits == jax.random.key_data(key)).all()
