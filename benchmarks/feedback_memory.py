"""Feedback memory of each rule next to the forward weights, from shapes alone (no allocation).

    python -m benchmarks.feedback_memory        # a few seconds; writes the file below

For the paper's MNIST net (28x28x1), CIFAR-10 arch 1 (24x24x3 crops), AlexNet at ImageNet size
(224x224x3, 1000 classes) and ImageNet arch 2 (AlexNet with batch norm), and rules bp, fa, usf,
dfa and densefa: `fajax.models.stats.feedback_memory` runs `jax.eval_shape(model.init)` and sums the
`feedback` collection (B, D matrices, scales) and the `params` collection. Nothing is drawn or
allocated, so the numbers for densefa on AlexNet (tens of GiB) cost nothing to compute. The
largest feedback matrices of densefa are listed per model.

Writes benchmarks/results/feedback_memory.md.
"""

from __future__ import annotations

import datetime
import os
import time

import jax

from fajax import models
from fajax.models import stats

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RESULTS = os.path.join(ROOT, "benchmarks", "results", "feedback_memory.md")

MODELS = (
  # (model name, classes, input shape (batch 1), what it is)
  ("mnist_net", 10, (1, 28, 28, 1), "MNIST net, 28x28x1"),
  ("cifar10_arch1", 10, (1, 24, 24, 3), "CIFAR-10 arch 1, 24x24x3 crops"),
  ("alexnet", 1000, (1, 224, 224, 3), "AlexNet, ImageNet 224x224x3"),
  ("imagenet_arch2", 1000, (1, 224, 224, 3), "ImageNet arch 2 (AlexNet + BN), 224x224x3"),
)
RULES = ("bp", "fa", "usf", "dfa", "densefa")


def _size(nbytes: int) -> str:
  if nbytes == 0:
    return "0"
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if nbytes >= scale:
      return f"{nbytes / scale:,.2f} {unit}"
  return f"{nbytes} B"


def measure():
  rows, biggest = [], {}
  for name, classes, shape, label in MODELS:
    model = models.get(name, num_classes=classes)
    for rule in RULES:
      start = time.perf_counter()
      report = stats.feedback_memory(model, shape, rule, train=False)
      seconds = time.perf_counter() - start
      rows.append((label, rule, report, seconds))
      if rule == "densefa":
        biggest[label] = sorted(report.per_layer.items(), key=lambda kv: -kv[1])[:3]
  return rows, biggest


def write(rows, biggest):
  lines = [
    "# Feedback memory by rule (fp32), next to the forward weights",
    "",
    f"Command: `python -m benchmarks.feedback_memory` ({datetime.date.today()}, "
    f"jax {jax.__version__}, {jax.devices()[0].platform}).",
    "Computed with `fajax.models.stats.feedback_memory` (`jax.eval_shape` of `model.init`: "
    "shapes only, nothing allocated). "
    "Feedback = the `feedback` collection (B of fa/usf, D of dfa/densefa); "
    "it is replicated on every device, like the parameters. densefa includes its fa term "
    "(one B per layer).",
    "",
    "| model | rule | forward weights | feedback | feedback / weights | eval_shape s |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for label, _, r, seconds in rows:
    ratio = r.bytes_feedback / r.bytes_params
    lines.append(
      f"| {label} | {r.rule} | {_size(r.bytes_params)} | {_size(r.bytes_feedback)} | "
      f"{ratio:,.3f} | {seconds:.2f} |"
    )
  lines += ["", "Largest densefa feedback per layer (all of that layer's D_{k->l} and its B):", ""]
  for label, items in biggest.items():
    text = ", ".join(f"`{layer}` {_size(n)}" for layer, n in items)
    lines.append(f"- {label}: {text}")
  lines.append("")
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  write(*measure())
