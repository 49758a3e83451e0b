"""fajax.nnx: NNX layers and models under every rule, against the Linen layers and by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_direct  # its hand-derived deltas (pytest puts tests/ on the path)
import test_train
from flax import nnx
from test_train import compilation_cache  # noqa: F401 (autouse: resumed runs reuse compiles)

import fajax
import fajax.nnx as fnnx
from fajax import constraints, layers, rules
from fajax.nnx import models as fnnx_models
from fajax.train import build as build_lib
from fajax.train import loop as loop_lib

# Every layer-local rule, with each usf scale (dfa and densefa need a model: tested below).
RULES = [
  ("bp", {}),
  ("bp_noise", {"sigma": 0.5}),
  ("fa", {}),
  ("kp", {}),
  ("usf", {"scale": "init"}),
  ("usf", {"scale": "sn"}),
  ("usf", {"scale": "std"}),
  ("usf", {"scale": "none"}),
  ("brsf", {}),
  ("frsf", {}),
]
# Stride, asymmetric padding, dilation and feature groups at once (as tests/test_rules.py).
CONV = dict(strides=2, padding=((1, 2), (0, 1)), kernel_dilation=(1, 2), feature_group_count=2)


def _rule_id(spec):
  name, options = spec
  return name + "".join(f"-{v}" for v in options.values())


def _linen_and_nnx_layer(kind, rule):
  """A Linen fajax layer, its variables, and the NNX layer holding the same W, b and B."""
  if kind == "dense":
    x = jax.random.normal(jax.random.key(1), (3, 5))
    linen = fajax.Dense(4, rule=rule)
    nnx_layer = fnnx.Linear(5, 4, rule=rule, rngs=nnx.Rngs(2))
  else:
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 4))
    linen = fajax.Conv(4, (3, 3), rule=rule, **CONV)
    nnx_layer = fnnx.Conv(4, 4, (3, 3), rule=rule, rngs=nnx.Rngs(2), **CONV)
  variables = linen.init({"params": jax.random.key(0), "feedback": jax.random.key(3)}, x)
  fnnx.load_linen_variables(nnx_layer, variables)
  return x, linen, variables, nnx_layer


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("spec", RULES, ids=_rule_id)
def test_layer_gradients_equal_the_linen_layer_bit_for_bit(kind, spec):
  rule = rules.get(spec[0], **spec[1])
  x, linen, variables, nnx_layer = _linen_and_nnx_layer(kind, rule)
  # The same stored B (fa, kp, frsf's |R_0|, usf's init/std scale)...
  assert _trees_equal(fnnx.linen_variables(nnx_layer), variables)
  rngs = {"feedback": jax.random.key(9)}  # ...and the same per-step B (brsf, bp_noise).
  shape = jax.eval_shape(lambda: fajax.apply(linen, variables, x, rngs=rngs)).shape
  target = jax.random.normal(jax.random.key(4), shape)

  def linen_loss(params, x):
    out = fajax.apply(linen, {**variables, "params": params}, x, rngs=rngs)
    return jnp.sum(out * target)

  graphdef, params, rest = nnx.split(nnx_layer, nnx.Param, ...)

  def nnx_loss(params, x):
    out = fnnx.apply(nnx.merge(graphdef, params, rest), x, keys=rngs)
    return jnp.sum(out * target)

  want = jax.grad(linen_loss, argnums=(0, 1))(variables["params"], x)
  got_params, got_x = jax.grad(nnx_loss, argnums=(0, 1))(params, x)
  np.testing.assert_array_equal(got_x, want[1])
  for name in ("kernel", "bias"):
    np.testing.assert_array_equal(got_params[name].get_value(), want[0][name])
  if rule.name != "bp":  # the input gradient is not backprop's
    with layers.force_backprop():
      bp_x = jax.grad(lambda x: jnp.sum(fajax.apply(linen, variables, x) * target))(x)
    assert not np.allclose(got_x, bp_x)


def _trees_equal(a, b):
  a, b = (
    jax.tree_util.tree_flatten_with_path(dict(a)),
    jax.tree_util.tree_flatten_with_path(dict(b)),
  )
  return [p for p, _ in a[0]] == [p for p, _ in b[0]] and all(
    np.array_equal(x, y) for (_, x), (_, y) in zip(a[0], b[0], strict=True)
  )


class PlainNet(nnx.Module):
  """A plain NNX model (nnx.Conv / nnx.Linear, batch norm, a list of layers, a shared layer)."""

  num_classes = 3  # dfa's output width

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), **CONV, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(40, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
    self.shared = self.blocks[1]  # the same layer under two paths
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    x = jnp.tanh(self.blocks[0](x.reshape(x.shape[0], -1)))
    x = nnx.relu(self.shared(x))
    return self.head(x)


def _net_input():
  return jax.random.normal(jax.random.key(5), (2, 8, 6, 2))


def test_bp_equals_nnx_grad_of_the_plain_model_bit_for_bit():
  x = _net_input()
  plain = PlainNet(nnx.Rngs(0))
  converted = fnnx.convert(nnx.clone(plain), "bp", rngs=nnx.Rngs(1))
  loss = lambda m, x: jnp.sum(m(x) ** 2)
  want = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(plain, x)
  got = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(converted, x)
  assert _trees_equal(nnx.to_pure_dict(got[0]), nnx.to_pure_dict(want[0]))
  np.testing.assert_array_equal(got[1], want[1])


def test_convert_keeps_the_parameter_tree_and_resolves_overrides_by_path():
  plain = PlainNet(nnx.Rngs(0))
  before = nnx.to_pure_dict(nnx.state(plain, nnx.Param))
  kernel = plain.blocks[0].kernel
  model = fnnx.convert(plain, "fa", rngs=nnx.Rngs(1), overrides={"head": "bp", "blocks/0": "usf"})
  assert model is plain and isinstance(model.blocks[0], fnnx.Linear)
  assert model.blocks[0].kernel is kernel  # the same Param objects: optimizer state still fits
  assert model.shared is model.blocks[1]  # sharing survives
  assert _trees_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), before)
  feedback = nnx.to_pure_dict(nnx.state(model, fnnx.Feedback))
  # fa keeps B per layer; usf(sn) and bp keep nothing; Feedback is not a Param.
  assert set(feedback) == {"conv", "blocks"} and set(feedback["blocks"]) == {1}
  assert model.head.rule.name == "bp" and model.blocks[0].rule.name == "usf"
  # In the Linen layout (what the trainer and checkpoints see) B sits at feedback/<layer>/kernel.
  linen = fnnx.linen_variables(model)
  assert linen["feedback"]["conv"]["kernel"].shape == model.conv.kernel.shape
  assert set(linen) == {"params", "feedback", "batch_stats"}


def test_nnx_optimizer_never_sees_feedback():
  model = fnnx.convert(PlainNet(nnx.Rngs(0)), "fa", rngs=nnx.Rngs(1))
  b = model.head.feedback["kernel"].get_value()
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(_net_input()) ** 2))(model)
  assert not jax.tree.leaves(nnx.state(grads, fnnx.Feedback))
  optimizer.update(model, grads)
  np.testing.assert_array_equal(model.head.feedback["kernel"].get_value(), b)


def test_per_layer_overrides_are_refused_on_a_lone_layer():
  with pytest.raises(ValueError, match="fajax.nnx.convert"):
    fnnx.Linear(2, 3, rule=rules.get("fa", overrides={"x": "bp"}), rngs=nnx.Rngs(0))


def test_layers_without_rngs_for_per_step_rules_draw_from_their_own_stream():
  layer = fnnx.Linear(4, 3, rule="brsf", rngs=nnx.Rngs(0))
  x = jnp.ones((2, 4))
  g = lambda: nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), argnums=1)(layer, x)
  assert not np.array_equal(g(), g())  # a new B every call, as brsf means


def test_direct_rules_need_apply():
  model = fnnx.convert(PlainNet(nnx.Rngs(0)), "dfa", rngs=nnx.Rngs(1), sample=_net_input())
  with pytest.raises(ValueError, match=r"fajax.nnx.apply\(model, x\)"):
    model(_net_input())
  with pytest.raises(ValueError, match="sample=x"):
    fnnx.convert(PlainNet(nnx.Rngs(0)), "densefa", rngs=nnx.Rngs(1))
  assert fnnx.apply(model, _net_input()).shape == (2, 3)


# --- dfa / densefa against the hand-derived deltas of tests/test_direct.py ----------------------


class DirectCNN(nnx.Module):
  """tests/test_direct.py's CNN in NNX, its layers named as Linen names them."""

  num_classes = test_direct.K

  def __init__(self, rngs):
    self.Conv_0 = nnx.Conv(2, 3, (3, 3), **test_direct.CONV0, rngs=rngs)
    self.Conv_1 = nnx.Conv(3, 4, (2, 2), **test_direct.CONV1, rngs=rngs)
    self.Dense_0 = nnx.Linear(24, 6, rngs=rngs)
    self.Dense_1 = nnx.Linear(6, test_direct.K, rngs=rngs)

  def __call__(self, x):
    x = test_direct._pool(nnx.relu(self.Conv_0(x)))
    x = jnp.tanh(self.Conv_1(x))
    x = nnx.relu(self.Dense_0(x.reshape(x.shape[0], -1)))
    return self.Dense_1(x)


def _nnx_grads(model, x, y):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    return test_direct._loss(fnnx.apply(nnx.merge(graphdef, params, rest), x), y)

  return nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))


@pytest.mark.parametrize("rule", ["dfa", "densefa"])
def test_direct_rules_give_the_hand_derived_deltas(rule):
  x, y = test_direct._data((8, 8, 2))
  linen = test_direct.CNN(rule=rule)
  v = linen.init(jax.random.key(0), x)
  model = fnnx.convert(DirectCNN(nnx.Rngs(0)), rule, rngs=nnx.Rngs(1), sample=x[:1])
  # convert sized the same matrices under the same names; load the Linen draws into them.
  assert jax.tree.map(jnp.shape, fnnx.linen_variables(model)) == jax.tree.map(jnp.shape, v)
  fnnx.load_linen_variables(model, v)
  got = _nnx_grads(model, x, y)
  want = test_direct._cnn_hand(rule, v["feedback"], v["params"], x, y)
  test_direct._assert_tree_close(got, want)
  linen_grads = test_direct._grads(linen, v, x, y)
  assert _trees_equal(got, linen_grads)  # and exactly the Linen model's


# --- the trainer on an NNX model -----------------------------------------------------------------


class TinyNnx(nnx.Module):
  """test_train.TinyNet in NNX, with the same layer names (hence the same variables)."""

  def __init__(self, num_classes, *, dtype=jnp.float32, batch_norm=False, dropout=0.0, rngs):
    self.num_classes, self.dtype = num_classes, dtype
    self.Dense_0 = nnx.Linear(64, 16, dtype=dtype, rngs=rngs)
    self.BatchNorm_0 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs) if batch_norm else None
    self.Dropout_0 = nnx.Dropout(dropout, rngs=rngs) if dropout else None
    self.Dense_1 = nnx.Linear(16, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype) / 16.0
    x = self.Dense_0(x)
    if self.BatchNorm_0 is not None:
      x = self.BatchNorm_0(x)
    x = nnx.relu(x)
    if self.Dropout_0 is not None:
      x = self.Dropout_0(x)
    return self.Dense_1(x).astype(jnp.float32)


def test_an_nnx_instance_keeps_its_values_in_linen_and_the_original_is_untouched():
  model = PlainNet(nnx.Rngs(0))
  before = nnx.to_pure_dict(nnx.state(model))
  bridge = fnnx.to_linen(model, rule="fa")
  v = jax.jit(lambda x: bridge.init({"params": jax.random.key(5)}, x, train=False))(_net_input())
  assert _trees_equal(v["params"], fnnx.linen_variables(model)["params"])
  assert v["feedback"]["head"]["kernel"].shape == model.head.kernel.shape
  assert isinstance(model.head, nnx.Linear) and not isinstance(model.head, fnnx.Linear)
  assert _trees_equal(nnx.to_pure_dict(nnx.state(model)), before)


@pytest.mark.parametrize("rule", ["brsf", "dfa"])
def test_trainer_on_an_nnx_model_one_device_and_eight_give_the_same_losses(rule):
  losses = {}
  for n in (1, 8):
    config = test_train.tiny_config(rule=rule, mesh={"data": n, "model": 1}, num_steps=4)
    losses[n], state = test_train.step_losses(config, model=TinyNnx)
    assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == n
    assert set(state.feedback) == {"Dense_1"} if rule == "dfa" else {"Dense_0", "Dense_1"}
  assert losses[1][-1] < losses[1][0]
  np.testing.assert_allclose(losses[8], losses[1], rtol=2e-5, atol=1e-6)


def test_trainer_on_an_nnx_model_interrupt_and_resume_is_bit_identical(tmp_path):
  model = functools.partial(TinyNnx, batch_norm=True, dropout=0.25)
  config = test_train._resume_config()  # brsf, momentum, weight decay, cosine, async checkpoints
  full = test_train.run(config, tmp_path / "full", model=model)
  with pytest.raises(test_train.Interrupt):
    test_train.run(
      config, tmp_path / "killed", model=model, callbacks=[test_train._interrupt_at(7)]
    )
  resumed = test_train.run(config, tmp_path / "killed", model=model)
  assert int(resumed.step) == 10
  for name in ("params", "feedback", "batch_stats", "opt_state"):
    test_train.assert_trees_equal(getattr(full, name), getattr(resumed, name))
  assert test_train.records(tmp_path / "killed") == test_train.records(tmp_path / "full")
  assert test_train.records(tmp_path / "killed", "test") == test_train.records(
    tmp_path / "full", "test"
  )


@pytest.mark.parametrize("rule", ["brsf", "dfa"])
def test_trainer_diagnostics_on_an_nnx_model_equal_the_linen_models(rule):
  config = test_train.tiny_config(rule=rule, num_steps=2, diagnostics_every=1)
  linen = build_lib.build(config, model=functools.partial(test_train.TinyNet, batch_norm=True))
  nnx_exp = build_lib.build(config, model=functools.partial(TinyNnx, batch_norm=True))
  state = linen.init(jax.random.PRNGKey(0))
  # Same variables, paths included: the Linen state runs the NNX model as it is.
  assert jax.tree.structure(state) == jax.tree.structure(nnx_exp.abstract_state)
  batch = next(loop_lib.train_batches(linen, 0))
  copy = jax.tree.map(jnp.copy, state)  # the steps donate their state
  _, want = linen.diagnostics_step(state, batch)
  _, got = nnx_exp.diagnostics_step(copy, batch)
  angles = [k for k in want if k.startswith("align/")]
  assert len(angles) == 10 and set(got) == set(want)  # 5 metrics x 2 layers
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# --- constraints and Kolen-Pollack with nnx.Optimizer -------------------------------------------


def test_kolen_pollack_and_constraints_with_nnx_optimizer():
  model = fnnx.convert(PlainNet(nnx.Rngs(0)), "kp", rngs=nnx.Rngs(1), overrides={"head": "fa"})
  tx = optax.chain(optax.sgd(0.5), constraints.sign_constraint(), constraints.norm_constraint())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  w0 = {k: np.asarray(getattr(model, k).kernel.get_value()) for k in ("conv", "head")}
  b0 = {k: np.asarray(getattr(model, k).feedback["kernel"].get_value()) for k in ("conv", "head")}
  grads = nnx.grad(lambda m: jnp.sum(m(_net_input()) ** 2))(model)
  fnnx.update(optimizer, model, grads, kp_decay=0.25)
  w = {k: np.asarray(getattr(model, k).kernel.get_value()) for k in ("conv", "head")}
  b = {k: np.asarray(getattr(model, k).feedback["kernel"].get_value()) for k in ("conv", "head")}
  # kp: B - W shrinks by (1 - decay) (B gets W's update); the fa head keeps its B.
  np.testing.assert_allclose(b["conv"] - w["conv"], 0.75 * (b0["conv"] - w0["conv"]), atol=1e-6)
  np.testing.assert_array_equal(b["head"], b0["head"])
  for k in w:  # E/I: no sign flips; Const.: the initial norm; both on kernels only.
    assert not np.allclose(w[k], w0[k]) and np.all(w[k] * np.sign(w0[k]) >= 0)
    np.testing.assert_allclose(np.linalg.norm(w[k]), np.linalg.norm(w0[k]), rtol=1e-5)


# --- the NNX zoo ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist_net", "resnet20"])
def test_nnx_zoo_models_are_their_linen_twins(name):
  """Same variables (paths, shapes) and the same function on the same weights, under a rule.

  (Gradients under every rule are the layers' business, tested above.)
  """
  x = jax.random.normal(jax.random.key(0), (2, *fnnx_models.INPUT_SHAPES[name]))
  init = lambda m, x: m.init({"params": jax.random.key(1)}, x[:1], train=False)
  shapes = lambda m, x: jax.tree.map(jnp.shape, jax.eval_shape(lambda: init(m, x)))
  linen = fajax.models.get(name, num_classes=10, rule="frsf")
  bridge = fnnx.to_linen(fnnx_models.MODELS[name], rule="frsf", num_classes=10)
  assert shapes(bridge, x) == shapes(linen, x)
  # The numbers on smaller twins (compile time): 12x12 / 8x8 inputs, ResNet-8 (one block a stage).
  if name == "mnist_net":
    x = x[:, :12, :12]
    nnx_cls = functools.partial(fnnx_models.MnistNet, input_shape=x.shape[1:])
  else:
    x = x[:, :8, :8]
    nnx_cls = functools.partial(fnnx_models.CifarResNet, num_blocks=1)
    linen = fajax.models.CifarResNet(num_classes=10, num_blocks=1, rule="frsf")
  bridge = fnnx.to_linen(nnx_cls, rule="frsf", num_classes=10)
  assert shapes(bridge, x) == shapes(linen, x)
  v = init(linen, x)

  @jax.jit
  def outputs(v):  # train mode: batch statistics are used and updated
    return [fajax.apply(m, v, x, train=True, mutable=["batch_stats"]) for m in (linen, bridge)]

  (out_linen, s_linen), (out_nnx, s_nnx) = outputs(v)
  np.testing.assert_allclose(out_nnx, out_linen, rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(s_nnx) == jax.tree.structure(s_linen)
  for a, b in zip(jax.tree.leaves(s_nnx), jax.tree.leaves(s_linen), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
