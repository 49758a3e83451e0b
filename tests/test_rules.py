"""Each rule's feedback matrix B against its definition in paper.md, through fajax layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import fajax
from fajax import layers, rules

ALL_RULES = ["bp", "bp_noise", "kp", "fa", "usf", "brsf", "frsf"]


class MLP(nn.Module):
  rule: object = None

  @nn.compact
  def __call__(self, x):
    x = nn.relu(fajax.Dense(6, rule=self.rule)(x))
    return fajax.Dense(3, rule=self.rule)(x)


class CNN(nn.Module):
  rule: object = None

  @nn.compact
  def __call__(self, x):
    x = fajax.Conv(
      4,
      (3, 3),
      strides=2,
      padding=((1, 2), (0, 1)),
      kernel_dilation=(1, 2),
      feature_group_count=2,
      rule=self.rule,
    )(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return fajax.Dense(3, rule=self.rule)(x)


def _feedback_matrices(model, variables, x, step=0):
  """B of every layer as the rule produced it, and the gradients, on one batch."""
  rngs = {"feedback": jax.random.fold_in(jax.random.key(7), step)}

  def loss(params):
    with layers.capture_feedback():
      out, state = model.apply(
        {**variables, "params": params}, x, rngs=rngs, mutable=[layers.FEEDBACK_MATRICES]
      )
    return jnp.sum(out**2) / 2, state[layers.FEEDBACK_MATRICES]

  (_, bs), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return bs, grads


def test_registry_names_and_errors():
  assert set(ALL_RULES) <= set(rules.names())
  with pytest.raises(ValueError, match="valid rules are: .*bp.*usf"):
    rules.get("nope")
  with pytest.raises(ValueError, match="valid options are: .*scale"):
    rules.get("usf", sclae="sn")
  with pytest.raises(ValueError, match="init, sn, std, none"):
    rules.get("usf", scale="bogus")
  with pytest.raises(ValueError, match="sigma"):
    rules.get("bp_noise", sigma=-1.0)
  assert rules.get("usf", scale="init").describe() == "usf(scale=init)"


def _sn_b(w):
  w = np.asarray(w, np.float64)
  return np.linalg.norm(w) / np.linalg.norm(np.sign(w)) * np.sign(w)


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("model_cls", [MLP, CNN])
def test_gradients_follow_the_rule(rule, model_cls):
  """Hand-computed: dL/dh1 = g2 @ B2^T for the last layer; weight gradients are x^T g."""
  x = jax.random.normal(jax.random.key(0), (5, 6, 6, 4) if model_cls is CNN else (5, 8))
  model = model_cls(rule=rule)
  variables = model.init(jax.random.key(1), x)
  bs, grads = _feedback_matrices(model, variables, x)
  params = variables["params"]
  last = "Dense_1" if model_cls is MLP else "Dense_0"
  w_last, b_last = params[last]["kernel"], bs[last]["B"]
  # Forward by hand to the last layer.
  if model_cls is MLP:
    a1 = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    h1 = np.maximum(a1, 0)
  else:  # the CNN's conv is checked by hand in test_cnn_first_layer_input_cotangent_uses_b
    h1 = None
  if h1 is not None:
    out = h1 @ w_last + params[last]["bias"]
    g2 = np.asarray(out)  # d(sum(out^2)/2)/d out
    np.testing.assert_allclose(grads[last]["kernel"], h1.T @ g2, rtol=1e-4, atol=1e-5)
    delta1 = (g2 @ np.asarray(b_last).T) * (a1 > 0)
    np.testing.assert_allclose(grads["Dense_0"]["kernel"], x.T @ delta1, rtol=1e-4, atol=1e-4)
  # B against its definition.
  fb = variables.get("feedback", {})
  w = np.asarray(w_last)
  b = np.asarray(b_last)
  if rule == "bp":
    np.testing.assert_array_equal(b, w)
  elif rule in ("fa", "kp"):
    np.testing.assert_array_equal(b, fb[last]["kernel"])
    assert not np.allclose(b, w)
  elif rule == "usf":  # default scale="sn"
    np.testing.assert_allclose(b, _sn_b(w), rtol=1e-5)
  elif rule == "frsf":
    np.testing.assert_allclose(b, np.abs(fb[last]["kernel"]) * np.sign(w), rtol=1e-6)
  elif rule == "brsf":
    assert np.all(np.sign(b) == np.sign(w))
  elif rule == "bp_noise":
    noise = (b - w) / np.std(w)
    assert 0.6 < np.std(noise) < 1.4 and not np.allclose(b, w)
  # Feedback state sits in its own collection, never in params.
  assert set(variables) <= {"params", "feedback"}
  if rule in ("fa", "kp", "frsf"):
    assert set(fb) == set(params)


def test_cnn_first_layer_input_cotangent_uses_b():
  """The conv's input cotangent is the transposed convolution with its B (checked via lax)."""
  from jax import lax

  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  model = CNN(rule="fa")
  variables = model.init(jax.random.key(1), x)
  with layers.capture_feedback():
    _, state = model.apply(variables, x, mutable=[layers.FEEDBACK_MATRICES])
  b = state[layers.FEEDBACK_MATRICES]["Conv_0"]["B"]
  dx = jax.grad(lambda x: jnp.sum(model.apply(variables, x) ** 2))(x)
  w = variables["params"]["Conv_0"]["kernel"]
  kw = dict(
    window_strides=(2, 2),
    padding=((1, 2), (0, 1)),
    rhs_dilation=(1, 2),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=2,
  )
  a = lax.conv_general_dilated(x, w, **kw) + variables["params"]["Conv_0"]["bias"]
  h = jnp.maximum(a, 0).reshape(2, -1)
  out = h @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"]
  bd = variables["feedback"]["Dense_0"]["kernel"]
  delta = ((2 * out) @ bd.T).reshape(a.shape) * (a > 0)
  _, vjp = jax.vjp(lambda x: lax.conv_general_dilated(x, b, **kw), x)
  np.testing.assert_allclose(dx, vjp(delta)[0], rtol=1e-4, atol=1e-4)


def test_bp_equals_plain_flax_bit_for_bit():
  class Plain(nn.Module):
    dense: type = nn.Dense
    conv: type = nn.Conv

    @nn.compact
    def __call__(self, x):
      x = nn.relu(self.conv(4, (3, 3), strides=2, padding="SAME", feature_group_count=2)(x))
      x = nn.relu(self.conv(4, (3, 3), kernel_dilation=2)(x)).reshape(x.shape[0], -1)
      return self.dense(3)(x)

  x = jax.random.normal(jax.random.key(0), (5, 9, 9, 4))
  plain = Plain()
  ours = Plain(dense=fajax.Dense, conv=fajax.Conv)
  variables = plain.init(jax.random.key(1), x)
  assert jax.tree.structure(variables) == jax.tree.structure(ours.init(jax.random.key(1), x))
  for transform in (lambda f: f, jax.jit):
    g_plain = transform(jax.grad(lambda p: jnp.mean(plain.apply({"params": p}, x) ** 2)))
    g_ours = transform(jax.grad(lambda p: jnp.mean(ours.apply({"params": p}, x) ** 2)))
    for a, b in zip(
      jax.tree.leaves(g_plain(variables["params"])),
      jax.tree.leaves(g_ours(variables["params"])),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)


def _train(model, variables, x, y, steps, rng_key=3, lr=0.05):
  opt = optax.sgd(lr)
  params, state = variables["params"], opt.init(variables["params"])

  @jax.jit
  def step(params, state, i):
    def loss(p):
      out = model.apply(
        {**variables, "params": p},
        x,
        rngs={"feedback": jax.random.fold_in(jax.random.key(rng_key), i)},
      )
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    g = jax.grad(loss)(params)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state

  history = [params]
  for i in range(steps):
    params, state = step(params, state, i)
    history.append(params)
  return history


def _data():
  x = jax.random.normal(jax.random.key(0), (16, 8))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 3)
  return x, y


def test_usf_sn_and_init_scales_over_training():
  x, y = _data()
  for scale in ("sn", "init", "std", "none"):
    model = MLP(rule=rules.get("usf", scale=scale))
    variables = model.init(jax.random.key(1), x)
    history = _train(model, variables, x, y, 5)
    w0 = np.asarray(history[0]["Dense_1"]["kernel"])
    for params in history[1:]:
      bs, _ = _feedback_matrices(model, {**variables, "params": params}, x)
      b, w = np.asarray(bs["Dense_1"]["B"]), np.asarray(params["Dense_1"]["kernel"])
      nz = w != 0
      assert np.all(np.sign(b[nz]) == np.sign(w[nz]))
      s = np.abs(b).max()
      if scale == "sn":
        np.testing.assert_allclose(np.linalg.norm(b), np.linalg.norm(w), rtol=1e-5)
      elif scale == "init":  # s fixed at ||W_0|| / ||sign W_0|| while W changes
        np.testing.assert_allclose(s, np.linalg.norm(w0) / np.sqrt(w0.size), rtol=1e-5)
      elif scale == "std":
        np.testing.assert_allclose(s, np.std(w0), rtol=1e-5)
      else:
        assert s == 1.0
    assert not np.allclose(history[-1]["Dense_1"]["kernel"], w0)


def test_brsf_changes_per_step_and_is_reproducible():
  x, _ = _data()
  model = MLP(rule="brsf")
  variables = model.init(jax.random.key(1), x)
  b0, _ = _feedback_matrices(model, variables, x, step=0)
  b0_again, _ = _feedback_matrices(model, variables, x, step=0)
  b1, _ = _feedback_matrices(model, variables, x, step=1)
  np.testing.assert_array_equal(b0["Dense_0"]["B"], b0_again["Dense_0"]["B"])
  assert not np.allclose(b0["Dense_0"]["B"], b1["Dense_0"]["B"])
  # Each layer draws its own magnitudes.
  assert not np.allclose(np.abs(b0["Dense_0"]["B"][:6, :3]), np.abs(b0["Dense_1"]["B"]))
  with pytest.raises(ValueError, match="rngs=.*feedback"):
    model.apply(variables, x)


def test_brsf_identical_on_8_devices():
  assert jax.device_count() == 8
  x = jax.random.normal(jax.random.key(0), (16, 8))
  model = MLP(rule="brsf")
  variables = model.init(jax.random.key(1), x)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))

  def grads(x):
    return jax.grad(
      lambda p: jnp.sum(
        model.apply({**variables, "params": p}, x, rngs={"feedback": jax.random.key(5)}) ** 2
      )
    )(variables["params"])

  g1 = jax.jit(grads)(x)
  g8 = jax.jit(grads)(xs)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # B itself, computed under sharding, is the same array on every device.
  def feedback(x):
    with layers.capture_feedback():
      _, st = model.apply(
        variables, x, rngs={"feedback": jax.random.key(5)}, mutable=[layers.FEEDBACK_MATRICES]
      )
    return st[layers.FEEDBACK_MATRICES]["Dense_0"]["B"]

  b8 = jax.jit(feedback, out_shardings=NamedSharding(mesh, PartitionSpec()))(xs)
  shards = [np.asarray(s.data) for s in b8.addressable_shards]
  assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards)
  np.testing.assert_array_equal(shards[0], feedback(x))


@pytest.mark.parametrize("rule", ["fa", "frsf", "usf"])
def test_fixed_feedback_untouched_by_optimizer_and_decay(rule):
  x, y = _data()
  model = MLP(rule=rules.get(rule, **({"scale": "init"} if rule == "usf" else {})))
  variables = model.init(jax.random.key(1), x)
  opt = optax.adamw(0.05, weight_decay=0.1)
  params, state = variables["params"], opt.init(variables["params"])
  # The feedback collection is not a parameter: the optimizer state never holds it.
  assert jax.tree.structure(state[0].mu) == jax.tree.structure(params)
  for i in range(5):
    g = jax.grad(
      lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({**variables, "params": p}, x), y
      ).mean()
    )(params)
    u, state = opt.update(g, state, params)
    params = optax.apply_updates(params, u)
    bs, _ = _feedback_matrices(model, {**variables, "params": params}, x, step=i)
    if rule == "fa":
      np.testing.assert_array_equal(bs["Dense_0"]["B"], variables["feedback"]["Dense_0"]["kernel"])
  for a, b in zip(
    jax.tree.leaves(variables["feedback"]),
    jax.tree.leaves(model.init(jax.random.key(1), x)["feedback"]),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


def test_per_layer_override_and_missing_feedback_error():
  x, _ = _data()
  model = MLP(rule=rules.get("fa", overrides={"Dense_1": "bp"}))
  variables = model.init(jax.random.key(1), x)
  assert set(variables["feedback"]) == {"Dense_0"}
  bs, _ = _feedback_matrices(model, variables, x)
  np.testing.assert_array_equal(bs["Dense_1"]["B"], variables["params"]["Dense_1"]["kernel"])
  with pytest.raises(ValueError, match="feedback"):
    model.apply({"params": variables["params"]}, x)


def test_every_rule_lists_what_a_layer_may_resolve_to():
  from fajax.train import mirror, step

  inner = rules.get("sa", overrides={"*/head": "kp"})
  rule = rules.get("fa", overrides={"Dense_1": "kp", "block/*": inner})
  assert rule.every_rule() == (rule, rules.get("kp"), inner)  # kp once, in order of appearance
  assert rules.get("usf").every_rule() == (rules.get("usf"),)
  assert step.uses_kp(rule) and step.uses_learned_feedback(rule)
  assert not step.uses_kp("fa") and not step.uses_learned_feedback(rules.get("fa", overrides={}))
  assert mirror.needs_data(rule) == [] and mirror.has_mirror_phase(rule)
  both = rules.get("aa", overrides={"x": "ia", "y": rules.get("aa", alpha=2.0), "z": "wm"})
  assert mirror.needs_data(both) == ["aa", "ia"] and not mirror.has_mirror_phase(both)


def test_convert_runs_plain_flax_model_under_rule():
  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x)).reshape(x.shape[0], -1)
      return nn.Dense(3)(x)

  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  plain_vars = Plain().init(jax.random.key(1), x)
  converted = fajax.convert(Plain(), "fa")
  variables = converted.init(jax.random.key(1), x)
  # Same parameter paths as the plain model, plus the feedback collection.
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(plain_vars["params"])
  assert set(variables["feedback"]) == {"Conv_0", "Dense_0"}
  np.testing.assert_allclose(
    converted.apply(variables, x), Plain().apply({"params": variables["params"]}, x), rtol=1e-6
  )
  # The converted model's gradients are FA's: equal to fajax layers under FA with the same B.
  ours = CNNLike()
  g_conv = jax.grad(lambda p: jnp.sum(converted.apply({**variables, "params": p}, x) ** 2))(
    variables["params"]
  )
  g_ours = jax.grad(lambda p: jnp.sum(ours.apply({**variables, "params": p}, x) ** 2))(
    variables["params"]
  )
  for a, b in zip(jax.tree.leaves(g_conv), jax.tree.leaves(g_ours), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  g_bp = jax.grad(lambda p: jnp.sum(Plain().apply({"params": p}, x) ** 2))(variables["params"])
  assert not np.allclose(g_conv["Conv_0"]["kernel"], g_bp["Conv_0"]["kernel"])


class CNNLike(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(fajax.Conv(4, (3, 3), strides=2, rule="fa")(x)).reshape(x.shape[0], -1)
    return fajax.Dense(3, rule="fa")(x)


def test_force_backprop_gives_true_gradient():
  x, _ = _data()
  fa_model = MLP(rule="fa")
  variables = fa_model.init(jax.random.key(1), x)
  loss = lambda m: lambda p: jnp.sum(m.apply({**variables, "params": p}, x) ** 2)
  with layers.force_backprop():
    g_forced = jax.grad(loss(fa_model))(variables["params"])
  g_bp = jax.grad(loss(MLP(rule="bp")))(variables["params"])
  g_fa = jax.grad(loss(fa_model))(variables["params"])
  for a, b in zip(jax.tree.leaves(g_forced), jax.tree.leaves(g_bp), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(g_fa["Dense_0"]["kernel"], g_bp["Dense_0"]["kernel"])
