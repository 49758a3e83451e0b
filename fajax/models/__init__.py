"""The model zoo, by name: the paper's architectures and the peers' (BioTorch, Xiao et al.).

    model = fajax.models.get("resnet20", num_classes=10, rule="usf")
    variables = model.init({"params": key}, jnp.zeros((1, *fajax.models.input_shape("resnet20"))),
                           train=False)
    logits, state = fajax.apply(model, variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": k1, "feedback": k2})

Every model is a `flax.linen.Module` with the fields `num_classes`, `rule` (None = bp), `dense`
and `conv` (layer types, default `fajax.layers.Dense` / `Conv`; `nn.Dense` / `nn.Conv` give the
plain Flax model), `dtype` (compute dtype; parameters stay float32), is called as
`model(x, train=True)` on NHWC images and returns float32 logits [B, num_classes]. Batch norm keeps
its running statistics in `batch_stats` (apply with `mutable=["batch_stats"]` when training);
dropout draws from the rng stream `dropout` when `train=True`. The classifier is always named
`head`. docs/models.md lists sizes, FLOPs and what each model is meant to reproduce.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from fajax.models.alexnet import AlexNet
from fajax.models.blocks import adaptive_avg_pool, max_pool, max_pool_2x2, with_rule
from fajax.models.convnets import VGG, Arch1, LeNet, MnistNet
from fajax.models.resnet import BasicBlock, Bottleneck, CifarResNet, ResNet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry: how to build the model and what it is for."""

  build: Callable[..., nn.Module]  # the Module class, or a partial of it with fixed fields
  input_shape: tuple[int, int, int]  # default (H, W, C)
  num_classes: int  # default number of classes
  reference: str  # what it is meant to reproduce (the numbers: the experiment file it names)
  # YNNPACK fusion types that fajax's CPU options add for this model (`fajax.compile`), where
  # measured faster: the CIFAR ResNets' elementwise chains (benchmarks/README.md).
  cpu_fusions: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelSpec] = {
  "mnist_net": ModelSpec(MnistNet, (28, 28, 1), 10, "paper MNIST (experiments/mnist_net.py)"),
  "lenet": ModelSpec(LeNet, (28, 28, 1), 10, "LeNet-5 on MNIST (BioTorch's LeNet)"),
  "cifar10_arch1": ModelSpec(
    Arch1, (24, 24, 3), 10, "paper CIFAR-10 arch 1 (experiments/cifar10_arch1.py)"
  ),
  "cifar10_arch2": ModelSpec(
    VGG, (32, 32, 3), 10, "paper CIFAR-10 arch 2 (experiments/cifar10_arch2.py)"
  ),
  "imagenet_arch1": ModelSpec(
    Arch1, (32, 32, 3), 1000, "paper ImageNet arch 1 (experiments/imagenet_arch1.py)"
  ),
  "imagenet_arch2": ModelSpec(
    functools.partial(AlexNet, batch_norm=True),
    (224, 224, 3),
    1000,
    "paper ImageNet arch 2 (experiments/imagenet_arch2.py)",
  ),
  "alexnet": ModelSpec(AlexNet, (224, 224, 3), 1000, "torchvision AlexNet (61,100,840 params)"),
  "resnet18": ModelSpec(
    functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    (224, 224, 3),
    1000,
    "BioTorch ImageNet ResNet-18 (its numbers: experiments/resnet18.py)",
  ),
  "resnet50": ModelSpec(
    functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    (224, 224, 3),
    1000,
    "Xiao et al. 2018 ImageNet ResNet-50 (sign-symmetry); torchvision 25,557,032 params",
  ),
  "resnet20": ModelSpec(
    functools.partial(CifarResNet, num_blocks=3),
    (32, 32, 3),
    10,
    "BioTorch CIFAR-10 ResNet-20 (its numbers: experiments/resnet20.py)",
    cpu_fusions=("ELTWISE",),
  ),
  "resnet56": ModelSpec(
    functools.partial(CifarResNet, num_blocks=9),
    (32, 32, 3),
    10,
    "He et al. 2016 CIFAR-10 ResNet-56 (0.85M params, BP 6.97% error)",
    cpu_fusions=("ELTWISE",),
  ),
}


def names() -> list[str]:
  """The names of all registered models."""
  return sorted(_REGISTRY)


def _spec(name: str) -> ModelSpec:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; valid models are: {', '.join(names())}.")
  return _REGISTRY[name]


def spec(name: str) -> ModelSpec:
  """The registry entry of `name` (default input shape, classes, what it reproduces)."""
  return _spec(name)


def cpu_fusions(name) -> tuple[str, ...]:
  """The extra YNNPACK fusion types of fajax's CPU options for model `name` (() if unregistered)."""
  return _REGISTRY[name].cpu_fusions if name in _REGISTRY else ()


def input_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
  """The default (H, W, C) input of model `name`; `image_size` replaces H and W.

  Defaults: mnist_net/lenet 28x28x1, cifar10_arch1 24x24x3 (its random crops), cifar10_arch2 and
  resnet20/56 32x32x3, imagenet_arch1 32x32x3 (downsampled ImageNet; 64 works too), imagenet_arch2,
  alexnet and resnet18/50 224x224x3.
  """
  h, w, c = _spec(name).input_shape
  if image_size is not None:
    h = w = int(image_size)
  return (h, w, c)


def _fields(build) -> tuple[set[str], set[str]]:
  """(settable fields, fields fixed by the registry) of a Module class or a partial of one."""
  fixed = set()
  while isinstance(build, functools.partial):
    fixed |= set(build.keywords)
    build = build.func
  settable = {f.name for f in dataclasses.fields(build) if f.init} - {"parent", "name"} - fixed
  return settable, fixed


def get(name: str, num_classes: int | None = None, rule: Any = None, **kw) -> nn.Module:
  """Builds model `name` (see `names()`).

  Args:
    name: a registered model name.
    num_classes: classifier outputs; None takes the model's dataset default (10 or 1000).
    rule: the learning rule of every layer: a name (`fajax.rules.names()`), a `fajax.rules.Rule`
      (with per-layer `overrides`, e.g. {"head": "bp"}), or None for backprop.
    **kw: other fields of the model: `dtype` (compute dtype, e.g. jnp.bfloat16), `dense`, `conv`
      (layer types), and model-specific ones (`pooling` for the arch-1 nets, `dropout_rate` for
      AlexNets).

  Raises:
    ValueError: for an unknown model name or field, listing the valid ones.
  """
  spec_ = _spec(name)
  settable, _ = _fields(spec_.build)
  unknown = sorted(set(kw) - settable)
  if unknown:
    raise ValueError(
      f"Unknown option(s) {', '.join(unknown)} for model {name!r}; "
      f"valid options are: {', '.join(sorted(settable - {'num_classes', 'rule'}))}."
    )
  if num_classes is None:
    num_classes = spec_.num_classes
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
  return spec_.build(num_classes=int(num_classes), rule=rule, **kw)


__all__ = [
  "cpu_fusions",
  "AlexNet",
  "Arch1",
  "BasicBlock",
  "Bottleneck",
  "CifarResNet",
  "LeNet",
  "MnistNet",
  "ModelSpec",
  "ResNet",
  "VGG",
  "adaptive_avg_pool",
  "get",
  "input_shape",
  "max_pool",
  "max_pool_2x2",
  "names",
  "spec",
  "with_rule",
]
