"""fajax: learning rules without weight transport for JAX/Flax."""

from fajax import constraints, layers, primitives, rules
from fajax.layers import Conv, Dense, convert

__version__ = "0.1.0"

__all__ = ["Conv", "Dense", "constraints", "convert", "layers", "primitives", "rules"]
