"""Cheaper random bits for per-step feedback: Threefry through XLA's RngBitGenerator.

brsf draws a fresh R_t with W's shape every step (3.3M numbers on the MNIST net). JAX's
`threefry2x32` keys generate them through JAX's own lowering of Threefry, which XLA:CPU runs at
about 15 ns per number (50 ms of CPU time for 3.2M on the Xeon of benchmarks/results); XLA's
`RngBitGenerator` with the same Threefry-2x32 algorithm takes 7x less. `xla_threefry(key)` turns a
threefry key into a key of the same bits whose `random_bits` come from that op, so any
initializer (`jax.random.truncated_normal`, `uniform`, ...) draws from exactly its distribution,
only from a different (equally random) stream. split and fold_in stay JAX's Threefry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import random as jex_random

_THREEFRY = "threefry2x32"


def _threefry(key_data):
  return jax.random.wrap_key_data(key_data, impl=_THREEFRY)


def _seed(seed):
  return jax.random.key_data(jax.random.key(seed, impl=_THREEFRY))


def _split(key_data, shape):
  return jax.random.key_data(jax.random.split(_threefry(key_data), shape))


def _fold_in(key_data, data):
  return jax.random.key_data(jax.random.fold_in(_threefry(key_data), data))


def _random_bits(key_data, bit_width, shape):
  """Threefry-2x32 bits from XLA's RngBitGenerator: state = (key, counter 0)."""
  state = jnp.concatenate([key_data, jnp.zeros((2,), jnp.uint32)])
  dtype = jnp.uint64 if bit_width == 64 else jnp.uint32
  _, bits = lax.rng_bit_generator(
    state, shape, dtype=dtype, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY
  )
  return bits.astype(jnp.dtype(f"uint{bit_width}"))  # 8 or 16 bits: the low bits, uniform too.


XLA_THREEFRY = jex_random.define_prng_impl(
  key_shape=(2,),
  seed=_seed,
  split=_split,
  random_bits=_random_bits,
  fold_in=_fold_in,
  name="xla_threefry",
  tag="xtf",
)


def xla_threefry(key):
  """The key with the same bits whose random_bits come from XLA's RngBitGenerator (Threefry).

  Keys of other implementations ('rbg', 'unsafe_rbg': already XLA's RngBitGenerator, 4 words)
  are returned as they are.
  """
  data = jax.random.key_data(key)
  if data.shape[-1:] != (2,):
    return key
  return jax.random.wrap_key_data(data, impl=XLA_THREEFRY)
