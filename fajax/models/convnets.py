"""The paper's small convolutional nets (MNIST, CIFAR-10 arch 1/2, ImageNet arch 1) and LeNet-5.

Every model takes its dense and conv layer types (`dense`, `conv`) and passes `rule` to each of
them, so one definition serves every learning rule, and `dense=nn.Dense, conv=nn.Conv` gives the
plain Flax model. Layers carry explicit, rule-independent names ("conv1", "fc1", ..., "head"), so
per-layer overrides such as `fajax.rules.get("fa", overrides={"head": "bp"})` address them.
Architectures follow paper.md, "Architectures (our reading ...)"; docs/models.md has the table.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fajax import layers as fajax_layers
from fajax.models.blocks import ModuleDef, flatten, max_pool, max_pool_2x2, with_rule

ARCH1_POOLINGS = ("3x3s2", "2x2")


class MnistNet(nn.Module):
  """The paper's MNIST net: conv5x5x32 - pool2 - conv5x5x64 - pool2 - fc1024 - fc10, ReLU, SAME.

  28x28x1 -> 14x14x32 -> 7x7x64 -> 1024 -> num_classes (3,274,634 parameters for 10 classes).
  """

  num_classes: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # no batch norm or dropout
    conv = with_rule(self.conv, self.rule, self.dtype)
    dense = with_rule(self.dense, self.rule, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = max_pool_2x2(nn.relu(conv(32, (5, 5), padding="SAME", name="conv1")(x)))
    x = max_pool_2x2(nn.relu(conv(64, (5, 5), padding="SAME", name="conv2")(x)))
    x = nn.relu(dense(1024, name="fc1")(flatten(x)))
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


class LeNet(nn.Module):
  """LeNet-5 (LeCun et al. 1998) as BioTorch runs it on MNIST, for 28x28 inputs.

  conv5x5x6 (padding 2, i.e. the classic 32x32 input) - pool2 - conv5x5x16 - pool2 - conv5x5x120 -
  fc84 - fc10, ReLU and max pooling (61,706 parameters for 10 classes). BioTorch's copy has no
  activation between fc84 and the classifier; here fc84 has a ReLU, as in LeNet-5.
  """

  num_classes: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    conv = with_rule(self.conv, self.rule, self.dtype)
    dense = with_rule(self.dense, self.rule, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = max_pool_2x2(nn.relu(conv(6, (5, 5), padding=((2, 2), (2, 2)), name="conv1")(x)))
    x = max_pool_2x2(nn.relu(conv(16, (5, 5), padding="VALID", name="conv2")(x)))
    x = nn.relu(conv(120, (5, 5), padding="VALID", name="conv3")(x))
    x = nn.relu(dense(84, name="fc1")(flatten(x)))
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


class Arch1(nn.Module):
  """The paper's CIFAR-10 arch 1 (the TensorFlow CIFAR-10 tutorial net); also ImageNet arch 1.

  conv5x5x64 - pool - conv5x5x64 - pool - fc384 - fc192 - fc(num_classes), ReLU, SAME convs.
  `pooling="3x3s2"` (default) is the tutorial's overlapping 3x3 stride-2 SAME max pooling;
  `pooling="2x2"` is 2x2 stride-2 pooling. Both give the same shapes
  for even inputs (24 -> 12 -> 6), hence the same parameter count. The tutorial's local response
  normalisation (no parameters) is left out. Any input size works (the first dense layer takes
  its input size from the data): 24x24 CIFAR-10 crops, 32x32 or 64x64 downsampled ImageNet.
  """

  num_classes: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32
  pooling: str = "3x3s2"

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train
    if self.pooling not in ARCH1_POOLINGS:
      raise ValueError(
        f"Arch1 pooling must be one of {', '.join(ARCH1_POOLINGS)}; got {self.pooling!r}."
      )
    pool = (
      max_pool_2x2
      if self.pooling == "2x2"
      else functools.partial(max_pool, window=3, stride=2, padding="SAME")
    )
    conv = with_rule(self.conv, self.rule, self.dtype)
    dense = with_rule(self.dense, self.rule, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = pool(nn.relu(conv(64, (5, 5), padding="SAME", name="conv1")(x)))
    x = pool(nn.relu(conv(64, (5, 5), padding="SAME", name="conv2")(x)))
    x = nn.relu(dense(384, name="fc1")(flatten(x)))
    x = nn.relu(dense(192, name="fc2")(x))
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


class VGG(nn.Module):
  """The paper's CIFAR-10 arch 2 (our reading): a VGG-style net with batch norm.

  Three stages of two 3x3 convs (64, 128, 256 channels; conv - BN - ReLU, convs without bias),
  2x2 max pooling after each stage (32 -> 16 -> 8 -> 4), then fc512 - BN - ReLU and the classifier:
  6 conv + 2 dense layers. Nets of this shape reach about 8-11% error on CIFAR-10 with backprop.
  """

  num_classes: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32
  stages: tuple[int, ...] = (64, 128, 256)
  convs_per_stage: int = 2
  fc_features: int = 512

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = with_rule(self.conv, self.rule, self.dtype)
    dense = with_rule(self.dense, self.rule, self.dtype)
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
    )
    x = jnp.asarray(x, self.dtype)
    k = 0
    for features in self.stages:
      for _ in range(self.convs_per_stage):
        k += 1
        x = conv(features, (3, 3), padding="SAME", use_bias=False, name=f"conv{k}")(x)
        x = nn.relu(norm(name=f"bn{k}")(x))
      x = max_pool_2x2(x)
    x = dense(self.fc_features, use_bias=False, name="fc1")(flatten(x))
    x = nn.relu(norm(name="bn_fc1")(x))
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)
