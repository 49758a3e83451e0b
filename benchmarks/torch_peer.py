"""The PyTorch peer of benchmarks/step_time.py: the same models and rules in PyTorch.

Two implementations, the first that works is used (`impl()` says which):

* "biotorch": BioTorch (PyPI `biotorch`), the reference PyTorch framework for these rules. Its
  `BioModule(model, mode=rule)` converts a plain PyTorch model's Conv2d / Linear layers, which is
  how BioTorch builds its own zoo (its ResNet-20 is `BioModule(small_resnet.resnet20(), mode)`).
  BioTorch 0.0.16 imports torchvision for its zoo; where the installed torchvision wheel's C ops do
  not match the installed torch (e.g. the PyPI torchvision wheel, built for CUDA, with the CPU
  torch wheel), the torchvision operator registrations are skipped: BioTorch only uses torchvision's
  model classes, never its C ops.
* "torch": plain PyTorch with FA / sign-concordant feedback written the standard way (the way
  BioTorch does it): a `torch.autograd.Function` whose backward computes the input gradient with B
  and the weight gradient as usual. Used where BioTorch is not installed (e.g. the GPU machine).

The models are written here in plain PyTorch (NCHW), layer for layer as fajax.models builds them:
`mnist_net`, `cifar10_arch1` (3x3 stride-2 pooling) and `resnet20` (option-A shortcuts; BioTorch's
own `small_resnet.resnet20` when BioTorch is used). The train step is the one PyTorch users run:
eager forward, `F.cross_entropy`, `backward()`, `torch.optim.SGD(momentum=0.9)`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("mnist_net", "cifar10_arch1", "resnet20")
RULES = ("bp", "fa", "usf", "brsf", "frsf")  # the rules both fajax and the peers implement.
_IMPL = None


# --------------------------------------------------------------------------- BioTorch loading.
def _import_biotorch():
  """Imports biotorch (skipping torchvision's C-op registrations if they cannot load)."""
  try:
    import torchvision  # noqa: F401
  except (RuntimeError, OSError, ImportError):
    for name in list(sys.modules):
      if name == "torchvision" or name.startswith("torchvision."):
        del sys.modules[name]
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
      sys.modules[name] = types.ModuleType(name)
    import torchvision  # noqa: F401
  with contextlib.redirect_stdout(io.StringIO()):
    return importlib.import_module("biotorch.module.biomodule")


def impl(prefer: str = "auto") -> str:
  """'biotorch' if BioTorch imports and prefer allows it, else 'torch'."""
  global _IMPL
  if prefer == "torch":
    return "torch"
  if _IMPL is None:
    try:
      _import_biotorch()
      _IMPL = "biotorch"
    except Exception as e:  # Any failure means: fall back to the plain PyTorch peer.
      if prefer == "biotorch":
        raise RuntimeError(f"BioTorch could not be imported: {e!r}") from e
      _IMPL = "torch"
  return _IMPL


def versions() -> dict:
  out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  try:
    from importlib.metadata import version

    out["biotorch"] = version("biotorch")
  except Exception:
    out["biotorch"] = None
  return out


# --------------------------------------------------------------- plain-PyTorch feedback layers.
class _LinearFeedback(torch.autograd.Function):
  """y = x W^T + b; dx = g B (B in place of W); dW, db as autograd computes them."""

  @staticmethod
  def forward(ctx, x, weight, bias, feedback):
    ctx.save_for_backward(x, feedback)
    out = x.matmul(weight.t())
    return out if bias is None else out + bias

  @staticmethod
  def backward(ctx, g):
    x, feedback = ctx.saved_tensors
    dx = g.matmul(feedback)
    dw = g.t().matmul(x)
    db = g.sum(0) if ctx.needs_input_grad[2] else None
    return dx, dw, db, None


class _ConvFeedback(torch.autograd.Function):
  """conv2d(x, W) + b; dx = the transposed convolution with B; dW, db as autograd computes."""

  @staticmethod
  def forward(ctx, x, weight, bias, feedback, stride, padding):
    ctx.save_for_backward(x, feedback)
    ctx.conf = (stride, padding)
    return F.conv2d(x, weight, bias, stride, padding)

  @staticmethod
  def backward(ctx, g):
    x, feedback = ctx.saved_tensors
    stride, padding = ctx.conf
    dx = torch.nn.grad.conv2d_input(x.shape, feedback, g, stride, padding)
    dw = torch.nn.grad.conv2d_weight(x, feedback.shape, g, stride, padding)
    db = g.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
    return dx, dw, db, None, None, None


def _feedback(layer) -> torch.Tensor:
  """B of a layer for its rule (computed under no_grad, as the peers do)."""
  w = layer.weight
  with torch.no_grad():
    if layer.rule == "fa":
      return layer.fixed
    if layer.rule == "usf":  # BioTorch's uSF: the init std times sign(W).
      return layer.scale * torch.sign(w)
    if layer.rule == "brsf":
      r = torch.empty_like(w)
      nn.init.kaiming_uniform_(r, a=math.sqrt(5))
      return r.abs() * torch.sign(w)
    if layer.rule == "frsf":
      return layer.fixed.abs() * torch.sign(w)
  raise ValueError(f"Unknown rule {layer.rule!r}; valid rules are: {', '.join(RULES)}.")


def _init_feedback(layer, rule):
  layer.rule = rule
  if rule in ("fa", "frsf"):
    fixed = torch.empty_like(layer.weight)
    nn.init.kaiming_uniform_(fixed, a=math.sqrt(5))
    layer.register_buffer("fixed", fixed)
  fan_in = layer.weight[0].numel()
  layer.scale = 1.0 / math.sqrt(3 * fan_in)


class FeedbackLinear(nn.Linear):
  def __init__(self, *args, rule="fa", **kwargs):
    super().__init__(*args, **kwargs)
    _init_feedback(self, rule)

  def forward(self, x):
    return _LinearFeedback.apply(x, self.weight, self.bias, _feedback(self))


class FeedbackConv2d(nn.Conv2d):
  def __init__(self, *args, rule="fa", **kwargs):
    super().__init__(*args, **kwargs)
    _init_feedback(self, rule)

  def forward(self, x):
    return _ConvFeedback.apply(
      x, self.weight, self.bias, _feedback(self), self.stride, self.padding
    )


def _convert_plain(module: nn.Module, rule: str) -> nn.Module:
  """Replaces every Conv2d / Linear of `module` by its feedback version (in place)."""
  for name, child in module.named_children():
    if isinstance(child, nn.Conv2d):
      new = FeedbackConv2d(
        child.in_channels,
        child.out_channels,
        child.kernel_size,
        child.stride,
        child.padding,
        bias=child.bias is not None,
        rule=rule,
      )
    elif isinstance(child, nn.Linear):
      new = FeedbackLinear(child.in_features, child.out_features, child.bias is not None, rule=rule)
    else:
      _convert_plain(child, rule)
      continue
    setattr(module, name, new)
  return module


# ------------------------------------------------------------------------------------ models.
class MnistNet(nn.Module):
  """conv5x5x32 - pool2 - conv5x5x64 - pool2 - fc1024 - fc10 (fajax.models 'mnist_net')."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
    self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
    self.fc1 = nn.Linear(7 * 7 * 64, 1024)
    self.head = nn.Linear(1024, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    return self.head(F.relu(self.fc1(torch.flatten(x, 1))))


class Arch1(nn.Module):
  """conv5x5x64 - pool3/2 - conv5x5x64 - pool3/2 - fc384 - fc192 - fc10 ('cifar10_arch1')."""

  def __init__(self, num_classes=10, image_size=24):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
    self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
    side = math.ceil(math.ceil(image_size / 2) / 2)
    self.fc1 = nn.Linear(side * side * 64, 384)
    self.fc2 = nn.Linear(384, 192)
    self.head = nn.Linear(192, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 3, 2, padding=1)
    x = F.max_pool2d(F.relu(self.conv2(x)), 3, 2, padding=1)
    x = F.relu(self.fc1(torch.flatten(x, 1)))
    return self.head(F.relu(self.fc2(x)))


class _CifarBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.pad = cout // 4 if (stride != 1 or cin != cout) else 0
    self.stride = stride

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.pad:
      x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
    return F.relu(y + x)


class CifarResNet20(nn.Module):
  """He et al.'s CIFAR ResNet-20 with option-A shortcuts ('resnet20')."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for i, cout in enumerate((16, 32, 64)):
      for j in range(3):
        blocks.append(_CifarBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn1(self.conv1(x))))
    return self.head(x.mean((2, 3)))


def _plain_model(name, num_classes, image_size, use_biotorch_zoo):
  if name == "mnist_net":
    return MnistNet(num_classes)
  if name == "cifar10_arch1":
    return Arch1(num_classes, image_size)
  if name == "resnet20":
    if use_biotorch_zoo:
      from biotorch.models import small_resnet

      return small_resnet.resnet20(num_classes=num_classes)
    return CifarResNet20(num_classes)
  raise ValueError(f"Unknown peer model {name!r}; valid models are: {', '.join(MODELS)}.")


def build(name, rule, *, num_classes=10, image_size=None, prefer="auto"):
  """The peer model `name` under `rule` ('bp' = the plain PyTorch model, no conversion)."""
  if rule not in RULES:
    raise ValueError(f"Unknown peer rule {rule!r}; valid rules are: {', '.join(RULES)}.")
  which = impl(prefer)
  model = _plain_model(name, num_classes, image_size or 24, which == "biotorch")
  if rule == "bp":
    return model
  if which == "biotorch":
    biomodule = _import_biotorch()
    with contextlib.redirect_stdout(io.StringIO()):
      return biomodule.BioModule(model, mode=rule, copy_weights=False, output_dim=num_classes)
  return _convert_plain(model, rule)


# -------------------------------------------------------------------------------- the runner.
class Runner:
  """One peer train step on a fixed batch, runnable k times in a row (see step_time.Runner).

  Attributes: label, compile_s (0: eager), memory (dict), run(k) -> seconds for k steps.
  """

  def __init__(
    self,
    model_name,
    rule,
    *,
    batch,
    image_shape,
    num_classes,
    device="cpu",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    prefer="auto",
    seed=0,
  ):
    torch.manual_seed(seed)
    h, w, c = image_shape
    self.device = torch.device(device)
    self.impl = impl(prefer)
    self.model = build(model_name, rule, num_classes=num_classes, image_size=h, prefer=prefer)
    self.model.to(self.device).train()
    self.x = torch.randn(batch, c, h, w, device=self.device)
    self.y = torch.randint(0, num_classes, (batch,), device=self.device)
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    self.compile_s = 0.0
    self.memory = {}

  def _sync(self):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(self.x), self.y)
    loss.backward()
    self.opt.step()
    return loss

  def warmup(self, n):
    if self.device.type == "cuda":
      torch.cuda.reset_peak_memory_stats(self.device)
    for _ in range(n):
      self.step()
    self._sync()
    if self.device.type == "cuda":
      self.memory = {"peak_bytes_in_use": int(torch.cuda.max_memory_allocated(self.device))}

  def run(self, k):
    self._sync()
    start = time.perf_counter()
    for _ in range(k):
      self.step()
    self._sync()
    return time.perf_counter() - start
