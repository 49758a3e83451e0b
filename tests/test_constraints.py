"""Weight constraints (E/I, Const., Batch Manhattan) and the Kolen-Pollack feedback update."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fajax
from fajax import constraints


class MLP(nn.Module):
  rule: object = None

  @nn.compact
  def __call__(self, x):
    x = nn.relu(fajax.Dense(16, rule=self.rule)(x))
    return fajax.Dense(4, rule=self.rule)(x)


def _problem():
  x = jax.random.normal(jax.random.key(0), (32, 10))
  y = jax.random.randint(jax.random.key(1), (32,), 0, 4)
  return x, y


def _run(optimizer, steps, rule="bp", kp_decay=None):
  """Trains the MLP; returns the list of params (and feedback) after every step."""
  x, y = _problem()
  model = MLP(rule=rule)
  variables = model.init(jax.random.key(2), x)
  params, feedback = variables["params"], variables.get("feedback", {})
  state = optimizer.init(params)

  @jax.jit
  def step(params, feedback, state):
    def loss(p):
      out = model.apply({"params": p, "feedback": feedback}, x)
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    g = jax.grad(loss)(params)
    updates, state = optimizer.update(g, state, params)
    if kp_decay is not None:
      feedback = constraints.kolen_pollack_update(rule, feedback, params, updates, kp_decay)
    return optax.apply_updates(params, updates), feedback, state

  history = [(params, feedback)]
  for _ in range(steps):
    params, feedback, state = step(params, feedback, state)
    history.append((params, feedback))
  return history


def test_kernel_mask():
  params = {"a": {"kernel": 1.0, "bias": 2.0}, "bn": {"scale": 3.0}}
  assert constraints.kernel_mask(params) == {
    "a": {"kernel": True, "bias": False},
    "bn": {"scale": False},
  }


def test_sign_constraint_keeps_initial_signs_for_100_steps():
  opt = optax.chain(optax.sgd(0.5), constraints.sign_constraint())
  history = _run(opt, 100)
  p0 = history[0][0]
  flipped_to_zero = 0
  for params, _ in history[1:]:
    for name in ("Dense_0", "Dense_1"):
      s0, w = np.sign(p0[name]["kernel"]), np.asarray(params[name]["kernel"])
      assert np.all(w * s0 >= 0), "a kernel entry changed sign"
      flipped_to_zero += int(np.sum(w == 0))
  assert flipped_to_zero > 0  # the constraint was active: some updates were clipped at zero
  # Biases are untouched by the constraint: with a large lr some change sign.
  b0, b = np.asarray(p0["Dense_0"]["bias"]), np.asarray(history[-1][0]["Dense_0"]["bias"])
  assert np.any(b != b0)


def test_sign_constraint_projection_by_hand():
  opt = constraints.sign_constraint()
  params = {"kernel": jnp.array([1.0, -1.0, 2.0, 0.0]), "bias": jnp.array([1.0])}
  state = opt.init(params)
  updates = {"kernel": jnp.array([-3.0, 0.5, -1.0, -5.0]), "bias": jnp.array([-3.0])}
  u, _ = opt.update(updates, state, params)
  new = optax.apply_updates(params, u)
  np.testing.assert_array_equal(new["kernel"], [0.0, -0.5, 1.0, -5.0])
  np.testing.assert_array_equal(new["bias"], [-2.0])


def test_norm_constraint_keeps_frobenius_norm():
  opt = optax.chain(optax.adam(0.05), constraints.norm_constraint())
  history = _run(opt, 50)
  p0 = history[0][0]
  for params, _ in history[1:]:
    for name in ("Dense_0", "Dense_1"):
      n0 = np.linalg.norm(np.asarray(p0[name]["kernel"], np.float64))
      n = np.linalg.norm(np.asarray(params[name]["kernel"], np.float64))
      assert abs(n - n0) <= 1e-6 * n0
  assert not np.allclose(history[-1][0]["Dense_0"]["kernel"], p0["Dense_0"]["kernel"])


def test_batch_manhattan_uses_gradient_sign_on_kernels_only():
  opt = optax.chain(constraints.batch_manhattan(), optax.sgd(0.1))
  params = {"kernel": jnp.ones(3), "bias": jnp.ones(1)}
  grads = {"kernel": jnp.array([0.01, -5.0, 0.0]), "bias": jnp.array([0.5])}
  u, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(u["kernel"], [-0.1, 0.1, 0.0])
  np.testing.assert_allclose(u["bias"], [-0.05])


def test_kolen_pollack_update_by_hand_and_skips_non_kp_layers():
  rule = fajax.rules.get("kp", overrides={"Dense_1": "fa"})
  fb = {"Dense_0": {"kernel": jnp.full((2,), 3.0)}, "Dense_1": {"kernel": jnp.full((2,), 3.0)}}
  params = {
    "Dense_0": {"kernel": jnp.ones(2), "bias": jnp.ones(1)},
    "Dense_1": {"kernel": jnp.ones(2), "bias": jnp.ones(1)},
  }
  updates = jax.tree.map(lambda p: -0.5 * jnp.ones_like(p), params)
  new = constraints.kolen_pollack_update(rule, fb, params, updates, decay=0.1)
  # B + dW - decay * (B - W) = 3 - 0.5 - 0.1 * (3 - 1) = 2.3
  np.testing.assert_allclose(new["Dense_0"]["kernel"], [2.3, 2.3], rtol=1e-6)
  np.testing.assert_array_equal(new["Dense_1"]["kernel"], fb["Dense_1"]["kernel"])


def test_kolen_pollack_brings_b_to_w():
  lr, wd = 0.1, 0.05
  opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
  history = _run(opt, 60, rule="kp", kp_decay=lr * wd)
  dist = [
    float(np.linalg.norm(np.asarray(fb["Dense_1"]["kernel"]) - np.asarray(p["Dense_1"]["kernel"])))
    for p, fb in history
  ]
  assert dist[-1] < 0.8 * dist[0]
  assert all(b <= a + 1e-6 for a, b in zip(dist, dist[1:], strict=False))
  # Without the KP update B stays where it was: the shrinkage is the update's doing.
  history_fa = _run(opt, 60, rule="kp")
  np.testing.assert_array_equal(
    history_fa[-1][1]["Dense_1"]["kernel"], history_fa[0][1]["Dense_1"]["kernel"]
  )
