"""Checksums of a TrainState's bytes: stored with every checkpoint, verified on every restore.

One uint32 per array: the sum over its bytes, read as words w_i, of w_i * (2i + 1) modulo 2**32.
Any single flipped bit changes it (the odd weight keeps the change 2**k * odd non-zero modulo
2**32), and so does swapping two words; larger damage goes undetected with probability about
2**-32 per array. It is computed on the devices by one jitted function, so the state never
travels to the host, a model-sharded state spread over many processes needs no gathering, and
since integer sums are exact in any order the value is the same on any mesh (a run that resumes
on another device count verifies the same numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

META_KEY = "checksums"
_WORDS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _words(x) -> jax.Array:
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  words = lax.bitcast_convert_type(x, _WORDS[x.dtype.itemsize])  # 8-byte items: 2 words each.
  return jnp.ravel(words).astype(jnp.uint32)


def _checksum(x) -> jax.Array:
  words = _words(x)
  weights = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1
  return jnp.sum(words * weights, dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def checksums(state) -> dict[str, int]:
  """{'params/Dense_0/kernel': 123456789, ...}: the checksum of every array of `state`."""
  sums = jax.device_get(_checksums(state))
  return {_name(path): int(v) for path, v in jax.tree_util.tree_leaves_with_path(sums)}


def mismatch(state, saved: dict[str, int] | None) -> str | None:
  """None when `state` matches the checksums `saved` with it (or none were saved); else which
  arrays differ."""
  if not saved:
    return None
  now = checksums(state)
  bad = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  if not bad:
    return None
  more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
  return f"the bytes of {', '.join(bad[:3])}{more} differ from the checksums saved with them"
