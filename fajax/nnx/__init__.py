"""fajax for Flax NNX models: the same rules, primitives, trainer and diagnostics as for Linen.

    layer = fajax.nnx.Linear(784, 10, rule="fa", rngs=nnx.Rngs(0))
    model = fajax.nnx.convert(MyNnxNet(rngs=nnx.Rngs(0)), "usf", rngs=nnx.Rngs(1))
    feedback = nnx.state(model, fajax.nnx.Feedback)   # B etc.; never seen by nnx.Optimizer
    logits = fajax.nnx.apply(model, x)                 # needed for dfa / densefa

docs/nnx.md explains the design (one trainer: NNX models reach it through `Bridge`, a Linen face).
"""

from fajax.nnx import models
from fajax.nnx.bridge import Bridge, linen_variables, load_linen_variables, to_linen
from fajax.nnx.convert import convert
from fajax.nnx.layers import Conv, Feedback, Linear, apply
from fajax.nnx.optim import update

__all__ = [
  "Bridge",
  "Conv",
  "Feedback",
  "Linear",
  "apply",
  "convert",
  "linen_variables",
  "models",
  "load_linen_variables",
  "to_linen",
  "update",
]
