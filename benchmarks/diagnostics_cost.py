"""Cost of the alignment diagnostics, and the alignment curves of fa / usf / bp on the MNIST net.

    python -m benchmarks.diagnostics_cost                 # both; writes the two outputs below
    python -m benchmarks.diagnostics_cost --skip_curves   # the timing only (about a minute)

1. Timing, in one process: the paper's MNIST net (`fajax.models.get("mnist_net")`, rule fa) on
   one batch, three jitted steps timed interleaved (median of --reps): the plain train step
   (diagnostics off); the step with `alignment_metrics` on every step (what the trainer's
   diagnostics step runs, with the step's own gradients passed as `rule_grads`); and a single
   step with `maybe_alignment_metrics(every=100)` (lax.cond) timed on a non-diagnostic step.
   The implied overhead of diagnostics every 100 steps is (t_on - t_off) / (100 * t_off).
2. Curves: trains the MNIST net on the embedded mnist5k train split (4,000 real digits) with
   fa, usf (scale=sn) and bp, logging the diagnostics every --every steps, and draws
   docs/alignment_mnist.png (update and delta angles) and docs/alignment_mnist_wb.png (W-B angle)
   with `fajax.plotting.plot_alignment_runs`.

Writes benchmarks/results/diagnostics_cost.md (command, hardware, date, numbers).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fajax
from benchmarks.hardware_info import cpu_model
from fajax import diagnostics, models, plotting

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "diagnostics_cost.md")
PNG = os.path.join(ROOT, "docs", "alignment_mnist.png")


def make_steps(model, rest, tx, every_cond=100):
  """Jitted train steps: diagnostics off, on (every call), and lax.cond every `every_cond`."""

  def step(params, opt_state, x, y, i, mode):
    rngs = {"feedback": jax.random.fold_in(jax.random.key(0), i)}

    def loss_fn(p, extra, mutable):
      logits, mutated = fajax.apply(
        model, {**rest, "params": p, **extra}, x, train=True, rngs=rngs, mutable=list(mutable)
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), mutated

    loss, grads = jax.value_and_grad(lambda p: loss_fn(p, {}, ())[0])(params)
    metrics = {}
    if mode == "on":
      metrics = diagnostics.alignment_metrics(loss_fn, params, rule_grads=grads)
    elif mode == "cond":
      metrics = diagnostics.maybe_alignment_metrics(i, every_cond, loss_fn, params, grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  return {
    mode: jax.jit(lambda *a, mode=mode: step(*a, mode=mode)) for mode in ("off", "on", "cond")
  }


def time_steps(batch_size, reps, rule="fa"):
  """Median seconds per step of each variant, timed interleaved on one fixed batch."""
  model = models.get("mnist_net", num_classes=10, rule=rule)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch_size, 28, 28, 1), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1])
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)
  steps = make_steps(model, rest, tx)
  # Step index 1: not a multiple of 100, so the cond variant skips the diagnostics.
  args = (params, opt_state, x, y, jnp.int32(1))
  for fn in steps.values():  # compile and warm up
    for _ in range(2):
      jax.block_until_ready(fn(*args))
  times = {mode: [] for mode in steps}
  for _ in range(reps):
    for mode, fn in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[mode].append(time.perf_counter() - t0)
  return {mode: float(np.median(t)) for mode, t in times.items()}


def mnist(split):
  from fajax.data import embedded

  return embedded.load("mnist5k", split)


def train_curves(rule, steps, every, batch_size, lr, seed=0):
  """Trains the MNIST net; returns (metrics records, final test error)."""
  images, labels = mnist("train")
  model = models.get("mnist_net", num_classes=10, rule=rule)
  variables = model.init(jax.random.key(seed), images[:1])
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(params)
  fns = make_steps(model, rest, tx)
  rng = np.random.default_rng(seed)
  records = []
  for i in range(steps + 1):
    idx = rng.integers(0, len(images), batch_size)
    mode = "on" if diagnostics.should_run(i, every) else "off"
    params, opt_state, loss, metrics = fns[mode](
      params, opt_state, images[idx], labels[idx], jnp.int32(i)
    )
    if mode == "on":
      record = {"step": i, "split": "train", "loss": float(loss)}
      record.update({k: float(v) for k, v in metrics.items()})
      records.append(record)
  test_x, test_y = mnist("test")
  logits = jax.jit(lambda p, x: fajax.apply(model, {**rest, "params": p}, x, train=False))(
    params, test_x
  )
  error = float(np.mean(np.argmax(np.asarray(logits), -1) != test_y))
  return records, error


def hardware():
  cpu = cpu_model()
  devices = jax.devices()
  return (
    f"{os.cpu_count()} CPU cores (nproc), {cpu}; JAX {jax.__version__} on "
    f"{devices[0].platform} ({len(devices)} device(s): {devices[0].device_kind})"
  )


def _mean_last(records, key, n=3):
  return float(np.mean([r[key] for r in records[-n:]]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--steps", type=int, default=500, help="training steps per rule (curves)")
  parser.add_argument("--every", type=int, default=20, help="diagnostics interval (curves)")
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--skip_curves", action="store_true")
  parser.add_argument("--results", default=RESULTS)
  parser.add_argument("--png", default=PNG)
  args = parser.parse_args()

  command = "python -m benchmarks.diagnostics_cost " + " ".join(sys.argv[1:])
  lines = [
    "# Cost of the alignment diagnostics",
    "",
    f"Command: `{command.strip()}`  ",
    f"Date: {datetime.date.today().isoformat()}  ",
    f"Hardware: {hardware()}",
    "",
  ]

  t0 = time.perf_counter()
  t = time_steps(args.batch_size, args.reps)
  extra = t["on"] - t["off"]
  lines += [
    f"## Step time, paper MNIST net (`mnist_net`, rule fa), batch {args.batch_size}",
    "",
    f"Median of {args.reps} interleaved repetitions, one process, fixed batch, after warm-up.",
    "",
    "| step | ms | vs off |",
    "|---|---|---|",
    f"| diagnostics off | {1e3 * t['off']:.3f} | 1.00x |",
    f"| diagnostics every step (`alignment_metrics`, rule_grads passed) | {1e3 * t['on']:.3f} | "
    f"{t['on'] / t['off']:.2f}x |",
    f"| single step with `maybe_alignment_metrics(every=100)`, non-diagnostic step | "
    f"{1e3 * t['cond']:.3f} | {t['cond'] / t['off']:.2f}x |",
    "",
    f"A diagnostic step costs {1e3 * extra:.3f} ms more than a plain one "
    f"({extra / t['off']:.2f} plain steps: the rule's delta pass plus the B := W pass).",
    f"Implied overhead with diagnostics every 100 steps (separate jitted diagnostics step, as "
    f"the trainer does): {100 * extra / (100 * t['off']):.2f}% of training time; every 10 "
    f"steps: {100 * extra / (10 * t['off']):.1f}%.",
    "",
  ]
  print("\n".join(lines), flush=True)
  timing_s = time.perf_counter() - t0

  if not args.skip_curves:
    t1 = time.perf_counter()
    runs, errors = {}, {}
    for label, rule in (
      ("fa", "fa"),
      ("usf (sn)", fajax.rules.get("usf", scale="sn")),
      ("bp", "bp"),
    ):
      runs[label], errors[label] = train_curves(
        rule, args.steps, args.every, args.batch_size, args.lr
      )
      print(f"{label}: test error {errors[label]:.3f}", flush=True)
    plotting.plot_alignment_runs(
      runs,
      args.png,
      title=f"MNIST net on mnist5k: update and delta angle to backprop, "
      f"SGD lr {args.lr}, batch {args.batch_size}",
    )
    wb_png = args.png.replace(".png", "_wb.png")
    plotting.plot_alignment_runs(
      runs,
      wb_png,
      title="MNIST net on mnist5k: angle between W and B",
      metrics=("wb_angle",),
    )
    layers = plotting.layers(runs["fa"])
    lines += [
      f"## Alignment curves ({args.steps} steps per rule, diagnostics every {args.every})",
      "",
      f"PNGs: `{os.path.relpath(args.png, ROOT)}` (update and delta angles), "
      f"`{os.path.relpath(wb_png, ROOT)}` (W-B angle). SGD momentum 0.9, lr {args.lr}, batch "
      f"{args.batch_size}, mnist5k train (4,000 digits); test error on its 1,000 test digits. "
      f"Angles in degrees, update / delta: first logged step -> mean of the last three. "
      f"Curves took {time.perf_counter() - t1:.0f} s.",
      "",
      "| rule | test error | " + " | ".join(layers) + " |",
      "|---|---|" + "---|" * len(layers),
    ]
    for rule, records in runs.items():
      cells = []
      for layer in layers:
        u, d = f"align/{layer}/update_angle", f"align/{layer}/delta_angle"
        cells.append(
          f"{records[0][u]:.0f} -> {_mean_last(records, u):.0f} / "
          f"{records[0][d]:.0f} -> {_mean_last(records, d):.0f}"
        )
      lines.append(f"| {rule} | {errors[rule]:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
  lines.append(f"Timing part took {timing_s:.0f} s.")
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines[-12:]))
  print(f"wrote {args.results}")


if __name__ == "__main__":
  main()
