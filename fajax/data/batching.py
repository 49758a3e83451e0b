"""Numpy batching shared by every dataset: process shards, resumable train order, padded eval.

Everything here is a pure function of its arguments (no global RNG, no TensorFlow), so the
embedded datasets are exactly resumable and the tf.data pipelines can reuse the same shard and
padding rules.
"""

from collections.abc import Iterable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def even_shard(num_examples: int, index: int, count: int) -> tuple[int, int]:
  """Returns [start, stop) of part `index` of `count` contiguous, near-equal parts.

  Matches `tfds.even_splits(split, count)[index]` (drop_remainder=False): the first
  `num_examples % count` parts hold one extra example, so tfds and embedded sets shard alike.
  """
  size, extra = divmod(num_examples, count)
  start = index * size + min(index, extra)
  return start, start + size + (1 if index < extra else 0)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches every process yields for an eval split, so that all processes stay in step."""
  largest_shard = -(-num_examples // process_count)
  return -(-largest_shard // batch_size)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The global example order of one training epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng((seed, epoch)).permutation(num_examples)


def steps_per_epoch(num_examples: int, batch_size: int, process_count: int) -> int:
  """Full global batches per epoch (the tail of each epoch's permutation is dropped)."""
  steps = num_examples // (batch_size * process_count)
  if steps == 0:
    raise ValueError(
      f"The global batch ({batch_size} x {process_count} processes) is larger than the "
      f"{num_examples} training examples; use a smaller batch_size."
    )
  return steps


def train_indices(
  num_examples: int,
  batch_size: int,
  step: int,
  *,
  seed: int,
  process_index: int,
  process_count: int,
) -> np.ndarray:
  """Example indices of this process's part of global training batch `step`.

  Each epoch is one global permutation cut into global batches of batch_size * process_count
  examples (the incomplete tail of the permutation is dropped, so every batch is full); process
  p takes the p-th contiguous slice of each global batch. Processes therefore read disjoint
  examples, and concatenating their batches gives the global batch a single process would see
  with the global batch size.
  """
  steps = steps_per_epoch(num_examples, batch_size, process_count)
  epoch, step_in_epoch = divmod(step, steps)
  start = (step_in_epoch * process_count + process_index) * batch_size
  return epoch_permutation(num_examples, seed, epoch)[start : start + batch_size]


def train_batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
) -> Iterator[Batch]:
  """Infinite shuffled training batches from in-memory arrays, starting at `start_step`.

  Batch k equals `train_indices(..., step=k)` applied to the arrays, so resuming with
  start_step=k reproduces an uninterrupted run exactly.
  """
  # Validate now, not at the first next(), so a bad batch size fails where it is passed.
  steps = steps_per_epoch(len(images), batch_size, process_count)

  def generate():
    epoch, step_in_epoch = divmod(start_step, steps)
    while True:
      # Draw each epoch's permutation once, not once per step.
      permutation = epoch_permutation(len(images), seed, epoch)
      for s in range(step_in_epoch, steps):
        start = (s * process_count + process_index) * batch_size
        idx = permutation[start : start + batch_size]
        yield {"image": images[idx], "label": labels[idx]}
      epoch, step_in_epoch = epoch + 1, 0

  return generate()


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads a (possibly short) eval batch with zeros to batch_size; 'mask' marks real examples."""
  n = len(batch["label"])
  mask = batch.get("mask", np.ones((n,), np.float32))
  batch = {**batch, "mask": mask.astype(np.float32)}
  if n == batch_size:
    return batch
  return {
    key: np.concatenate([value, np.zeros((batch_size - n, *value.shape[1:]), value.dtype)])
    for key, value in batch.items()
  }


def empty_batch(batch_size: int, image_shape: tuple[int, ...]) -> Batch:
  """An all-padding eval batch (mask all zeros)."""
  return {
    "image": np.zeros((batch_size, *image_shape), np.float32),
    "label": np.zeros((batch_size,), np.int32),
    "mask": np.zeros((batch_size,), np.float32),
  }


def padded_eval_batches(
  batches: Iterable[Batch],
  batch_size: int,
  image_shape: tuple[int, ...],
  num_batches: int | None = None,
) -> Iterator[Batch]:
  """Pads each batch to batch_size, then appends all-padding batches up to num_batches.

  The trailing empty batches exist for multi-process evaluation: every process must run the
  same number of (collective) eval steps even when its shard is one example shorter.
  """
  count = 0
  for batch in batches:
    yield pad_batch(batch, batch_size)
    count += 1
  for _ in range(count, num_batches or 0):
    yield empty_batch(batch_size, image_shape)


def eval_batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  process_index: int,
  process_count: int,
) -> Iterator[Batch]:
  """One pass, in order, over this process's contiguous shard of an in-memory eval split."""
  num_examples = len(images)
  start, stop = even_shard(num_examples, process_index, process_count)
  chunks = (
    {"image": images[i : min(i + batch_size, stop)], "label": labels[i : min(i + batch_size, stop)]}
    for i in range(start, stop, batch_size)
  )
  yield from padded_eval_batches(
    chunks,
    batch_size,
    images.shape[1:],
    num_eval_batches(num_examples, batch_size, process_count),
  )
