"""AlexNet (torchvision layout) and the paper's ImageNet arch 2 (AlexNet with batch norm).

Like every fajax model it takes its dense and conv layer types and passes `rule` to each layer.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fajax import layers as fajax_layers
from fajax.models.blocks import ModuleDef, adaptive_avg_pool, flatten, max_pool, with_rule

# PyTorch's default Linear/Conv2d weight init (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))),
# which torchvision's AlexNet keeps. Biases start at zero (PyTorch draws them uniformly).
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class AlexNet(nn.Module):
  """AlexNet as torchvision defines it ("one weird trick" variant, 64 channels in conv1).

  conv11x11/4x64 (pad 2) - pool3/2 - conv5x5x192 (pad 2) - pool3/2 - conv3x3x384 - conv3x3x256 -
  conv3x3x256 - pool3/2 - adaptive avg pool 6x6 - dropout - fc4096 - dropout - fc4096 - fc.
  61,100,840 parameters for 1000 classes, at any input size (the adaptive pooling is the identity
  at 224x224; it needs inputs of at least 63x63).

  `batch_norm=True` is the paper's ImageNet arch 2 (our reading): batch norm after every conv
  and hidden dense layer (those layers then drop their bias), dropout kept.
  """

  num_classes: int
  rule: Any = None
  dense: ModuleDef = fajax_layers.Dense
  conv: ModuleDef = fajax_layers.Conv
  dtype: Any = jnp.float32
  batch_norm: bool = False
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(
      with_rule(self.conv, self.rule, self.dtype),
      use_bias=not self.batch_norm,
      kernel_init=TORCH_DEFAULT_INIT,
    )
    dense = functools.partial(
      with_rule(self.dense, self.rule, self.dtype), kernel_init=TORCH_DEFAULT_INIT
    )
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
    )

    def act(y, name):
      return nn.relu(norm(name=name)(y) if self.batch_norm else y)

    x = jnp.asarray(x, self.dtype)
    x = act(conv(64, (11, 11), strides=4, padding=((2, 2), (2, 2)), name="conv1")(x), "bn1")
    x = max_pool(x, 3, 2)
    x = act(conv(192, (5, 5), padding=((2, 2), (2, 2)), name="conv2")(x), "bn2")
    x = max_pool(x, 3, 2)
    x = act(conv(384, (3, 3), padding=((1, 1), (1, 1)), name="conv3")(x), "bn3")
    x = act(conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv4")(x), "bn4")
    x = act(conv(256, (3, 3), padding=((1, 1), (1, 1)), name="conv5")(x), "bn5")
    x = max_pool(x, 3, 2)
    x = flatten(adaptive_avg_pool(x, (6, 6)))
    dropout = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    x = dropout()(x)
    x = act(dense(4096, use_bias=not self.batch_norm, name="fc1")(x), "bn_fc1")
    x = dropout()(x)
    x = act(dense(4096, use_bias=not self.batch_norm, name="fc2")(x), "bn_fc2")
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)
