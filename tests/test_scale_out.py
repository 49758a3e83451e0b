"""Scale-out with real processes: preemption signals, two JAX processes, a gs:// workdir.

Every run here is `python -m launch.main` (experiments/tiny.py: the MNIST net on the 8x8 digits)
in its own OS process, stopped with real signals or kill -9, and compared with an uninterrupted run
in this process. The subprocesses share one persistent compilation cache, so only the first
compiles.
"""

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fajax import data as data_lib
from fajax.train import build as build_lib
from fajax.train import checkpoint as checkpoint_lib
from fajax.train import metrics as metrics_lib
from fajax.train import preemption, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.py")
# Every step logged, so the test can see how far a run is; no evaluation until the end.
FLAGS = {"log_every": 1, "eval_every": 0, "checkpoint_every": 4, "keep_checkpoints": 2}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _env(cache_dir, **extra):
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  env.update(extra)
  return env


def _main(workdir, num_steps, **overrides):
  flags = {**FLAGS, "num_steps": num_steps, **overrides}
  return [
    sys.executable,
    "-m",
    "launch.main",
    f"--config={TINY}",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in flags.items()),
  ]


def _start(command, env):
  return subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def _last_step(workdir) -> int:
  """The step of the last complete record in metrics.jsonl (0 before the first)."""
  try:
    with open(os.path.join(workdir, metrics_lib.METRICS_FILE)) as f:
      lines = [line for line in f.read().split("\n")[:-1] if line]
  except FileNotFoundError:
    return 0
  return json.loads(lines[-1])["step"] if lines else 0


def _wait_until(condition, procs, timeout=300, every=0.002):
  """Polls `condition` every `every` s; fails with the logs if a process ends first."""
  deadline = time.monotonic() + timeout
  while not condition():
    for proc in procs:
      if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.fail(f"the run ended (rc {proc.returncode}) before the signal:\n{err[-3000:]}")
    assert time.monotonic() < deadline, "the run made no progress"
    time.sleep(every)


def _steps(checkpoints) -> list[int]:
  return sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())


def _stopped_at(stderr: str) -> int:
  match = re.search(r"Stopped by .* after step (\d+) of \d+", stderr)
  assert match, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  return int(match.group(1))


def _reference(workdir, num_steps, cache_dir, **overrides):
  """The uninterrupted run in this process: (config, final state)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("tiny_config", TINY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(overrides.pop("rule", None))
  config.update({**FLAGS, "num_steps": num_steps, "progress_bar": False, **overrides})
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  return config, train_and_evaluate(config, str(workdir))


def _records(workdir):
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  return metrics_lib.read_metrics(path, drop_timing=True)


def _restore(config, checkpoints):
  exp = build_lib.build(config)
  state, meta = checkpoint_lib.Checkpointer(str(checkpoints)).restore_latest(exp.abstract_state)
  return state


def _max_difference(a, b) -> float:
  a, b = jax.device_get(a), jax.device_get(b)
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


# -- Preemption: SIGTERM / SIGINT ----------------------------------------------------------------


def test_signals_at_random_moments_lose_no_step_and_resume_bit_identical(tmp_path, cache_dir):
  num_steps, every = 40, FLAGS["checkpoint_every"]
  workdir = tmp_path / "run"
  env = _env(cache_dir)
  rng = random.Random(12)
  # Two signals land right after a checkpoint step is logged (its async save is then starting).
  rounds = [
    (signal.SIGTERM, "save"),
    (signal.SIGINT, "step"),
    (signal.SIGTERM, "step"),
    (signal.SIGINT, "save"),
    (signal.SIGTERM, "step"),
  ]
  start, waited = 0, 0
  for signum, moment in rounds:
    proc = _start(_main(workdir, num_steps), env)
    target = (start // every + 1) * every if moment == "save" else start + rng.randint(1, 3)
    _wait_until(lambda t=target: _last_step(workdir) >= t, [proc])
    if moment == "step":
      time.sleep(rng.uniform(0, 0.05))
    done = _last_step(workdir)  # Completed steps, as far as the files show.
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == preemption.EXIT_CODE, stderr[-3000:]
    stopped = _stopped_at(stderr)
    assert f"Stopped by {signum.name}" in stderr
    if start:
      assert f"Resumed from step {start} " in stderr
    assert done <= stopped < num_steps  # No completed step is lost.
    assert _steps(workdir / "checkpoints")[-1] == stopped
    in_flight = "waiting for the checkpoint save in flight" in stderr
    print(
      f"{signum.name} after step {done} was logged: stopped at {stopped}, in flight: {in_flight}"
    )
    waited += in_flight
    start = stopped
  assert waited >= 1  # At least one signal came during an async save.

  proc = _start(_main(workdir, num_steps), env)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert f"Resumed from step {start} " in stderr

  config, final = _reference(tmp_path / "reference", num_steps, cache_dir)
  assert _records(workdir) == _records(tmp_path / "reference")  # Every step's loss, bit for bit.
  resumed = _restore(config, workdir / "checkpoints")
  assert _max_difference(resumed, final) == 0.0


# -- Two JAX processes -----------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _emitted_command(tmp_path, num_steps, cache_dir):
  """The first command `python -m launch.sweep --emit_commands` prints for the tiny sweep (bp)."""
  overrides = {**FLAGS, "num_steps": num_steps, "distributed": True}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.sweep",
      f"--config={TINY}",
      f"--workdir={tmp_path / 'sweep'}",
      "--emit_commands",
      *(f"--config.{k}={v}" for k, v in overrides.items()),
    ],
    cwd=ROOT,
    env=_env(cache_dir),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  command = shlex.split(result.stdout.splitlines()[0])
  assert command[1:3] == ["-m", "launch.main"] and "--config.distributed=True" in command
  return command, command[4].split("=", 1)[1]  # The point's workdir.


def _start_two(command, cache_dir):
  port = _free_port()
  procs = []
  for index in range(2):
    env = _env(
      cache_dir,
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(index),
      XLA_FLAGS="--xla_force_host_platform_device_count=2",  # 2 CPU devices per process.
    )
    procs.append(_start(command, env))
  return procs


def test_two_processes_equal_one_and_survive_sigterm_and_kill(tmp_path, cache_dir):
  num_steps = 40
  command, workdir = _emitted_command(tmp_path, num_steps, cache_dir)
  checkpoints = os.path.join(workdir, "checkpoints")

  # 1. SIGTERM to process 1 only: both stop at the same step, after saving it once.
  procs = _start_two(command, cache_dir)
  _wait_until(lambda: _last_step(workdir) >= 6, procs)
  procs[1].send_signal(signal.SIGTERM)
  results = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [preemption.EXIT_CODE] * 2, results[0][1][-3000:]
  stopped = {_stopped_at(err) for _, err in results}
  assert len(stopped) == 1 and "(all 2 processes)" in results[0][1]
  (stopped,) = stopped
  assert _steps(checkpoints)[-1] == stopped

  # 2. Restart both, kill -9 one of them after the next checkpoint, then the other.
  procs = _start_two(command, cache_dir)
  next_save = (stopped // FLAGS["checkpoint_every"] + 1) * FLAGS["checkpoint_every"]
  # A committed checkpoint (orbax renames its temporary folder to the step when complete).
  _wait_until(lambda: (_steps(checkpoints) or [0])[-1] >= next_save, procs)
  procs[0].kill()
  procs[0].wait()
  try:  # The other process loses its peer; a scheduler would stop it, as here.
    procs[1].wait(timeout=5)
  except subprocess.TimeoutExpired:
    procs[1].kill()
    procs[1].wait()
  resume = _steps(checkpoints)[-1]
  assert resume >= next_save

  # 3. Restart both: the run resumes from the newest checkpoint and finishes.
  procs = _start_two(command, cache_dir)
  results = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], results[1][1][-3000:]
  assert all(f"Resumed from step {resume} " in err for _, err in results)

  # One set of files, written by process 0 once: one record per step, one checkpoint per step.
  records = _records(workdir)
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, num_steps + 1))
  assert _steps(checkpoints) == [num_steps - FLAGS["checkpoint_every"], num_steps]
  assert json.loads(open(os.path.join(workdir, "run.json")).read())["process_count"] == 2

  # The same global batch in one process, on as many devices (4): the same trajectory.
  config, final = _reference(tmp_path / "one", num_steps, cache_dir, mesh={"data": 4})
  reference = _records(tmp_path / "one")
  assert [r["step"] for r in reference] == [r["step"] for r in records]
  losses = np.array([r["loss"] for r in records])
  loss_difference = np.max(np.abs(losses - [r["loss"] for r in reference]))
  two = _restore(config, checkpoints)
  difference = _max_difference(two.params, final.params)
  # Not bit for bit: gloo sums across processes in another order than XLA within one.
  print(f"2 processes vs 1: max |loss diff| {loss_difference}, max |param diff| {difference}")
  assert loss_difference < 1e-5 and difference < 1e-4


def test_processes_read_disjoint_parts_of_each_global_batch():
  """What each of two processes reads (fajax.data, as the trainer calls it) is its own half."""
  for step in (0, 1, 44, 45):  # 44 global batches of 32 per epoch of 1,433 digits.
    whole = next(
      data_lib.get("digits", "train", 32, start_step=step, process_index=0, process_count=1)
    )
    parts = [
      next(data_lib.get("digits", "train", 16, start_step=step, process_index=p, process_count=2))
      for p in range(2)
    ]
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    flat = [p["image"].reshape(16, -1) for p in parts]
    assert not any((flat[0][:, None] == flat[1][None]).all(-1).ravel())  # No shared example.


# -- A gs:// workdir -----------------------------------------------------------------------------


def test_a_gs_workdir_trains_stops_and_resumes_against_a_gcs_emulator(tmp_path, cache_dir):
  pytest.importorskip("gcsfs")
  pytest.importorskip("gcp_storage_emulator")
  import gcs_emulator
  from gcsfs.core import GCSFileSystem  # The plain client (see gcs_emulator's docstring).

  server, variables = gcs_emulator.start()
  try:
    fs = GCSFileSystem(
      endpoint_url=variables["STORAGE_EMULATOR_HOST"], token="anon", skip_instance_cache=True
    )
    run = f"{gcs_emulator.BUCKET}/run"

    def last_step():
      try:
        lines = fs.cat(f"{run}/{metrics_lib.METRICS_FILE}").decode().splitlines()
      except FileNotFoundError:
        return 0
      return json.loads(lines[-1])["step"] if lines else 0

    num_steps, env = 12, _env(cache_dir, **variables)
    command = _main(f"gs://{run}", num_steps, eval_every=num_steps)
    proc = _start(command, env)
    _wait_until(lambda: last_step() >= 5, [proc], every=0.05)  # The emulator serves one at a time.
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == preemption.EXIT_CODE, stderr[-3000:]
    stopped = _stopped_at(stderr)
    assert fs.exists(f"{run}/checkpoints/{stopped}/state")

    proc = _start(command, env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"Resumed from step {stopped} of gs://{run}/checkpoints" in stderr

    names = {path.split("/", 2)[2] for path in fs.find(run)}
    assert {"config.json", "run.json", "metrics.jsonl"} <= names
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in names)
    assert {n.split("/")[1] for n in names if n.startswith("checkpoints/")} == {"8", "12"}
    records = [json.loads(line) for line in fs.cat(f"{run}/metrics.jsonl").decode().splitlines()]
  finally:
    server.stop()
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # Nothing went to a local look-alike.
  _reference(tmp_path / "local", num_steps, cache_dir, eval_every=num_steps)
  drop = metrics_lib.TIMING_KEYS
  assert [{k: v for k, v in r.items() if k not in drop} for r in records] == _records(
    tmp_path / "local"
  )


def test_the_path_layer_does_the_same_on_a_local_folder_and_on_gs(tmp_path):
  pytest.importorskip("gcsfs")
  pytest.importorskip("gcp_storage_emulator")
  import gcs_emulator

  server, variables = gcs_emulator.start()
  try:
    result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tests", "paths_check.py"), str(tmp_path), "gs://bkt/p"],
      env=dict(os.environ, **variables),
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    server.stop()
  assert result.returncode == 0, result.stderr[-3000:]
  local, remote = json.loads(result.stdout)
  assert (
    local
    == remote
    == {
      "listdir": ["a.txt", "log"],
      "a.txt": "two",
      "log": "x\ny\nz\n",
      "moved": "b",
      "moved is a folder": True,
      "source gone": True,
      "events": "e1e2",
    }
  )


def test_distributed_settings_come_from_arguments_then_environment(monkeypatch):
  from fajax.train import distributed

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings() == {
    "coordinator_address": "10.0.0.1:1234",
    "num_processes": 4,
    "process_id": 3,
  }
  assert distributed.settings("host0:99", process_id=1)["coordinator_address"] == "host0:99"
  assert distributed.settings("host0:99", process_id=1)["process_id"] == 1
  with pytest.raises(ValueError, match="The process id is 4; with 4 processes use 0 to 3."):
    distributed.settings(process_id=4)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES = 'two' is not valid; use an integer."):
    distributed.settings()
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  assert distributed.settings() == {}  # Left to JAX's cluster detection.
