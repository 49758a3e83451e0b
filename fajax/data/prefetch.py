"""Moves host batches onto the accelerator a few steps ahead of the training loop."""

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax


def _to_device(batch: Any, sharding: jax.sharding.Sharding | None) -> Any:
  """One host batch (a pytree of numpy arrays) -> jax Arrays."""
  if sharding is None:
    return jax.device_put(batch)
  if jax.process_count() > 1:
    # Each process holds only its own rows: assemble the global array from process-local data.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
  return jax.device_put(batch, sharding)


def prefetch_to_device(
  iterator: Iterable[Any], size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator[Any]:
  """Yields the batches of `iterator` as device arrays, keeping `size` transfers in flight.

  `jax.device_put` is asynchronous, so queueing `size` batches lets the host-to-device copy of
  the next batches overlap the current step (the pattern of `flax.jax_utils.prefetch_to_device`).
  The host pipeline itself prefetches separately (tf.data).

  Args:
    iterator: batches, each a pytree of numpy arrays (per-process rows when multi-process).
    size: batches held on device ahead of the consumer (>= 1).
    sharding: applied to every leaf, e.g. `NamedSharding(mesh, P('data'))`; None puts batches on
      the default device. With several processes the global array is built with
      `jax.make_array_from_process_local_data`, so leaves have B * process_count rows.
  """
  if size < 1:
    raise ValueError(f"prefetch_to_device needs size >= 1, got {size}.")
  iterator = iter(iterator)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(_to_device(batch, sharding))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
