"""`Bridge`: the Linen face of an NNX model, so that one trainer serves Linen and NNX models.

The trainer (`fajax.train`), `fajax.apply` and the diagnostics work on Linen variables and
collections: `init` -> {"params", "feedback", "batch_stats"}, `apply(..., mutable=[...])`. A
`Bridge` holds a factory of the NNX model and, on every call, builds the model (inside the jitted
function: only the graph is kept, the fresh draws are overwritten and compiled away), loads the
Linen variables into its NNX variables, calls it as one fajax forward pass and writes back the
collections that are mutable. The mapping is one to one:

  nnx.Param at path p                       <-> params/p
  nnx.BatchStat at path p                   <-> batch_stats/p
  fajax.nnx.Feedback at <layer>/feedback/n  <-> feedback/<layer>/n   (the Linen layout)
  other nnx.Variable types                  <-> their registered collection name

so an NNX model whose attributes carry the names of a Linen model's submodules has exactly the
Linen model's variables (checkpoints, sharding rules, Kolen-Pollack updates and diagnostics key
on the same paths), and per-step feedback keys are the ones the Linen layers draw. Captured B and
deltas (diagnostics) and dfa taps come back as the Linen collections the Linen layers fill.

`train=` of a Linen call is passed on when the NNX model's `__call__` takes it; otherwise it sets
the model's mode with `model.train()` / `model.eval()` (batch norm, dropout), the NNX idiom.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from fajax import layers as fajax_layers
from fajax.nnx import convert as convert_lib
from fajax.nnx import layers


def _location(path, variable) -> tuple[str, tuple[str, ...]] | None:
  """(Linen collection, path in it) of an NNX variable; None for rng state (not stored)."""
  if isinstance(variable, nnx.RngState):
    return None
  path = tuple(str(p) for p in path)
  if isinstance(variable, layers.Feedback):
    if len(path) < 2 or path[-2] != layers.FEEDBACK_ATTR:
      raise ValueError(f"Feedback variable at {'/'.join(path)} is not in a layer's feedback dict.")
    return "feedback", path[:-2] + path[-1:]
  name = nnx.variablelib.variable_name_from_type(type(variable), allow_register=True)
  return name, path


def _variables(model):
  """(collection, path, variable) for every NNX variable of `model` (shared ones once)."""
  seen = set()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable) and id(node) not in seen:
      seen.add(id(node))
      where = _location(path, node)
      if where is not None:
        yield (*where, node)


def _takes_train(model) -> bool:
  try:
    return "train" in inspect.signature(model.__call__).parameters
  except (TypeError, ValueError):
    return False


class Bridge(nn.Module):
  """An NNX model as a Linen module (see the module docstring).

  factory: builds the NNX model; called as `factory(rngs=nnx.Rngs(...))`.
  rule: if not None, the model is run through `fajax.nnx.convert(model, rule, ...)` after it is
    built (the call's inputs size dfa / densefa matrices), so plain NNX models train under it.
  """

  factory: Callable[..., nnx.Module]
  rule: Any = None

  @nn.compact
  def __call__(self, *args, train: bool | None = None, **kwargs):
    initializing = self.is_initializing()
    # Construction keys: Linen's, so that init is a pure function of the init rngs. At apply the
    # draws are discarded (the variables are loaded over them), so a fixed default will do.
    streams = {name: self.make_rng(name) for name in self.scope.rngs}
    streams.setdefault("default", jax.random.key(0))
    rngs = nnx.Rngs(**streams)
    model = self.factory(rngs=rngs)
    if self.rule is not None:
      model = convert_lib.convert(model, self.rule, rngs=rngs, sample=args)
    if not initializing:
      load_linen_variables(model, self.variables)
    if train is not None:
      if _takes_train(model):
        kwargs["train"] = train
      elif train:
        model.train()
      else:
        model.eval()
    call = layers._Call(
      model,
      initializing=initializing,
      rngs=dict(self.scope.rngs),
      perturbations=self.variables.get(fajax_layers.DELTAS, {}),
      mutable=self.is_mutable_collection,
    )
    with layers.active(call):
      out = model(*args, **kwargs)
    self._store(model, call)
    return out

  def _store(self, model, call):
    for col, tree in linen_variables(model).items():
      if self.is_mutable_collection(col):
        self._put(col, tree)
    for col in call.sown:
      if self.is_mutable_collection(col):
        self._put(col, call.collection(col))

  def _put(self, col, tree):
    for key, value in tree.items():
      self.put_variable(col, key, value)


def _nest_values(flat: dict[tuple[str, ...], Any]) -> dict:
  """{(a, b, leaf): value} -> {a: {b: {leaf: value}}}."""
  out: dict = {}
  for path, value in flat.items():
    node = out
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return out


def linen_variables(model) -> dict[str, dict]:
  """The NNX model's variables in the Linen layout: {"params": ..., "feedback": ..., ...}."""
  trees: dict[str, dict] = {}
  for col, path, variable in _variables(model):
    trees.setdefault(col, {})[path] = variable.get_value()
  return {col: _nest_values(flat) for col, flat in trees.items()}


def load_linen_variables(model, variables) -> None:
  """Sets every variable of the NNX model from Linen-layout `variables` (the inverse)."""
  for col, path, variable in _variables(model):
    value = layers.lookup(variables.get(col, {}), path)
    if value is None:
      raise ValueError(
        f"The variables have no {col}/{'/'.join(path)} that the NNX model needs: give it all "
        "the variables its init returned."
      )
    variable.set_value(value)


def to_linen(model, rule=None, **kwargs) -> Bridge:
  """A Linen module for the trainer from an NNX model class, factory or instance.

  A class or factory is called as `model(**kwargs, rngs=...)` (e.g. `to_linen(
  fajax.nnx.models.MnistNet, "fa", num_classes=10)`); an instance is copied, so its current
  values are the initial ones. `rule` (None: the layers as they are) is applied by `convert`.
  """
  if isinstance(model, nnx.Module):
    graphdef, state = nnx.split(model)
    return Bridge(factory=lambda rngs: nnx.merge(graphdef, state, copy=True), rule=rule)
  return Bridge(factory=functools.partial(model, **kwargs), rule=rule)


def is_nnx(model) -> bool:
  """Whether `model` is an NNX module, or a class / factory that builds one."""
  if isinstance(model, nnx.Module):
    return True
  target = model
  while isinstance(target, functools.partial):
    target = target.func
  return inspect.isclass(target) and issubclass(target, nnx.Module)
