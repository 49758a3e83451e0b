"""kill -9 of a real training process, then a restart: the run ends where an uninterrupted one does.

The learned-feedback rules (B and its optimizer state in the checkpoint) and NNX models (through
their Linen face) each in its own OS process (tests/kill_driver.py), killed with SIGKILL once a
checkpoint is committed, restarted, and compared with an uninterrupted run of the same driver:
every logged metric and the final state bit for bit. The in-process interrupt tests of
test_train.py / test_nnx.py / test_learned.py check resume at an exact step; these check that a
real kill loses nothing.
"""

import os
import signal
import subprocess
import sys
import time

import kill_driver
import pytest

from fajax.train import metrics as metrics_lib

HERE = os.path.dirname(os.path.abspath(__file__))


def _command(workdir, kind):
  return [sys.executable, os.path.join(HERE, "kill_driver.py"), str(workdir), kind]


def _env(cache_dir):
  return dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=str(cache_dir),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )


def _finish(command, env) -> str:
  """Runs the driver to the end; returns its final-state digest."""
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()[-1]


def _committed(checkpoints) -> list[int]:
  """Committed checkpoint steps: orbax renames a temporary folder to the step when complete."""
  if not os.path.isdir(checkpoints):
    return []
  return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


@pytest.mark.parametrize("kind", ["sa", "nnx"])
def test_kill_9_after_a_checkpoint_then_restart_equals_an_uninterrupted_run(tmp_path, kind):
  env = _env(tmp_path / "cache")
  reference = _finish(_command(tmp_path / "full", kind), env)  # Also fills the compile cache.

  killed = tmp_path / "killed"
  checkpoints = os.path.join(killed, "checkpoints")
  proc = subprocess.Popen(
    _command(killed, kind), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 300
  while (_committed(checkpoints) or [0])[-1] < 2 * kill_driver.CHECKPOINT_EVERY:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() < deadline, "the run made no progress"
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  resume_from = _committed(checkpoints)[-1]
  assert resume_from < kill_driver.NUM_STEPS, "the run finished before the kill: kill earlier"

  assert _finish(_command(killed, kind), env) == reference
  read = lambda w: metrics_lib.read_metrics(str(w), drop_timing=True)
  records, full = read(killed), read(tmp_path / "full")
  assert records == full
  assert [r["step"] for r in records if r["split"] == "train"] == list(
    range(1, kill_driver.NUM_STEPS + 1)
  )
