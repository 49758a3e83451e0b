"""No lost or silently wrong run, and one sentence for every mistake (issue 13).

In-process runs for the trainer's own logic (NaN remedies, resume rules, checksums, skip storms);
real processes where the point is about processes (the workdir lock, the launchers' errors).
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import (  # noqa: F401 (compilation_cache: the module's shared compile cache)
  PoisonedDigits,
  TinyNet,
  assert_trees_equal,
  compilation_cache,
  host,
  records,
  run,
  tiny_config,
)

import fajax
from fajax import data as data_lib
from fajax import train
from fajax.train import build as build_lib
from fajax.train import checkpoint as checkpoint_lib
from fajax.train import lock as lock_lib
from fajax.train import resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = ("-m", "launch.main")  # run from ROOT, as the README says


def experiment_config(path, arg=None):
  """get_config(arg) of an experiments/ file."""
  spec = importlib.util.spec_from_file_location("experiment", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# -- 1. A NaN stop resumes with either remedy its message names -----------------------------------


def test_nan_stop_resumes_with_on_nan_skip_from_the_saved_state(tmp_path):
  config = tiny_config(num_steps=6, checkpoint_every=3, rule="fa")
  poisoned = PoisonedDigits(index=4)  # Bad data: the parameters before it are fine.
  with pytest.raises(train.NonFiniteLossError, match="at step 5; the last good checkpoint"):
    run(config, tmp_path, dataset=poisoned)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  state, _ = ckpt.restore_latest(build_lib.build(config, model=TinyNet).abstract_state)
  ckpt.close()
  assert int(state.step) == 4 and int(state.nonfinite_step) == -1  # Saved without the flag.

  config.on_nan = "skip"
  state = run(config, tmp_path, dataset=poisoned)
  assert int(state.step) == 6 and int(state.skipped) == 1
  logged = records(tmp_path)
  assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
  assert logged[4]["loss"] is None and logged[4]["skipped_steps"] == 1  # Strict JSON: null.


def test_nan_stop_resumes_with_a_lower_learning_rate_from_before_the_divergence(tmp_path):
  diverging = tiny_config(optimizer="adam", learning_rate=1e20, num_steps=4, checkpoint_every=2)
  with pytest.raises(train.NonFiniteLossError, match="at step 2; the last good checkpoint"):
    run(diverging, tmp_path / "run")
  # Step 1's update diverged (parameters ~1e20): a lower rate restarts before it, from step 0,
  # and ends exactly like a fresh run with that rate. The diverged checkpoint is kept aside.
  lower = tiny_config(optimizer="adam", learning_rate=1e-2, num_steps=4, checkpoint_every=2)
  resumed = run(lower, tmp_path / "run")
  fresh = run(lower, tmp_path / "fresh")
  assert_trees_equal(fresh.params, resumed.params)
  assert records(tmp_path / "run") == records(tmp_path / "fresh")
  aside = sorted(os.listdir(tmp_path / "run" / resume.NONFINITE_DIR))
  assert aside[0].startswith("1-") and aside[1] == "metrics-1.jsonl"


# -- 2. Which fields may change on resume ---------------------------------------------------------


def test_resume_refuses_changed_fields_by_name_and_allows_free_ones(tmp_path):
  run(tiny_config(num_steps=2, checkpoint_every=0), tmp_path)
  changed = tiny_config(num_steps=2, learning_rate=0.05, seed=1)
  with pytest.raises(resume.ConfigChanged) as info:
    run(changed, tmp_path)
  message = str(info.value)
  assert "made with another config: learning_rate 0.1 there, 0.05 now; seed 0 there, 1 now;" in (
    message
  )
  assert "num_steps" in message.split("may change on resume")[1]
  assert [r["step"] for r in records(tmp_path)] == [1, 2]  # Nothing was touched.
  # Longer, other intervals, one checkpoint kept: free. The constant schedule makes the extended
  # run equal an uninterrupted one.
  extended = run(tiny_config(num_steps=4, log_every=2, keep_checkpoints=1), tmp_path)
  uninterrupted = run(tiny_config(num_steps=4), tmp_path / "full")
  assert_trees_equal(uninterrupted.params, extended.params)


def test_sweep_names_finished_points_made_with_other_settings(tmp_path):
  # A finished point as an earlier sweep left it, with another learning rate.
  point = tmp_path / "bp-seed0"
  point.mkdir()
  (point / "done.json").write_text("{}")
  config = experiment_config("experiments/mnist_net.py", "bp")
  config.update(dataset="digits", learning_rate=0.5, num_steps=3, num_epochs=None)
  (point / "config.json").write_text(config.to_json_best_effort())
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.sweep",
      "--config=experiments/mnist_net.py",
      "--rows=bp",
      "--config.dataset=digits",
      "--config.num_epochs=None",
      "--config.num_steps=3",
      f"--workdir={tmp_path}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 2
  assert "bp-seed0: made with other settings (learning_rate 0.5 there, 0.001 now" in result.stdout
  assert "done, skipped" not in result.stdout and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("Error: 1 finished points in ")
  assert sorted(os.listdir(point)) == ["config.json", "done.json"]


# -- 4. Checksums catch bit rot -------------------------------------------------------------------


class WideNet(nn.Module):
  """digits -> 512 -> classes: its kernel is big enough for orbax to store it as raw bytes (small
  arrays are inlined into zstd-compressed index nodes, where a flip fails loudly anyway)."""

  num_classes: int
  rule: object = None
  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(fajax.Dense(512, rule=self.rule)(x.reshape((x.shape[0], -1)) / 16.0))
    return fajax.Dense(self.num_classes, rule=self.rule)(x)


def _restore_bypassing_checksums(checkpoints, abstract):
  with ocp.CheckpointManager(checkpoints) as manager:
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    return host(manager.restore(4, args=args)["state"])


def _differing_leaves(a, b):
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return sum(not np.array_equal(x, y) for x, y in pairs)


def _flip_a_bit_orbax_reads_silently(checkpoints, abstract, final):
  """Flips one bit of step 4's largest data file such that orbax alone restores it without
  complaint, into numbers where exactly one leaf differs; returns how many leaves differ.

  Where the bit lands in OCDBT's data files varies from save to save (some bytes are index or
  slack that no array reads), so bits are tried from the middle outwards until one is read."""
  # Undamaged, the bypassing restore gives the run's state: any later difference is the flip's.
  assert _differing_leaves(_restore_bypassing_checksums(checkpoints, abstract), final) == 0
  step_dir = checkpoints / "4" / "state"
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
  path = max(files, key=os.path.getsize)
  size = os.path.getsize(path)
  # 997 bytes apart (a prime): the tries do not all land at the same place of 4-byte floats.
  offsets = [size // 2 + k * 997 for k in sorted(range(-20, 21), key=abs)]
  last_error = None
  for offset in [o for o in offsets if 0 <= o < size]:
    with open(path, "r+b") as f:
      f.seek(offset)
      byte = f.read(1)[0]
      f.seek(offset)
      f.write(bytes([byte ^ 0x10]))
    try:
      silent = _restore_bypassing_checksums(checkpoints, abstract)
    except Exception as error:  # Index or compressed bytes fail loudly (any of several libraries'
      last_error = error  # errors): not the silent case this test is about.
    else:
      if differ := _differing_leaves(silent, final):
        return differ
    with open(path, "r+b") as f:  # Undo and try another byte.
      f.seek(offset)
      f.write(bytes([byte]))
  raise AssertionError(f"no single-bit flip in {path} changed what orbax restores") from last_error


def test_a_flipped_bit_in_a_checkpoint_is_caught_and_the_previous_step_used(tmp_path):
  config = tiny_config(num_steps=4, checkpoint_every=2)
  final = host(run(config, tmp_path, model=WideNet))
  abstract = build_lib.build(config, model=WideNet).abstract_state
  # Orbax alone reads the damaged step without complaint, into other numbers.
  assert _flip_a_bit_orbax_reads_silently(tmp_path / "checkpoints", abstract, final) == 1
  # The checksum catches it: step 4 is moved aside, step 2 restored, steps 3-4 trained again.
  resumed = run(config, tmp_path, model=WideNet)
  assert_trees_equal(final.params, resumed.params)
  assert sorted(os.listdir(tmp_path / "corrupt_checkpoints"))[0].startswith("4-")


# -- 5. Skip storms -------------------------------------------------------------------------------


class DivergedDigits(PoisonedDigits):
  """NaN images from training batch `index` on."""

  def get(self, name, split, batch_size, *, start_step=0, **kwargs):
    batches = data_lib.get(name, split, batch_size, start_step=start_step, **kwargs)
    for k, batch in enumerate(batches, start=start_step):
      if split == "train" and k >= self.index:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      yield batch


def test_a_skip_storm_stops_with_one_sentence_and_metrics_stay_json(tmp_path):
  config = tiny_config(num_steps=20, on_nan="skip", max_consecutive_skips=3)
  with pytest.raises(train.NonFiniteLossError) as info:
    run(config, tmp_path, dataset=DivergedDigits(index=2))
  assert str(info.value).startswith(
    "Loss was non-finite for 3 steps in a row, steps 3 to 5 (config.max_consecutive_skips = 3); "
    "the last good state (step 6) is in "
  )
  text = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in text and "Infinity" not in text
  logged = [json.loads(line) for line in text.splitlines()]  # Strict JSON parses.
  assert [r["loss"] is None for r in logged] == [False, False, True, True, True]
  assert checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [6]
  # A lower learning rate would roll back before the parameters that first failed (2 updates).
  marker = json.loads((tmp_path / resume.NONFINITE_FILE).read_text())
  assert marker == {"nonfinite_step": 3, "checkpoint_step": 6, "diverged_at": 2}


# -- 3. The workdir lock, with real processes -----------------------------------------------------


def _python(code, *args, env=None, **kwargs):
  return subprocess.Popen(
    [sys.executable, "-c", code, *args],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def _launch(*args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, *LAUNCH, *args],
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _compile_cache(tmp_path):
  """Environment that lets the processes of a test share their compiled steps."""
  return {
    "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


def _wait_for(path, process, timeout=240):
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.2)


# A real training run (tiny.py, 4 steps) that pauses after step 2 until it is killed.
_PAUSED_RUN = """
import importlib.util, sys, time
from fajax import train
spec = importlib.util.spec_from_file_location("tiny", "experiments/tiny.py")
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
config = tiny.get_config()
config.update(num_steps=4, checkpoint_every=2, progress_bar=False)
def pause(step, state, metrics):
  if step == 2:
    open(sys.argv[2], "w").close()
    time.sleep(600)
train.train_and_evaluate(config, sys.argv[1], callbacks=[pause])
"""


def test_a_live_run_locks_its_workdir_and_a_killed_one_does_not(tmp_path):
  workdir, paused = tmp_path / "run", tmp_path / "paused"
  cache = _compile_cache(tmp_path)
  first = _python(_PAUSED_RUN, str(workdir), str(paused), env=cache)
  try:
    _wait_for(paused, first)
    logged = (workdir / "metrics.jsonl").read_text()
    second = _launch("--config=experiments/tiny.py", f"--workdir={workdir}")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    owner = f"pid {first.pid} on host {socket.gethostname()} holds it since"
    assert (
      second.stderr.strip()
      .splitlines()[-1]
      .startswith(f"Error: The workdir {workdir} is in use by another run: {owner}")
    )
    assert (workdir / "metrics.jsonl").read_text() == logged  # The live run's files untouched.
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  assert json.loads((workdir / lock_lib.LOCK_FILE).read_text())["pid"] == first.pid  # Left.
  restart = _launch(
    "--config=experiments/tiny.py",
    "--config.num_steps=4",
    "--config.checkpoint_every=2",
    "--config.progress_bar=False",
    f"--workdir={workdir}",
    env=cache,
  )
  assert restart.returncode == 0, restart.stderr[-3000:]
  assert f"Replacing the stale lock of pid {first.pid}" in restart.stderr
  assert not (workdir / lock_lib.LOCK_FILE).exists()  # Released at the end.
  assert [r["step"] for r in records(workdir)] == [4]  # tiny.py logs every 10 steps, and the last.


def test_locks_of_other_hosts_go_stale_by_heartbeat_and_torn_ones_by_age(tmp_path):
  path = tmp_path / lock_lib.LOCK_FILE
  now = time.time()
  for heartbeat, live in ((now - 5, True), (now - lock_lib.STALE_SECONDS - 1, False)):
    owner = {"host": "another-host", "pid": 1, "started": 0, "heartbeat": heartbeat}
    path.write_text(json.dumps(owner))
    if live:  # Its processes cannot be seen from here: only the heartbeat tells.
      with pytest.raises(lock_lib.WorkdirLocked, match="pid 1 on host another-host holds it"):
        lock_lib.WorkdirLock(tmp_path).acquire()
    else:
      lock_lib.WorkdirLock(tmp_path).acquire().release()
      assert not path.exists()
  path.write_text("")  # A crash between creating the lock and writing it, long ago.
  os.utime(path, (now - 60, now - 60))
  with lock_lib.WorkdirLock(tmp_path):
    assert json.loads(path.read_text())["pid"] == os.getpid()


# Two real processes of one distributed run. The injected dataset stops the run at its first batch
# (after the lock and the state's initialisation), so the test compiles no train step.
_TWO_PROCESS_RUN = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process)
from fajax import data, train
from fajax.train import errors

class FirstBatchStops:
  info = staticmethod(data.info)
  def get(self, *args, **kwargs):
    raise errors.UserError("stopped at the first batch")

config = train.default_config()
config.update(dataset="digits", batch_size=8, num_steps=2, progress_bar=False, distributed=True)
run = lambda argv: train.train_and_evaluate(config, workdir, dataset=FirstBatchStops())
errors.one_sentence_errors(run)([])
"""


def _two_processes(workdir):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  processes = [_python(_TWO_PROCESS_RUN, str(i), port, str(workdir), env=env) for i in range(2)]
  return [(p.wait(timeout=300), p.communicate()[1]) for p in processes]


def test_a_multi_process_run_is_refused_on_every_process_and_takes_a_stale_lock(tmp_path):
  holder = _python(
    "import sys, time; from fajax.train import lock; lock.WorkdirLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); time.sleep(600)",
    str(tmp_path),
  )
  try:
    assert holder.stdout.readline() == "locked\n"
    for rc, stderr in _two_processes(tmp_path):  # Both stop, neither waits for the other.
      assert rc == 2 and "is in use by another run" in stderr and f"pid {holder.pid}" in stderr
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
  (rc0, stderr0), (rc1, stderr1) = _two_processes(tmp_path)
  assert f"Replacing the stale lock of pid {holder.pid}" in stderr0  # Process 0 owns the lock.
  for rc, stderr in ((rc0, stderr0), (rc1, stderr1)):
    assert rc == 2 and stderr.strip().endswith("Error: stopped at the first batch")
  assert not (tmp_path / lock_lib.LOCK_FILE).exists()  # Released on the error path too.


# -- 6. One sentence, no traceback, nothing written, for every user mistake -----------------------


def test_every_user_mistake_is_one_sentence_before_anything_is_written(tmp_path):
  (tmp_path / "a_file").write_text("")
  (tmp_path / "ckpt_file" / "checkpoints").parent.mkdir()
  (tmp_path / "ckpt_file" / "checkpoints").write_text("")
  tiny = "--config=experiments/tiny.py"
  cases = {
    "bad value": (
      [tiny, "--config.optimizer=lbfgs"],
      "config.optimizer = 'lbfgs' is not valid; choose one of 'sgd', ",
    ),
    "missing config file": (
      ["--config=experiments/nope.py", "--config.seed=1"],
      "The config file experiments/nope.py does not exist; give --config=",
    ),
    "unknown row": (
      ["--config=experiments/mnist_net.py:bq"],
      "Unknown table row 'bq'; valid rows are bp, ",
    ),
    "full where the config has no full size": (
      ["--config=experiments/depth.py:fa,full"],
      "This config has no full-size variant (it runs mnist5k only); drop 'full' from the config ",
    ),
    "missing dataset": (
      [tiny, "--config.dataset=cifar10", f"--config.data_dir={tmp_path / 'tfds'}"],
      f"Dataset 'cifar10' is not prepared in {tmp_path / 'tfds'}; prepare it ",
    ),
    "unwritable workdir": (
      [tiny, "--workdir=/proc/fajax_run"],
      "Cannot write to the workdir /proc/fajax_run (",
    ),
    "workdir is a file": (
      [tiny, f"--workdir={tmp_path / 'a_file'}"],
      f"--workdir {tmp_path / 'a_file'} is a file; give a folder",
    ),
    "checkpoints is a file": (
      [tiny, f"--workdir={tmp_path / 'ckpt_file'}"],
      f"{tmp_path / 'ckpt_file' / 'checkpoints'} is a file where the run keeps its checkpoints",
    ),
    "batch larger than the data": (
      [tiny, "--config.batch_size=4096"],
      "config.batch_size = 4096 is larger than the 1433 training examples of 'digits'; ",
    ),
  }
  processes = {}
  for name, (args, _) in cases.items():
    if not any(a.startswith("--workdir") for a in args):
      args = [*args, f"--workdir={tmp_path / name.replace(' ', '_')}"]
    processes[name] = subprocess.Popen(
      [sys.executable, *LAUNCH, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
  for name, (_, expected) in cases.items():
    stderr = processes[name].communicate(timeout=300)[1]
    assert processes[name].returncode == 2, (name, stderr[-2000:])
    assert "Traceback" not in stderr, (name, stderr[-2000:])
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {expected}"), (name, last)
  written = sorted(os.listdir(tmp_path))
  assert written == ["a_file", "ckpt_file"], written  # No workdir was created.
  assert os.listdir(tmp_path / "ckpt_file") == ["checkpoints"]


def test_the_traceback_is_there_when_asked_for(tmp_path):
  args = [*LAUNCH, "--config=experiments/tiny.py", "--config.seed=-1", f"--workdir={tmp_path}"]
  result = subprocess.run(
    [sys.executable, *args, "--verbosity=1"], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 1 and "Traceback" in result.stderr
  assert "UserError: config.seed = -1 is not valid" in result.stderr


# -- 7. Overrides as users type them --------------------------------------------------------------


def test_option_keys_and_num_epochs_none_from_the_command_line(tmp_path):
  # mnist_net.py sets num_epochs; the command line switches it to 2 steps.
  result = _launch(
    "--config=experiments/mnist_net.py:fa",  # Its rule_options and overrides are empty.
    "--config.rule=usf",
    "--config.dataset=digits",
    "--config.batch_size=32",
    "--config.num_epochs=None",
    "--config.num_steps=2",
    "--config.rule_options.scale=sn",
    "--config.overrides.Dense_0=bp",
    "--config.progress_bar=False",
    f"--workdir={tmp_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["rule_options"] == {"scale": "sn"} and config["overrides"] == {"Dense_0": "bp"}
  assert config["num_epochs"] is None and config["num_steps"] == 2
  run_info = json.loads((tmp_path / "run.json").read_text())
  assert run_info["num_steps"] == 2
  assert run_info["rule"] == "usf [Dense_0: bp]"
  # A value the rule refuses is named, proving the key reached the rule.
  bad = _launch("--config=experiments/tiny.py:usf", "--config.rule_options.scale=big", "--dry_run")
  assert bad.returncode == 2 and "config.rule_options / config.overrides are not valid" in (
    bad.stderr
  )
