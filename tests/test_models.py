"""The model zoo: parameter counts, one train step under every rule, bp == jax.grad, pooling.

Speed (the file should stay around 2 minutes on 2 CPU cores; XLA compilation is the cost):
- Test-only input sizes: the ImageNet ResNets run at 32x32 and the AlexNets at 64x64 (the
  smallest their downsampling allows); their reference resolution (224x224) is only traced
  (jax.eval_shape), never run. Parameter counts come from jax.eval_shape.
- One compilation per model: a single jitted function initializes and trains one step of every
  case of the model (plain Flax layers, bp, the other rules). The forward pass and the
  initialization are the same in every case and XLA computes them once; what the tests check is
  reduced to scalars inside the function. Keys use the `unsafe_rbg` PRNG, which compiles and
  runs far faster than threefry on CPU (a test-only choice: models take whatever keys they get).
  The big nets' bp == jax.grad check starts both models from variables drawn with numpy, which
  spares compiling an initialization (about half of that check's time for ResNet-50).
- Small nets (mnist_net, lenet, cifar10_arch1, imagenet_arch1, cifar10_arch2) train under every
  registered rule. The big nets (ResNets, AlexNets) train one step in which the layer-local rules
  (those that only choose B) are spread over their layers through per-layer overrides, so every
  such rule trains some conv and dense layers of the model in one compilation (resnet50 and
  resnet56, the slowest to compile, only trace that step; their layer types are those of
  resnet18 and resnet20); bp is run by the bp == jax.grad test. Rules that act beyond their
  layer (direct feedback: dfa, densefa, ...) run jitted on resnet20 and are traced on the other
  big nets. A rule whose feedback would not fit in FEEDBACK_BUDGET_GIB on a model (densefa's
  matrices grow with the square of the activation size) is skipped, with the reason.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fajax
from fajax import models, rules
from fajax.models import blocks, stats

KEY_IMPL = "unsafe_rbg"
BATCH = 2
FEEDBACK_BUDGET_GIB = 0.5
SMALL = ["mnist_net", "lenet", "cifar10_arch1", "imagenet_arch1", "cifar10_arch2"]
BIG = ["resnet20", "resnet56", "resnet18", "resnet50", "alexnet", "imagenet_arch2"]
# Test-only resolutions for the ImageNet models (see the module docstring).
TEST_SIZE = {"resnet18": 32, "resnet50": 32, "alexnet": 64, "imagenet_arch2": 64}
WITH_BATCH_NORM = {
  "cifar10_arch2",
  "imagenet_arch2",
  "resnet18",
  "resnet20",
  "resnet50",
  "resnet56",
}
ALL_RULES = rules.names()


def _is_local(name):
  """A rule that only chooses each layer's B (no input/output hooks): it can be mixed per layer."""
  cls = type(rules.get(name))
  return cls.input_hook is rules.Rule.input_hook and cls.output_hook is rules.Rule.output_hook


LOCAL_RULES = [r for r in ALL_RULES if _is_local(r)]
NONLOCAL_RULES = [r for r in ALL_RULES if not _is_local(r)]
MIXED = "mixed"  # label of the big nets' step with the layer-local rules spread over the layers
MIXED_RULES = [r for r in LOCAL_RULES if r != "bp"]  # bp runs on its own (== jax.grad test)
JITTED_DIRECT = "resnet20"  # the big net on which direct-feedback rules are compiled and run
TRACED_MIXED = {"resnet50", "resnet56"}  # big nets whose mixed-rule step is traced, not compiled
FIRST_LAYER = "conv1"  # every model's first layer


def _key(seed):
  return jax.random.key(seed, impl=KEY_IMPL)


def _test_shape(name):
  return models.input_shape(name, TEST_SIZE.get(name))


def _batch(name, num_classes=10):
  # numpy draws: eager jax.random calls would each compile for their shape.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, *_test_shape(name))), jnp.float32)
  y = jnp.arange(BATCH, dtype=jnp.int32) % num_classes
  return x, y


def _kernel_paths(name):
  shapes = stats.variable_shapes(models.get(name, num_classes=10), _test_shape(name))
  paths = []
  for path, _ in jax.tree_util.tree_leaves_with_path(shapes["params"]):
    keys = [str(p.key) for p in path]
    if keys[-1] == "kernel":
      paths.append("/".join(keys[:-1]))
  return paths


def _mixed_rule(name, rule_names):
  """bp, with the rules in `rule_names` assigned round-robin to the model's layers."""
  overrides = {path: rule_names[i % len(rule_names)] for i, path in enumerate(_kernel_paths(name))}
  return rules.get("bp", overrides=overrides)


def _over_budget(model, name, rule):
  """Why `rule` cannot run on `name` here (its feedback matrices are too big), or None."""
  report = stats.feedback_memory(model, (1, *_test_shape(name)), train=False)
  if report.gib_feedback > FEEDBACK_BUDGET_GIB:
    return (
      f"{rule} on {name} needs {report.gib_feedback:.1f} GiB of feedback matrices "
      f"(budget {FEEDBACK_BUDGET_GIB} GiB)."
    )
  return None


def _assert_refused_by_budget(model, name):
  """An over-budget configuration fails at once with the budget's one-sentence error."""
  with pytest.raises(ValueError, match="over the budget of"):
    stats.check_feedback_budget(model, (1, *_test_shape(name)), FEEDBACK_BUDGET_GIB, train=False)


def _loss_fn(model, variables, x, y, key):
  def loss(params):
    logits, state = fajax.apply(
      model,
      {**variables, "params": params},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.fold_in(key, 1), "feedback": jax.random.fold_in(key, 2)},
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, state)

  return loss


def _step(model, variables, x, y, key):
  """One SGD train step from `variables`: loss, logits, grads, updated params and statistics."""
  grad_fn = jax.value_and_grad(_loss_fn(model, variables, x, y, key), has_aux=True)
  (loss, (logits, state)), grads = grad_fn(variables["params"])
  tx = optax.sgd(0.1)
  updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
  new_params = optax.apply_updates(variables["params"], updates)
  return dict(
    variables=variables, loss=loss, logits=logits, grads=grads, params=new_params, state=state
  )


def _init_and_step(model, x, y, key):
  """model.init and one train step, traced together."""
  variables = model.init({"params": key, "dropout": key}, x, train=False)
  return _step(model, variables, x, y, key)


def _numpy_variables(name, model):
  """Variables for `model` drawn with numpy from `model.init`'s shapes: no init to compile.

  Kernels N(0, 2 / fan_in), biases and BN offsets N(0, 0.1^2), BN scales 1 + N(0, 0.1^2),
  running means 0 and variances 1. Only for rules without feedback state (bp, plain layers).
  """
  shapes = stats.variable_shapes(model, _test_shape(name), batch_size=BATCH)
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    kind = str(path[-1].key)
    if kind == "kernel":
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / math.prod(leaf.shape[:-1]))
    elif kind == "scale":
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    elif kind == "var":
      value = np.ones(leaf.shape)
    elif kind == "mean":
      value = np.zeros(leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _flat(tree):
  return {
    "/".join(str(getattr(k, "key", k)) for k in path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _summary(out, reference=None):
  """What the tests check about one train step, reduced inside the jitted function (scalars and
  logits only, so that a group of steps on a 57M-parameter AlexNet stays small in memory)."""
  grads, old, new = out["grads"], out["variables"]["params"], out["params"]
  before = jax.tree.leaves(out["variables"].get("batch_stats", {}))
  after = jax.tree.leaves(out["state"].get("batch_stats", {}))
  summary = dict(
    loss=out["loss"],
    logits=out["logits"],
    grads_finite=jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])),
    # The error reached both ends of the network: the classifier and the first layer learn.
    head_grad=jnp.abs(grads["head"]["kernel"]).sum(),
    first_grad=jnp.abs(grads[FIRST_LAYER]["kernel"]).sum(),
    first_changed=jnp.any(old[FIRST_LAYER]["kernel"] != new[FIRST_LAYER]["kernel"]),
    num_batch_stats=len(after),
    batch_stats_changed=jnp.any(
      jnp.array([jnp.any(a != b) for a, b in zip(before, after, strict=True)])
    )
    if after
    else jnp.array(False),
  )
  if reference is not None:  # max |ours - reference| of every compared leaf
    fields = ["variables", "logits", "loss", "grads", "state", "params"]
    ours = _flat({f: out[f] for f in fields})
    ref = _flat({f: reference[f] for f in fields})
    assert ours.keys() == ref.keys(), sorted(set(ours) ^ set(ref))
    summary["max_diff"] = {k: jnp.max(jnp.abs(ours[k] - ref[k])) for k in ours}
  return summary


def _check(name, label, summary, num_classes=10):
  where = f"{name} under {label}"
  assert summary["logits"].shape == (BATCH, num_classes), where
  assert summary["logits"].dtype == np.float32, where
  assert np.isfinite(summary["loss"]), where
  assert summary["grads_finite"], where
  assert summary["head_grad"] > 0 and summary["first_grad"] > 0, where
  assert summary["first_changed"], where
  if name in WITH_BATCH_NORM:
    assert summary["num_batch_stats"] > 0 and summary["batch_stats_changed"], where
  else:
    assert summary["num_batch_stats"] == 0, where


def _mixed_model(name):
  return models.get(name, num_classes=10, rule=_mixed_rule(name, MIXED_RULES))


def _check_traced(name, model):
  """Traces (jax.eval_shape) init and one train step: shapes and the rule's plumbing, no run."""
  x, y = _batch(name)
  out = jax.eval_shape(functools.partial(_init_and_step, model), x, y, _key(0))
  assert out["logits"].shape == (BATCH, 10) and out["logits"].dtype == jnp.float32
  assert out["loss"].shape == ()
  assert jax.tree.structure(out["grads"]) == jax.tree.structure(out["variables"]["params"])


@functools.cache
def _cases(name):
  """The models one compilation initializes and trains for `name`: {label: model}, and
  {rule: skip reason}.

  Small nets: "plain" (nn.Dense / nn.Conv) and every registered rule. Big nets: the layer-local
  rules mixed over the layers (unless traced only) and, on resnet20, every direct-feedback rule;
  their bp / plain pair runs in `_bp_steps`.
  """
  cases, skipped = {}, {}
  if name in SMALL:
    cases["plain"] = models.get(name, num_classes=10, dense=nn.Dense, conv=nn.Conv)
    wanted = ALL_RULES
    if name == "mnist_net":  # bfloat16 compute (float32 params and logits) trains too
      cases["usf_bf16"] = models.get(name, num_classes=10, rule="usf", dtype=jnp.bfloat16)
  else:
    if name not in TRACED_MIXED:
      cases[MIXED] = _mixed_model(name)
    wanted = NONLOCAL_RULES if name == JITTED_DIRECT else []
  for rule in wanted:
    model = models.get(name, num_classes=10, rule=rule)
    reason = _over_budget(model, name, rule)
    if reason:
      skipped[rule] = reason
    else:
      cases[rule] = model
  return cases, skipped


@functools.cache
def _train_steps(name):
  """One jitted function running init + one train step for every case of `name`.

  One compilation per model instead of one per rule: the forward pass and the initialization
  are the same for every rule, and XLA computes them once.
  """
  cases, _ = _cases(name)
  x, y = _batch(name)

  def run(x, y, key):
    outs = {label: _init_and_step(model, x, y, key) for label, model in cases.items()}
    return {
      label: _summary(out, outs["plain"] if label == "bp" else None) for label, out in outs.items()
    }

  return jax.device_get(jax.jit(run)(x, y, _key(0)))


@functools.cache
def _bp_steps(name):
  """{"plain": ..., "bp": ...} summaries of one train step of the plain-layer model and of the
  fajax model under bp, from the same variables."""
  if name in SMALL:  # already in the model's group, initialized in the jitted function
    steps = _train_steps(name)
    return {"plain": steps["plain"], "bp": steps["bp"]}
  # Big nets: the same numpy-drawn variables for both, so no initialization is compiled.
  plain = models.get(name, num_classes=10, dense=nn.Dense, conv=nn.Conv)
  bp = models.get(name, num_classes=10, rule="bp")
  x, y = _batch(name)

  def run(variables, x, y, key):
    ref = _step(plain, variables, x, y, key)
    return {"plain": _summary(ref), "bp": _summary(_step(bp, variables, x, y, key), ref)}

  return jax.device_get(jax.jit(run)(_numpy_variables(name, plain), x, y, _key(0)))


# ----------------------------------------------------------------------------- registry


def test_registry_names_shapes_and_errors():
  assert models.names() == sorted(
    [
      "alexnet",
      "cifar10_arch1",
      "cifar10_arch2",
      "imagenet_arch1",
      "imagenet_arch2",
      "lenet",
      "mnist_net",
      "resnet18",
      "resnet20",
      "resnet50",
      "resnet56",
    ]
  )
  assert set(SMALL) | set(BIG) == set(models.names())  # every model is trained below
  assert models.input_shape("mnist_net") == (28, 28, 1)
  assert models.input_shape("lenet") == (28, 28, 1)
  assert models.input_shape("cifar10_arch1") == (24, 24, 3)
  assert models.input_shape("cifar10_arch2") == (32, 32, 3)
  assert models.input_shape("imagenet_arch1") == (32, 32, 3)
  assert models.input_shape("imagenet_arch1", image_size=64) == (64, 64, 3)
  for name in ["imagenet_arch2", "alexnet", "resnet18", "resnet50"]:
    assert models.input_shape(name) == (224, 224, 3)
  for name in ["resnet20", "resnet56"]:
    assert models.input_shape(name) == (32, 32, 3)
  with pytest.raises(ValueError, match="Unknown model 'vgg16'.*mnist_net"):
    models.get("vgg16", num_classes=10)
  with pytest.raises(ValueError, match="Unknown option.*widht.*valid options are:.*dtype"):
    models.get("resnet20", num_classes=10, widht=2)
  with pytest.raises(ValueError, match="stage_sizes"):  # fixed by the registry entry
    models.get("resnet18", num_classes=10, stage_sizes=(1, 1, 1, 1))
  with pytest.raises(ValueError, match="Unknown model"):
    models.input_shape("nope")
  model = models.get("resnet20", num_classes=7, rule="fa", dtype=jnp.bfloat16)
  assert (model.num_classes, model.rule, model.dtype) == (7, "fa", jnp.bfloat16)
  assert models.get("imagenet_arch1").num_classes == 1000  # dataset default


def test_plain_flax_layers_refuse_a_rule():
  model = models.get("mnist_net", num_classes=10, rule="fa", dense=nn.Dense, conv=nn.Conv)
  with pytest.raises(ValueError, match="takes no `rule`.*fajax.convert"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_arch1_pooling_option_is_checked():
  model = models.get("cifar10_arch1", num_classes=10, pooling="3x3")
  with pytest.raises(ValueError, match="pooling must be one of 3x3s2, 2x2"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 24, 24, 3)))


# ----------------------------------------------------------------------------- parameter counts

# Hand-computed parameter counts: kernel h*w*in*out (+ bias out), BN scale+bias 2*C.
HAND_COUNTS = {
  # conv5x5x32, conv5x5x64 (SAME, 28 -> 14 -> 7), fc 7*7*64 -> 1024, fc 1024 -> 10.
  "mnist_net": (5 * 5 * 1 * 32 + 32)
  + (5 * 5 * 32 * 64 + 64)
  + (7 * 7 * 64 * 1024 + 1024)
  + (1024 * 10 + 10),
  # conv6 (pad 2: 28 -> 28 -> pool 14), conv16 (VALID: 10 -> pool 5), conv120 (1x1), fc84, fc10.
  "lenet": (5 * 5 * 1 * 6 + 6)
  + (5 * 5 * 6 * 16 + 16)
  + (5 * 5 * 16 * 120 + 120)
  + (120 * 84 + 84)
  + (84 * 10 + 10),
  # 24x24 crops: conv5x5x64 -> pool 12 -> conv5x5x64 -> pool 6; fc 6*6*64 -> 384 -> 192 -> 10.
  "cifar10_arch1": (5 * 5 * 3 * 64 + 64)
  + (5 * 5 * 64 * 64 + 64)
  + (6 * 6 * 64 * 384 + 384)
  + (384 * 192 + 192)
  + (192 * 10 + 10),
  # The same net on 32x32 downsampled ImageNet: 32 -> 16 -> 8; 1000 classes.
  "imagenet_arch1": (5 * 5 * 3 * 64 + 64)
  + (5 * 5 * 64 * 64 + 64)
  + (8 * 8 * 64 * 384 + 384)
  + (384 * 192 + 192)
  + (192 * 1000 + 1000),
  # 6 bias-free 3x3 convs each with BN (2C), 32 -> 4 after 3 pools; fc 4*4*256 -> 512 + BN, fc 10.
  "cifar10_arch2": (3 * 3 * 3 * 64 + 2 * 64)
  + (3 * 3 * 64 * 64 + 2 * 64)
  + (3 * 3 * 64 * 128 + 2 * 128)
  + (3 * 3 * 128 * 128 + 2 * 128)
  + (3 * 3 * 128 * 256 + 2 * 256)
  + (3 * 3 * 256 * 256 + 2 * 256)
  + (4 * 4 * 256 * 512 + 2 * 512)
  + (512 * 10 + 10),
  # torchvision AlexNet: convs with bias, fc 256*6*6 -> 4096 -> 4096 -> 1000.
  "alexnet": (11 * 11 * 3 * 64 + 64)
  + (5 * 5 * 64 * 192 + 192)
  + (3 * 3 * 192 * 384 + 384)
  + (3 * 3 * 384 * 256 + 256)
  + (3 * 3 * 256 * 256 + 256)
  + (256 * 6 * 6 * 4096 + 4096)
  + (4096 * 4096 + 4096)
  + (4096 * 1000 + 1000),
  # The same with BN after every conv / hidden fc (their biases dropped, BN scale+bias added).
  "imagenet_arch2": (11 * 11 * 3 * 64 + 2 * 64)
  + (5 * 5 * 64 * 192 + 2 * 192)
  + (3 * 3 * 192 * 384 + 2 * 384)
  + (3 * 3 * 384 * 256 + 2 * 256)
  + (3 * 3 * 256 * 256 + 2 * 256)
  + (256 * 6 * 6 * 4096 + 2 * 4096)
  + (4096 * 4096 + 2 * 4096)
  + (4096 * 1000 + 1000),
  # He et al. option A: stem conv3x3x16+BN; per stage n blocks of two 3x3 convs + BN each (the
  # first block of stages 2, 3 maps 16->32, 32->64); shortcuts have no parameters; fc 64 -> 10.
  "resnet20": (3 * 3 * 3 * 16 + 32)
  + 3 * 2 * (3 * 3 * 16 * 16 + 32)
  + (3 * 3 * 16 * 32 + 64)
  + (3 * 3 * 32 * 32 + 64)
  + 2 * 2 * (3 * 3 * 32 * 32 + 64)
  + (3 * 3 * 32 * 64 + 128)
  + (3 * 3 * 64 * 64 + 128)
  + 2 * 2 * (3 * 3 * 64 * 64 + 128)
  + (64 * 10 + 10),
}
PUBLISHED_COUNTS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "alexnet": 61_100_840}
APPROX_COUNTS = {"resnet20": 0.27e6, "resnet56": 0.85e6}  # He et al. 2016, Table 6


@pytest.mark.parametrize("name", models.names())
def test_parameter_counts(name):
  count = stats.param_count(name)
  if name in HAND_COUNTS:
    assert count == HAND_COUNTS[name]
  if name in PUBLISHED_COUNTS:
    assert count == PUBLISHED_COUNTS[name]
  if name in APPROX_COUNTS:
    assert round(count / 1e4) * 1e4 == APPROX_COUNTS[name]
  assert name in HAND_COUNTS or name in PUBLISHED_COUNTS or name in APPROX_COUNTS


@pytest.mark.parametrize("name", models.names())
def test_default_resolution_shapes_and_stable_names(name):
  """At the reference input size (traced only): logits [B, classes] float32, params float32 in
  bf16 mode, and the same parameter tree under bp, fa and with plain Flax layers."""
  shape = (1, *models.input_shape(name))
  shapes = {}
  for label, kw in {
    "bp": {},
    "fa": {"rule": "fa"},
    "plain": {"dense": nn.Dense, "conv": nn.Conv},
    "bf16": {"dtype": jnp.bfloat16},
  }.items():
    model = models.get(name, num_classes=5, **kw)
    shapes[label] = stats.variable_shapes(model, shape[1:])
    out = jax.eval_shape(
      functools.partial(model.apply, train=False), shapes[label], jnp.zeros(shape, jnp.float32)
    )
    assert out.shape == (1, 5) and out.dtype == jnp.float32
  structure = jax.tree.structure(shapes["bp"]["params"])
  for label in ["fa", "plain", "bf16"]:
    assert jax.tree.structure(shapes[label]["params"]) == structure
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes["bf16"]["params"])} == {
    jnp.dtype("float32")
  }
  assert "head" in shapes["bp"]["params"]
  # fa keeps one fixed B per kernel, in `feedback`, never in `params`.
  assert _kernel_paths_at(shapes["fa"]["feedback"]) == _kernel_paths_at(shapes["bp"]["params"])


def _kernel_paths_at(params):
  return {
    "/".join(str(p.key) for p in path[:-1])
    for path, _ in jax.tree_util.tree_leaves_with_path(params)
    if str(path[-1].key) == "kernel"
  }


# ----------------------------------------------------------------------------- train steps


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("name", SMALL)
def test_small_nets_train_step_every_rule(name, rule):
  _, skipped = _cases(name)
  if rule in skipped:  # too big to run here: the budget check must refuse it up front instead
    _assert_refused_by_budget(models.get(name, num_classes=10, rule=rule), name)
    return
  _check(name, rule, _train_steps(name)[rule])


@pytest.mark.parametrize("name", BIG)
def test_big_nets_train_step_layer_local_rules_mixed(name):
  model = _mixed_model(name)
  layers = _kernel_paths(name)
  assigned = {model.rule.resolve(p).name for p in layers}
  # Every layer-local rule trains some layers (the first len(layers) of them on nets with fewer
  # layers than rules: AlexNet's 8).
  assert assigned == set(MIXED_RULES[: len(layers)])
  if name in TRACED_MIXED:
    _check_traced(name, model)
  else:
    _check(name, MIXED, _train_steps(name)[MIXED])


@pytest.mark.parametrize("rule", NONLOCAL_RULES)
@pytest.mark.parametrize("name", BIG)
def test_big_nets_direct_feedback_rules(name, rule):
  model = models.get(name, num_classes=10, rule=rule)
  if _over_budget(model, name, rule):  # the budget check must refuse it up front instead
    _assert_refused_by_budget(model, name)
    return
  if name == JITTED_DIRECT:
    _check(name, rule, _train_steps(name)[rule])
  else:  # traced only: compiling every big net under every direct rule is too slow here
    _check_traced(name, model)


@pytest.mark.parametrize("name", SMALL + BIG)
def test_bp_equals_jax_grad_of_plain_flax_model(name):
  """bp through fajax layers == jax.grad of the same model built from nn.Dense / nn.Conv.

  Bit for bit (max difference 0.0): the bp backward pass evaluates the same transposes autodiff
  does. Batch-norm statistics, dropout masks (same rng, same module paths), logits, loss,
  gradients and updated parameters are all identical, and so are the initial parameters for the
  small nets (both initialized by model.init; the big nets start from shared numpy draws).
  """
  steps = _bp_steps(name)
  _check(name, "plain", steps["plain"])
  _check(name, "bp", steps["bp"])
  diffs = {k: float(v) for k, v in steps["bp"]["max_diff"].items()}
  assert (
    "logits" in diffs and "grads/head/kernel" in diffs and f"grads/{FIRST_LAYER}/kernel" in diffs
  )
  assert {k: v for k, v in diffs.items() if v != 0.0} == {}


# ----------------------------------------------------------------------------- modes and dtype


def test_batch_norm_train_and_eval_modes():
  name = "cifar10_arch2"
  model = models.get(name, num_classes=10)
  x, _ = _batch(name)

  @jax.jit
  def run(x):
    variables = model.init(_key(0), x, train=False)
    train_out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, x, train=False)
    eval_new = model.apply({**variables, **state}, x, train=False)
    return variables, train_out, state, eval_out, eval_new

  variables, train_out, state, eval_out, eval_new = run(x)
  # Running statistics: new = 0.9 * old + 0.1 * batch statistic (momentum 0.9, as in PyTorch).
  mean0 = variables["batch_stats"]["bn1"]["mean"]
  np.testing.assert_array_equal(mean0, 0.0)
  h = jax.lax.conv_general_dilated(
    x,
    variables["params"]["conv1"]["kernel"],
    (1, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  np.testing.assert_allclose(
    state["batch_stats"]["bn1"]["mean"], 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  # Training normalizes with batch statistics, evaluation with the running ones.
  assert not np.allclose(train_out, eval_out)
  assert not np.allclose(eval_out, eval_new)
  with pytest.raises(Exception, match="batch_stats"):  # Flax: train=True needs mutable stats
    model.apply(variables, x, train=True)


def test_dropout_only_in_train_mode():
  name = "alexnet"
  model = models.get(name, num_classes=10)
  x, _ = _batch(name)
  variables = stats.variable_shapes(model, _test_shape(name))
  # Evaluation needs no dropout rng; training does.
  jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(functools.partial(model.apply, train=True), variables, x)

  @jax.jit
  def run(x):
    v = model.init(_key(0), x, train=False)
    ev = [model.apply(v, x, train=False) for _ in range(2)]
    tr = [model.apply(v, x, train=True, rngs={"dropout": _key(s)}) for s in (1, 2)]
    return ev, tr

  (e1, e2), (t1, t2) = run(x)
  np.testing.assert_array_equal(e1, e2)
  assert not np.allclose(t1, t2) and not np.allclose(t1, e1)


def test_bfloat16_train_step():
  _check("mnist_net", "usf_bf16", _train_steps("mnist_net")["usf_bf16"])


def test_bfloat16_compute_float32_params_and_logits():
  name = "resnet20"
  model = models.get(name, num_classes=10, rule="usf", dtype=jnp.bfloat16)
  x, _ = _batch(name)
  variables = stats.variable_shapes(model, _test_shape(name))
  logits, inter = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=True), variables, x
  )
  assert logits.dtype == jnp.float32
  assert inter["intermediates"]["conv1"]["__call__"][0].dtype == jnp.bfloat16
  assert inter["intermediates"]["layer3_2"]["bn2"]["__call__"][0].dtype == jnp.bfloat16
  assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


def test_plain_model_runs_under_fajax_convert():
  """The plain-layer build is an ordinary Flax model: fajax.convert trains it under a rule, with
  the same parameter and feedback paths as the fajax-layer build."""
  name = "resnet20"
  plain = models.get(name, num_classes=10, dense=nn.Dense, conv=nn.Conv)
  converted = stats.variable_shapes(fajax.convert(plain, "fa"), _test_shape(name))
  native = stats.variable_shapes(models.get(name, num_classes=10, rule="fa"), _test_shape(name))
  assert jax.tree.structure(converted) == jax.tree.structure(native)


def test_head_override_by_name():
  name = "mnist_net"
  model = models.get(name, num_classes=10, rule=rules.get("fa", overrides={"head": "bp"}))
  shapes = stats.variable_shapes(model, _test_shape(name))
  assert set(shapes["feedback"]) == {"conv1", "conv2", "fc1"}


# ----------------------------------------------------------------------------- pooling

# (shape, dtype): even and odd sizes (odd: the last row / column is dropped, as VALID does).
POOL_CASES = [
  ((2, 8, 8, 3), jnp.float32),
  ((2, 7, 9, 3), jnp.float32),
  ((1, 5, 4, 2), jnp.float32),
  ((3, 2, 3, 1), jnp.float32),
  ((1, 8, 8, 3), jnp.bfloat16),  # 192 distinct integers: exact in bfloat16
]


def _ref_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


@jax.jit
def _pool_and_vjp(xs, cots):
  """(ours, nn.max_pool) forward values and input cotangents for each input, in one compile."""
  results = []
  for x, cot in zip(xs, cots, strict=True):
    y, vjp = jax.vjp(blocks.max_pool_2x2, x)
    y_ref, vjp_ref = jax.vjp(_ref_pool, x)
    results.append((y, vjp(cot)[0], y_ref, vjp_ref(cot)[0], blocks.max_pool(x, 2, 2)))
  return results


def test_max_pool_2x2_equals_nn_max_pool_without_ties():
  xs, cots = [], []
  rng = np.random.default_rng(0)
  for shape, dtype in POOL_CASES:
    n = math.prod(shape)
    # A permutation of distinct values: no ties anywhere.
    x = jnp.asarray(rng.permutation(n).reshape(shape), jnp.float32)
    xs.append((x if dtype == jnp.bfloat16 else x / n - 0.5).astype(dtype))
    out_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])  # floor, like VALID
    cots.append(jnp.asarray(rng.normal(size=out_shape), dtype))
  for (shape, dtype), cot, (y, dx, y_ref, dx_ref, y_helper) in zip(
    POOL_CASES, cots, _pool_and_vjp(xs, cots), strict=True
  ):
    assert y.shape == cot.shape and y.dtype == dtype, shape
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(y_helper, y)  # max_pool(x, 2, 2) takes the fast path
    # Exactly one element per window receives each cotangent; dropped rows/columns get none.
    assert np.count_nonzero(np.asarray(dx, np.float32)) == np.count_nonzero(
      np.asarray(cot, np.float32)
    )


def test_max_pool_2x2_ties_go_to_the_first_maximum():
  rng = np.random.default_rng(1)
  xs = [
    jnp.ones((1, 2, 2, 1)),  # all four tied: top-left wins
    jnp.array([[0.0, 1.0], [2.0, 2.0]]).reshape(1, 2, 2, 1),  # bottom row tied: bottom-left
    jnp.array([[0.0, 3.0], [1.0, 3.0]]).reshape(1, 2, 2, 1),  # right column tied: top-right
    # Inputs full of ties (rounded, with the zeros of a ReLU), odd width.
    jnp.asarray(np.maximum(np.round(rng.normal(size=(2, 8, 9, 4))), 0.0), jnp.float32),
  ]
  cots = [jnp.ones((1, 1, 1, 1))] * 3 + [jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)]
  results = _pool_and_vjp(xs, cots)
  expected = [[[1, 0], [0, 0]], [[0, 0], [1, 0]], [[0, 1], [0, 0]]]
  for (_, dx, _, dx_ref, _), want in zip(results[:3], expected, strict=True):
    np.testing.assert_array_equal(dx[0, :, :, 0], want)
    np.testing.assert_array_equal(dx, dx_ref)  # nn.max_pool (select_and_scatter) agrees
  _, dx, _, dx_ref, _ = results[3]
  np.testing.assert_array_equal(dx, dx_ref)


def test_max_pool_2x2_nan_and_bad_shapes():
  x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 0, 0].set(jnp.nan)
  assert np.isnan(blocks.max_pool_2x2(x)).all()
  assert np.isnan(_ref_pool(x)).all()
  with pytest.raises(ValueError, match="NHWC"):
    blocks.max_pool_2x2(jnp.zeros((4, 4, 1)))
  with pytest.raises(ValueError, match=">= 2"):
    blocks.max_pool_2x2(jnp.zeros((1, 1, 4, 1)))


# (input shape, window, stride, padding): overlapping windows (3x3 stride 2, as in the CIFAR-10
# net, AlexNet and the ResNet stem), SAME with odd and even sizes, explicit pads, stride 1.
GENERAL_POOL_CASES = [
  ((2, 9, 9, 3), 3, 2, "SAME"),
  ((2, 12, 12, 2), 3, 2, "SAME"),
  ((2, 9, 10, 2), 3, 2, "VALID"),
  ((1, 8, 7, 2), 3, 1, "SAME"),
  ((1, 8, 8, 2), 2, 2, "SAME"),
  ((1, 11, 11, 1), 5, 3, "VALID"),
  ((2, 8, 8, 2), 3, 2, ((1, 1), (0, 2))),
]


@jax.jit
def _general_pool_and_vjp(xs, cots):
  """(ours, nn.max_pool) values and input cotangents for each GENERAL_POOL_CASES entry."""
  results = []
  for (_, k, s, pad), x, cot in zip(GENERAL_POOL_CASES, xs, cots, strict=True):
    y, vjp = jax.vjp(lambda x, k=k, s=s, pad=pad: blocks.max_pool(x, k, s, pad), x)
    y_ref, vjp_ref = jax.vjp(lambda x, k=k, s=s, pad=pad: nn.max_pool(x, (k, k), (s, s), pad), x)
    results.append((y, vjp(cot)[0], y_ref, vjp_ref(cot)[0]))
  return results


def test_max_pool_equals_nn_max_pool_with_ties_and_overlaps():
  # Inputs of small integers (ties in most windows, with the zeros of a ReLU) and integer
  # cotangents, so that the sums where overlapping windows share a maximum are exact in any order:
  # value and gradient must then equal nn.max_pool's (select_and_scatter's) bit for bit, which
  # checks that every window's cotangent goes to the same (first) maximal element.
  rng = np.random.default_rng(3)
  xs = [jnp.asarray(rng.integers(-1, 3, shape), jnp.float32) for shape, *_ in GENERAL_POOL_CASES]
  cases = zip(xs, GENERAL_POOL_CASES, strict=True)
  ys = [nn.max_pool(x, (k, k), (s, s), p) for x, (_, k, s, p) in cases]
  cots = [jnp.asarray(rng.integers(-4, 5, y.shape), jnp.float32) for y in ys]
  for case, (y, dx, y_ref, dx_ref) in zip(
    GENERAL_POOL_CASES, _general_pool_and_vjp(xs, cots), strict=True
  ):
    assert y.shape == y_ref.shape, case
    np.testing.assert_array_equal(y, y_ref, err_msg=str(case))
    np.testing.assert_array_equal(dx, dx_ref, err_msg=str(case))
  # One padding per spatial axis: SAME on H (8 -> (0, 1)), VALID on W.
  x = xs[0][:1, :8]
  want = nn.max_pool(x, (3, 3), (2, 2), ((0, 1), (0, 0)))
  np.testing.assert_array_equal(blocks.max_pool(x, 3, 2, ("SAME", "VALID")), want)
  # Negative amounts crop, as in lax.pad: the same as pooling the cropped input.
  x = jnp.asarray(rng.integers(-1, 3, (1, 9, 9, 2)), jnp.float32)
  y, vjp = jax.vjp(lambda x: blocks.max_pool(x, 3, 2, ((-1, 1), (2, -2))), x)
  cropped = lambda x: nn.max_pool(x[:, 1:, :-2], (3, 3), (2, 2), ((0, 1), (2, 0)))
  y_ref, vjp_ref = jax.vjp(cropped, x)
  cot = jnp.asarray(rng.integers(-4, 5, y.shape), jnp.float32)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(cot)[0], vjp_ref(cot)[0])
  # All nine elements of a 3x3 window tied: the top-left one gets the cotangent.
  dx = jax.grad(lambda x: blocks.max_pool(x, 3, 2, "VALID").sum())(jnp.ones((1, 3, 3, 1)))
  np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_max_pool_nan_and_bad_arguments():
  # A NaN makes every window that holds it NaN (here the windows of rows/columns 1-3 and 3-5).
  x = jnp.zeros((1, 5, 5, 1)).at[0, 3, 3, 0].set(jnp.nan)
  want = np.zeros((3, 3), bool)
  want[1:, 1:] = True
  np.testing.assert_array_equal(np.isnan(blocks.max_pool(x, 3, 2, "SAME")[0, :, :, 0]), want)
  np.testing.assert_array_equal(np.isnan(nn.max_pool(x, (3, 3), (2, 2), "SAME")[0, :, :, 0]), want)
  with pytest.raises(ValueError, match="NHWC"):
    blocks.max_pool(jnp.zeros((5, 5, 1)), 3, 2)
  with pytest.raises(ValueError, match="larger than the padded input"):
    blocks.max_pool(jnp.zeros((1, 2, 2, 1)), 3, 2)
  with pytest.raises(ValueError, match="padding"):
    blocks.max_pool(jnp.zeros((1, 4, 4, 1)), 3, 2, "FULL")
  for bad in (((1, 1),), ((1, 1), (1, 1), (1, 1)), (1, 1), ((1, 1), (1.5, 0))):
    with pytest.raises(ValueError, match="padding"):
      blocks.max_pool(jnp.zeros((1, 4, 4, 1)), 3, 2, bad)
  for window, stride in ((0, 2), (3, 0)):
    with pytest.raises(ValueError, match=">= 1"):
      blocks.max_pool(jnp.zeros((1, 4, 4, 1)), window, stride)


def test_adaptive_avg_pool_matches_pytorch_bins():
  # PyTorch bins for 5 -> 3: [0, 2), [1, 4), [3, 5); for 2 -> 3: [0, 1), [0, 2), [1, 2).
  x = jnp.arange(10, dtype=jnp.float32).reshape(1, 5, 2, 1)
  y = blocks.adaptive_avg_pool(x, (3, 3))[0, :, :, 0]
  rows = [[0, 1], [1, 2, 3], [3, 4]]
  cols = [[0], [0, 1], [1]]
  expected = [[np.mean([2 * r + c for r in rs for c in cs]) for cs in cols] for rs in rows]
  np.testing.assert_allclose(y, expected, rtol=1e-6)
  z = jnp.ones((2, 6, 6, 3))
  assert blocks.adaptive_avg_pool(z, (6, 6)) is z


def test_forward_flops_of_mnist_net_by_hand():
  """XLA's cost analysis counts 2 FLOPs per multiply-add in convs/dots (taps that fall in the
  SAME padding excluded) plus one per element for elementwise ops: check the dominant terms."""

  # Multiply-adds over valid taps: each output row sees min(...) taps of a 5-tap kernel.
  def taps(n):  # sum over outputs of valid kernel positions along one axis, SAME, k=5
    return sum(min(i + 2, n - 1) - max(i - 2, 0) + 1 for i in range(n))

  conv1 = taps(28) ** 2 * 1 * 32
  conv2 = taps(14) ** 2 * 32 * 64
  dense = 7 * 7 * 64 * 1024 + 1024 * 10
  macs = conv1 + conv2 + dense
  flops = stats.forward_flops("mnist_net")
  assert 2 * macs <= flops <= 2 * macs * 1.02
