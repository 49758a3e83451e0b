"""The launcher end to end: `python -m launch.main --config=experiments/tiny.py` in a process."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, timeout=300):
  # The subprocess inherits conftest's XLA_FLAGS (8 fake CPU devices) unless --fake_devices says.
  result = subprocess.run(
    [sys.executable, "-m", "launch.main", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_launcher_trains_a_short_config_end_to_end(tmp_path):
  workdir = tmp_path / "tiny"
  launch(
    "--config=experiments/tiny.py:fa",
    f"--workdir={workdir}",
    "--config.num_steps=4",
    "--config.log_every=2",
    "--config.eval_every=4",
    "--config.checkpoint_every=2",
  )
  config = json.loads((workdir / "config.json").read_text())
  assert config["rule"] == "fa" and config["num_steps"] == 4  # Command-line overrides applied.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records] == [(2, "train"), (4, "train"), (4, "test")]
  assert records[-1]["num_examples"] == 364  # The whole digits test split.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert json.loads((workdir / "run.json").read_text())["mesh"] == {"data": 8, "model": 1}


def test_launcher_dry_run_on_more_fake_devices(tmp_path):
  report_path = tmp_path / "report.json"
  result = launch(
    "--config=experiments/tiny.py",
    "--dry_run",
    "--fake_devices=16",
    "--config.batch_size=64",
    f"--report={report_path}",
  )
  assert "memory per device" in result.stdout and "FLOPs per step" in result.stdout
  report = json.loads(report_path.read_text())
  assert report["num_devices"] == 16 and report["mesh"] == {"data": 16, "model": 1}
  assert report["shardings"]["batch/image"] == "float32[64, 8, 8, 1] P('data',)"
  assert not (tmp_path / "checkpoints").exists()


def test_launcher_refuses_a_bad_override_with_one_sentence(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.main",
      "--config=experiments/tiny.py",
      f"--workdir={tmp_path}",
      "--config.optimizer=lbfgs",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "config.optimizer = 'lbfgs' is not valid; choose one of 'sgd'" in result.stderr
  assert not (tmp_path / "checkpoints").exists()
