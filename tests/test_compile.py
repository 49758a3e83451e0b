"""Tests of fajax.compile: fajax's CPU compiler options, where they go, fallback, off switch.

The trainer's jits get `fajax.compile.compiler_options(config.fast_cpu)`; on CPU that keeps
convolutions out of YNNPACK (XLA's multi-threaded kernels run them) while matmuls and reductions
stay in YNNPACK. Runs a tiny conv net on the embedded `digits` set (8x8).
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fajax
from fajax import compile as compile_lib
from fajax import train
from fajax.train import build as build_lib

OPTION = "xla_cpu_experimental_ynn_fusion_type"


class TinyConvNet(nn.Module):
  """digits 8x8x1 -> conv 3x3x8 -> batch norm -> relu -> dense, like the registry's conv nets."""

  num_classes: int
  rule: object = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = fajax.Conv(8, (3, 3), rule=self.rule, dtype=self.dtype)(x / 16.0)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return fajax.Dense(self.num_classes, rule=self.rule)(x.reshape((x.shape[0], -1)))


def tiny_config(**overrides):
  c = train.default_config()
  c.update(dataset="digits", batch_size=32, num_steps=2, rule="fa", progress_bar=False)
  c.mesh = {"data": 1, "model": 1}  # One device: XLA leaves sharded 8-device steps out of YNNPACK.
  c.update(overrides)
  return c


def ynn_fused_ops(hlo_text: str) -> list[str]:
  """Opcodes inside the computations that `__ynn_fusion` fusions call, in compiled HLO text."""
  called = re.findall(r"calls=%([\w.\-]+), [^\n]*\"kind\":\"__ynn_fusion\"", hlo_text)
  ops = []
  for name in called:
    body = re.search(rf"%{re.escape(name)} [^\n]*\{{\n(.*?)\n\}}", hlo_text, re.S).group(1)
    ops += re.findall(r"=\s*\S+\s+([a-z][a-z0-9\-]*)\(", body)
  return ops


def one_step(config):
  """(the compiled train step's HLO text, params after one step on the first digits batch)."""
  exp = build_lib.build(config, model=TinyConvNet)
  state = exp.init(jax.random.key_data(jax.random.key(0)))
  batch = next(iter(fajax.data.get("digits", "train", config.batch_size)))
  text = exp.train_step.lower(exp.abstract_state, exp.abstract_batch()).compile().as_text()
  state, metrics = exp.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  return text, jax.device_get(state.params)


@pytest.fixture(scope="module")
def fast_and_default():
  if compile_lib.compiler_options() is None:
    pytest.skip("this jaxlib has no YNNPACK fusion option: XLA's defaults are used")
  return one_step(tiny_config()), one_step(tiny_config(fast_cpu=False))


def test_elementwise_fusions_agree_with_xla_defaults_to_float32_rounding(fast_and_default):
  # The options follow config.model: "resnet20" adds YNNPACK's elementwise fusions (here to the
  # tiny conv net given as model=, whose batch norm and ReLU they then run).
  _skip_without_eltwise()
  (_, default) = fast_and_default[1]
  text, eltwise = one_step(tiny_config(model="resnet20"))
  assert {"multiply", "maximum"} <= set(ynn_fused_ops(text))
  for a, b in zip(jax.tree.leaves(eltwise), jax.tree.leaves(default), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def test_the_option_reaches_the_train_step(fast_and_default):
  (fast_text, _), (default_text, _) = fast_and_default
  fast_ops = ynn_fused_ops(fast_text)
  assert "convolution" not in fast_ops  # Convolutions run in XLA's own kernels ...
  assert "dot" in fast_ops and "reduce" in fast_ops  # ... matmuls and reductions in YNNPACK.
  # XLA's default (jaxlib 0.10) also fuses the convolutions into YNNPACK: what the option undoes.
  assert fast_text != default_text


def test_gradients_agree_with_xla_defaults_to_float32_rounding(fast_and_default):
  (_, fast), (_, default) = fast_and_default
  # SGD with lr 0.1 from the same state: the params differ by 0.1 x the gradients' difference.
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(default), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def test_unknown_options_fall_back_to_xla_defaults(monkeypatch):
  known = dict(compile_lib.CPU_OPTIONS)
  monkeypatch.setattr(compile_lib, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
  assert compile_lib.compiler_options() is None
  one_step(tiny_config(num_steps=1))  # Compiles and runs with XLA's defaults.
  bad_value = {OPTION: "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE", "xla_cpu_no_such_option": "1"}
  monkeypatch.setattr(compile_lib, "CPU_OPTIONS", bad_value)
  assert compile_lib.compiler_options() is None
  monkeypatch.setattr(compile_lib, "CPU_OPTIONS", {**known, "xla_cpu_no_such_option": "1"})
  assert compile_lib.compiler_options() in (known, None)  # None where this jaxlib lacks OPTION.


def test_user_flags_off_switch_and_other_platforms_get_xla_defaults(monkeypatch):
  assert compile_lib.compiler_options(enabled=False) is None
  assert compile_lib.compiler_options(platform="gpu") is None
  user = os.environ.get("XLA_FLAGS", "") + f" --{OPTION}=individual_dot"
  monkeypatch.setenv("XLA_FLAGS", user)
  assert compile_lib.compiler_options() is None


class ShapesOnly:
  """A dataset stand-in for `build`: sizes only (nothing is read or compiled here)."""

  def info(self, name, **options):
    return fajax.data.DatasetInfo(name, 10, (32, 32, 3), 50_000, 10_000)

  def get(self, *args, **kwargs):
    raise AssertionError("not read")


def _skip_without_eltwise():
  """Skips where this jaxlib lacks the option or its ELTWISE type (fajax then falls back)."""
  base = compile_lib.compiler_options()
  wider = base and base[OPTION] + ",LIBRARY_FUSION_TYPE_ELTWISE"
  if base is None or not compile_lib._accepted(OPTION, wider):
    pytest.skip("this jaxlib has no YNNPACK elementwise fusion type: the base options are used")


def test_a_models_cpu_fusions_reach_its_jits():
  # The CIFAR ResNets add YNNPACK's elementwise fusions (their batch-norm / residual / ReLU chains
  # are otherwise recomputed inside XLA's transposes); the other models keep the base options.
  _skip_without_eltwise()
  assert fajax.models.cpu_fusions("resnet20") == ("ELTWISE",)
  assert fajax.models.cpu_fusions("mnist_net") == () == fajax.models.cpu_fusions("not_a_model")
  base = compile_lib.compiler_options()[OPTION]
  resnet = build_lib.build(tiny_config(model="resnet20", dataset="shapes"), dataset=ShapesOnly())
  assert resnet.compiler_options[OPTION] == base + ",LIBRARY_FUSION_TYPE_ELTWISE"
  arch1 = build_lib.build(
    tiny_config(model="cifar10_arch1", dataset="shapes"), dataset=ShapesOnly()
  )
  assert arch1.compiler_options[OPTION] == base
  assert (
    build_lib.build(
      tiny_config(model="resnet20", dataset="shapes", fast_cpu=False), dataset=ShapesOnly()
    ).compiler_options
    is None
  )
  # With them, an elementwise chain (scale, shift, ReLU) runs inside a YNNPACK fusion.
  chain = jax.jit(
    lambda x, s: jnp.maximum(x * s + 1.0, 0.0), compiler_options=resnet.compiler_options
  )
  ops = ynn_fused_ops(chain.lower(jnp.ones((4, 8, 8, 16)), jnp.ones(16)).compile().as_text())
  assert {"multiply", "add", "maximum"} <= set(ops)
  # A fusion type this jaxlib does not know is dropped: the base options remain.
  assert compile_lib.compiler_options(extra_fusions=("NO_SUCH_TYPE",))[OPTION] == base
