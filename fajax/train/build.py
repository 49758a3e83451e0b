"""Assembles a run from a config: dataset info, model, rule, optimizer, mesh and jitted steps.

Shared by the training loop and the dry run, so both compile exactly the same step. Nothing here
allocates the state: `abstract_state` comes from `jax.eval_shape`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fajax import compile as compile_lib
from fajax import data as data_lib
from fajax import layers
from fajax import models as models_lib
from fajax import rules as rules_lib
from fajax.models import stats
from fajax.train import config as config_lib
from fajax.train import mesh as mesh_lib
from fajax.train import mirror, optim
from fajax.train import state as state_lib
from fajax.train import step as step_lib
from fajax.train.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Experiment:
  """Everything derived from a config that the loop and the dry run need."""

  config: Any
  data: Any  # The dataset provider: fajax.data or an injected stand-in with .info and .get.
  info: Any  # DatasetInfo.
  num_steps: int
  mesh: Any
  model: nn.Module
  rule: rules_lib.Rule
  schedule: Any
  tx: Any
  init: Any  # jitted: uint32[2] key -> sharded TrainState.
  abstract_state: Any  # ShapeDtypeStructs with shardings.
  state_sharding: Any
  batch_sharding: Any
  train_step: Any  # jitted, donated.
  diagnostics_step: Any  # jitted with alignment diagnostics (None when diagnostics_every == 0).
  eval_step: Any
  process_batch: int  # Train rows read by this process per step.
  process_eval_batch: int
  compiler_options: Any = None  # The XLA options of its jits (`fajax.compile.compiler_options`).

  def abstract_batch(self, train: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of one global train (or eval) batch."""
    n = self.config.batch_size if train else eval_batch_size(self.config)
    s = self.batch_sharding
    batch = {
      "image": jax.ShapeDtypeStruct((n, *self.info.image_shape), jnp.float32, sharding=s),
      "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=s),
    }
    if not train:
      batch["mask"] = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=s)
    return batch


def eval_batch_size(config) -> int:
  return config.eval_batch_size or config.batch_size


def make_rule(config) -> rules_lib.Rule:
  return rules_lib.get(config.rule, **dict(config.rule_options), overrides=dict(config.overrides))


def make_model(config, info, rule, model=None) -> nn.Module:
  """The registry model (fajax.models.get), or `model` (a Module, or a factory like models.get).

  An NNX model (class, partial of one, or instance) is wrapped by `fajax.nnx.to_linen`: the class
  is built with the same keyword arguments (minus `rule`) and converted to the rule.
  """
  kwargs = dict(num_classes=info.num_classes, rule=rule, dtype=DTYPES[config.dtype])
  kwargs.update(dict(config.model_options))
  if model is None:
    return models_lib.get(config.model, **kwargs)
  if isinstance(model, nn.Module):
    return model
  from fajax.nnx import bridge  # An NNX model reaches the trainer through its Linen face.

  if bridge.is_nnx(model):
    return bridge.to_linen(model, **kwargs)
  return model(**kwargs)


def _check_divisible(field, value, parts, what):
  if value % parts:
    raise UserError(
      f"config.{field} = {value} is not valid; it must divide evenly over {parts} {what}."
    )


def _check_feedback_budget(config, module, abstract_state):
  """Refuses a run whose feedback collection exceeds config.feedback_memory_budget_gb (GiB),
  from the abstract state (shapes only, before anything is compiled or allocated)."""
  if config.feedback_memory_budget_gb is None:
    return
  report = stats.memory_of(
    abstract_state.params, abstract_state.feedback, getattr(module, "rule", None)
  )
  try:
    stats.within_budget(report, config.feedback_memory_budget_gb)
  except ValueError as e:
    raise UserError(str(e)) from None


def build(config, *, model=None, dataset=None, devices=None) -> Experiment:
  """Validates `config` and assembles the run (`assemble`: no compilation, no allocation)."""
  config_lib.validate(config, check_dataset=dataset is None, check_model=model is None)
  return assemble(config, model=model, dataset=dataset, devices=devices)


def assemble(config, *, model=None, dataset=None, devices=None) -> Experiment:
  """Assembles the run of a validated `config` (no compilation, no state allocation).

  Args:
    config: a trainer config (see `fajax.train.default_config`).
    model: None (fajax.models registry), a Flax Module, or a factory called like
      `fajax.models.get` minus the name (num_classes=, rule=, dtype=, **model_options).
    dataset: None (fajax.data), or an object with `info(name, **options)` and
      `get(name, split, batch_size, *, seed, data_dir, start_step, **options)` like fajax.data.
    devices: the devices of the mesh (default jax.devices()).
  """
  dataset = data_lib if dataset is None else dataset
  info = dataset.info(config.dataset, **dict(config.dataset_options))
  num_steps = config_lib.num_steps(config, info.num_train)
  if config.warmup_steps >= num_steps:
    raise UserError(
      f"config.warmup_steps = {config.warmup_steps} is not valid; use fewer than the "
      f"{num_steps} training steps."
    )
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  data_parts = mesh.shape["data"]
  processes = jax.process_count()
  _check_divisible("batch_size", config.batch_size, data_parts, "devices of the mesh axis 'data'")
  _check_divisible("batch_size", config.batch_size, processes, "processes")
  _check_divisible(
    "eval_batch_size", eval_batch_size(config), data_parts, "devices of the mesh axis 'data'"
  )
  _check_divisible("eval_batch_size", eval_batch_size(config), processes, "processes")

  rule = make_rule(config)
  module = make_model(config, info, rule, model)
  schedule = optim.make_schedule(config, num_steps)
  tx = optim.make_optimizer(config, schedule)
  feedback_tx = optim.make_feedback_optimizer(config, num_steps)
  dtype = DTYPES[config.dtype]

  def init_fn(rng):
    params_key, dropout_key, feedback_key, state_key = jax.random.split(rng, 4)
    dummy = jnp.zeros((1, *info.image_shape), dtype)
    rngs = {"params": params_key, "dropout": dropout_key, rules_lib.FEEDBACK_RNG: feedback_key}
    # Learned-feedback layers sow a B gradient here: its paths tell B's optimizer what it trains.
    with layers.capture_feedback_grads():
      variables = module.init(rngs, dummy, train=False)
    if config.feedback_mirror_steps:  # B-only steps on noise before step 0 (train/mirror.py).
      mirror_key = jax.random.fold_in(rng, mirror.MIRROR_KEY)  # init's own keys stay as they were
      shape = (config.batch_size, *info.image_shape)
      steps, lr = config.feedback_mirror_steps, config.feedback_mirror_learning_rate
      feedback = mirror.mirror_feedback(module, variables, shape, steps, lr, mirror_key)
      variables = {**variables, "feedback": feedback}
    return state_lib.create(variables, tx, state_key, feedback_tx)

  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = jax.eval_shape(init_fn, key)
  state_sharding = mesh_lib.state_sharding(mesh, shapes)
  abstract_state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_sharding
  )
  _check_feedback_budget(config, module, abstract_state)
  replicated = mesh_lib.replicated(mesh)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  # Every jit below gets fajax's CPU compiler options (None off CPU or with config.fast_cpu off).
  options = compile_lib.compiler_options(
    config.fast_cpu, mesh.devices.flat[0].platform, models_lib.cpu_fusions(config.model)
  )
  common = dict(
    model=module,
    tx=tx,
    feedback_tx=feedback_tx,
    schedule=schedule,
    rule=rule,
    weight_decay=float(config.weight_decay),
    on_nan=config.on_nan,
    compiler_options=options,
  )
  train_step = step_lib.jit_train_step(state_sharding, batch_sharding, replicated, **common)
  diagnostics_step = None
  if config.diagnostics_every:
    diagnostics_step = step_lib.jit_train_step(
      state_sharding, batch_sharding, replicated, diagnostics=True, **common
    )
  return Experiment(
    config=config,
    data=dataset,
    info=info,
    num_steps=num_steps,
    mesh=mesh,
    model=module,
    rule=rule,
    schedule=schedule,
    tx=tx,
    init=jax.jit(init_fn, out_shardings=state_sharding, compiler_options=options),
    abstract_state=abstract_state,
    state_sharding=state_sharding,
    batch_sharding=batch_sharding,
    train_step=train_step,
    diagnostics_step=diagnostics_step,
    eval_step=step_lib.jit_eval_step(
      state_sharding, batch_sharding, replicated, model=module, compiler_options=options
    ),
    process_batch=config.batch_size // processes,
    process_eval_batch=eval_batch_size(config) // processes,
    compiler_options=options,
  )
