"""Datasets by name, as numpy batches, plus device prefetch. See docs/data.md.

    batches = fajax.data.get('mnist5k', 'train', batch_size=128, seed=0)
    batch = next(batches)  # {'image': float32 [128, 28, 28, 1], 'label': int32 [128]}

The embedded sets (`mnist5k`, `digits`) need only numpy; the tfds sets (`mnist`, `cifar10`,
`imagenet2012`, `imagenet_resized`) import TensorFlow on first use and read prepared tfds files.
Importing this package never imports TensorFlow. Each dataset is one `register(...)`
(fajax/data/datasets.py); a new one is registered the same way.
"""

from fajax.data import batching, datasets, embedded
from fajax.data.prefetch import prefetch_to_device
from fajax.data.registry import (
  Dataset,
  DatasetInfo,
  Option,
  TfdsDataset,
  get,
  info,
  names,
  register,
)

__all__ = [
  "Dataset",
  "DatasetInfo",
  "Option",
  "TfdsDataset",
  "batching",
  "datasets",
  "embedded",
  "get",
  "info",
  "names",
  "prefetch_to_device",
  "register",
]
