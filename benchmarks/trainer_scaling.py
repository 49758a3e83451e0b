"""Trainer step time on 1 vs 8 (fake) devices, and checkpoint save time.

  python -m benchmarks.trainer_scaling    # writes benchmarks/results/trainer_scaling.md
  python -m benchmarks.trainer_scaling --model=mnist_net --batch_size=128 --steps=30

A process has a fixed number of devices, so each device count runs in its own subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=N and the same config (batch sharded over
'data'). Each child builds the trainer's jitted, donated step (fajax.train.build), runs warmup
steps, then times `--steps` steps one by one (block_until_ready after each) and reports the
median; then it saves the state with the trainer's orbax Checkpointer, async (time until the
call returns, and until the save is on disk) and sync.

Fake CPU devices share the host's cores: the 8-device number measures the cost of the sharded
program (partitioning, collectives, per-device dispatch) on the same silicon, not a speedup.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "trainer_scaling.md")


def child(args):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax

  from fajax import train
  from fajax.train import build as build_lib
  from fajax.train import checkpoint as checkpoint_lib
  from fajax.train import loop as loop_lib
  from fajax.train import state as state_lib

  config = train.default_config()
  config.update(
    dataset=args.dataset,
    model=args.model,
    rule=args.rule,
    batch_size=args.batch_size,
    num_steps=args.warmup + args.steps,
  )
  exp = build_lib.build(config)
  start = time.perf_counter()
  state = exp.init(jax.random.PRNGKey(0))
  batches = loop_lib.train_batches(exp, 0)
  state, metrics = exp.train_step(state, next(batches))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  for _ in range(args.warmup - 1):
    state, metrics = exp.train_step(state, next(batches))
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    batch = next(batches)
    jax.block_until_ready(batch)
    t = time.perf_counter()
    state, metrics = exp.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)

  saves = {}
  with tempfile.TemporaryDirectory() as tmp:
    for mode, async_save in (("async", True), ("sync", False)):
      ckpt = checkpoint_lib.Checkpointer(os.path.join(tmp, mode), async_save=async_save)
      for step in (1, 2):  # The first save also creates directories and metadata: time the second.
        t = time.perf_counter()
        ckpt.save(step, state, {"step": step})
        returned = time.perf_counter() - t
        ckpt.wait()
        done = time.perf_counter() - t
      saves[mode] = {"returned_s": returned, "on_disk_s": done}
      ckpt.close()
  print(
    "RESULT "
    + json.dumps(
      {
        "devices": len(exp.mesh.devices.flat),
        "step_median_s": statistics.median(times),
        "step_min_s": min(times),
        "images_per_s": args.batch_size / statistics.median(times),
        "first_step_s": compile_s,
        "state_mb": state_lib.num_bytes(state) / 1e6,
        "saves": saves,
      }
    )
  )


def run_child(args, devices):
  cmd = [sys.executable, "-m", "benchmarks.trainer_scaling", "--child", f"--devices={devices}"]
  for key in ("dataset", "model", "rule", "batch_size", "steps", "warmup"):
    cmd.append(f"--{key}={getattr(args, key)}")
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
  return json.loads(line[len("RESULT ") :])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="mnist5k")
  parser.add_argument("--model", default="mnist_net")
  parser.add_argument("--rule", default="fa")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  if args.child:
    return child(args)

  load = os.getloadavg()[0]
  results = [run_child(args, n) for n in (1, 8)]
  one, eight = results
  ratio = eight["step_median_s"] / one["step_median_s"]
  command = "python -m benchmarks.trainer_scaling " + " ".join(sys.argv[1:])
  rows = [
    f"| {r['devices']} | {1e3 * r['step_median_s']:.1f} | {1e3 * r['step_min_s']:.1f} | "
    f"{r['images_per_s']:.0f} | {r['first_step_s']:.1f} |"
    for r in results
  ]
  save_rows = [
    f"| {r['devices']} | {mode} | {1e3 * r['saves'][mode]['returned_s']:.0f} | "
    f"{1e3 * r['saves'][mode]['on_disk_s']:.0f} |"
    for r in results
    for mode in ("async", "sync")
  ]
  text = "\n".join(
    [
      "# Trainer scaling: 1 vs 8 fake CPU devices, checkpoint save time",
      "",
      f"Command: `{command.strip()}`  ",
      f"Date: {datetime.date.today().isoformat()}  ",
      f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
      f"(shared; 1-minute load average {load:.1f} at the start), {platform.system()}; fake "
      "devices via XLA_FLAGS, one subprocess each  ",
      f"Config: {args.model} on {args.dataset}, rule {args.rule}, global batch {args.batch_size} "
      f"(sharded over 'data'), {args.steps} timed steps after {args.warmup} warmup steps; "
      f"state {one['state_mb']:.1f} MB.",
      "",
      "| devices | step median (ms) | step min (ms) | images/s | first step incl. compile (s) |",
      "|---|---|---|---|---|",
      *rows,
      "",
      f"8-device / 1-device step time: **{ratio:.2f}x**. Fake devices share the host's cores: "
      "the ratio shows the cost of the sharded program (partitioning, collectives, dispatch), "
      "or the gain of running the 8 per-device programs on parallel threads, not the speedup "
      "of 8 real devices, each of which would compute 1/8 of the batch.",
      "",
      "Checkpoint save of the full TrainState (orbax, second save of the run):",
      "",
      "| devices | mode | call returns (ms) | on disk (ms) |",
      "|---|---|---|---|",
      *save_rows,
      "",
      "Async: training continues once the call returns; the write finishes in a background thread.",
      "",
    ]
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
