"""Train-step time of every learning rule against backprop, and against the PyTorch peer.

    python benchmarks/step_time.py                      # CPU defaults, about 10 minutes on 2 cores
    python benchmarks/step_time.py --models mnist_net --rules bp,fa,usf --rounds 3
    python benchmarks/step_time.py --merge a.json b.json --out benchmarks/results/step_time_gpu

What is timed: the trainer's own train step (`fajax.train.step.train_step`: per-step rngs from
fold_in, `fajax.apply`, softmax cross-entropy, `jax.value_and_grad`, the optax update, the
Kolen-Pollack feedback update for kp, the non-finite guard, metrics), jitted with the state
donated exactly as `fajax.train.step.jit_train_step` does on one device, with the optax chain the
trainer builds for `optimizer='momentum', weight_decay=5e-4` (decay on kernels, SGD momentum 0.9).
`--step minimal` times a bare step instead (apply + CE + value_and_grad + optax), to show what
the trainer's extras cost. The batch is a fixed random batch already on the device: input
pipelines are measured in benchmarks/data_throughput.py.

How, per model, in one process:
1. Every rule's step is traced and lowered, then compiled (`lower().compile()`, timed; with
   --compile_threads > 1 the compiles run in parallel threads and their times are wall times under
   contention). Each compiled step then runs --warmup steps.
2. Rounds: each round times k consecutive steps (blocking on the result) of bp, rule_1, bp,
   rule_2, ..., bp, rule_n, then the peer's steps (bp, fa, usf, ...), so that machine drift over
   the run hits every rule alike. --rounds rounds.
3. Reported per rule: the median step time (and quartiles), the ratio of medians to bp (the
   same model, batch and dtype), images/s = batch / median step time, lower and compile times,
   memory, FLOPs (XLA cost analysis) and op counts of the compiled HLO (convolutions, dots,
   fusions), and for the peer, fajax / peer ratios.
Memory: on CPU, the compiled executable's `memory_analysis()`: argument + output + temp bytes
(the donated state aliases its output, `alias` bytes, so arguments + temp is the live peak). On
GPU also `peak_bytes_in_use` of the device after the rule's warm-up (a running process maximum,
so it is an upper bound for every rule measured after the first) and, for the PyTorch peer,
`torch.cuda.max_memory_allocated` (reset per rule).

Writes <out>.json and <out>.md (default benchmarks/results/step_time_cpu), rewritten after each
model so that an interrupted run keeps what it measured. Imports only jax, flax, optax, numpy and
fajax (and torch for the peer), so it runs on a machine without ml_collections or TensorFlow.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hardware_info import cpu_model  # benchmarks/ is the script directory

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fajax  # noqa: E402
from fajax import constraints as constraints_lib  # noqa: E402
from fajax import models as models_lib  # noqa: E402
from fajax import rules as rules_lib  # noqa: E402


def _import_trainer_step():
  """fajax.train.step and .state, without fajax.train's __init__ when ml_collections is missing.

  fajax/train/__init__.py imports the config module, which needs ml_collections; the step and
  state modules themselves need only jax, flax, optax and fajax. On a machine without
  ml_collections (the GPU machine) the package is registered bare so that those two import.
  """
  try:
    from fajax.train import state, step

    return step, state
  except ImportError:
    for name in [n for n in sys.modules if n == "fajax.train" or n.startswith("fajax.train.")]:
      del sys.modules[name]
    package = types.ModuleType("fajax.train")
    package.__path__ = [os.path.join(os.path.dirname(fajax.__file__), "train")]
    sys.modules["fajax.train"] = package
    from fajax.train import state, step

    return step, state


step_lib, state_lib = _import_trainer_step()

ALL_RULES = ("bp", "fa", "usf", "brsf", "frsf", "kp", "dfa", "densefa")
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
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def make_optimizer():
  """What fajax.train.optim builds for optimizer='momentum', weight_decay=5e-4 (kernels only)."""
  return optax.chain(
    optax.add_decayed_weights(WEIGHT_DECAY, mask=constraints_lib.kernel_mask),
    optax.sgd(optax.constant_schedule(LEARNING_RATE), momentum=MOMENTUM),
  )


def minimal_step(state, batch, *, model, tx):
  """The bare step: fajax.apply + softmax CE + value_and_grad + optax (no kp, guard, metrics)."""
  rngs = step_lib.step_rngs(state.rng, state.step)

  def loss_fn(params):
    logits, mutated = fajax.apply(
      model,
      state.variables(params),
      batch["image"],
      train=True,
      rngs=rngs,
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, mutated

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


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend implements it.
    return {}
  if m is None:
    return {}
  out = {
    "argument_bytes": int(m.argument_size_in_bytes),
    "output_bytes": int(m.output_size_in_bytes),
    "temp_bytes": int(m.temp_size_in_bytes),
    "alias_bytes": int(m.alias_size_in_bytes),
  }
  out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
  out["live_bytes"] = out["total_bytes"] - out["alias_bytes"]
  return out


def _flops(compiled):
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))
  except Exception:  # Cost analysis is optional information.
    return None


class Runner:
  """A compiled fajax train step on a fixed batch; `run(k)` times k consecutive steps."""

  def __init__(self, model_name, rule, *, batch, image_shape, num_classes, dtype, step="trainer"):
    self.label = rule
    self.rule = rules_lib.get(rule)
    self.model = models_lib.get(model_name, num_classes=num_classes, rule=self.rule, dtype=dtype)
    tx = make_optimizer()

    def init_fn(rng):
      params_key, dropout_key, feedback_key, state_key = jax.random.split(rng, 4)
      rngs = {"params": params_key, "dropout": dropout_key, rules_lib.FEEDBACK_RNG: feedback_key}
      variables = self.model.init(rngs, jnp.zeros((1, *image_shape), dtype), train=False)
      return state_lib.create(variables, tx, state_key)

    key = jax.random.key_data(jax.random.key(0))
    shapes = jax.eval_shape(init_fn, key)
    self.feedback_bytes = state_lib.num_bytes(shapes.feedback)
    # Eager, not jitted: the op-by-op kernels are cached across rules, while a jitted init would
    # compile the whole forward pass again for every rule (about 25 s for ResNet-20 on 2 cores).
    self.init_fn, self.key = init_fn, key
    self.state = None
    rng = np.random.default_rng(0)
    self.batch = {
      "image": jnp.asarray(rng.standard_normal((batch, *image_shape), np.float32)),
      "label": jnp.asarray(rng.integers(0, num_classes, (batch,)), jnp.int32),
    }
    if step == "trainer":
      fn = functools.partial(
        step_lib.train_step,
        model=self.model,
        tx=tx,
        schedule=optax.constant_schedule(LEARNING_RATE),
        rule=self.rule,
        weight_decay=WEIGHT_DECAY,
        on_nan="stop",
      )
    elif step == "minimal":
      fn = functools.partial(minimal_step, model=self.model, tx=tx)
    else:
      raise ValueError(f"--step must be 'trainer' or 'minimal'; got {step!r}.")
    self.jitted = jax.jit(fn, donate_argnums=(0,))
    self.compiled = None
    self.memory = {}

  def init(self):
    """Allocates the state (model.init with the rule's feedback), timed."""
    start = time.perf_counter()
    self.state = jax.block_until_ready(self.init_fn(self.key))
    self.init_s = time.perf_counter() - start

  def lower(self):
    start = time.perf_counter()
    self.lowered = self.jitted.lower(self.state, self.batch)
    self.lower_s = time.perf_counter() - start

  def compile(self):
    start = time.perf_counter()
    self.compiled = self.lowered.compile()
    self.compile_s = time.perf_counter() - start
    self.memory = _memory(self.compiled)
    self.flops = _flops(self.compiled)
    try:
      self.hlo = hlo_counts(self.compiled.as_text())
    except Exception:  # as_text is informational.
      self.hlo = {}
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
    self.state = self.batch = self.compiled = self.jitted = None


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
  import torch_peer

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


def bench_model(args, model, rules):
  """Compiles, warms up and times every rule (and the peer) on one model; returns rows."""
  batch, shape, rounds, k = _settings(args, model)
  num_classes = models_lib.spec(model).num_classes
  dtype = DTYPES[args.dtype]
  print(f"[{model}] batch {batch}, input {shape}, {args.dtype}, {rounds} rounds x {k} steps")
  runners, skipped = {}, {}
  for rule in rules:
    runner = Runner(
      model,
      rule,
      batch=batch,
      image_shape=shape,
      num_classes=num_classes,
      dtype=dtype,
      step=args.step,
    )
    gb = runner.feedback_bytes / 1e9
    if gb > args.max_feedback_gb:
      skipped[rule] = f"feedback needs {gb:.1f} GB > --max_feedback_gb {args.max_feedback_gb:g}"
      print(f"  {rule:8s} skipped: {skipped[rule]}")
      continue
    runners[rule] = runner
    runner.init()
    runner.lower()
    print(f"  {rule:8s} init {runner.init_s:6.1f}s lower {runner.lower_s:6.1f}s", flush=True)
  if args.compile_threads > 1:
    with concurrent.futures.ThreadPoolExecutor(args.compile_threads) as pool:
      list(pool.map(lambda r: r.compile(), runners.values()))
  else:
    for runner in runners.values():
      runner.compile()
  for rule, runner in runners.items():
    runner.warmup(args.warmup)
    print(f"  {rule:8s} compile {runner.compile_s:6.1f}s (+ warm-up)", flush=True)

  peers, peer_impl, peer_note = {}, None, None
  try:
    peers, peer_impl, peer_note = _peer_runners(
      args, model, list(runners), batch, shape, num_classes
    )
    for peer in peers.values():
      peer.warmup(args.warmup)
  except Exception as e:  # The peer is optional: record why it is missing.
    peers, peer_note = {}, f"peer failed: {e!r}"
    print(f"  {peer_note}")

  times = {rule: [] for rule in runners}
  peer_times = {rule: [] for rule in peers}
  others = [r for r in runners if r != "bp"] or ["bp"]
  paired = {rule: [] for rule in runners}  # rule time / the bp time measured just before it.
  for i in range(rounds):
    for rule in others:
      if "bp" in runners:
        times["bp"].append(runners["bp"].run(k) / k)
      if rule != "bp":
        times[rule].append(runners[rule].run(k) / k)
        if "bp" in runners:
          paired[rule].append(times[rule][-1] / times["bp"][-1])
    for rule, peer in peers.items():
      peer_times[rule].append(peer.run(k) / k)
    print(
      f"  round {i + 1}/{rounds}: bp {1e3 * statistics.median(times.get('bp', [0]) or [0]):.1f} ms"
    )

  rows = []
  bp_median = statistics.median(times["bp"]) if times.get("bp") else None
  peer_bp = statistics.median(peer_times["bp"]) if peer_times.get("bp") else None
  for rule, runner in runners.items():
    ts = times[rule]
    med = statistics.median(ts)
    row = {
      "model": model,
      "rule": rule,
      "rule_describe": runner.rule.describe(),
      "impl": "fajax",
      "step": args.step,
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
      "ratio_to_bp_paired_median": statistics.median(paired[rule]) if paired.get(rule) else None,
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
    if rule in peer_times:
      pmed = statistics.median(peer_times[rule])
      row["peer"] = {
        "impl": peer_impl,
        "step_ms_median": 1e3 * pmed,
        "step_ms_p25": 1e3 * _percentile(peer_times[rule], 25),
        "step_ms_p75": 1e3 * _percentile(peer_times[rule], 75),
        "ratio_to_peer_bp": pmed / peer_bp if peer_bp else None,
        "images_per_s": batch / pmed,
        "memory": peers[rule].memory,
        "fajax_over_peer": med / pmed,
      }
    elif peer_note:
      row["peer_note"] = peer_note
    rows.append(row)
  for rule, reason in skipped.items():
    rows.append(
      {
        "model": model,
        "rule": rule,
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
    f"- Step: `{result['settings']['step']}` (see benchmarks/step_time.py); SGD momentum 0.9, "
    "weight decay 5e-4 on kernels; fixed random batch on the device.",
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
      live = mem.get("live_bytes")
      ratio = r["ratio_to_bp"]
      flag = " **(>1.05)**" if ratio and ratio > TARGET_RATIO and r["rule"] != "densefa" else ""
      line = (
        f"| {r['rule_describe']} | {r['step_ms_median']:.2f} | "
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
          line += (
            f" {p['step_ms_median']:.2f} | {pr:.3f} | {p['fajax_over_peer']:.3f}"
            + (" **(>1)**" if p["fajax_over_peer"] > 1 else "")
            + " |"
          )
        else:
          line += " - | - | - |"
      lines.append(line)
    for r in skipped:
      lines += ["", f"Skipped `{r['rule']}`: {r['skipped']}."]
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


def check_targets(rows) -> list[str]:
  """One line per target: met, or missed by how much."""
  out = []
  rows = [r for r in rows if not r.get("skipped")]
  slow = [
    r for r in rows if r["rule"] not in ("bp", "densefa") and (r["ratio_to_bp"] or 0) > TARGET_RATIO
  ]
  n = sum(r["rule"] not in ("bp", "densefa") for r in rows)
  if slow:
    worst = ", ".join(f"{r['model']}/{r['rule']} {r['ratio_to_bp']:.3f}" for r in slow)
    out.append(
      f"- Step time <= 1.05 x bp (every rule but densefa): MISSED for {worst} ({n} checked)."
    )
  else:
    out.append(f"- Step time <= 1.05 x bp (every rule but densefa): met ({n} (model, rule) pairs).")
  peer = [r for r in rows if "peer" in r and r["rule"] in ("bp", "fa", "usf")]
  peer = [r for r in peer if r["model"] in ("mnist_net", "resnet20")]
  if peer:
    bad = [r for r in peer if r["peer"]["fajax_over_peer"] > 1]
    if bad:
      worst = ", ".join(f"{r['model']}/{r['rule']} {r['peer']['fajax_over_peer']:.3f}" for r in bad)
      out.append(f"- fajax <= PyTorch peer (mnist_net, resnet20; bp, fa, usf): MISSED for {worst}.")
    else:
      best = ", ".join(f"{r['model']}/{r['rule']} {r['peer']['fajax_over_peer']:.2f}" for r in peer)
      out.append(f"- fajax <= PyTorch peer (mnist_net, resnet20; bp, fa, usf): met ({best}).")
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
  parser.add_argument("--rules", default=",".join(ALL_RULES), help="missing ones are skipped")
  parser.add_argument("--batch", type=int, default=None, help="default: per model (see code)")
  parser.add_argument("--image_size", type=int, default=None, help="default: per model")
  parser.add_argument("--rounds", type=int, default=None, help="default: per model")
  parser.add_argument("--steps_per_measure", type=int, default=None, help="k; default per model")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
  parser.add_argument("--step", default="trainer", choices=("trainer", "minimal"))
  parser.add_argument("--compile_threads", type=int, default=1)
  parser.add_argument(
    "--max_feedback_gb", type=float, default=2.0, help="skip rules whose feedback is larger"
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
  wanted = _parse_list(args.rules, rules_lib.names() + list(ALL_RULES), "rules")
  available = set(rules_lib.names())
  rules = [r for r in wanted if r in available]
  skipped = [r for r in wanted if r not in available]
  if "bp" not in rules:
    rules.insert(0, "bp")
  if skipped:
    print(f"rules not in fajax.rules.names() yet, skipped: {', '.join(skipped)}")

  peer_threads = None
  peer_versions = None
  if args.peer != "none":
    # OpenMP threads that spin while waiting (libgomp's default) slow PyTorch several-fold on a
    # shared machine (ResNet-20 here: 3.2 s instead of 0.4 s per step); passive waiting gives the
    # peer its best time. XLA does not use OpenMP. Must be set before torch loads libgomp.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
      import torch
      import torch_peer

      # XLA:CPU sizes its thread pool by the CPUs this process may use; the peer gets as many.
      peer_threads = args.peer_threads or len(os.sched_getaffinity(0))
      torch.set_num_threads(peer_threads)
      peer_versions = torch_peer.versions()
      peer_versions["impl"] = torch_peer.impl(args.peer)
    except ImportError as e:
      print(f"no PyTorch peer: {e}")
      args.peer = "none"

  result = {
    "command": "python benchmarks/step_time.py "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    "hardware": hardware(peer_threads),
    "settings": {
      "step": args.step,
      "rules": rules,
      "rules_skipped": skipped,
      "warmup": args.warmup,
      "compile_threads": args.compile_threads,
      "optimizer": f"sgd(lr={LEARNING_RATE}, momentum={MOMENTUM}) + weight decay {WEIGHT_DECAY}",
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
