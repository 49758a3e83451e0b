"""fajax: learning rules without weight transport for JAX/Flax."""

from fajax import constraints, direct, layers, primitives, rules
from fajax.direct import apply
from fajax.layers import Conv, Dense, convert

__version__ = "0.1.0"

__all__ = [
  "Conv",
  "Dense",
  "apply",
  "constraints",
  "convert",
  "direct",
  "layers",
  "primitives",
  "rules",
]
