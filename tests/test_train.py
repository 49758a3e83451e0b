"""Tests of the trainer (fajax.train): config checks, sharding, resume, failure handling, dry run.

conftest.py gives 8 fake CPU devices. Runs use the embedded `digits` set (8x8) and a tiny MLP
injected through `model=` so that each run compiles in about a second.
"""

import glob
import gzip
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fajax
from fajax import data as data_lib
from fajax import train
from fajax.train import build as build_lib
from fajax.train import checkpoint as checkpoint_lib
from fajax.train import loop as loop_lib
from fajax.train import mesh as mesh_lib
from fajax.train import metrics as metrics_lib
from fajax.train import optim, periodic


@pytest.fixture(autouse=True, scope="module")
def compilation_cache(tmp_path_factory):
  """Shares compiled steps between the runs of this module (resumed runs compile the same HLO)."""
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  saved = {n: jax.config.values[n] for n in names}
  values = (str(tmp_path_factory.mktemp("jax_cache")), 0.0, 0)
  for name, value in zip(names, values, strict=True):
    jax.config.update(name, value)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


class TinyNet(nn.Module):
  """digits 8x8 -> 16 -> classes, optional batch norm and dropout; built like the registry."""

  num_classes: int
  rule: object = None
  dtype: object = jnp.float32
  batch_norm: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = x.reshape((x.shape[0], -1)).astype(self.dtype) / 16.0
    x = fajax.Dense(16, rule=self.rule, dtype=self.dtype)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return fajax.Dense(self.num_classes, rule=self.rule, dtype=self.dtype)(x).astype(jnp.float32)


def tiny_config(**overrides):
  c = train.default_config()
  c.dataset = "digits"
  c.model = "mnist_net"  # Unused with an injected model; must still be a valid name.
  c.batch_size = 32
  c.num_steps = 6
  c.learning_rate = 0.1
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 0
  c.progress_bar = False
  c.update(overrides)
  return c


def run(config, workdir, model=TinyNet, **kwargs):
  return train.train_and_evaluate(config, str(workdir), model=model, **kwargs)


def records(workdir, split="train"):
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  return [r for r in metrics_lib.read_metrics(path, drop_timing=True) if r["split"] == split]


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def assert_trees_equal(a, b):
  a, b = host(a), host(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# -- Config checks --------------------------------------------------------------------------------


def test_default_config_is_valid():
  train.validate(train.default_config())


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("rule", "magic", "choose one of"),
    ("optimizer", "rmsprop", "'sgd', 'momentum', 'nesterov', 'adam', 'adamw'"),
    ("lr_schedule", "linear", "'constant', 'cosine', 'warmup_cosine', 'step'"),
    ("constraints", "ei,sparse", "ei, const, batch_manhattan"),
    ("on_nan", "ignore", "'stop', 'skip'"),
    ("dtype", "float16", "'float32', 'bfloat16'"),
    ("batch_size", 0, "integer >= 1"),
    ("learning_rate", float("nan"), "finite number"),
    ("mesh", {"data": 0}, "positive axis sizes"),
    ("mesh", {"batch": 8}, "axes from"),
    ("num_epochs", 3.0, "exactly one of num_steps and num_epochs"),
    ("dataset", "imagenet22k", "choose one of"),
    ("model", "transformer", "choose one of"),
    ("warmup_steps", 5000, "fewer than num_steps"),
    ("profile_steps", -1, "integer >= 0"),
  ],
)
def test_validate_names_the_field_and_choices(field, value, expected):
  config = train.default_config()
  config[field] = value
  with pytest.raises(ValueError) as info:
    train.validate(config)
  message = str(info.value)
  assert message.startswith("config.")
  assert (f"config.{field}" in message) or field == "num_epochs"
  assert expected in message


def test_bad_config_is_refused_before_anything_is_written(tmp_path):
  config = tiny_config(optimizer="lbfgs")
  with pytest.raises(ValueError, match=r"config\.optimizer = 'lbfgs' is not valid"):
    run(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_batch_must_split_over_the_data_axis():
  with pytest.raises(ValueError, match=r"config\.batch_size = 12 .* 8 devices of the mesh axis"):
    build_lib.build(tiny_config(batch_size=12), model=TinyNet)


def test_feedback_memory_budget_is_checked_before_compiling():
  # dfa's D for the hidden layer is [10 classes, 16 units] float32: 640 bytes.
  config = tiny_config(rule="dfa", feedback_memory_budget_gb=1e-7)
  with pytest.raises(ValueError, match=r"feedback_memory_budget_gb"):
    build_lib.build(config, model=TinyNet)
  config.feedback_memory_budget_gb = 1e-6  # 1073 bytes.
  build_lib.build(config, model=TinyNet)


def test_epochs_are_converted_with_the_training_set_size():
  # digits has 1433 training examples: 2 epochs of batch 32 are ceil(2866 / 32) = 90 steps.
  assert data_lib.info("digits").num_train == 1433
  exp = build_lib.build(tiny_config(num_steps=None, num_epochs=2.0), model=TinyNet)
  assert exp.num_steps == 90


def test_schedules_by_hand():
  config = tiny_config(lr_schedule="warmup_cosine", warmup_steps=10, learning_rate=1.0)
  schedule = optim.make_schedule(config, num_steps=110)
  np.testing.assert_allclose(
    [schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
    [0.0, 0.5, 1.0, 0.5, 0.0],
    atol=1e-6,
  )
  config = tiny_config(lr_schedule="step", lr_boundaries=(0.5, 0.75), learning_rate=1.0)
  schedule = optim.make_schedule(config, num_steps=100)
  values = [schedule(49), schedule(50), schedule(75)]
  np.testing.assert_allclose(values, [1.0, 0.1, 0.01], rtol=1e-6)


@pytest.mark.parametrize("on,bias_decays", [("kernels", False), ("all", True)])
def test_weight_decay_touches_kernels_unless_all(on, bias_decays):
  config = tiny_config(weight_decay=0.5, weight_decay_on=on, learning_rate=0.1)
  tx = optim.make_optimizer(config, optim.make_schedule(config, 10))
  params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # One sgd step on a zero gradient with L2 decay: w <- w - lr * wd * w = 0.95 w.
  np.testing.assert_allclose(new["Dense_0"]["kernel"], 0.95)
  np.testing.assert_allclose(new["Dense_0"]["bias"], 0.95 if bias_decays else 1.0)


def test_mesh_shapes():
  assert mesh_lib.mesh_shape({"data": -1, "model": 1}, 8) == (8, 1)
  assert mesh_lib.mesh_shape({"data": -1, "model": 2}, 8) == (4, 2)
  assert mesh_lib.mesh_shape({"data": 3}, 8) == (3, 1)
  with pytest.raises(ValueError, match="needs 16 devices"):
    mesh_lib.mesh_shape({"data": 16}, 8)
  with pytest.raises(ValueError, match="must divide"):
    mesh_lib.mesh_shape({"data": -1, "model": 3}, 8)


# -- Sharding: 1 device vs 8 ----------------------------------------------------------------------


def step_losses(config, model=TinyNet):
  """Losses of the trainer's jitted, sharded step over config.num_steps steps, and the state."""
  exp = build_lib.build(config, model=model)
  state = exp.init(jax.random.PRNGKey(config.seed))
  batches = loop_lib.train_batches(exp, 0)
  losses = []
  for _ in range(exp.num_steps):
    state, metrics = exp.train_step(state, next(batches))
    losses.append(float(metrics["loss"]))
  return losses, state


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "brsf", "dfa"])
def test_one_device_and_eight_devices_give_the_same_losses(rule):
  losses = {}
  for n in (1, 8):
    config = tiny_config(rule=rule, mesh={"data": n, "model": 1}, num_steps=5)
    losses[n], state = step_losses(config)
    assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == n
  assert losses[1][-1] < losses[1][0]  # It learns.
  np.testing.assert_allclose(losses[8], losses[1], rtol=2e-5, atol=1e-6)


def test_model_axis_splits_kernels_and_keeps_the_losses():
  one, _ = step_losses(tiny_config(rule="fa", mesh={"data": 1, "model": 1}, num_steps=4))
  split, state = step_losses(tiny_config(rule="fa", mesh={"data": 4, "model": 2}, num_steps=4))
  kernel = state.params["Dense_0"]["kernel"]  # [64, 16]: 16 divides by 2, so it is split.
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  assert kernel.addressable_shards[0].data.shape == (64, 8)
  assert state.feedback["Dense_0"]["kernel"].sharding.spec == kernel.sharding.spec
  assert state.params["Dense_0"]["bias"].sharding.spec == jax.sharding.PartitionSpec()
  np.testing.assert_allclose(split, one, rtol=2e-5, atol=1e-6)


# -- Checkpoints, resume, determinism -------------------------------------------------------------


class Interrupt(Exception):
  pass


def _interrupt_at(step):
  def callback(s, state, metrics):
    if s == step:
      raise Interrupt(f"forced stop after step {s}")

  return callback


def _resume_config():
  # Everything that carries state across steps: batch norm, dropout, per-step feedback (brsf),
  # momentum, weight decay, a schedule, and evaluation between checkpoints.
  return tiny_config(
    rule="brsf",
    optimizer="momentum",
    weight_decay=1e-3,
    lr_schedule="cosine",
    num_steps=10,
    checkpoint_every=3,
    keep_checkpoints=2,
    eval_every=4,
    checkpoint_async=True,
  )


def test_interrupt_and_resume_is_bit_identical_and_runs_are_deterministic(tmp_path):
  model = lambda **kw: TinyNet(batch_norm=True, dropout=0.25, **kw)
  full = run(_resume_config(), tmp_path / "full", model=model)
  again = run(_resume_config(), tmp_path / "again", model=model)
  # Same config and seed: bit-identical metrics (timing fields aside) and parameters.
  assert records(tmp_path / "full") == records(tmp_path / "again")
  assert records(tmp_path / "full", "test") == records(tmp_path / "again", "test")
  assert_trees_equal(full.params, again.params)

  with pytest.raises(Interrupt):
    run(_resume_config(), tmp_path / "killed", model=model, callbacks=[_interrupt_at(7)])
  steps = checkpoint_lib.Checkpointer(str(tmp_path / "killed" / "checkpoints")).all_steps()
  assert steps == [3, 6]  # keep_checkpoints=2; step 7 was logged but never checkpointed.
  assert records(tmp_path / "killed")[-1]["step"] == 7

  resumed = run(_resume_config(), tmp_path / "killed", model=model)
  assert int(resumed.step) == 10
  for name in ("params", "feedback", "batch_stats", "opt_state"):
    assert_trees_equal(getattr(full, name), getattr(resumed, name))
  assert records(tmp_path / "killed") == records(tmp_path / "full")
  assert records(tmp_path / "killed", "test") == records(tmp_path / "full", "test")
  assert [r["step"] for r in records(tmp_path / "killed", "test")] == [4, 8, 10]


def _corrupt(step_dir):
  """Overwrites every file of a checkpoint with garbage of the same length."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "wb") as f:
        f.write(b"\x13" * max(size, 1))


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=2, rule="fa")
  final = host(run(config, tmp_path).params)
  _corrupt(tmp_path / "checkpoints" / "6")
  resumed = run(config, tmp_path)  # Restores step 4, warns about 6, trains steps 5 and 6 again.
  assert_trees_equal(final, resumed.params)
  assert sorted(os.listdir(tmp_path / "corrupt_checkpoints"))[0].startswith("6-")
  assert checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 4, 6]


def test_a_workdir_of_another_config_is_refused_and_kept(tmp_path):
  run(tiny_config(num_steps=2, rule="bp"), tmp_path)
  with pytest.raises(ValueError, match=r"different training state .* lacks feedback/Dense_0"):
    run(tiny_config(num_steps=2, rule="fa"), tmp_path)
  assert checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2]
  assert not (tmp_path / "corrupt_checkpoints").exists()


class PoisonedDigits:
  """fajax.data with NaN images in training batch `index` (a stand-in injected as `dataset=`)."""

  def __init__(self, index):
    self.index = index

  def info(self, name, **options):
    return data_lib.info(name, **options)

  def get(self, name, split, batch_size, *, start_step=0, **kwargs):
    batches = data_lib.get(name, split, batch_size, start_step=start_step, **kwargs)
    if split != "train":
      yield from batches
      return
    for k, batch in enumerate(batches, start=start_step):
      if k == self.index:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      yield batch


def test_nan_loss_stops_with_the_step_and_a_restorable_checkpoint(tmp_path):
  config = tiny_config(num_steps=8, checkpoint_every=3, rule="fa")
  with pytest.raises(train.NonFiniteLossError) as info:
    run(config, tmp_path, dataset=PoisonedDigits(index=4))
  message = str(info.value)
  assert message.startswith("Loss became non-finite at step 5; the last good checkpoint (step 4)")
  assert "config.on_nan='skip'" in message
  assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4]
  exp = build_lib.build(config, model=TinyNet)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.all_steps() == [3, 4]
  state, meta = ckpt.restore_latest(exp.abstract_state)
  assert meta["step"] == 4 and int(state.step) == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(host(state.params)))
  # The saved state is the one an unpoisoned run has after 4 steps.
  clean = run(tiny_config(num_steps=4, rule="fa"), tmp_path / "clean")
  assert_trees_equal(clean.params, state.params)


def test_nan_loss_skip_drops_the_update_and_continues(tmp_path):
  config = tiny_config(num_steps=6, on_nan="skip", rule="fa", lr_schedule="cosine")
  state = run(config, tmp_path, dataset=PoisonedDigits(index=4))
  logged = records(tmp_path)
  # The dropped update does not advance the optimizer's schedule: the step after it uses (and
  # logs, and gives Kolen-Pollack) the rate the skipped step would have used.
  rates = [r["learning_rate"] for r in logged]
  assert rates[5] == rates[4] and len(set(rates[:5])) == 5
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
  assert logged[4]["loss"] is None  # NaN is written as null: metrics.jsonl stays strict JSON.
  assert [r["skipped_steps"] for r in logged] == [0, 0, 0, 0, 1, 1]
  assert int(state.skipped) == 1 and int(state.step) == 6
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(host(state.params)))


# -- Rules that need the trainer: Kolen-Pollack, diagnostics --------------------------------------


def test_kolen_pollack_feedback_converges_geometrically(tmp_path):
  # With sgd and L2 weight decay wd at rate lr, dB = dW - lr*wd*(B - W), so B - W shrinks by
  # exactly (1 - lr*wd) per step whatever the gradients are.
  lr, wd, steps = 0.1, 0.5, 5
  config = tiny_config(rule="kp", learning_rate=lr, weight_decay=wd, num_steps=steps)
  initial = host(build_lib.build(config, model=TinyNet).init(jax.random.PRNGKey(config.seed)))
  final = host(run(config, tmp_path))
  for layer in ("Dense_0", "Dense_1"):
    gap0 = initial.feedback[layer]["kernel"] - initial.params[layer]["kernel"]
    gap = final.feedback[layer]["kernel"] - final.params[layer]["kernel"]
    np.testing.assert_allclose(gap, gap0 * (1 - lr * wd) ** steps, atol=2e-6)
    assert np.abs(gap0).max() > 0.1


def test_constraints_and_overrides_from_the_config_are_applied(tmp_path):
  config = tiny_config(rule="fa", overrides={"Dense_1": "bp"}, constraints="ei, const")
  config.update(learning_rate=2.0, num_steps=3)
  rule = build_lib.make_rule(config)
  assert rule.resolve("Dense_0").name == "fa" and rule.resolve("Dense_1").name == "bp"
  initial = host(build_lib.build(config, model=TinyNet).init(jax.random.PRNGKey(config.seed)))
  final = host(run(config, tmp_path))
  assert "Dense_1" not in final.feedback  # bp layers keep no feedback matrix.
  for layer in ("Dense_0", "Dense_1"):
    w0, w = initial.params[layer]["kernel"], final.params[layer]["kernel"]
    assert not np.allclose(w, w0)
    assert np.all(w * np.sign(w0) >= 0)  # E/I: no entry changed sign.
    np.testing.assert_allclose(np.linalg.norm(w), np.linalg.norm(w0), rtol=1e-5)  # Const.


def test_alignment_diagnostics_are_logged_every_n_steps(tmp_path):
  config = tiny_config(rule="fa", num_steps=4, log_every=1, diagnostics_every=2)
  run(config, tmp_path)
  logged = {r["step"]: r for r in records(tmp_path)}
  key = "align/Dense_0/update_angle"
  assert key not in logged[1] and key not in logged[3]
  for step in (2, 4):
    assert 0.0 < logged[step][key] < 180.0
    assert logged[step]["align/Dense_1/delta_angle"] == pytest.approx(0.0, abs=1e-3)


def test_bp_diagnostics_are_zero_angles(tmp_path):
  run(tiny_config(rule="bp", num_steps=2, diagnostics_every=2), tmp_path)
  last = records(tmp_path)[-1]
  angles = [v for k, v in last.items() if k.endswith("update_angle")]
  assert len(angles) == 2 and max(angles) < 1e-2


# -- Run files ------------------------------------------------------------------------------------


def test_run_writes_config_events_and_metrics(tmp_path):
  run(tiny_config(num_steps=3, eval_every=3, checkpoint_every=3), tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["dataset"] == "digits" and saved["num_steps"] == 3
  assert json.loads((tmp_path / "run.json").read_text())["mesh"] == {"data": 8, "model": 1}
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  first = metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl"))[0]
  for key in ("loss", "top1_error", "learning_rate", "step_time", "images_per_sec", "grad_norm"):
    assert key in first
  (test,) = records(tmp_path, "test")
  assert test["num_examples"] == data_lib.info("digits").num_test
  assert 0.0 <= test["top1_error"] <= 1.0


def test_every_fires_at_multiples_of_n_and_on_the_last_step():
  assert [s for s in range(1, 11) if periodic.Every(4, 10)(s)] == [4, 8, 10]
  assert [s for s in range(1, 11) if periodic.Every(0, 10)(s)] == [10]  # 0: only at the end.
  assert [s for s in range(1, 9) if periodic.Every(4, 8)(s)] == [4, 8]


def _traced_steps(workdir) -> tuple[list[str], set[int]]:
  """The trace files under <workdir>/profile/ and the steps their "train" annotations mark."""
  files = glob.glob(os.path.join(workdir, "profile", "**", "*"), recursive=True)
  files = [f for f in files if f.endswith((".xplane.pb", "trace.json.gz"))]
  steps = set()
  for path in files:
    if path.endswith("perfetto_trace.json.gz"):
      with gzip.open(path) as f:
        trace = json.load(f)
      events = trace["traceEvents"] if isinstance(trace, dict) else trace
      steps |= {int(e["args"]["step_num"]) for e in events if e.get("name") == "train"}
  return files, steps


def test_profile_steps_trace_the_steps_after_the_first(tmp_path):
  run(tiny_config(num_steps=5, profile_steps=2), tmp_path / "on")
  files, steps = _traced_steps(tmp_path / "on")
  assert any(f.endswith(".xplane.pb") for f in files)  # TensorBoard's profile plugin.
  assert any(f.endswith("perfetto_trace.json.gz") for f in files)  # ui.perfetto.dev.
  assert all(os.path.getsize(f) > 0 for f in files)
  assert steps == {2, 3}  # Step 1 compiles; the trace covers the next profile_steps steps.
  run(tiny_config(num_steps=5), tmp_path / "off")
  assert not os.path.exists(tmp_path / "off" / "profile")


# -- Dry run --------------------------------------------------------------------------------------

# Multiply-accumulates of one forward pass at 224x224 (torchvision's counts).
FORWARD_MACS = {"alexnet": 0.714e9, "resnet50": 4.09e9}


@pytest.mark.parametrize(
  "model,mesh", [("alexnet", {"data": 4, "model": 2}), ("resnet50", {"data": 8, "model": 1})]
)
def test_dry_run_imagenet_on_eight_devices(model, mesh):
  config = train.default_config()
  config.update(model=model, dataset="imagenet2012", batch_size=8, rule="usf")
  config.dataset_options = {"image_size": 224}
  config.mesh = mesh
  report = train.dry_run(config)
  assert report["num_devices"] == 8 and report["mesh"] == mesh
  params_bytes = 4 * report["num_params"]
  memory = report["memory_per_device"]
  assert memory["total"] >= memory["argument"] > 224 * 224 * 3 * 4  # At least one image row.
  if mesh["model"] == 1:  # Replicated parameters are an argument of every device.
    assert memory["argument"] >= params_bytes
  else:  # AlexNet's kernels all have even output widths: split in two, half the bytes each.
    assert memory["argument"] < 0.55 * params_bytes
    assert report["shardings"]["state/params/fc1/kernel"].endswith("P(None, 'model')")
    assert report["shardings"]["state/params/fc1/bias"].endswith("P()")
  # A train step costs about 3 forward passes (forward, input and weight cotangents), 2 FLOPs a MAC.
  per_image = report["flops_per_step"] / config.batch_size
  assert 2.5 < per_image / (2 * FORWARD_MACS[model]) < 3.3
  assert report["shardings"]["batch/image"].endswith("P('data',)")
  assert report["shardings"]["state/params/head/bias"].endswith("P()")
  assert "per device" in train.format_report(report)
