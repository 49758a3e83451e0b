"""The dataset registry: names -> sizes, options and the pipeline that serves them.

A dataset is one `register(...)` of a `Dataset` (fajax/data/datasets.py holds fajax's own), recipe
included. Everything here is cheap metadata: `names()` and `info()` never touch disk or import
TensorFlow; `get()` imports the tf.data pipeline only for a tfds dataset.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]

# Every accepted split name -> the canonical one.
_SPLIT_ALIASES = {"train": "train", "test": "test", "validation": "test", "eval": "test"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a trainer need to know about a dataset, before reading any of it.

  Attributes:
    name: registry name.
    num_classes: number of label classes (labels are 0 .. num_classes - 1).
    image_shape: (H, W, C) of the model input after preprocessing.
    num_train: examples in the train split (all processes together).
    num_test: examples in the test split (tfds 'validation' for the ImageNet sets).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int


@dataclasses.dataclass(frozen=True)
class Option:
  """A dataset option: its default and the values it accepts (choices, or any positive int)."""

  default: Any
  choices: tuple[Any, ...] | None = None

  def validate(self, dataset: str, name: str, value: Any) -> Any:
    if self.choices is None:
      ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value > 0
      allowed = "a positive integer"
    else:
      ok = any(value is c or (type(value) is type(c) and value == c) for c in self.choices)
      allowed = f"one of {list(self.choices)}"
    if not ok:
      raise ValueError(f"Option {name}={value!r} for dataset {dataset!r} must be {allowed}.")
    return value


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered dataset: what `info` reports and how `get` serves it.

  Subclasses say where the examples come from (`fajax.data.embedded.EmbeddedDataset`,
  `TfdsDataset`); fajax/data/datasets.py registers one of them per dataset.

  Attributes:
    name: registry name.
    num_classes, num_train, num_test: as in DatasetInfo.
    image_shape: resolved options -> the model-input (H, W, C) after preprocessing.
    options: option name -> Option (its default and accepted values).
  """

  name: str
  num_classes: int
  num_train: int
  num_test: int
  image_shape: Callable[[Mapping[str, Any]], tuple[int, int, int]]
  options: Mapping[str, Option] = dataclasses.field(default_factory=dict)

  def batches(self, split: str, batch_size: int, *, options, **kwargs) -> Iterator[Batch]:
    """Batches of `split` ('train' or 'test') under resolved `options`: see `get`."""
    raise NotImplementedError

  def check_prepared(self, data_dir: str | None, options: Mapping[str, Any]) -> None:
    """Raises FileNotFoundError when the data is not there (nothing to check by default)."""


@dataclasses.dataclass(frozen=True)
class TfdsDataset(Dataset):
  """A TensorFlow Datasets set, read from prepared files by a tf.data pipeline.

  Registering one imports no TensorFlow: `fajax.data.tfds_pipeline` (and TensorFlow, the
  optional `tfds` extra) is imported the first time its batches are requested.

  Attributes:
    recipe: (resolved options, image_shape) -> (train_fn, eval_fn), the preprocessing, built
      from `fajax.data.preprocess` (import it inside the recipe: it imports TensorFlow).
      eval_fn(encoded image) -> float32 image of image_shape, deterministic; train_fn(encoded
      image, seed int64 [2]) -> the same, augmented with stateless random ops, or None for no
      augmentation. With an option `augment` set to False the train split gets eval_fn too.
    tfds_name: resolved options -> the tfds builder name with its config (None: `name`).
    eval_split: the tfds split served as 'test'.
    manual: for a dataset tfds cannot download itself, what to put where, e.g. "the manual
      ImageNet files: put A.tar in {manual_dir}" (for the not-prepared message).
  Options read by the pipeline: `shuffle_buffer` (examples in the per-epoch shuffle buffer,
  default num_train) and `augment`.
  """

  recipe: Callable[[Mapping[str, Any], tuple[int, int, int]], tuple[Any, Any]] | None = None
  tfds_name: Callable[[Mapping[str, Any]], str] | None = None
  eval_split: str = "test"
  manual: str = ""

  def __post_init__(self):
    if self.recipe is None:
      raise ValueError(f"TfdsDataset {self.name!r} needs a recipe=(options, shape) -> fns.")

  def builder_name(self, options: Mapping[str, Any]) -> str:
    """The tfds builder name (with config) under resolved `options`."""
    return self.name if self.tfds_name is None else self.tfds_name(options)

  def not_prepared_message(self, options: Mapping[str, Any], data_dir: str) -> str:
    """The one-sentence error for this dataset missing from data_dir, with the command that
    prepares it."""
    tfds_name = self.builder_name(options)
    build = f"tfds build {tfds_name} --data_dir={data_dir}"
    if self.manual:
      needs = self.manual.format(manual_dir=f"{data_dir}/downloads/manual")
      return (
        f"Dataset '{tfds_name}' is not prepared in {data_dir}; it needs {needs} (the "
        f"manual_dir), run `{build}` and pass data_dir='{data_dir}'."
      )
    return (
      f"Dataset '{tfds_name}' is not prepared in {data_dir}; prepare it on a machine with "
      f"internet with `{build}` (or `python -m tensorflow_datasets.scripts.download_and_prepare "
      f"--datasets={tfds_name} --data_dir={data_dir}`) and pass data_dir='{data_dir}'."
    )

  def check_prepared(self, data_dir, options):
    import os

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    data_dir = os.path.expanduser(data_dir)
    from etils import epath  # data_dir may be a gs:// folder.

    if not (epath.Path(data_dir) / self.builder_name(options).split("/")[0]).is_dir():
      raise FileNotFoundError(self.not_prepared_message(options, data_dir))

  def batches(self, split, batch_size, *, options, **kwargs):
    # Imported here: TensorFlow is an optional extra that only the tfds sets need.
    from fajax.data import tfds_pipeline

    return tfds_pipeline.batches(self, split, batch_size, options=options, **kwargs)


_DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
  """Makes `dataset` available by its name to `get`, `info` and the trainer (config.dataset)."""
  _DATASETS[dataset.name] = dataset
  return dataset


def names() -> list[str]:
  """Sorted names of all registered datasets."""
  return sorted(_DATASETS)


def spec(name: str) -> Dataset:
  """The registered Dataset called `name`."""
  if name not in _DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; choose one of {names()}.")
  return _DATASETS[name]


def _resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Defaults overridden by `options`, each validated; unknown keys are errors."""
  specs = spec(name).options
  unknown = sorted(set(options) - set(specs))
  if unknown:
    raise ValueError(
      f"Unknown option(s) {unknown} for dataset {name!r}; valid options: {sorted(specs)}."
    )
  return {key: opt.validate(name, key, options.get(key, opt.default)) for key, opt in specs.items()}


def check_prepared(name: str, data_dir: str | None = None, **options: Any) -> None:
  """Raises FileNotFoundError (the message says how to prepare it) when tfds dataset `name` has
  no folder in data_dir; a quick look that imports no TensorFlow, for runs to fail before they
  write or compile anything. Embedded sets always pass. The pipeline checks the files fully."""
  spec(name).check_prepared(data_dir, _resolve_options(name, options))


def info(name: str, **options: Any) -> DatasetInfo:
  """Sizes and model-input shape of dataset `name` under `options` (same options as `get`)."""
  dataset = spec(name)
  resolved = _resolve_options(name, options)
  return DatasetInfo(
    name, dataset.num_classes, dataset.image_shape(resolved), dataset.num_train, dataset.num_test
  )


def canonical_split(name: str, split: str) -> str:
  """'train' or 'test' for any accepted split name."""
  if split not in _SPLIT_ALIASES:
    raise ValueError(
      f"Unknown split {split!r} for dataset {name!r}; choose one of {list(_SPLIT_ALIASES)}."
    )
  return _SPLIT_ALIASES[split]


def _check_int(label: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def get(
  name: str,
  split: str,
  batch_size: int,
  *,
  seed: int = 0,
  data_dir: str | None = None,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  prefetch: int = 2,
  **options: Any,
) -> Iterator[Batch]:
  """An iterator of numpy batches {'image': float32 [B, H, W, C], 'label': int32 [B]}.

  Args:
    name: a registered dataset (see `names()`).
    split: 'train', or 'test' (aliases 'validation', 'eval').
    batch_size: the per-process batch B; the global batch is B * process_count.
    seed: train shuffling and augmentation seed.
    data_dir: tfds data directory (None: tfds' default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
      Ignored by the embedded sets. Nothing is ever downloaded.
    start_step: train only: the first batch yielded is batch `start_step` of the run.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    prefetch: batches tf.data prepares ahead on the host (tfds sets; the embedded sets gather a
      batch from memory on demand).
    **options: dataset options, e.g. cifar10 `crop=24`, imagenet2012 `image_size=224`,
      `augment=False`; see docs/data.md.

  Returns:
    train: an infinite iterator; batch k is a deterministic function of
      (seed, k, process_index, process_count), so resuming with start_step=k is exact.
      Train batches carry no 'mask'.
    test: one pass over this process's contiguous part of the split in fixed order; the last
      batch is zero-padded to B and every batch has 'mask' float32 [B] (1 real, 0 padding).
      With several processes, all yield the same number of batches.

  Raises:
    ValueError: unknown dataset, split or option, or a bad batch/process argument.
    FileNotFoundError: a tfds dataset is not prepared in data_dir (the message says how).
  """
  dataset = spec(name)
  split = canonical_split(name, split)
  resolved = _resolve_options(name, options)
  batch_size = _check_int("batch_size", batch_size, 1)
  start_step = _check_int("start_step", start_step, 0)
  prefetch = _check_int("prefetch", prefetch, 0)
  seed = _check_int("seed", seed, 0)
  if process_index is None or process_count is None:
    import jax  # Only asked when the caller did not say which process this is.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  process_count = _check_int("process_count", process_count, 1)
  process_index = _check_int("process_index", process_index, 0)
  if process_index >= process_count:
    raise ValueError(f"process_index={process_index} must be < process_count={process_count}.")

  return dataset.batches(
    split,
    batch_size,
    options=resolved,
    seed=seed,
    data_dir=data_dir,
    start_step=start_step,
    process_index=process_index,
    process_count=process_count,
    prefetch=prefetch,
  )
