"""End to end: a small CNN learns real MNIST digits (the embedded subset) under bp, usf and fa.

The thresholds are the core issue's: >= 96% for bp and usf/sn within a few epochs, fa well above
chance (10%). The training code is `fajax.demo`, the README's first demo.
"""

import pytest

import fajax
from fajax.demo import train_and_test


@pytest.mark.slow
def test_bp_usf_and_fa_learn_mnist():
  acc = {
    rule: train_and_test(fajax.rules.get(rule, **opts))
    for rule, opts in (("bp", {}), ("usf", {"scale": "sn"}), ("fa", {}))
  }
  assert acc["bp"] >= 0.96, acc
  assert acc["usf"] >= 0.96, acc
  assert acc["fa"] >= 0.5, acc  # chance is 0.10


def test_brsf_and_frsf_learn_mnist_above_chance():
  for rule in ("brsf", "frsf"):
    acc = train_and_test(fajax.rules.get(rule), epochs=1)
    assert acc >= 0.6, (rule, acc)
