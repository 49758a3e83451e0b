"""Train-step time of every learning rule against backprop, and against the PyTorch peer.

    python -m benchmarks.step_time                      # CPU defaults -> results/step_time_cpu.*
    python -m benchmarks.step_time --models mnist_net --rules bp,fa,usf --rounds 3
    python -m benchmarks.step_time --merge a.json b.json --out benchmarks/results/step_time_gpu

What is timed: the trainer's own jitted train step, built by `fajax.train.build` from a config
(`optimizer='momentum'`, learning rate 0.1, weight decay 5e-4 on kernels, one device, the state
donated): per-step rngs, `fajax.apply`, cross-entropy, `jax.value_and_grad`, the optax update, the
Kolen-Pollack update for kp, the non-finite guard, metrics. The batch is a fixed random batch
already on the device (input pipelines: benchmarks/data_throughput.py). Every registered rule
(`fajax.rules.names()`) is measured; a rule whose config `build` refuses (e.g. feedback over
--max_feedback_gb) is listed with the reason.

Beside each rule, on CPU, the same step with XLA's default compiler options (`fast_cpu=False`,
rules in --xla_default_rules) and the bare step without the trainer's extras (`bp (bare step)`:
apply + cross-entropy + value_and_grad + optax, no guard, kp or metrics) show what fajax's CPU
default and the trainer's extras change.

How, per model, in one process:
1. Every variant's step is built, its state initialised and the step compiled
   (`lower().compile()`, timed). Each compiled step then runs --warmup steps.
2. Rounds: each round times k consecutive steps (blocking on the result) of bp, variant_1, bp,
   variant_2, ..., then the peer's steps (bp, fa, usf, ...), so that machine drift over the run
   hits every variant alike. --rounds rounds.
3. Reported per variant: the median step time (and quartiles), the ratio of medians to bp (the
   same model, batch and dtype), images/s, compile time, memory and FLOPs of the compiled
   executable (`fajax.train.dry_run`'s), HLO op counts, and for the peer, fajax / peer ratios.
On GPU also `peak_bytes_in_use` of the device after the variant's warm-up (a running maximum, so
an upper bound for every variant after the first) and `torch.cuda.max_memory_allocated`.

Writes <out>.json and <out>.md (default benchmarks/results/step_time_cpu), rewritten after each
model so that an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.hardware_info import cpu_model
from fajax import compile as compile_lib
from fajax import models as models_lib
from fajax import rules as rules_lib
from fajax import train
from fajax.data import registry as data_registry
from fajax.train import build as build_lib
from fajax.train import state as state_lib
from fajax.train import step as step_lib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# The module, not the function `fajax.train.dry_run` that the package exports under its name.
dry_run_lib = importlib.import_module("fajax.train.dry_run")

DEFAULT_MODELS = ("mnist_net", "cifar10_arch1", "resnet20", "resnet18")
# Per-model CPU defaults: (batch, image size or None for the model's own, rounds, steps per
# measurement). ResNet-18 runs at 64x64 with batch 16 on CPU (224x224 on GPU, see gpu_run.sh).
MODEL_DEFAULTS = {
  "mnist_net": (64, None, 7, 2),
  "cifar10_arch1": (64, None, 7, 2),
  "resnet20": (64, None, 5, 1),
  "resnet18": (16, 64, 3, 1),
  "imagenet_arch2": (16, 64, 3, 1),
  "alexnet": (16, 64, 3, 1),
}
XLA_DEFAULT = " (XLA default)"  # label suffix: the step compiled with fast_cpu=False.
BARE = "bp (bare step)"


@dataclasses.dataclass(frozen=True)
class FixedShapes:
  """The dataset `build` is given: sizes only, since the benchmark feeds a fixed random batch."""

  num_classes: int
  image_shape: tuple[int, int, int]

  def info(self, name, **options):
    return data_registry.DatasetInfo(name, self.num_classes, self.image_shape, 50_000, 10_000)

  def get(self, *args, **kwargs):
    raise NotImplementedError("step_time.py feeds its own batch.")


def make_config(model, rule, *, batch, dtype, fast_cpu, max_feedback_gb):
  """The trainer config of one timed step (one device, SGD momentum, weight decay on kernels)."""
  c = train.default_config()
  c.dataset = "fixed_shapes"
  c.model, c.rule, c.dtype, c.batch_size, c.fast_cpu = model, rule, dtype, batch, fast_cpu
  c.optimizer, c.learning_rate, c.momentum, c.weight_decay = "momentum", 0.1, 0.9, 5e-4
  c.mesh = {"data": 1, "model": 1}
  c.feedback_memory_budget_gb = max_feedback_gb
  return c


def bare_step(state, batch, *, model, tx):
  """The bare step: fajax.apply + softmax CE + value_and_grad + optax (no kp, guard, metrics)."""
  rngs = step_lib.step_rngs(state.rng, state.step)

  def loss_fn(params):
    logits, mutated = step_lib.forward(model, state, params, batch["image"], rngs, train=True)
    return jnp.mean(step_lib.cross_entropy(logits, batch["label"])), mutated

  (loss, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    opt_state=opt_state,
    batch_stats=mutated.get("batch_stats", state.batch_stats),
  )
  return new, {"loss": loss}


def hlo_counts(text: str) -> dict:
  """Op counts in compiled HLO text: convolutions, dots, fusions, custom calls, instructions."""
  ops = re.findall(r"=\s*\S+\s+([a-z][a-z0-9\-_.]*)\(", text)
  count = lambda name: sum(op == name for op in ops)
  return {
    "convolution": count("convolution"),
    "dot": count("dot"),
    "fusion": count("fusion"),
    "custom-call": count("custom-call"),
    "instructions": len(ops),
  }


class Runner:
  """A compiled train step of `fajax.train.build` on a fixed batch; `run(k)` times k steps."""

  def __init__(self, label, exp, *, bare=False):
    self.label, self.exp = label, exp
    self.feedback_bytes = state_lib.num_bytes(exp.abstract_state.feedback)
    self.jitted = exp.train_step
    if bare:
      options = exp.compiler_options  # the trainer's own (the model's CPU fusions included)
      fn = functools.partial(bare_step, model=exp.model, tx=exp.tx)
      self.jitted = jax.jit(fn, donate_argnums=(0,), compiler_options=options)
    n, num_classes = exp.config.batch_size, exp.info.num_classes
    rng = np.random.default_rng(0)
    self.batch = {
      "image": jnp.asarray(rng.standard_normal((n, *exp.info.image_shape), np.float32)),
      "label": jnp.asarray(rng.integers(0, num_classes, (n,)), jnp.int32),
    }
    self.state = self.compiled = None
    self.memory = {}

  def init(self):
    """Allocates the state (exp.init), timed. Run op by op: a jitted init would compile the
    whole forward pass again for every rule (about 25 s for ResNet-20 on 2 cores)."""
    start = time.perf_counter()
    with jax.disable_jit():
      state = self.exp.init(jax.random.key_data(jax.random.key(0)))
    self.state = jax.block_until_ready(state)
    self.init_s = time.perf_counter() - start

  def lower(self):
    start = time.perf_counter()
    self.lowered = self.jitted.lower(self.state, self.batch)
    self.lower_s = time.perf_counter() - start

  def compile(self):
    start = time.perf_counter()
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.memory = dry_run_lib.memory_bytes(self.compiled) or {}
    self.flops = dry_run_lib.flops(self.compiled)
    self.hlo = hlo_counts(self.compiled.as_text())
    del self.lowered

  def warmup(self, n):
    for _ in range(n):
      self.state, _ = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.state)
    stats = _device_memory_stats()
    if stats.get("peak_bytes_in_use"):
      self.memory["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])

  def run(self, k):
    start = time.perf_counter()
    state = self.state
    for _ in range(k):
      state, _ = self.compiled(state, self.batch)
    jax.block_until_ready(state)
    self.state = state
    return time.perf_counter() - start

  def close(self):
    self.state = self.batch = self.compiled = self.jitted = self.exp = None


def _device_memory_stats() -> dict:
  try:
    return jax.devices()[0].memory_stats() or {}
  except Exception:  # CPU devices may not report memory.
    return {}


def _percentile(xs, q):
  return float(np.percentile(np.asarray(xs), q))


def hardware(peer_threads=None) -> dict:
  """The machine, the software and the load, for the results header."""
  cpu = cpu_model()
  dev = jax.devices()[0]
  try:
    commit = subprocess.run(
      ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
  except Exception:  # Not a git checkout (e.g. a copied tree).
    commit = None
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  import flax

  info = {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "platform": dev.platform,
    "device_kind": dev.device_kind,
    "device_count": jax.device_count(),
    "cpu": cpu,
    "cpu_cores": cores,
    "load_average_at_start": list(os.getloadavg()),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": _version("jaxlib"),
    "flax": flax.__version__,
    "optax": optax.__version__,
    "git_commit": commit,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if peer_threads is not None:
    info["peer_threads"] = peer_threads
  return info


def _version(name):
  try:
    from importlib.metadata import version

    return version(name)
  except Exception:
    return None


def _parse_list(text, valid, what):
  items = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in items if s not in valid]
  if unknown:
    raise SystemExit(
      f"--{what}: unknown {', '.join(unknown)}; valid choices are: {', '.join(valid)}."
    )
  return items


def _settings(args, model):
  batch, size, rounds, k = MODEL_DEFAULTS.get(model, (args.batch or 64, None, 3, 1))
  batch = args.batch or batch
  if args.image_size is not None:
    size = args.image_size
  rounds = args.rounds or rounds
  k = args.steps_per_measure or k
  return batch, models_lib.input_shape(model, size), rounds, k


def _peer_runners(args, model, rules, batch, shape, num_classes):
  """The PyTorch peer's runners {rule: Runner} for `model`, its implementation, and a note."""
  if args.peer == "none":
    return {}, None, "peer disabled (--peer none)"
  from benchmarks import torch_peer

  if model not in torch_peer.MODELS:
    return {}, None, f"no PyTorch peer for {model}"
  if args.dtype != "float32":
    return {}, None, "the peer runs float32 only"
  device = "cuda" if jax.devices()[0].platform in ("gpu", "cuda") else "cpu"
  if device == "cuda":
    import torch

    if not torch.cuda.is_available():
      return {}, None, "torch has no CUDA device here"
  peer_rules = args.peer_rules.split(",")
  runners = {
    rule: torch_peer.Runner(
      model,
      rule,
      batch=batch,
      image_shape=shape,
      num_classes=num_classes,
      device=device,
      prefer=args.peer,
    )
    for rule in rules
    if rule in torch_peer.RULES and rule in peer_rules
  }
  return runners, torch_peer.impl(args.peer), None


def _variants(args, rules, platform):
  """(label, rule, fast_cpu, bare) of every step timed on a model: bp first."""
  out = [(rule, rule, True, False) for rule in rules]
  if platform == "cpu" and compile_lib.compiler_options() is not None:
    out += [(r + XLA_DEFAULT, r, False, False) for r in args.xla_default_rules if r in rules]
  if args.bare_step:
    out.append((BARE, "bp", True, True))
  return out


def bench_model(args, model, rules):
  """Builds, compiles, warms up and times every variant (and the peer) on one model; rows."""
  batch, shape, rounds, k = _settings(args, model)
  num_classes = models_lib.spec(model).num_classes
  dataset = FixedShapes(num_classes, shape)
  platform = jax.devices()[0].platform
  print(f"[{model}] batch {batch}, input {shape}, {args.dtype}, {rounds} rounds x {k} steps")
  runners, skipped = {}, {}
  for label, rule, fast_cpu, bare in _variants(args, rules, platform):
    config = make_config(
      model,
      rule,
      batch=batch,
      dtype=args.dtype,
      fast_cpu=fast_cpu,
      max_feedback_gb=args.max_feedback_gb,
    )
    try:
      exp = build_lib.build(config, dataset=dataset)
    except ValueError as e:  # e.g. feedback over the budget: listed, not timed.
      skipped[label] = str(e)
      print(f"  {label:8s} skipped: {e}")
      continue
    runner = runners[label] = Runner(label, exp, bare=bare)
    runner.rule, runner.fast_cpu = rule, fast_cpu
    runner.init()
    runner.lower()
    print(f"  {label:8s} init {runner.init_s:6.1f}s lower {runner.lower_s:6.1f}s", flush=True)
  if args.compile_threads > 1:
    with concurrent.futures.ThreadPoolExecutor(args.compile_threads) as pool:
      list(pool.map(lambda r: r.compile(), runners.values()))
  else:
    for runner in runners.values():
      runner.compile()
  for label, runner in runners.items():
    runner.warmup(args.warmup)
    print(f"  {label:8s} compile {runner.compile_s:6.1f}s (+ warm-up)", flush=True)

  peers, peer_impl, peer_note = {}, None, None
  try:
    peers, peer_impl, peer_note = _peer_runners(
      args, model, [r for r in rules if r in runners], batch, shape, num_classes
    )
    for peer in peers.values():
      peer.warmup(args.warmup)
  except Exception as e:  # The peer is optional: record why it is missing.
    peers, peer_note = {}, f"peer failed: {e!r}"
    print(f"  {peer_note}")

  times = {label: [] for label in runners}
  peer_times = {rule: [] for rule in peers}
  others = [r for r in runners if r != "bp"] or ["bp"]
  paired = {label: [] for label in runners}  # variant time / the bp time measured just before it.
  for i in range(rounds):
    for label in others:
      if "bp" in runners:
        times["bp"].append(runners["bp"].run(k) / k)
      if label != "bp":
        times[label].append(runners[label].run(k) / k)
        if "bp" in runners:
          paired[label].append(times[label][-1] / times["bp"][-1])
    if peers:
      # Untimed: XLA's worker threads keep spinning a moment after a step, which slowed the first
      # timed peer entry (bp) by up to 3x on a loaded 2-core machine.
      next(iter(peers.values())).run(1)
    for rule, peer in peers.items():
      peer_times[rule].append(peer.run(k) / k)
    print(
      f"  round {i + 1}/{rounds}: bp {1e3 * statistics.median(times.get('bp', [0]) or [0]):.1f} ms"
    )

  rows = []
  bp_median = statistics.median(times["bp"]) if times.get("bp") else None
  peer_bp = statistics.median(peer_times["bp"]) if peer_times.get("bp") else None
  for label, runner in runners.items():
    ts = times[label]
    med = statistics.median(ts)
    row = {
      "model": model,
      "rule": runner.rule,
      "label": label,
      "rule_describe": runner.exp.rule.describe(),
      "fast_cpu": runner.fast_cpu,
      "compiler_options": runner.exp.compiler_options,  # with the model's own CPU fusions
      "step": "bare" if label == BARE else "trainer",
      "batch": batch,
      "input_shape": list(shape),
      "dtype": args.dtype,
      "rounds": rounds,
      "steps_per_measurement": k,
      "measurements": len(ts),
      "step_ms_median": 1e3 * med,
      "step_ms_p25": 1e3 * _percentile(ts, 25),
      "step_ms_p75": 1e3 * _percentile(ts, 75),
      "step_ms_min": 1e3 * min(ts),
      "ratio_to_bp": med / bp_median if bp_median else None,
      "ratio_to_bp_paired_median": statistics.median(paired[label]) if paired.get(label) else None,
      "images_per_s": batch / med,
      "init_s": runner.init_s,
      "feedback_bytes": runner.feedback_bytes,
      "lower_s": runner.lower_s,
      "compile_s": runner.compile_s,
      "compile_threads": args.compile_threads,
      "memory": runner.memory,
      "flops": runner.flops,
      "hlo": runner.hlo,
    }
    if runner.rule in peer_times and label != BARE:
      pmed = statistics.median(peer_times[runner.rule])
      row["peer"] = {
        "impl": peer_impl,
        "step_ms_median": 1e3 * pmed,
        "step_ms_p25": 1e3 * _percentile(peer_times[runner.rule], 25),
        "step_ms_p75": 1e3 * _percentile(peer_times[runner.rule], 75),
        "ratio_to_peer_bp": pmed / peer_bp if peer_bp else None,
        "images_per_s": batch / pmed,
        "memory": peers[runner.rule].memory,
        "fajax_over_peer": med / pmed,
      }
    elif peer_note:
      row["peer_note"] = peer_note
    rows.append(row)
  for label, reason in skipped.items():
    rows.append(
      {
        "model": model,
        "rule": label,
        "label": label,
        "skipped": reason,
        "batch": batch,
        "input_shape": list(shape),
        "dtype": args.dtype,
      }
    )
  for runner in runners.values():
    runner.close()
  return rows


# ---------------------------------------------------------------------------------- reporting.
TARGET_RATIO = 1.05
# fajax / PyTorch peer targets per model (issue 14: the paper's nets at least as fast as the peer,
# the MNIST net faster, ResNets within 1.2x); the XLA-default rows are shown, not checked.
PEER_TARGETS = {"mnist_net": 0.95, "cifar10_arch1": 1.0, "resnet20": 1.2}


def _fmt(x):
  return "-" if x is None else f"{x:.3f}"


def _mb(n):
  return f"{n / 2**20:.1f}" if n else "-"


def to_markdown(result) -> str:
  """The results tables (one per model) and the target check, as markdown."""
  hw = result["hardware"]
  load = ", ".join(f"{x:.1f}" for x in hw["load_average_at_start"])
  lines = [
    f"# Train-step time: {hw['platform'].upper()} ({hw['device_kind']})",
    "",
    f"Measured {hw['date']} by `{result['command']}` (git {hw.get('git_commit')}).",
    "",
    f"- Machine: {hw['cpu']}, {hw['cpu_cores']} cores; device `{hw['device_kind']}` x "
    f"{hw['device_count']}; load average at start {load}.",
    f"- Software: Python {hw['python']}, jax {hw['jax']} (jaxlib {hw['jaxlib']}), flax "
    f"{hw['flax']}, optax {hw['optax']}"
    + (
      f"; peer: torch {result['peer_versions'].get('torch')} "
      f"({result['peer_versions'].get('torch_threads')} threads), biotorch "
      f"{result['peer_versions'].get('biotorch')}"
      if result.get("peer_versions")
      else ""
    )
    + ".",
    "- Step: the trainer's (`fajax.train.build`; see benchmarks/step_time.py), SGD momentum 0.9, "
    "weight decay 5e-4 on kernels, fixed random batch on the device; `fast_cpu` default (fajax's "
    "CPU compiler options, with the model's own fusion types: `fajax.models.cpu_fusions`) "
    "unless marked `(XLA default)`; `bp (bare step)`: without the "
    "non-finite guard, kp update and metrics.",
    "- Time: median over rounds of (k consecutive steps / k), rules interleaved with bp in each "
    "round; `p25-p75` the quartiles. `ratio` = median / median of bp on the same model; "
    "`paired` = median over rounds of (rule time / the bp time measured just before it). "
    "Memory: compiled executable's arguments + temp (live bytes, donated outputs aliased)"
    + (
      "; `dev peak`: device peak_bytes_in_use after warm-up (running max)"
      if hw["platform"] in ("gpu", "cuda")
      else ""
    )
    + ".",
    "",
  ]
  rows = result["rows"]
  for model in dict.fromkeys(r["model"] for r in rows):
    mrows = [r for r in rows if r["model"] == model and not r.get("skipped")]
    skipped = [r for r in rows if r["model"] == model and r.get("skipped")]
    if not mrows:
      continue
    first = mrows[0]
    lines += [
      f"## {model}: batch {first['batch']}, input {'x'.join(map(str, first['input_shape']))}, "
      f"{first['dtype']}, {first['rounds']} rounds x {first['steps_per_measurement']} steps",
      "",
    ]
    has_peer = any("peer" in r for r in mrows)
    gpu = hw["platform"] in ("gpu", "cuda")
    head = (
      "| rule | step ms (median) | p25-p75 | ratio to bp | paired | images/s | compile s "
      "| memory MB |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if gpu:
      head += " dev peak MB |"
      sep += "---:|"
    head += " convs / dots |"
    sep += "---:|"
    if has_peer:
      impl = next(r["peer"]["impl"] for r in mrows if "peer" in r)
      head += f" {impl} ms | {impl} ratio to bp | fajax / {impl} |"
      sep += "---:|---:|---:|"
    lines += [head, sep]
    for r in mrows:
      mem = r["memory"]
      live = mem.get("total", mem.get("live_bytes"))  # live_bytes: results from before the rewrite.
      ratio = r["ratio_to_bp"]
      flag = " **(>1.05)**" if ratio and ratio > TARGET_RATIO and _checked(r) else ""
      name = r["rule_describe"] + r["label"][len(r["rule"]) :] if r["label"] != BARE else BARE
      line = (
        f"| {name} | {r['step_ms_median']:.2f} | "
        f"{r['step_ms_p25']:.2f}-{r['step_ms_p75']:.2f} | "
        f"{ratio:.3f}{flag} | {_fmt(r.get('ratio_to_bp_paired_median'))} | "
        f"{r['images_per_s']:.0f} | "
        f"{r['lower_s'] + r['compile_s']:.1f} | {_mb(live)} |"
      )
      if gpu:
        line += f" {_mb(mem.get('device_peak_bytes_in_use'))} |"
      hlo = r.get("hlo") or {}
      line += f" {hlo.get('convolution', '-')} / {hlo.get('dot', '-')} |"
      if has_peer:
        p = r.get("peer")
        if p:
          pr = p["ratio_to_peer_bp"]
          target = PEER_TARGETS.get(r["model"], 1.0)
          line += (
            f" {p['step_ms_median']:.2f} | {pr:.3f} | {p['fajax_over_peer']:.3f}"
            + (f" **(>{target})**" if p["fajax_over_peer"] > target else "")
            + " |"
          )
        else:
          line += " - | - | - |"
      lines.append(line)
    for r in skipped:
      lines += ["", f"Skipped `{r['label']}`: {r['skipped']}"]
    notes = {r.get("peer_note") for r in mrows if r.get("peer_note")}
    for note in sorted(notes):
      lines += ["", f"Peer: {note}."]
    lines.append("")
  lines += ["## Targets", ""]
  lines += check_targets(rows)
  lines += [
    "",
    "Why each miss happens and what would close it (profiles, HLO op counts): "
    "[benchmarks/README.md, Findings](../README.md#findings).",
  ]
  return "\n".join(lines) + "\n"


def _checked(row) -> bool:
  """Rows the 1.05 x bp target applies to: every rule but densefa, as the trainer runs it."""
  return row["label"] == row["rule"] and row["rule"] not in ("bp", "densefa")


def check_targets(rows) -> list[str]:
  """One line per target: met, or missed by how much."""
  out = []
  rows = [r for r in rows if not r.get("skipped")]
  slow = [r for r in rows if _checked(r) and (r["ratio_to_bp"] or 0) > TARGET_RATIO]
  n = sum(_checked(r) for r in rows)
  if slow:
    worst = ", ".join(f"{r['model']}/{r['rule']} {r['ratio_to_bp']:.3f}" for r in slow)
    out.append(
      f"- Step time <= 1.05 x bp (every rule but densefa): MISSED for {worst} ({n} checked)."
    )
  else:
    out.append(f"- Step time <= 1.05 x bp (every rule but densefa): met ({n} (model, rule) pairs).")
  peer = [r for r in rows if "peer" in r and r["label"] in ("bp", "fa", "usf")]
  for model in dict.fromkeys(r["model"] for r in peer):
    target = PEER_TARGETS.get(model, 1.0)
    mine = [r for r in peer if r["model"] == model]
    figures = ", ".join(f"{r['rule']} {r['peer']['fajax_over_peer']:.3f}" for r in mine)
    met = all(r["peer"]["fajax_over_peer"] <= target for r in mine)
    verdict = "met" if met else "MISSED"
    line = f"- fajax / PyTorch peer <= {target} on {model}, bp / fa / usf: {verdict} ({figures})."
    out.append(line)
  xla = [r for r in rows if "peer" in r and r["label"].endswith(XLA_DEFAULT)]
  if xla:
    figures = ", ".join(f"{r['model']}/{r['rule']} {r['peer']['fajax_over_peer']:.2f}" for r in xla)
    out.append(f"- For comparison, fajax / peer with XLA's default CPU options: {figures}.")
  bare = {r["model"]: r for r in rows if r["label"] == BARE}
  if bare:
    guard = ", ".join(f"{m} {1 / r['ratio_to_bp']:.3f}" for m, r in bare.items())
    out.append(f"- The trainer's step / the bare step (guard, kp, metrics), bp: {guard}.")
  return out


def write(result, out):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(to_markdown(result))


def merge(paths, out):
  """Concatenates the rows of several result JSONs (e.g. the GPU script's parts) into one."""
  parts = []
  for p in paths:
    if os.path.exists(p):
      with open(p) as f:
        parts.append(json.load(f))
    else:
      print(f"merge: {p} is missing, skipped")
  if not parts:
    raise SystemExit("merge: none of the given result files exists.")
  result = dict(parts[0])
  result["rows"] = [row for part in parts for row in part["rows"]]
  result["command"] = "; ".join(part["command"] for part in parts)
  result["parts"] = [{"command": p["command"], "settings": p["settings"]} for p in parts]
  result["peer_versions"] = next(
    (p["peer_versions"] for p in parts if p.get("peer_versions")), None
  )
  write(result, out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
  parser.add_argument("--rules", default=None, help="default: every rule in fajax.rules.names()")
  parser.add_argument(
    "--xla_default_rules",
    default="bp,fa,usf",
    help="CPU: also time these rules with XLA's default compiler options (fast_cpu=False)",
  )
  parser.add_argument(
    "--bare_step", type=int, default=1, help="1: also time bp's bare step (no guard, kp, metrics)"
  )
  parser.add_argument("--batch", type=int, default=None, help="default: per model (see code)")
  parser.add_argument("--image_size", type=int, default=None, help="default: per model")
  parser.add_argument("--rounds", type=int, default=None, help="default: per model")
  parser.add_argument("--steps_per_measure", type=int, default=None, help="k; default per model")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default="float32", choices=sorted(build_lib.DTYPES))
  parser.add_argument("--compile_threads", type=int, default=1)
  parser.add_argument(
    "--max_feedback_gb",
    type=float,
    default=2.0,
    help="skip rules whose feedback needs more GiB (config.feedback_memory_budget_gb)",
  )
  parser.add_argument("--peer", default="auto", choices=("auto", "biotorch", "torch", "none"))
  parser.add_argument("--peer_rules", default="bp,fa,usf")
  parser.add_argument("--peer_threads", type=int, default=None, help="default: JAX's CPU threads")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/step_time_cpu"))
  parser.add_argument("--merge", nargs="*", default=None, help="result JSONs to merge into --out")
  args = parser.parse_args(argv)
  if args.merge is not None:
    merge(args.merge, args.out)
    return

  models = _parse_list(args.models, models_lib.names(), "models")
  rules = _parse_list(args.rules or ",".join(rules_lib.names()), rules_lib.names(), "rules")
  rules = ["bp"] + [r for r in rules if r != "bp"]  # bp first: every ratio is to it.
  args.xla_default_rules = [r for r in args.xla_default_rules.split(",") if r]

  peer_threads = None
  peer_versions = None
  if args.peer != "none":
    # OpenMP threads that spin while waiting (libgomp's default) slow PyTorch several-fold on a
    # shared machine (ResNet-20 here: 3.2 s instead of 0.4 s per step); passive waiting gives the
    # peer its best time. XLA does not use OpenMP. Must be set before torch loads libgomp.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
      import torch

      from benchmarks import torch_peer

      # XLA:CPU sizes its thread pool by the CPUs this process may use; the peer gets as many.
      peer_threads = args.peer_threads or len(os.sched_getaffinity(0))
      torch.set_num_threads(peer_threads)
      peer_versions = torch_peer.versions()
      peer_versions["impl"] = torch_peer.impl(args.peer)
    except ImportError as e:
      print(f"no PyTorch peer: {e}")
      args.peer = "none"

  result = {
    "command": "python -m benchmarks.step_time "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    "hardware": hardware(peer_threads),
    "settings": {
      "rules": rules,
      "xla_default_rules": args.xla_default_rules,
      "bare_step": bool(args.bare_step),
      "warmup": args.warmup,
      "compile_threads": args.compile_threads,
      "optimizer": "sgd(lr=0.1, momentum=0.9) + weight decay 5e-4 on kernels",
      # The base set; a model may add fusion types (each row's compiler_options).
      "fast_cpu_options": compile_lib.compiler_options(),
    },
    "peer_versions": peer_versions,
    "rows": [],
  }
  start = time.perf_counter()
  for model in models:
    t0 = time.perf_counter()
    result["rows"] += bench_model(args, model, rules)
    result["seconds"] = time.perf_counter() - start
    write(result, args.out)
    print(f"[{model}] done in {time.perf_counter() - t0:.0f}s; wrote {args.out}.md/.json")
  print(to_markdown(result))


if __name__ == "__main__":
  main()
