"""Learning rules: what feedback matrix B each linear layer uses in its backward pass.

A rule is a small frozen dataclass. A fajax layer calls `rule.feedback(module, kernel)` inside its
forward pass; the returned B (None for B = W) is handed to the feedback primitive
(`fajax.primitives`), which uses it for the input cotangent only. State a rule needs (a fixed random
B, |R_0|, a scale fixed at init) lives in the Flax collection `feedback`, at the module path of the
kernel it serves, so optimizers, weight decay and parameter counts never see it.

Definitions follow paper.md; the two "our reading" rules are documented on their classes.

    rule = fajax.rules.get("usf", scale="sn")
    rule = fajax.rules.get("fa", overrides={"Dense_2": "bp"})   # last layer trained with bp
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from fajax import learned, prng

FEEDBACK = "feedback"  # the Flax collection holding feedback state.
FEEDBACK_RNG = "feedback"  # the rng stream of rules that draw fresh feedback every step.

_REGISTRY: dict[str, type[Rule]] = {}


def register(cls):
  """Class decorator: makes a rule available as `get(cls.name)`."""
  if not cls.name:
    raise ValueError(f"{cls.__name__} needs a non-empty `name`.")
  _REGISTRY[cls.name] = cls
  return cls


def names() -> list[str]:
  """The names of all registered rules."""
  return sorted(_REGISTRY)


def get(name: str | Rule | None, **options) -> Rule:
  """Returns the rule called `name` with `options`.

  Args:
    name: a registered rule name (see `names()`), a `Rule` (returned as is, options must be empty)
      or None (backprop).
    **options: the rule's options (e.g. `scale="sn"` for usf, `sigma=0.5` for bp_noise) and
      `overrides`, a mapping from module-path patterns (fnmatch, e.g. "Dense_2", "*/head") to rules
      (names, `Rule`s or `(name, options)` pairs) used for the matching layers instead.

  Raises:
    ValueError: for an unknown name or option, listing the valid ones.
  """
  if name is None:
    name = "bp"
  if isinstance(name, Rule):
    if options:
      raise ValueError("Pass options either to get(name, **options) or to the Rule, not both.")
    return name
  if name not in _REGISTRY:
    raise ValueError(f"Unknown rule {name!r}; valid rules are: {', '.join(names())}.")
  cls = _REGISTRY[name]
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(
      f"Unknown option(s) {', '.join(unknown)} for rule {name!r}; "
      f"valid options are: {', '.join(valid)}."
    )
  if "overrides" in options:
    options["overrides"] = _canonical_overrides(options["overrides"])
  return cls(**options)


def _canonical_overrides(overrides) -> tuple[tuple[str, Rule], ...]:
  """Turns {pattern: rule spec} into a hashable tuple of (pattern, Rule)."""
  if overrides is None:
    return ()
  items = overrides.items() if hasattr(overrides, "items") else overrides
  out = []
  for pattern, spec in items:
    if isinstance(spec, tuple | list):
      spec_name, spec_options = spec
      out.append((str(pattern), get(spec_name, **dict(spec_options))))
    else:
      out.append((str(pattern), get(spec)))
  return tuple(out)


def resolve(rule: str | Rule | None, path: str) -> Rule:
  """The rule a layer at module path `path` ("Block_0/Conv_1") trains with."""
  return get(rule).resolve(path)


def _frobenius(x):
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


def sign_scale(kernel):
  """s = ||W|| / ||sign(W)||: the scale that gives s*sign(W) the Frobenius norm of W."""
  sign_norm = _frobenius(jnp.sign(kernel))
  return _frobenius(kernel) / jnp.maximum(sign_norm, 1e-12)


def module_path(module) -> str:
  """The '/'-joined path of a bound Flax module, as used by overrides and feedback trees."""
  return "/".join(str(p) for p in module.path)


def feedback_variable(module, name, init_fn):
  """Reads (creating at init) the variable `feedback/<name>` of `module`.

  Raises a clear error when a model is applied without the feedback collection `init` made.
  """
  if not module.is_initializing() and not module.has_variable(FEEDBACK, name):
    raise ValueError(
      f"Layer '{module_path(module)}' has no '{FEEDBACK}/{name}' variable: apply the model with "
      f"all the variables that model.init returned, including the '{FEEDBACK}' collection."
    )
  return module.variable(FEEDBACK, name, init_fn).value


def step_rng(module, rule_name):
  """A key for this layer and this step, from the `feedback` rng stream.

  The trainer passes `rngs={"feedback": fold_in(key, step)}`; Flax folds in the module path, so
  the draw is reproducible, different per layer, and identical on every device.
  """
  if module.has_rng(FEEDBACK_RNG):
    return module.make_rng(FEEDBACK_RNG)
  if module.is_initializing():
    return module.make_rng("params")
  raise ValueError(
    f"Rule {rule_name!r} draws new feedback every step: apply the model with "
    f"rngs={{'{FEEDBACK_RNG}': jax.random.fold_in(key, step)}}."
  )


def _kernel_init(module):
  init = getattr(module, "kernel_init", None)
  if init is None:
    raise ValueError(f"Layer '{module_path(module)}' has no kernel_init to draw feedback from.")
  return init


@dataclasses.dataclass(frozen=True)
class Rule:
  """A learning rule: the feedback matrix a linear layer uses in its backward pass.

  Subclasses implement `feedback`; rules that change more than B (direct feedback) also use
  `input_hook` / `output_hook`, which a layer applies to its input and output.
  """

  name: ClassVar[str] = ""
  overrides: tuple[tuple[str, Rule], ...] = ()

  def resolve(self, path: str) -> Rule:
    """The rule for the layer at `path`: the first matching override, else this rule."""
    for pattern, rule in self.overrides:
      if fnmatch.fnmatchcase(path, pattern):
        return rule.resolve(path)
    return self

  def every_rule(self) -> tuple[Rule, ...]:
    """This rule and every rule of its overrides, recursively, each once (in order of appearance).

    What some layer of a model may resolve to: the trainer asks it whether any layer uses kp or
    learns its B."""
    found = [self]
    for _, rule in self.overrides:
      found += [r for r in rule.every_rule() if r not in found]
    return tuple(found)

  def feedback(self, module, kernel) -> Any:
    """B for this layer (kernel-shaped array), None for B = W, or "zero" for no feedback."""
    raise NotImplementedError

  def input_hook(self, module, x):
    """Applied to a layer's input before the linear map (identity except for direct rules)."""
    del module
    return x

  def output_hook(self, module, y):
    """Applied to a layer's output after the bias (identity except for direct rules)."""
    del module
    return y

  def describe(self) -> str:
    """Name and options, e.g. "usf(scale=sn)", for logs and reports."""
    opts = [
      f"{f.name}={getattr(self, f.name)}"
      for f in dataclasses.fields(self)
      if f.name != "overrides" and getattr(self, f.name) != f.default
    ]
    text = f"{self.name}({', '.join(opts)})" if opts else self.name
    for pattern, rule in self.overrides:
      text += f" [{pattern}: {rule.describe()}]"
    return text


@register
@dataclasses.dataclass(frozen=True)
class BP(Rule):
  """Backprop: B = W. Gradients equal `jax.grad` of the same model with plain layers."""

  name: ClassVar[str] = "bp"

  def feedback(self, module, kernel):
    return None


@register
@dataclasses.dataclass(frozen=True)
class BPNoise(Rule):
  """BP + Noise (our reading): B_t = W_t + sigma * std(W_t) * xi_t, fresh Gaussian xi every step.

  xi_t's random bits come from XLA's Threefry RngBitGenerator (`fajax.prng`, as for brsf).
  """

  name: ClassVar[str] = "bp_noise"
  sigma: float = 1.0

  def __post_init__(self):
    if not float(self.sigma) >= 0:
      raise ValueError(f"bp_noise needs sigma >= 0, got {self.sigma!r}.")

  def feedback(self, module, kernel):
    xi = jax.random.normal(
      prng.xla_threefry(step_rng(module, self.name)), kernel.shape, jnp.float32
    )
    std = jnp.std(kernel.astype(jnp.float32))
    return (kernel.astype(jnp.float32) + self.sigma * std * xi).astype(kernel.dtype)


@register
@dataclasses.dataclass(frozen=True)
class FA(Rule):
  """Feedback alignment: B fixed random, drawn at init from W's initializer with its own key."""

  name: ClassVar[str] = "fa"

  def feedback(self, module, kernel):
    init = _kernel_init(module)
    rng = module.make_rng("params") if module.is_initializing() else None
    return feedback_variable(module, "kernel", lambda: init(rng, kernel.shape, module.param_dtype))


@register
@dataclasses.dataclass(frozen=True)
class KP(FA):
  """Kolen-Pollack (BP + Alignment, our reading): B starts random and gets W's update.

  The layer behaves as `fa`; the training step applies `fajax.constraints.kolen_pollack_update`
  after each optimizer update, so that dB = dW - decay * (B - W) and B converges to W.
  """

  name: ClassVar[str] = "kp"


USF_SCALES = ("init", "sn", "std", "none")


@register
@dataclasses.dataclass(frozen=True)
class USF(Rule):
  """Uniform sign-concordant feedback: B = s * sign(W_t).

  scale:
    "init" (paper's Init.): s = ||W_0|| / ||sign(W_0)||, fixed at init (`feedback/scale`).
    "sn" (paper's SN, our reading): s_t = ||W_t|| / ||sign(W_t)||, so ||B_t|| = ||W_t||.
    "std": s = std(W_0), the spread of the initial kernel (BioTorch, Xiao et al.), fixed at init.
    "none": s = 1 (Liao et al.).
  """

  name: ClassVar[str] = "usf"
  scale: str = "sn"

  def __post_init__(self):
    if self.scale not in USF_SCALES:
      raise ValueError(f"usf scale must be one of {', '.join(USF_SCALES)}; got {self.scale!r}.")

  def feedback(self, module, kernel):
    if self.scale == "sn":
      s = sign_scale(kernel)
    elif self.scale == "init":
      s = feedback_variable(module, "scale", lambda: sign_scale(kernel))
    elif self.scale == "std":
      s = feedback_variable(module, "scale", lambda: jnp.std(kernel.astype(jnp.float32)))
    else:
      s = 1.0
    return (s * jnp.sign(kernel)).astype(kernel.dtype)


@register
@dataclasses.dataclass(frozen=True)
class BRSF(Rule):
  """Batchwise random-magnitude sign-concordant feedback: B = |R_t| * sign(W_t), R_t new each step.

  R_t is drawn from W's initializer with the `feedback` rng stream (the same on every device),
  its random bits from XLA's Threefry RngBitGenerator (`fajax.prng`: 3-4x cheaper on CPU than
  JAX's threefry lowering; same initializer distribution, another stream).
  """

  name: ClassVar[str] = "brsf"

  def feedback(self, module, kernel):
    key = prng.xla_threefry(step_rng(module, self.name))
    r = _kernel_init(module)(key, kernel.shape, jnp.float32)
    return (jnp.abs(r) * jnp.sign(kernel)).astype(kernel.dtype)


@register
@dataclasses.dataclass(frozen=True)
class FRSF(Rule):
  """Fixed random-magnitude sign-concordant feedback: B = |R_0| * sign(W_t).

  |R_0| is stored as `feedback/kernel` (drawn from W's initializer at init).
  """

  name: ClassVar[str] = "frsf"

  def feedback(self, module, kernel):
    init = _kernel_init(module)
    rng = module.make_rng("params") if module.is_initializing() else None
    magnitude = feedback_variable(
      module, "kernel", lambda: jnp.abs(init(rng, kernel.shape, module.param_dtype))
    )
    return (magnitude.astype(kernel.dtype) * jnp.sign(kernel)).astype(kernel.dtype)


@dataclasses.dataclass(frozen=True)
class LearnedFeedback(FA):
  """B starts as fa's and is trained by gradient descent on a local objective (`fajax.learned`).

  The objective is `objective()`, a weighted sum of the primitives of `fajax.learned`, evaluated on
  the layer's input of the step (or, with `noise_std`, on zero-mean Gaussian noise of x's shape),
  W and B. The layer sows dObjective/dB inside `fajax.layers.capture_feedback_grads()`; the train
  step applies B's own optimizer (config.feedback_optimizer, config.feedback_learning_rate).

  Common options:
    sample_every: the objective sees every k-th example of the batch (k = sample_every): its cost
      shrinks by k, its estimate gets noisier. 1 uses the whole batch.
    noise_std: None uses the layer's input; a number replaces it by N(0, noise_std^2) noise.
  """

  sample_every: int = 1
  noise_std: float | None = None

  def __post_init__(self):
    if not (isinstance(self.sample_every, int) and self.sample_every >= 1):
      raise ValueError(f"{self.name} needs sample_every >= 1 (an int), got {self.sample_every!r}.")
    if self.noise_std is not None and not float(self.noise_std) >= 0:
      raise ValueError(f"{self.name} needs noise_std >= 0 or None, got {self.noise_std!r}.")
    self.objective()  # Checks the terms and coefficients.

  def objective(self) -> learned.Terms:
    """The objective as ((primitive, coefficient), ...)."""
    raise NotImplementedError

  def feedback_gradient(self, module, x, kernel, feedback, apply, features):
    """dObjective/dB on this step's input x (or noise), as a `fajax.learned.FeedbackGrad`."""
    objective = self.objective()
    if learned.needs_input(objective):
      x = learned.subsample(x, self.sample_every)
      if self.noise_std is not None:
        # XLA's RngBitGenerator: the same N(0, 1) draw at a fraction of JAX's Threefry cost.
        key = prng.xla_threefry(step_rng(module, self.name))
        x = self.noise_std * jax.random.normal(key, x.shape, jnp.float32)
    return learned.feedback_gradient_parts(objective, x, kernel, feedback, apply, features)


@register
@dataclasses.dataclass(frozen=True)
class WM(LearnedFeedback):
  """Weight Mirror (Akrout et al. 2019): alpha * decay + beta * amp on Gaussian noise.

  With noise of std s the expected gradient is alpha * B - beta * s^2 * W, so B -> (beta s^2 /
  alpha) W: the defaults make the fixed point W itself.
  """

  name: ClassVar[str] = "wm"
  alpha: float = 1.0
  beta: float = 1.0
  noise_std: float | None = 1.0
  sample_every: int = 4  # a noise batch of batch_size / 4 keeps the step <= 1.3x bp's

  def objective(self):
    return learned.terms(decay=self.alpha, amp=self.beta)


@register
@dataclasses.dataclass(frozen=True)
class SA(LearnedFeedback):
  """Symmetric Alignment (Kunin et al. 2020): alpha * decay + beta * self; B -> (beta / alpha) W."""

  name: ClassVar[str] = "sa"
  alpha: float = 1.0
  beta: float = 1.0

  def objective(self):
    return learned.terms(decay=self.alpha, self=self.beta)


@register
@dataclasses.dataclass(frozen=True)
class AA(LearnedFeedback):
  """Activation Alignment (Kunin et al. 2020): alpha * sparse + beta * amp on the layer's input.

  The gradient is E[x^T x] (alpha * B - beta * W): B -> (beta / alpha) W on the span of the inputs.
  """

  name: ClassVar[str] = "aa"
  alpha: float = 1.0
  beta: float = 1.0
  sample_every: int = 4  # keeps the step <= 1.3x bp's (docs/learned_feedback.md)

  def objective(self):
    return learned.terms(sparse=self.alpha, amp=self.beta)


@register
@dataclasses.dataclass(frozen=True)
class IA(LearnedFeedback):
  """Information Alignment (Kunin et al. 2020): alpha * amp + beta * null + gamma * decay.

  For a dense layer with input covariance S = E[x^T x] the fixed point is
  B = alpha S W (beta W^T S W + gamma I)^-1: W's singular vectors, rescaled singular values.
  """

  name: ClassVar[str] = "ia"
  alpha: float = 1.0
  beta: float = 1.0
  gamma: float = 1.0
  sample_every: int = 8  # three extra maps per layer: keeps the step <= 1.3x bp's

  def objective(self):
    return learned.terms(amp=self.alpha, null=self.beta, decay=self.gamma)


@register
@dataclasses.dataclass(frozen=True)
class Learned(LearnedFeedback):
  """Any objective: `terms` maps primitives of `fajax.learned` to coefficients.

  fajax.rules.get("learned", terms={"decay": 1.0, "amp": 1.0}, noise_std=1.0)  # = wm
  """

  name: ClassVar[str] = "learned"
  terms: Any = ()

  def __post_init__(self):
    # Frozen dataclass: canonicalise a mapping into the hashable, sorted tuple form once.
    object.__setattr__(self, "terms", learned.terms(self.terms))
    super().__post_init__()

  def objective(self):
    return self.terms
