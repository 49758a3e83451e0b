"""Experiment configs, the sweep launcher and the report."""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fajax
from fajax import table
from fajax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(
  f[:-3]
  for f in os.listdir(os.path.join(ROOT, "experiments"))
  if f.endswith(".py") and f != "tiny.py"
)


def _load(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(ROOT, "experiments", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_paper_column_has_a_config():
  columns = {_load(name).COLUMN for name in EXPERIMENTS}
  assert set(table.PAPER) <= columns
  assert {"resnet20", "resnet18"} <= columns


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_config_rows_resolve_and_validate(name):
  module = _load(name)
  assert module.__doc__ and "python launch/" in module.__doc__  # the run command
  for row in module.ROWS:
    for arg in (row, f"{row},runlocal"):
      config = module.get_config(arg)
      config_lib.validate(config)
      assert config.rule == table.ROWS[row][1]["rule"]
      fajax.rules.get(config.rule, **config.rule_options)
  with pytest.raises(ValueError, match="valid rows"):
    module.get_config("not_a_row")
  for point in module.get_sweep(None):
    assert point["row"] in module.ROWS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_row_survives_one_jitted_step(name):
  """The config's model under each row's rule and constraints: one train step, finite loss."""
  from fajax.train import build

  module = _load(name)
  for row in module.ROWS:
    config = module.get_config(f"{row},runlocal")
    config.batch_size = 2
    config.mesh = {"data": 1, "model": 1}
    exp = build.build(config)
    images = jax.random.uniform(jax.random.key(0), (2, *exp.info.image_shape), jnp.float32)
    batch = {"image": images, "label": jnp.array([1, 2], jnp.int32)}
    state = exp.init(jax.random.key_data(jax.random.key(0)))
    state, metrics = exp.train_step(state, jax.device_put(batch, exp.batch_sharding))
    assert np.isfinite(float(metrics["loss"])), (name, row)
    assert int(state.step) == 1


def test_apply_variant_and_errors():
  c = config_lib.default_config()
  table.apply_variant(c, "usf_const_ei")
  assert (c.rule, c.rule_options.scale, c.constraints) == ("usf", "init", "const,ei")
  table.apply_variant(c, "bp_align")
  assert c.rule == "kp" and c.weight_decay == table.KP_WEIGHT_DECAY and c.constraints == ""
  with pytest.raises(ValueError, match="valid rows"):
    table.apply_variant(c, "nope")


def test_sweep_runs_resumes_and_reports(tmp_path):
  workdir = tmp_path / "sweep"
  command = [
    sys.executable, os.path.join(ROOT, "launch", "sweep.py"),
    "--config=experiments/mnist_net.py:runlocal", f"--workdir={workdir}", "--rows=bp,fa",
    "--config.diagnostics_every=2", "--config.progress_bar=False",
  ]  # fmt: skip
  out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| BP |" in out.stdout and "| FA |" in out.stdout
  assert "0.8" in out.stdout and "1.1" in out.stdout  # the paper's numbers beside ours
  for name in ("report.md", "errors.png", "alignment.png"):
    assert (workdir / name).stat().st_size > 0
  assert sorted(os.listdir(workdir / "bp-seed0")) >= ["done.json", "experiment.json"]
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and again.stdout.count("done, skipped") == 2
  emitted = subprocess.run(
    command + ["--emit_commands"], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  lines = [x for x in emitted.stdout.splitlines() if x.startswith("python launch/main.py")]
  assert len(lines) == 2 and "--config.diagnostics_every=2" in lines[0]
