"""TensorFlow image preprocessing for the tfds datasets: decoding, crops, flips, normalisation.

Imported only by `fajax.data.tfds_pipeline` (it imports TensorFlow). Every random op is
*stateless*: it takes an explicit seed of shape [2], so an augmented example is a pure function
of (seed, position in the stream) and resuming reproduces it exactly.

Normalisation is per channel, x = (pixel / 255 - mean) / std, with the constants below.
"""

import tensorflow as tf

# Per-channel statistics of pixel / 255 on the train splits.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# The CIFAR-10 std is the true per-pixel std (0.247, 0.243, 0.261), not the often-copied
# (0.2023, 0.1994, 0.2010), which is the std of per-image means.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The usual ImageNet constants (torchvision / Flax examples); also used for downsampled ImageNet.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Eval crops keep the central 87.5% of the shorter side (224 of 256), as in the Flax and
# torchvision ImageNet recipes.
CENTRAL_FRACTION = 0.875


def split_seed(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  """n independent stateless seeds derived from one."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def decode(encoded: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
  """Decodes a PNG or JPEG string to uint8 [H, W, C] of the known static shape."""
  image = tf.io.decode_image(encoded, channels=shape[-1], expand_animations=False)
  image.set_shape(shape)
  return image


def normalize(image: tf.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
  """uint8 (or float in [0, 255]) -> float32 (x / 255 - mean) / std, per channel."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean)) / tf.constant(std)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Horizontal flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def random_crop_flip(image: tf.Tensor, seed: tf.Tensor, size: int, pad: int = 0) -> tf.Tensor:
  """Zero-pads by `pad` pixels, takes a random size x size crop, flips with probability 1/2.

  The padding is black in pixel space (before normalisation), as torchvision's
  RandomCrop(32, padding=4) used by the ResNet-20 / VGG CIFAR recipes.
  """
  crop_seed, flip_seed = split_seed(seed, 2)
  if pad:
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  channels = image.shape[-1]
  image = tf.image.stateless_random_crop(image, [size, size, channels], crop_seed)
  return random_flip(image, flip_seed)


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size window of a statically shaped image."""
  height, width = image.shape[0], image.shape[1]
  top, left = (height - size) // 2, (width - size) // 2
  return image[top : top + size, left : left + size]


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear resize to size x size, float32 in [0, 255] (bilinear cannot overshoot)."""
  return tf.image.resize(image, [size, size], method="bilinear")


def decode_center_crop(encoded: tf.Tensor, size: int) -> tf.Tensor:
  """ImageNet eval: decode only the central 87.5% square of the JPEG, resize to size x size."""
  shape = tf.io.extract_jpeg_shape(encoded)
  height, width = shape[0], shape[1]
  crop = tf.cast(CENTRAL_FRACTION * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  crop = tf.maximum(crop, 1)
  window = tf.stack([(height - crop + 1) // 2, (width - crop + 1) // 2, crop, crop])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  return _resize(image, size)


def decode_inception_crop(encoded: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
  """ImageNet train: Inception-style random crop (8-100% area, aspect 3/4-4/3), resize, flip.

  Only the sampled window of the JPEG is decoded. When no valid window is found in 10 tries the
  sampler returns the whole image, and we fall back to the eval centre crop (as the Flax and
  TPU ResNet recipes do).
  """
  box_seed, flip_seed = split_seed(seed, 2)
  shape = tf.io.extract_jpeg_shape(encoded)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
    seed=box_seed,
    min_object_covered=0.1,
    aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  window = tf.stack([begin[0], begin[1], box_size[0], box_size[1]])
  failed = tf.reduce_all(tf.equal(box_size[:2], shape[:2]))
  image = tf.cond(
    failed,
    lambda: decode_center_crop(encoded, size),
    lambda: _resize(tf.io.decode_and_crop_jpeg(encoded, window, channels=3), size),
  )
  return random_flip(image, flip_seed)
