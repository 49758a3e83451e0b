"""ResNets: torchvision's ImageNet ResNet-18/50 and He et al.'s CIFAR ResNet-20/56 (option A).

The layouts match the reference implementations layer for layer (padding included), so the
parameter counts are the published ones: ResNet-18 11,689,512 and ResNet-50 25,557,032 (1000
classes); ResNet-20 269,722 (0.27M) and ResNet-56 853,018 (0.85M) (10 classes). Batch norm has a
scale and a bias, convolutions have no bias, the classifier has one. Batch-norm running statistics
are in `batch_stats`, not counted.

Like every fajax model, a ResNet takes its dense and conv layer types and passes `rule` to every
conv and dense layer (shortcut projections included); residual additions, batch norm and pooling
back-propagate exactly under every rule.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fajax import layers as fajax_layers
from fajax.models.blocks import ModuleDef, max_pool, with_rule

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convs; the classifier keeps
# PyTorch's default U(+-1/sqrt(fan_in)) (biases start at zero here).
TORCHVISION_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# He et al.'s CIFAR ResNets as re-implemented by Idelbayev (used by BioTorch): kaiming_normal_.
CIFAR_INIT = nn.initializers.he_normal()

PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1: Flax's "SAME" pads stride-2 convs asymmetrically.


class BasicBlock(nn.Module):
  """Two 3x3 convs with batch norm and an identity (or 1x1 conv + BN projection) shortcut."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), self.strides, padding=PAD1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=PAD1, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), self.strides, name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1x1 - 3x3 (strided, torchvision v1.5) - 1x1 (4x features) convs with batch norm."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm(name="bn1")(self.conv(self.features, (1, 1), name="conv1")(x)))
    y = self.conv(self.features, (3, 3), self.strides, padding=PAD1, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.features * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * 4, (1, 1), self.strides, name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


def _norm(train: bool, dtype):
  return functools.partial(
    nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype
  )


class ResNet(nn.Module):
  """torchvision's ImageNet ResNet (v1.5: stride on the 3x3 conv of bottlenecks).

  conv7x7/2x64 (pad 3) - BN - ReLU - maxpool3/2 (pad 1) - 4 stages (64, 128, 256, 512 features,
  strides 1, 2, 2, 2) - global average pool - fc. Any input size works (the tests use 32x32 to
  stay fast; the reference resolution is 224x224).
  """

  num_classes: int
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(
      with_rule(self.conv, self.rule, self.dtype), use_bias=False, kernel_init=TORCHVISION_CONV_INIT
    )
    norm = _norm(train, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = max_pool(x, 3, 2, padding=PAD1)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = self.block_cls(
          features=64 * 2**i,
          conv=conv,
          norm=norm,
          strides=2 if i > 0 and j == 0 else 1,
          name=f"layer{i + 1}_{j}",
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    dense = with_rule(self.dense, self.rule, self.dtype)
    x = dense(self.num_classes, kernel_init=TORCH_DEFAULT_INIT, name="head")(x)
    return x.astype(jnp.float32)


class CifarBlock(nn.Module):
  """He et al.'s CIFAR basic block with the parameter-free option-A shortcut.

  When the block halves the resolution and doubles the width, the shortcut subsamples x[:, ::2,
  ::2] and zero-pads the channels (features // 4 on each side), as in Idelbayev's / BioTorch's code.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), self.strides, padding=PAD1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=PAD1, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    residual = x
    if self.strides != 1 or x.shape[-1] != self.features:
      pad = self.features // 4
      residual = x[:, :: self.strides, :: self.strides]
      residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (pad, pad)))
    return nn.relu(y + residual)


class CifarResNet(nn.Module):
  """He et al. (2016) CIFAR ResNet-(6n+2): conv3x3x16 - 3 stages of n blocks (16, 32, 64) - fc."""

  num_classes: int
  num_blocks: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(
      with_rule(self.conv, self.rule, self.dtype), use_bias=False, kernel_init=CIFAR_INIT
    )
    norm = _norm(train, self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(norm(name="bn1")(conv(16, (3, 3), padding=PAD1, name="conv1")(x)))
    for i in range(3):
      for j in range(self.num_blocks):
        x = CifarBlock(
          features=16 * 2**i,
          conv=conv,
          norm=norm,
          strides=2 if i > 0 and j == 0 else 1,
          name=f"layer{i + 1}_{j}",
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    dense = with_rule(self.dense, self.rule, self.dtype)
    return dense(self.num_classes, kernel_init=CIFAR_INIT, name="head")(x).astype(jnp.float32)
