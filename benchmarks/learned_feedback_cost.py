"""Train-step time of the learned-feedback rules (wm, sa, aa, ia) against backprop, interleaved.

    python -m benchmarks.learned_feedback_cost                       # mnist_net and resnet20
    python -m benchmarks.learned_feedback_cost --models mnist_net --rules bp,wm --rounds 5

Times the trainer's own jitted step (`fajax.train.build`: forward, loss, gradients, W's optax
update, B's objective gradients sown by the forward pass and B's optax update) on one device, on
a fixed batch of the embedded digits resized to the model's input (mnist_net: 28x28x1, the main
job's batch 64 and Adam; resnet20: 32x32x3, batch 64, SGD momentum). Each round runs k steps of
every rule in turn (bp first), so machine drift hits every rule alike; reported: the median step
time over rounds and its ratio to bp's.

`--feedback_optimizer sgd` trains B by plain SGD (as RESULTS.md's sa row that matches bp) instead
of W's optimizer. `--rules bp,aa,aa:autodiff` also times a rule with its B gradient taken by
autodiff of the primitives' values (what fajax.learned did before its closed forms), for a
before/after ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax

from benchmarks.hardware_info import cpu_model
from experiments import common
from fajax import learned, rules
from fajax.train import build as build_lib
from fajax.train import loop as loop_lib

SETTINGS = {
  "mnist_net": dict(image_size=28, channels=1, optimizer="adam", learning_rate=1e-3),
  "resnet20": dict(image_size=32, channels=3, optimizer="momentum", learning_rate=0.1),
}


def autodiff_options(name):
  """Options of a `learned` rule with `name`'s objective, its gradient taken by autodiff.

  The primitives are registered again under new names: `fajax.learned` uses its closed forms only
  for the built-in names, and differentiates any other primitive with jax.grad.
  """
  rule = rules.get(name)
  for term, _ in rule.objective():
    learned.register_primitive(f"{term}_autodiff", learned.PRIMITIVES[term])
  return dict(
    terms={f"{term}_autodiff": c for term, c in rule.objective()},
    noise_std=rule.noise_std,
    sample_every=rule.sample_every,
  )


def gflops(step, state, batch) -> float:
  """XLA's FLOP count of the compiled step (exact, unlike the times on a shared machine)."""
  cost = step.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / 1e9


def make_step(model, rule, batch_size, feedback_optimizer=None):
  s = SETTINGS[model]
  options = {}
  if rule.endswith(":autodiff"):
    rule, options = "learned", autodiff_options(rule.split(":")[0])
  config = common.experiment_config("bp", {"model": model}, runlocal_size=s["image_size"])
  common.runlocal(config, image_size=s["image_size"], channels=s["channels"])
  config.update(
    dict(
      rule=rule,
      rule_options=options,
      batch_size=batch_size,
      optimizer=s["optimizer"],
      learning_rate=s["learning_rate"],
      mesh={"data": 1, "model": 1},
      num_steps=1000,
      feedback_optimizer=feedback_optimizer,
    )
  )
  exp = build_lib.build(config)
  state = exp.init(jax.random.PRNGKey(0))
  batch = next(loop_lib.train_batches(exp, 0))
  return exp.train_step, state, batch


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mnist_net,resnet20")
  parser.add_argument("--rules", default="bp,wm,sa,aa,ia")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5, help="steps timed per rule per round")
  parser.add_argument("--feedback_optimizer", default=None, help="B's optimizer (default: W's)")
  args = parser.parse_args(argv)
  rules = args.rules.split(",")
  print(f"CPU: {cpu_model()}, {jax.device_count()} device(s), batch {args.batch_size}")
  for model in args.models.split(","):
    steps, flops = {}, {}
    for rule in rules:
      step, state, batch = make_step(model, rule, args.batch_size, args.feedback_optimizer)
      flops[rule] = gflops(step, state, batch)
      for _ in range(2):  # compile and warm up
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      steps[rule] = [step, state, batch]
    times = {rule: [] for rule in rules}
    for _ in range(args.rounds):
      for rule in rules:
        step, state, batch = steps[rule]
        start = time.perf_counter()
        for _ in range(args.steps):
          state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times[rule].append((time.perf_counter() - start) / args.steps)
        steps[rule][1] = state
    base = statistics.median(times[rules[0]])
    print(f"\n{model}: median step time over {args.rounds} rounds of {args.steps} steps")
    print(f"| rule | ms/step | ratio to {rules[0]} | GFLOP | FLOP ratio |\n|---|---|---|---|---|")
    for rule in rules:
      median = statistics.median(times[rule])
      ratio = flops[rule] / flops[rules[0]]
      print(
        f"| {rule} | {1000 * median:.1f} | {median / base:.2f} | {flops[rule]:.2f} | {ratio:.2f} |"
      )


if __name__ == "__main__":
  main(sys.argv[1:])
