"""Experiment configs, the sweep launcher and the report."""

import importlib.util
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fajax
from experiments import common
from fajax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(ROOT, "experiments"))
  if f.endswith(".py") and f not in ("tiny.py", "common.py", "__init__.py")
)


def _load(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, "experiments", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_paper_column_has_a_config_with_its_numbers():
  modules = {_load(name).COLUMN: _load(name) for name in EXPERIMENTS}
  paper = {"mnist", "cifar10_arch1", "cifar10_arch2", "imagenet_arch1", "imagenet_arch2"}
  assert {
    c for c, m in modules.items() if getattr(m, "REFERENCE_SOURCE", None) == common.PAPER
  } == paper
  for column in ("resnet20", "resnet18"):
    assert modules[column].REFERENCE_SOURCE == common.BIOTORCH
  for module in modules.values():  # every number is of a row the config runs
    assert set(getattr(module, "REFERENCE", {})) <= set(module.ROWS), module.COLUMN
  # What the report shows: the paper's plain, BioTorch's marked.
  references = common.report_table().references
  assert references["mnist"]["fa"] == "1.1" and references["resnet20"]["bp"] == "8.6 (BioTorch)"
  # A row may name its own source (REFERENCE_SOURCES), e.g. a learned-feedback paper's number.
  mine = types.SimpleNamespace(
    COLUMN="mine",
    REFERENCE={"bp": 30.0, "bp_wm": 31.0},
    REFERENCE_SOURCE=common.BIOTORCH,
    REFERENCE_SOURCES={"bp_wm": "Akrout et al. 2019"},
  )
  assert common.report_table(mine).references["mine"] == {
    "bp": "30.0 (BioTorch)",
    "bp_wm": "31.0 (Akrout et al. 2019)",
  }


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_rows_resolve_and_validate(name):
  module = _load(name)
  assert module.__doc__ and "python -m launch." in module.__doc__  # the run command
  for row in module.ROWS:
    for arg in (row, f"{row},runlocal"):
      config = module.get_config(arg)
      config_lib.validate(config)
      assert config.rule == common.ROWS[row][1]["rule"]
      fajax.rules.get(config.rule, **config.rule_options)
  with pytest.raises(ValueError, match="valid rows"):
    module.get_config("not_a_row")
  for point in module.get_sweep(None):
    assert point["row"] in module.ROWS
  if hasattr(module, "FULL"):  # 'full' changes what FULL says, and only that
    full, small = module.get_config(f"{module.ROWS[0]},full"), module.get_config(module.ROWS[0])
    assert {k: full[k] for k in module.FULL} == module.FULL
    assert {**small.to_dict(), **module.FULL} == full.to_dict()
  else:  # a config without a full-size variant refuses the modifier instead of ignoring it
    with pytest.raises(ValueError, match="no full-size variant.*drop 'full'"):
      module.get_config(f"{module.ROWS[0]},full")


# Compiling a step takes seconds to tens of seconds per (model, rule) on 2 CPU cores, so each
# config's first row runs a real step and every other row is traced and lowered to XLA (rule,
# constraints, shapes and shardings all checked) without compiling. Every rule runs real steps on
# every model in tests/test_models.py, and the sweep test below trains mnist_net rows end to end.
# The ImageNet-size nets (ResNet-18, AlexNet-BN) take half a minute to compile even at 64x64:
# all their rows are lowered only.
_LOWER_ONLY = ("resnet18", "imagenet_arch2")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_row_survives_one_jitted_step(name):
  """The config's model under each row's rule and constraints: one train step, finite loss."""
  from fajax.train import build

  module = _load(name)
  for i, row in enumerate(module.ROWS):
    config = module.get_config(f"{row},runlocal")
    config.batch_size = 2
    config.mesh = {"data": 1, "model": 1}
    exp = build.build(config)
    images = jax.random.uniform(jax.random.key(0), (2, *exp.info.image_shape), jnp.float32)
    batch = jax.device_put({"image": images, "label": jnp.array([1, 2])}, exp.batch_sharding)
    if i > 0 or name in _LOWER_ONLY:
      exp.train_step.lower(exp.abstract_state, batch)
      continue
    state = exp.init(jax.random.key_data(jax.random.key(0)))
    state, metrics = exp.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"])), (name, row)
    assert int(state.step) == 1


def test_apply_variant_and_errors():
  c = config_lib.default_config()
  common.apply_variant(c, "usf_const_ei")
  assert (c.rule, c.rule_options.scale, c.constraints) == ("usf", "init", "const,ei")
  common.apply_variant(c, "bp_align")
  assert c.rule == "kp" and c.constraints == "" and dict(c.rule_options) == {}
  # Kolen-Pollack's weight decay is in its row, where a reader sees it: 5e-4 in every config.
  assert common.ROWS["bp_align"][1]["weight_decay"] == c.weight_decay == 5e-4
  for name in EXPERIMENTS:
    module = _load(name)
    if "bp_align" in module.ROWS:
      assert module.get_config("bp_align").weight_decay == 5e-4, name
  with pytest.raises(ValueError, match="valid rows"):
    common.apply_variant(c, "nope")


def test_sweep_runs_resumes_and_reports(tmp_path):
  workdir = tmp_path / "sweep"
  command = [
    sys.executable, "-m", "launch.sweep",
    "--config=experiments/mnist_net.py:runlocal", f"--workdir={workdir}", "--rows=bp,fa",
    "--config.diagnostics_every=2", "--config.progress_bar=False",
  ]  # fmt: skip
  # One CPU device, as a user's run: the sweep needs no fake devices.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = lambda cmd: subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
  )
  out = run(command)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| BP |" in out.stdout and "| FA |" in out.stdout
  assert "0.8" in out.stdout and "1.1" in out.stdout  # the paper's numbers beside ours
  for name in ("report.md", "errors.png", "alignment.png"):
    assert (workdir / name).stat().st_size > 0
  assert {"done.json", "experiment.json", "metrics.jsonl"} <= set(os.listdir(workdir / "bp-seed0"))
  again = run(command)
  assert again.returncode == 0 and again.stdout.count("done, skipped") == 2
  emitted = run(command + ["--emit_commands"])
  lines = [x for x in emitted.stdout.splitlines() if x.startswith("python -m launch.main")]
  assert len(lines) == 2 and "--config.diagnostics_every=2" in lines[0]
  seeded = run(command + ["--emit_commands", "--seeds=3", "--rows=fa"])
  lines = [x for x in seeded.stdout.splitlines() if x.startswith("python -m launch.main")]
  assert [x.split("--workdir=")[1].split()[0].rsplit("/", 1)[1] for x in lines] == [
    f"fa-seed{k}" for k in range(3)
  ]
  assert all(f"--config.seed={k}" in x for k, x in enumerate(lines))
  refused = run(command + ["--config.seed=1"])
  assert refused.returncode != 0 and "--seeds" in refused.stderr


def test_depth_sweep_runlocal_trains_each_depth_and_reports(tmp_path):
  """experiments/depth.py's runlocal variant end to end: one row at depths 2 and 4."""
  workdir = tmp_path / "depth"
  command = [
    sys.executable, "-m", "launch.sweep",
    "--config=experiments/depth.py:runlocal", f"--workdir={workdir}", "--rows=fa",
    "--config.progress_bar=False",
  ]  # fmt: skip
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| method | depth 2 | depth 4 |" in out.stdout and "| FA |" in out.stdout
  assert (workdir / "depth.png").stat().st_size > 0
  assert sorted(os.listdir(workdir / "fa-seed0-convs_per_stage2" / "checkpoints")) == ["6"]
