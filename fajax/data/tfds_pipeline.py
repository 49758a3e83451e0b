"""tf.data input pipelines for the TensorFlow Datasets sets: read, shard, shuffle, augment, batch.

This is the only module of fajax.data that imports TensorFlow, and `fajax.data.get` imports it
only for a tfds dataset (TensorFlow is the optional `tfds` extra). TensorFlow is kept on the CPU
so it never takes accelerator memory from JAX.

Determinism (see docs/data.md): process p of n reads `tfds.even_splits('train', n)[p]`, files in
a fixed order. Its training stream is the concatenation over epochs e = 0, 1, ... of its shard
shuffled with a buffer seeded by (seed, p, n, e); example i of the stream is augmented with the
stateless seed (seed, p, n, i). Batch k is stream[k*B : (k+1)*B], so `start_step=k` skips
straight to epoch floor(k*B / L) and then skips the rest (raw records, before decoding).
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from fajax.data import batching

try:
  # Keep TensorFlow on the host: a GPU-enabled TensorFlow would otherwise grab accelerator memory.
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised before this import; nothing left to change.
  pass

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How to read and preprocess one tfds dataset under its options (from its TfdsDataset).

  Attributes:
    tfds_name: tfds builder name (with config), e.g. 'imagenet_resized/32x32'.
    eval_split: the tfds split used for 'test' ('test' or 'validation').
    image_shape: model-input (H, W, C) after preprocessing.
    shuffle_buffer: examples in the (per-epoch) shuffle buffer, before the shard length cap.
    train_fn: (encoded image, seed [2]) -> float32 image; augments when augmentation is on.
    eval_fn: encoded image -> float32 image; deterministic.
    not_prepared: data_dir -> the one-sentence error for a dataset missing from it.
  """

  tfds_name: str
  eval_split: str
  image_shape: tuple[int, int, int]
  shuffle_buffer: int
  train_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
  eval_fn: Callable[[tf.Tensor], tf.Tensor]
  not_prepared: Callable[[str], str]


def _no_augment(eval_fn):
  """A train_fn that ignores its seed and applies the eval preprocessing."""
  return lambda encoded, seed: eval_fn(encoded)


def recipe(dataset, options: Mapping[str, Any]) -> Recipe:
  """The Recipe of a `TfdsDataset` under validated `options` (see fajax.data.registry)."""
  shape = dataset.image_shape(options)
  train_fn, eval_fn = dataset.recipe(options, shape)
  if train_fn is None or not options.get("augment", True):
    train_fn = _no_augment(eval_fn)
  return Recipe(
    tfds_name=dataset.builder_name(options),
    eval_split=dataset.eval_split,
    image_shape=shape,
    shuffle_buffer=options.get("shuffle_buffer", dataset.num_train),
    train_fn=train_fn,
    eval_fn=eval_fn,
    not_prepared=lambda data_dir: dataset.not_prepared_message(options, data_dir),
  )


def _read(builder, split, recipe: Recipe) -> tf.data.Dataset:
  """Raw {'image': encoded bytes, 'label': int64} examples of `split`, in file order.

  Never downloads. Images stay encoded so that shuffling and skipping move small strings, and
  ImageNet crops decode only the window they keep.
  """
  try:
    ds = builder.as_dataset(
      split=split,
      shuffle_files=False,  # File order is part of the deterministic order.
      decoders={"image": tfds.decode.SkipDecoding()},
    )
  # tfds asserts that the prepared files exist (some versions raise DatasetNotFoundError).
  except (AssertionError, tfds.core.DatasetNotFoundError) as e:
    if builder.is_prepared():
      raise
    raise FileNotFoundError(recipe.not_prepared(str(builder.data_dir_root))) from e
  return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})


def _seed(*parts: int) -> int:
  """A 31-bit seed mixed from integers (stable across runs and platforms)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def _cardinality(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  if n < 0:
    raise ValueError("The dataset's length is unknown; fajax needs it for exact resumption.")
  return n


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # Order is part of the contract (resume, eval), never traded.
  # Parallelism comes from parallel maps over examples; one thread per op avoids oversubscribing.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def train_dataset(
  builder,
  recipe: Recipe,
  batch_size: int,
  *,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
  prefetch: int,
) -> tf.data.Dataset:
  """Infinite, batched training stream of this process: see the module docstring."""
  raw = _read(builder, tfds.even_splits("train", process_count)[process_index], recipe)
  length = _cardinality(raw)
  if length == 0:
    raise ValueError(f"Process {process_index} of {process_count} has no training examples.")
  buffer = min(recipe.shuffle_buffer, length)
  shuffle_seed = _seed(seed, process_index, process_count, 0)
  augment_seed = _seed(seed, process_index, process_count, 1)

  def epoch(e):
    # A fresh, fixed permutation per epoch, so any epoch can be started without replaying the
    # ones before it. The epoch's seed is a stateless hash of (shuffle_seed, e).
    epoch_seed = tf.random.stateless_uniform(
      [], [shuffle_seed, e], minval=0, maxval=2**31 - 1, dtype=tf.int64
    )
    return raw.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)

  position = start_step * batch_size
  first_epoch, offset = divmod(position, length)
  stream = tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(offset)

  def process(index, example):
    seed_pair = tf.stack([tf.constant(augment_seed, tf.int64), index])
    return {
      "image": recipe.train_fn(example["image"], seed_pair),
      "label": tf.cast(example["label"], tf.int32),
    }

  stream = stream.enumerate(start=position).map(process, num_parallel_calls=AUTOTUNE)
  stream = stream.batch(batch_size, drop_remainder=True)
  return _with_options(stream).prefetch(prefetch)


def eval_dataset(
  builder,
  recipe: Recipe,
  batch_size: int,
  *,
  process_index: int,
  process_count: int,
  prefetch: int,
) -> tf.data.Dataset:
  """One ordered pass over this process's contiguous part of the eval split (last batch short)."""
  shard = tfds.even_splits(recipe.eval_split, process_count)[process_index]
  raw = _read(builder, shard, recipe)

  def process(example):
    return {
      "image": recipe.eval_fn(example["image"]),
      "label": tf.cast(example["label"], tf.int32),
      "mask": tf.constant(1.0, tf.float32),
    }

  ds = raw.map(process, num_parallel_calls=AUTOTUNE)
  return _with_options(ds.batch(batch_size)).prefetch(prefetch)


def batches(
  dataset,
  split: str,
  batch_size: int,
  *,
  options: Mapping[str, Any],
  seed: int,
  data_dir: str | None,
  start_step: int,
  process_index: int,
  process_count: int,
  prefetch: int,
) -> Iterator[batching.Batch]:
  """Numpy batches of a `TfdsDataset`: see `fajax.data.get` for the contract.

  The tf.data graph is built (and a missing dataset reported) when this is called, not at the
  first next().
  """
  r = recipe(dataset, options)
  builder = tfds.builder(r.tfds_name, data_dir=data_dir)
  if split == "train":
    ds = train_dataset(
      builder,
      r,
      batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
      prefetch=prefetch,
    )
    return ds.as_numpy_iterator()
  ds = eval_dataset(
    builder,
    r,
    batch_size,
    process_index=process_index,
    process_count=process_count,
    prefetch=prefetch,
  )
  # Every process yields as many batches as the largest shard needs (shards differ by <= 1).
  num_batches = None
  if process_count > 1:
    total = _cardinality(_read(builder, r.eval_split, r))
    num_batches = batching.num_eval_batches(total, batch_size, process_count)
  return batching.padded_eval_batches(
    ds.as_numpy_iterator(), batch_size, r.image_shape, num_batches
  )
