"""Datasets by name, as numpy batches, plus device prefetch. See docs/data.md.

    batches = fajax.data.get('mnist5k', 'train', batch_size=128, seed=0)
    batch = next(batches)  # {'image': float32 [128, 28, 28, 1], 'label': int32 [128]}

The embedded sets (`mnist5k`, `digits`) need only numpy; the tfds sets (`mnist`, `cifar10`,
`imagenet2012`, `imagenet_resized`) import TensorFlow on first use and read prepared tfds files.
Importing this package never imports TensorFlow.
"""

from fajax.data import batching, embedded
from fajax.data.prefetch import prefetch_to_device
from fajax.data.registry import DatasetInfo, get, info, names

__all__ = [
  "DatasetInfo",
  "batching",
  "embedded",
  "get",
  "info",
  "names",
  "prefetch_to_device",
]
