"""Input-pipeline throughput (images/s) of each fajax.data preprocessing path on this machine.

    python -m benchmarks.data_throughput                # every path, ~10 s each
    python -m benchmarks.data_throughput --paths cifar10_24_train --seconds 5

Prints a markdown table (recorded in benchmarks/results/data_throughput.md).

The tfds paths run under `tfds.testing.mock_data`, so nothing is read from disk or downloaded,
but the real fajax preprocessing runs on every example: the mocked builder serves a pool of
pre-encoded images from memory, PNGs of the real sizes for MNIST/CIFAR-10/downsampled ImageNet
and ~500x375 JPEGs for ImageNet (its typical size). Reading and parsing TFRecord files is
therefore *not* included. "startup" is the time to the first batch (graph build and shuffle
buffer fill); "images/s" is the steady state after it.
"""

import argparse
import datetime
import os
import time

import numpy as np

import fajax.data as data
from benchmarks.hardware_info import cpu_model

# name -> (dataset, split, options, mock pool image shape or None for the embedded sets)
PATHS = {
  "mnist5k_train": ("mnist5k", "train", {}, None),
  "mnist5k_train+prefetch_to_device": ("mnist5k", "train", {}, None),
  "digits_train": ("digits", "train", {}, None),
  "mnist_train": ("mnist", "train", {}, (28, 28, 1)),
  "cifar10_24_train": ("cifar10", "train", {"crop": 24}, (32, 32, 3)),
  "cifar10_24_test": ("cifar10", "test", {"crop": 24}, (32, 32, 3)),
  "cifar10_32_train": ("cifar10", "train", {"crop": 32}, (32, 32, 3)),
  "imagenet2012_224_train": ("imagenet2012", "train", {"image_size": 224}, (375, 500, 3)),
  "imagenet2012_224_test": ("imagenet2012", "test", {"image_size": 224}, (375, 500, 3)),
  "imagenet_resized_32_train": ("imagenet_resized", "train", {"image_size": 32}, (32, 32, 3)),
}
# Examples in each mocked split: the real CIFAR-10 size, fewer for ImageNet so the 10k shuffle
# buffer of ~100 kB JPEGs stays small in memory (the buffer size does not change the per-image
# cost).
MOCK_EXAMPLES = {"imagenet2012": 2_000}
DEFAULT_MOCK_EXAMPLES = 50_000
POOL = 64  # distinct encoded images cycled through


def _natural_images(shape, n, rng):
  """Smooth random images (low-frequency colour blobs + mild noise), uint8; compress like photos."""
  import tensorflow as tf

  h, w, c = shape
  coarse = rng.uniform(0, 255, (n, max(h // 24, 2), max(w // 24, 2), c)).astype(np.float32)
  smooth = tf.image.resize(coarse, (h, w), method="bicubic").numpy()
  noisy = smooth + rng.normal(0, 8, smooth.shape)
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _mock_as_dataset(shape, num_examples, num_classes, jpeg):
  """A mock_data as_dataset_fn serving POOL pre-encoded images from memory."""
  import tensorflow as tf

  images = _natural_images(shape, POOL, np.random.default_rng(0))
  encode = (lambda x: tf.io.encode_jpeg(x, quality=90)) if jpeg else tf.io.encode_png
  pool = tf.constant([encode(im).numpy() for im in images])
  mean_bytes = float(np.mean([len(b) for b in pool.numpy()]))

  def as_dataset(self, split, decoders=None, **kwargs):
    del self, split, decoders, kwargs
    ids = tf.data.Dataset.range(num_examples)
    return ids.map(lambda i: {"image": tf.gather(pool, i % POOL), "label": i % num_classes})

  return as_dataset, mean_bytes


def _measure(iterator, batch_size, seconds):
  """(startup s, steady-state images per wall second, images per CPU second) of an iterator.

  CPU seconds are this process's, all threads (tf.data's included): on a shared machine they
  are far less sensitive to other processes' load than wall time.
  """
  start = time.perf_counter()
  next(iterator)
  startup = time.perf_counter() - start
  start, cpu_start, images = time.perf_counter(), time.process_time(), 0
  while time.perf_counter() - start < seconds:
    try:
      batch = next(iterator)
    except StopIteration:
      break
    images += len(batch["label"])
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  return startup, images / wall, images / cpu


def run_path(name, batch_size, seconds):
  dataset, split, options, shape = PATHS[name]
  args = dict(seed=0, process_index=0, process_count=1, **options)
  if shape is None:
    iterator = data.get(dataset, split, batch_size, **args)
    if name.endswith("prefetch_to_device"):
      iterator = data.prefetch_to_device(iterator, 2)
    return (*_measure(iterator, batch_size, seconds), "")
  import tensorflow_datasets as tfds

  num_examples = MOCK_EXAMPLES.get(dataset, DEFAULT_MOCK_EXAMPLES)
  if split == "test":
    # A finite pass: make it long enough to fill the window.
    num_examples = max(num_examples, 10_000)
  as_dataset, mean_bytes = _mock_as_dataset(
    shape, num_examples, data.info(dataset).num_classes, jpeg=dataset == "imagenet2012"
  )
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    iterator = data.get(dataset, split, batch_size, data_dir="/nonexistent", **args)
    result = _measure(iterator, batch_size, seconds)
  del iterator  # Stop tf.data's threads before the mock is undone.
  kind = "JPEG" if dataset == "imagenet2012" else "PNG"
  return (*result, f"{shape[1]}x{shape[0]} {kind}, {mean_bytes / 1e3:.1f} kB")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--paths", nargs="*", default=list(PATHS), choices=list(PATHS))
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--seconds", type=float, default=10.0)
  args = parser.parse_args()

  import jax
  import tensorflow as tf

  print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
  print(f"cpu: {cpu_model()}, nproc={os.cpu_count()}, load average {os.getloadavg()}")
  print(f"jax {jax.__version__}, tensorflow {tf.__version__}, batch_size={args.batch_size}")
  print()
  print("| path | images/s | images per CPU-s | startup (s) | mocked images |")
  print("|---|---:|---:|---:|---|")
  for name in args.paths:
    startup, rate, per_cpu, pool = run_path(name, args.batch_size, args.seconds)
    print(f"| {name} | {rate:,.0f} | {per_cpu:,.0f} | {startup:.2f} | {pool} |", flush=True)
  print()
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
