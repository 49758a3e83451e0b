"""Train-step time of an NNX model (through fajax.nnx.Bridge) against its Linen twin.

    python -m benchmarks.nnx_step_time                         # mnist_net, bp/fa/usf, ~3 minutes
    python -m benchmarks.nnx_step_time --models mnist_net,resnet20 --rules bp,fa,usf,brsf

What is timed: the trainer's own jitted, donated train step (`fajax.train.build.build(...)
.train_step`, one device) for the same config, once with the Linen zoo model
(`fajax.models.get`) and once with its NNX twin (`fajax.nnx.models`), from the same state (the
twins have the same variables, so one state serves both) on a fixed random batch on the device.
Each round times k steps of the Linen step, the NNX step and the Linen step again (the control),
in an order that rotates every round, so that machine drift and the place in the round hit all
alike; the medians of the per-round ratios NNX / Linen and control / Linen (the noise floor) are
reported with quartiles, plus op counts of both compiled programs and whether they are the same
program once names and source metadata are removed (the Bridge builds the NNX model at trace
time only).

Writes benchmarks/results/nnx_step_time.{md,json} (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.hardware_info import cpu_model
from fajax import train
from fajax.nnx import models as nnx_models
from fajax.train import build as build_lib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

DATASETS = {"mnist_net": "mnist5k", "resnet20": "cifar10"}


class _Info:
  """Dataset info without the dataset: only shapes are needed here."""

  def __init__(self, image_shape, num_classes=10):
    self.image_shape, self.num_classes = image_shape, num_classes
    self.num_train, self.num_test = 50_000, 10_000


class _Shapes:
  """A stand-in dataset provider: `info` only (the benchmark feeds its own batch)."""

  def __init__(self, image_shape):
    self._info = _Info(image_shape)

  def info(self, name, **options):
    del name, options
    return self._info


def _config(model, rule, batch):
  config = train.default_config()
  config.dataset, config.model, config.rule = DATASETS[model], model, rule
  config.batch_size, config.num_steps = batch, 1000
  config.mesh = {"data": 1, "model": 1}
  config.optimizer, config.weight_decay = "momentum", 5e-4
  return config


def _ops(compiled) -> dict[str, int]:
  text = compiled.as_text()
  return {op: len(re.findall(rf"\b{op}\(", text)) for op in ("convolution", "dot", "fusion")}


def _program(compiled) -> list[str]:
  """The compiled HLO without names, source metadata and stack-frame tables."""
  text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
  text = re.sub(r"%[\w.\-]+", "%x", text)
  text = re.sub(r"\b([A-Za-z_][\w\-]*)\.\d+\b", r"\1", text)  # numbered names (parameters)
  skip = re.compile(r"^\s*(FileNames|FunctionNames|FileLocations|StackFrames|\d+ )")
  return [line for line in text.splitlines() if not skip.match(line)]


def measure(model, rule, batch, rounds, steps, warmup):
  shape = nnx_models.INPUT_SHAPES[model]
  data = _Shapes(shape)
  config = _config(model, rule, batch)
  devices = jax.devices()[:1]
  linen = build_lib.build(config, dataset=data, devices=devices)
  nnx_exp = build_lib.build(config, model=nnx_models.MODELS[model], dataset=data, devices=devices)
  # "control" runs the Linen step again, as a third entry: Linen / Linen is the noise floor.
  exps = {"linen": linen, "nnx": nnx_exp, "control": linen}
  state0 = linen.init(jax.random.PRNGKey(0))
  batch_ = {
    "image": jax.random.normal(jax.random.key(1), (batch, *shape)),
    "label": jax.random.randint(jax.random.key(2), (batch,), 0, 10),
  }
  batch_ = jax.device_put(batch_, linen.batch_sharding)
  states, compiled = {}, {}
  for name, exp in exps.items():
    state = jax.tree.map(jnp.copy, state0)
    compiled[name] = exp.train_step.lower(state, batch_).compile()
    for _ in range(warmup):
      state, metrics = compiled[name](state, batch_)
    jax.block_until_ready(metrics)
    states[name] = state
  names = list(exps)
  times = {name: [] for name in names}
  for i in range(rounds):
    # Interleaved, the order rotating every round: drift and the place in the round cancel.
    for name in names[i % 3 :] + names[: i % 3]:
      state = states[name]
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled[name](state, batch_)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / steps)
      states[name] = state
  row = {
    "model": model,
    "rule": rule,
    "batch": batch,
    "linen_ms": 1e3 * statistics.median(times["linen"]),
    "nnx_ms": 1e3 * statistics.median(times["nnx"]),
    "ops_linen": _ops(compiled["linen"]),
    "ops_nnx": _ops(compiled["nnx"]),
    "same_program": _program(compiled["linen"]) == _program(compiled["nnx"]),
  }
  for key, other in (("ratio", "nnx"), ("control", "control")):
    ratios = [o / li for o, li in zip(times[other], times["linen"], strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    row.update({f"{key}_median": statistics.median(ratios), f"{key}_q1": q[0], f"{key}_q3": q[2]})
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mnist_net")
  parser.add_argument("--rules", default="bp,fa,usf")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed measure")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/nnx_step_time"))
  args = parser.parse_args(argv)
  header = {
    "command": "python " + " ".join(["benchmarks/nnx_step_time.py", *sys.argv[1:]]),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cpu": cpu_model(),
    "platform": platform.platform(),
    "backend": jax.default_backend(),
    "load_average_at_start": os.getloadavg(),
    "jax": jax.__version__,
  }
  rows = []
  for model in args.models.split(","):
    for rule in args.rules.split(","):
      row = measure(model, rule, args.batch, args.rounds, args.steps, args.warmup)
      rows.append(row)
      print(
        f"{model:10s} {rule:6s} linen {row['linen_ms']:8.2f} ms  nnx {row['nnx_ms']:8.2f} ms  "
        f"nnx/linen {row['ratio_median']:.3f} [{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]  "
        f"control {row['control_median']:.3f} [{row['control_q1']:.3f}, {row['control_q3']:.3f}]  "
        f"ops {row['ops_linen']} vs {row['ops_nnx']}  same program: {row['same_program']}",
        flush=True,
      )
  with open(args.out + ".json", "w") as f:
    json.dump({"header": header, "rows": rows}, f, indent=1)
  lines = [
    "# NNX vs Linen train-step time",
    "",
    *(f"- {k}: {v}" for k, v in header.items()),
    "",
    "Same program: the two compiled HLO modules are equal once instruction names, source",
    "metadata and stack-frame tables are removed.",
    "",
    "Control: the Linen step timed again as a third entry of every round (Linen / Linen: the",
    "noise floor of this machine at the time).",
    "",
    "| model | rule | batch | Linen ms | NNX ms | NNX / Linen (median [q1, q3]) | "
    "control (median [q1, q3]) | ops Linen | ops NNX | same program |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['model']} | {r['rule']} | {r['batch']} | {r['linen_ms']:.2f} | {r['nnx_ms']:.2f} | "
      f"{r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] | "
      f"{r['control_median']:.3f} [{r['control_q1']:.3f}, {r['control_q3']:.3f}] | "
      f"{r['ops_linen']} | {r['ops_nnx']} | {r['same_program']} |"
    )
  with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("wrote", args.out + ".md")
  return np.array([r["ratio_median"] for r in rows])


if __name__ == "__main__":
  main()
