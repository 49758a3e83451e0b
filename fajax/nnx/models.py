"""NNX definitions of the MNIST net and ResNet-20, with the Linen zoo's layer names.

Plain NNX code (nnx.Conv / nnx.Linear / nnx.BatchNorm): a rule is applied with
`fajax.nnx.convert(model, rule, ...)` (the trainer's Bridge does it), exactly as for any user's NNX
model. Attribute names are the Linen models' submodule names (conv1, fc1, head, layer2_0/bn1,
...), so an NNX model and its Linen twin (`fajax.models.get`) have the same variables, paths
included: checkpoints, overrides ("head": "bp") and diagnostics keys carry over, and
tests/test_nnx.py checks that both compute the same function on the same weights.

The arithmetic between layers (pooling, flatten, the zero-padded shortcut) is the Linen zoo's own
functions, and the initializers are the Linen zoo's constants, so there is one definition of each
piece; the NNX classes only add the explicit input sizes NNX layers need.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from flax import nnx

from fajax.models import resnet
from fajax.models.blocks import flatten, max_pool_2x2

INPUT_SHAPES = {"mnist_net": (28, 28, 1), "resnet20": (32, 32, 3)}


class MnistNet(nnx.Module):
  """The paper's MNIST net (fajax.models.MnistNet): conv5x5x32 - pool - conv5x5x64 - pool -
  fc1024 - fc(num_classes), ReLU, SAME. `input_shape` (H, W, C) sizes fc1."""

  def __init__(self, num_classes=10, *, input_shape=(28, 28, 1), dtype=jnp.float32, rngs):
    h, w, c = input_shape
    self.num_classes = num_classes
    self.dtype = dtype
    self.conv1 = nnx.Conv(c, 32, (5, 5), padding="SAME", dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (5, 5), padding="SAME", dtype=dtype, rngs=rngs)
    self.fc1 = nnx.Linear((h // 4) * (w // 4) * 64, 1024, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(1024, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jnp.asarray(x, self.dtype)
    x = max_pool_2x2(nnx.relu(self.conv1(x)))
    x = max_pool_2x2(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.fc1(flatten(x)))
    return self.head(x).astype(jnp.float32)


def _conv(cin, cout, kernel, strides=1, *, dtype, rngs, **kw):
  return nnx.Conv(
    cin,
    cout,
    kernel,
    strides,
    use_bias=False,
    kernel_init=resnet.CIFAR_INIT,
    dtype=dtype,
    rngs=rngs,
    **kw,
  )


def _norm(features, dtype, rngs):
  # fajax.models.resnet._norm: momentum 0.9, epsilon 1e-5.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class CifarBlock(nnx.Module):
  """fajax.models.resnet.CifarBlock: two 3x3 convs with batch norm, zero-padded shortcut."""

  def __init__(self, cin, features, strides, *, dtype, rngs):
    self.features, self.strides = features, strides
    self.conv1 = _conv(cin, features, (3, 3), strides, padding=resnet.PAD1, dtype=dtype, rngs=rngs)
    self.bn1 = _norm(features, dtype, rngs)
    self.conv2 = _conv(features, features, (3, 3), padding=resnet.PAD1, dtype=dtype, rngs=rngs)
    self.bn2 = _norm(features, dtype, rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      pad = self.features // 4
      residual = x[:, :: self.strides, :: self.strides]
      residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (pad, pad)))
    return nnx.relu(y + residual)


class CifarResNet(nnx.Module):
  """He et al.'s CIFAR ResNet-(6n+2) (fajax.models.CifarResNet); num_blocks=3 is ResNet-20."""

  def __init__(self, num_classes=10, *, num_blocks=3, in_channels=3, dtype=jnp.float32, rngs):
    self.num_classes = num_classes
    self.dtype = dtype
    self.conv1 = _conv(in_channels, 16, (3, 3), padding=resnet.PAD1, dtype=dtype, rngs=rngs)
    self.bn1 = _norm(16, dtype, rngs)
    names, cin = [], 16
    for i in range(3):
      for j in range(num_blocks):
        features = 16 * 2**i
        name = f"layer{i + 1}_{j}"
        strides = 2 if i > 0 and j == 0 else 1
        setattr(self, name, CifarBlock(cin, features, strides, dtype=dtype, rngs=rngs))
        names.append(name)
        cin = features
    self.blocks = tuple(names)
    self.head = nnx.Linear(cin, num_classes, kernel_init=resnet.CIFAR_INIT, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = jnp.asarray(x, self.dtype)
    x = nnx.relu(self.bn1(self.conv1(x)))
    for name in self.blocks:
      x = getattr(self, name)(x)
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)


# By name, as the trainer's `model=` takes them (a class or a partial of one).
MODELS = {"mnist_net": MnistNet, "resnet20": functools.partial(CifarResNet, num_blocks=3)}
