"""fajax: learning rules without weight transport for JAX/Flax.

    rule = fajax.rules.get("usf", scale="sn")
    model = fajax.models.get("mnist_net", num_classes=10, rule=rule)
    state = fajax.train.train_and_evaluate(config, workdir)

`fajax.train` (and ml_collections with it) loads on first use, so the core runs without it.
"""

import importlib

from fajax import constraints, data, direct, layers, learned, models, primitives, rules
from fajax.direct import apply
from fajax.layers import Conv, Dense, convert

__version__ = "0.1.0"

_LAZY = ("train", "compile", "diagnostics", "plotting", "report", "nnx")


def __getattr__(name):
  if name in _LAZY:
    return importlib.import_module(f"fajax.{name}")
  raise AttributeError(f"module 'fajax' has no attribute {name!r}")


__all__ = [
  "Conv",
  "Dense",
  "apply",
  "constraints",
  "convert",
  "data",
  "diagnostics",
  "direct",
  "layers",
  "learned",
  "models",
  "nnx",
  "plotting",
  "primitives",
  "report",
  "rules",
  "train",
]
