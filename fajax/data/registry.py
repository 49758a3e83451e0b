"""The dataset registry: names -> sizes, options and the pipeline that serves them.

Everything here is cheap metadata: `names()` and `info()` never touch disk or import
TensorFlow; `get()` imports the tf.data pipeline only for a tfds dataset.
"""

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from fajax.data import embedded

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
class _Option:
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
class _Spec:
  source: str  # 'embedded' (numpy, offline) or 'tfds' (tf.data, prepared files)
  num_classes: int
  num_train: int
  num_test: int
  image_shape: Callable[[Mapping[str, Any]], tuple[int, int, int]]
  options: Mapping[str, _Option]


def _fixed(shape):
  return lambda options: shape


def _square(key, channels):
  return lambda options: (options[key], options[key], channels)


def _embedded_shape(options):
  return (options["image_size"], options["image_size"], options["channels"])


_AUGMENT = _Option(True, (True, False))
_SPECS: dict[str, _Spec] = {
  "mnist5k": _Spec(
    "embedded",
    10,
    *embedded.SIZES["mnist5k"],
    _embedded_shape,
    {"image_size": _Option(28), "channels": _Option(1, (1, 3))},
  ),
  "digits": _Spec(
    "embedded",
    10,
    *embedded.SIZES["digits"],
    _embedded_shape,
    {"image_size": _Option(8), "channels": _Option(1, (1, 3))},
  ),
  "mnist": _Spec(
    "tfds", 10, 60_000, 10_000, _fixed((28, 28, 1)), {"shuffle_buffer": _Option(60_000)}
  ),
  "cifar10": _Spec(
    "tfds",
    10,
    50_000,
    10_000,
    _square("crop", 3),
    {"crop": _Option(32, (24, 32)), "augment": _AUGMENT, "shuffle_buffer": _Option(50_000)},
  ),
  "imagenet2012": _Spec(
    "tfds",
    1000,
    1_281_167,
    50_000,
    _square("image_size", 3),
    {"image_size": _Option(224), "augment": _AUGMENT, "shuffle_buffer": _Option(10_000)},
  ),
  "imagenet_resized": _Spec(
    "tfds",
    1000,
    1_281_167,
    50_000,
    _square("image_size", 3),
    {
      "image_size": _Option(32, (8, 16, 32, 64)),
      "augment": _AUGMENT,
      "shuffle_buffer": _Option(50_000),
    },
  ),
}


def names() -> list[str]:
  """Sorted names of all registered datasets."""
  return sorted(_SPECS)


def _spec(name: str) -> _Spec:
  if name not in _SPECS:
    raise ValueError(f"Unknown dataset {name!r}; choose one of {names()}.")
  return _SPECS[name]


def _resolve_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Defaults overridden by `options`, each validated; unknown keys are errors."""
  spec = _spec(name)
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise ValueError(
      f"Unknown option(s) {unknown} for dataset {name!r}; valid options: {sorted(spec.options)}."
    )
  return {
    key: opt.validate(name, key, options.get(key, opt.default)) for key, opt in spec.options.items()
  }


def not_prepared_message(tfds_name: str, data_dir: str) -> str:
  """The one-sentence error for a dataset missing from data_dir, with the command that fixes it."""
  build = f"tfds build {tfds_name} --data_dir={data_dir}"
  if tfds_name == "imagenet2012":
    return (
      f"Dataset 'imagenet2012' is not prepared in {data_dir}; it needs the manual ImageNet "
      f"files: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
      f"{data_dir}/downloads/manual (the manual_dir), run `{build}` and pass data_dir="
      f"'{data_dir}'."
    )
  return (
    f"Dataset '{tfds_name}' is not prepared in {data_dir}; prepare it on a machine with "
    f"internet with `{build}` (or `python -m tensorflow_datasets.scripts.download_and_prepare "
    f"--datasets={tfds_name} --data_dir={data_dir}`) and pass data_dir='{data_dir}'."
  )


def check_prepared(name: str, data_dir: str | None = None, **options: Any) -> None:
  """Raises FileNotFoundError (the message says how to prepare it) when tfds dataset `name` has
  no folder in data_dir; a quick look that imports no TensorFlow, for runs to fail before they
  write or compile anything. Embedded sets always pass. The pipeline checks the files fully."""
  if _spec(name).source != "tfds":
    return
  import os

  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  data_dir = os.path.expanduser(data_dir)
  from etils import epath  # data_dir may be a gs:// folder.

  if not (epath.Path(data_dir) / name).is_dir():
    tfds_name = name
    if name == "imagenet_resized":
      size = info(name, **options).image_shape[0]
      tfds_name = f"imagenet_resized/{size}x{size}"
    raise FileNotFoundError(not_prepared_message(tfds_name, data_dir))


def info(name: str, **options: Any) -> DatasetInfo:
  """Sizes and model-input shape of dataset `name` under `options` (same options as `get`)."""
  spec = _spec(name)
  resolved = _resolve_options(name, options)
  return DatasetInfo(
    name, spec.num_classes, spec.image_shape(resolved), spec.num_train, spec.num_test
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
  spec = _spec(name)
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

  common = dict(
    seed=seed, start_step=start_step, process_index=process_index, process_count=process_count
  )
  if spec.source == "embedded":
    return embedded.batches(name, split, batch_size, **common, **resolved)
  # Imported here: TensorFlow is an optional extra that only the tfds sets need.
  from fajax.data import tfds_pipeline

  return tfds_pipeline.batches(
    name, split, batch_size, options=resolved, data_dir=data_dir, prefetch=prefetch, **common
  )
