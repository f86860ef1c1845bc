"""Optimizer recipes: the `optim` config section, learning-rate schedules and the optax chain.

Everything here is a pure function over parameter pytrees (an `nnx.State` of parameters or a
plain nested dict). Which parameters are frozen, decayed, penalised or given a different learning
rate is decided by regexes over parameter paths (`layers/3/self_attn/q_proj/kernel`), matched
with `re.search`. Transformer layers always live at `layers/<i>/...`.

The chain built by `build_optimizer`, per trainable parameter:

  gradual-unfreeze gate -> clip_by_global_norm -> optimizer direction (adamw, sgd, ...)
  -> + weight_decay * param (masked) -> * per-parameter lr multiplier -> * -learning_rate(step)
  -> gradual-unfreeze gate again

Frozen parameters (`optim.freeze`) go through `optax.set_to_zero` in a separate partition, so the
optimizer keeps no state for them (their slots are `optax.MaskedNode`s).

Weight decay is applied before the learning-rate scaling, as in torch's AdamW and `optax.adamw`:
a parameter moves by `lr * lr_mult * weight_decay * p` per step, so weight-decay values from
Hugging Face recipes carry over unchanged.

Learning rate and the numeric knobs are injected with `optax.inject_hyperparams`, so they live in
the optimizer state as float32 arrays that a hyperparameter search can overwrite or trace.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxtune.errors import ConfigError
from jaxtune.patterns import compile_pattern

OPTIMIZERS = ("adamw", "sgd", "rmsprop", "adafactor", "lion")
SCHEDULES = ("constant", "linear", "cosine", "rsqrt", "wsd")

# Biases, norm scales and embeddings are not decayed (the usual transformer recipe).
DEFAULT_EXCLUDE = r"(^|/)bias$|norm|(^|/)scale$|embed"
# Embedding tables outside the layers: they get the deepest layer-wise lr decay and unfreeze last.
DEFAULT_EMBEDDINGS = r"embed|(^|/)(wte|wpe)(/|$)"

_LAYER_RE = re.compile(r"(^|/)layers/(\d+)(/|$)")
# A scanned stack (model.scan_layers) drops the index: `layers/mlp/...`, shape [num_layers, ...].
_STACKED_RE = re.compile(r"(^|/)layers/(?!\d+(/|$))")


def default_config() -> ml_collections.ConfigDict:
  """The `optim` config section. Every field has a real default ('' / 0 / -1 mean "off")."""
  c = ml_collections.ConfigDict()
  c.name = "adamw"  # one of OPTIMIZERS
  c.learning_rate = 5e-5  # peak learning rate
  c.b1 = 0.9  # adamw/lion first moment (lion: interpolation); adafactor momentum if > 0
  c.b2 = 0.999  # adamw/lion second moment (lion's paper uses 0.99)
  c.eps = 1e-8  # adamw/rmsprop denominator; adafactor eps on the squared grad is 1e-30
  c.weight_decay = 0.01  # decoupled, scaled by the learning rate (torch AdamW semantics)
  c.decay_exclude = DEFAULT_EXCLUDE  # regex: params NOT weight-decayed
  c.momentum = 0.0  # sgd / rmsprop momentum, 0 = none
  c.nesterov = False
  c.rmsprop_decay = 0.9
  c.adafactor_decay_rate = 0.8
  c.adafactor_clipping_threshold = 1.0  # update clipping by block RMS, 0 = off
  c.adafactor_min_dim_size_to_factor = 128
  c.adafactor_param_scale = False  # multiply updates by the parameter RMS
  c.schedule = "linear"  # one of SCHEDULES
  c.warmup_steps = 0
  c.min_lr_ratio = 0.0  # final lr of linear/cosine/wsd, as a fraction of learning_rate
  c.wsd_decay_fraction = 0.1  # wsd: the last fraction of total steps decays linearly
  c.grad_clip_norm = 1.0  # 0 = off
  c.l1 = 0.0  # loss penalty l1 * sum|w|, see `penalty`
  c.l2 = 0.0  # loss penalty l2 * sum w^2
  c.penalty_exclude = DEFAULT_EXCLUDE  # regex: params not penalised
  c.freeze = ""  # regex: params never updated, no optimizer state; '' = none
  c.lr_multipliers = ""  # "regex=mult,regex=mult", first match wins; '' = none
  c.layerwise_lr_decay = 1.0  # layer i of L gets decay**(L-1-i), embeddings decay**L; 1 = off
  c.embeddings = DEFAULT_EMBEDDINGS  # regex: embedding params (layer-wise decay, unfreezing)
  c.unfreeze_every_steps = 0  # gradual unfreezing: one more layer every E steps; 0 = off
  c.unfreeze_start_layers = 0  # layers trainable at step 0 (0 = only the head and final norm)
  c.ema_decay = 0.0  # see averaging.py; 0 = off
  c.swa_start = -1  # first SWA step; -1 = off
  c.swa_every = 1  # SWA sampling period in steps
  return c


def _section(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  # Accept the whole run config too, so callers cannot pass the wrong level by accident.
  return cfg.optim if "optim" in cfg else cfg


# ---------------------------------------------------------------------------------------------
# Parameter paths and per-parameter rules.
# ---------------------------------------------------------------------------------------------


def _key_name(k: Any) -> str:
  if isinstance(k, jax.tree_util.DictKey):
    return str(k.key)
  if isinstance(k, jax.tree_util.SequenceKey):
    return str(k.idx)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return k.name
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return str(k.key)
  return str(k)


def _path_str(key_path: tuple) -> str:
  # nnx.Variable flattens to its array under a trailing `.value`; that is not part of the name.
  if key_path and isinstance(key_path[-1], jax.tree_util.GetAttrKey):
    if key_path[-1].name == "value":
      key_path = key_path[:-1]
  return "/".join(_key_name(k) for k in key_path)


def param_paths(tree: Any) -> Any:
  """The same pytree with every array leaf replaced by its path, e.g. 'layers/0/mlp/up/kernel'."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: _path_str(kp), tree)


def _path_list(tree: Any) -> list[str]:
  return jax.tree.leaves(param_paths(tree))


def _compile(key: str, pattern: str) -> re.Pattern | None:
  return compile_pattern(f"optim.{key}", pattern)


def _parse_multipliers(spec: str) -> list[tuple[re.Pattern, float]]:
  """Parses "regex=mult,regex=mult" (the regex may itself contain '=', not ',')."""
  out = []
  if not spec.strip():
    return out
  for item in spec.split(","):
    regex, sep, mult = item.strip().rpartition("=")
    if not sep or not regex:
      raise ConfigError(
        f"optim.lr_multipliers={spec!r}: entry {item!r} is not of the form regex=multiplier"
      )
    try:
      value = float(mult)
    except ValueError:
      raise ConfigError(
        f"optim.lr_multipliers={spec!r}: multiplier {mult!r} in {item!r} is not a number"
      ) from None
    if not math.isfinite(value) or value < 0:
      raise ConfigError(f"optim.lr_multipliers={spec!r}: multiplier {mult!r} must be >= 0")
    try:
      out.append((re.compile(regex), value))
    except re.error as e:
      raise ConfigError(f"optim.lr_multipliers={spec!r}: {regex!r} is not a valid regex: {e}") from e
  return out


class _Rules(NamedTuple):
  """Compiled per-parameter rules; each method maps a path to a static Python value."""

  freeze: re.Pattern | None
  decay_exclude: re.Pattern | None
  embeddings: re.Pattern | None
  multipliers: list[tuple[re.Pattern, float]]
  num_layers: int

  def frozen(self, path: str) -> bool:
    return bool(self.freeze and self.freeze.search(path))

  def decayed(self, path: str) -> bool:
    return not (self.decay_exclude and self.decay_exclude.search(path))

  def layer(self, path: str) -> int | None:
    m = _LAYER_RE.search(path)
    return int(m.group(2)) if m else None

  def stacked(self, path: str) -> bool:
    """True for a scanned stack's weight: its leading axis is the layer index."""
    return self.layer(path) is None and bool(_STACKED_RE.search(path))

  def is_embedding(self, path: str) -> bool:
    # Only embeddings outside the layers count: an in-layer match is still that layer's param.
    return (self.layer(path) is None and not self.stacked(path)
            and bool(self.embeddings and self.embeddings.search(path)))

  def group_multiplier(self, path: str) -> float:
    for regex, mult in self.multipliers:
      if regex.search(path):
        return mult
    return 1.0

  def depth(self, path: str) -> int | np.ndarray:
    """Exponent of the layer-wise lr decay: 0 for the top layer and the head, L for embeddings;
    for a stacked weight, one exponent per layer (shape [L])."""
    if self.stacked(path):
      return self.num_layers - 1 - np.arange(self.num_layers)
    i = self.layer(path)
    if i is not None:
      return self.num_layers - 1 - i
    return self.num_layers if self.is_embedding(path) else 0


def _per_layer(values: jax.Array, u: jax.Array) -> jax.Array:
  """[L] values shaped to broadcast over a stacked weight's [L, ...] update."""
  return values.reshape((-1,) + (1,) * (u.ndim - 1))


def _rules(c: ml_collections.ConfigDict, params: Any, num_layers: int) -> _Rules:
  """Compiles and checks every path regex of the config against the actual parameters."""
  rules = _Rules(
    freeze=_compile("freeze", c.freeze),
    decay_exclude=_compile("decay_exclude", c.decay_exclude),
    embeddings=_compile("embeddings", c.embeddings),
    multipliers=_parse_multipliers(c.lr_multipliers),
    num_layers=num_layers,
  )
  _compile("penalty_exclude", c.penalty_exclude)
  paths = _path_list(params)
  if not paths:
    raise ValueError("build_optimizer: the parameter tree has no arrays")
  # With scanned layers, a regex naming one layer ('layers/3/') finds nothing: say why.
  stacked = next((p for p in paths if rules.stacked(p)), None)
  example = (f"e.g. {stacked!r}: model.scan_layers=True stacks the layers, whose paths have no "
             "index" if stacked else f"e.g. {paths[0]!r}")
  if rules.freeze is not None:
    n = sum(rules.frozen(p) for p in paths)
    if n == 0:
      raise ConfigError(f"optim.freeze={c.freeze!r} matches no parameter ({example})")
    if n == len(paths):
      raise ConfigError(f"optim.freeze={c.freeze!r} matches every parameter: nothing to train")
  for regex, _ in rules.multipliers:
    if not any(regex.search(p) for p in paths):
      raise ConfigError(
        f"optim.lr_multipliers={c.lr_multipliers!r}: regex {regex.pattern!r} matches no "
        f"parameter ({example})"
      )
  shapes = dict(zip(paths, (tuple(x.shape) for x in jax.tree.leaves(params)), strict=True))
  for p in paths:
    i = rules.layer(p)
    if i is not None and i >= num_layers:
      raise ValueError(f"parameter {p!r} is in layer {i} but num_layers={num_layers}")
    if rules.stacked(p) and shapes[p][:1] != (num_layers,):
      raise ValueError(f"stacked parameter {p!r} has shape {shapes[p]}, not [num_layers={num_layers}, ...]")
  return rules


# ---------------------------------------------------------------------------------------------
# Schedules.
# ---------------------------------------------------------------------------------------------


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                  peak: float | None = None) -> optax.Schedule:
  """Learning rate as a function of the update count (0-based).

  Every schedule warms up linearly from 0 at step 0 to `learning_rate` at `warmup_steps`, then:
    constant: stays at lr.
    linear / cosine: decays to `min_lr_ratio * lr` at `total_steps`, flat afterwards.
    rsqrt: lr * sqrt(w / step) with w = max(warmup_steps, 1); so with no warmup the lr is `lr`
      at steps 0 and 1 and lr / sqrt(step) afterwards. Ignores `min_lr_ratio` and total_steps.
    wsd: stable at lr until the last `wsd_decay_fraction` of total_steps, then linear to
      `min_lr_ratio * lr` at total_steps (warmup-stable-decay).

  `peak` replaces `learning_rate` (the optimizer builds its schedule with peak=1 and carries
  the learning rate as a state array, so runs that differ only in it share one compiled step).
  """
  c = _section(cfg)
  if c.schedule not in SCHEDULES:
    raise ConfigError(f"optim.schedule={c.schedule!r} is not one of {SCHEDULES}")
  if c.warmup_steps < 0:
    raise ConfigError(f"optim.warmup_steps={c.warmup_steps!r} must be >= 0")
  if not 0.0 <= c.min_lr_ratio <= 1.0:
    raise ConfigError(f"optim.min_lr_ratio={c.min_lr_ratio!r} must be in [0, 1]")
  if not 0.0 <= c.wsd_decay_fraction <= 1.0:
    raise ConfigError(f"optim.wsd_decay_fraction={c.wsd_decay_fraction!r} must be in [0, 1]")
  if c.schedule in ("linear", "cosine", "wsd") and total_steps <= c.warmup_steps:
    raise ConfigError(
      f"optim.warmup_steps={c.warmup_steps!r} must be < total_steps={total_steps} for a "
      f"{c.schedule!r} schedule: lower optim.warmup_steps or raise train.steps"
    )
  lr = float(c.learning_rate if peak is None else peak)
  warmup = int(c.warmup_steps)
  final = lr * float(c.min_lr_ratio)
  total = int(total_steps)
  kind = c.schedule
  if kind == "wsd":
    decay_start = max(warmup, total - int(round(c.wsd_decay_fraction * total)))
  else:
    decay_start = warmup

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # max(.., 1): a zero-length phase must not divide by zero.
    warm = lr * step / max(warmup, 1)
    frac = jnp.clip((step - decay_start) / max(total - decay_start, 1), 0.0, 1.0)
    if kind == "constant":
      after = jnp.full_like(step, lr)
    elif kind in ("linear", "wsd"):
      after = lr + (final - lr) * frac
    elif kind == "cosine":
      after = final + (lr - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:  # rsqrt
      w = max(warmup, 1)
      after = lr * jnp.sqrt(w / jnp.maximum(step, w))
    return jnp.where(step < warmup, warm, after)

  return schedule


# ---------------------------------------------------------------------------------------------
# Per-parameter transformations (paths are read from the tree at hand, so they work on nnx.State,
# plain dicts, and on the MaskedNode-holed trees that optax.partition hands to each group).
# ---------------------------------------------------------------------------------------------


class GateState(NamedTuple):
  count: jax.Array  # updates seen so far


def _unfreeze_gate(rules: _Rules, start: int, every: int) -> optax.GradientTransformation:
  """Gradual unfreezing: zeroes updates of layers (then embeddings) not yet unfrozen.

  At update s, the top `start + s // every` layers train; embeddings join one period after the
  last layer. Other params outside the layers (head, final norm) always train.
  """
  num_layers = rules.num_layers

  def init_fn(params):
    del params
    return GateState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    n_open = start + state.count // every

    def gate(u, path):
      i = rules.layer(path)
      if rules.stacked(path):
        open_ = _per_layer(jnp.arange(num_layers) >= num_layers - n_open, u)
      elif i is not None:
        open_ = i >= num_layers - n_open
      elif rules.is_embedding(path):
        open_ = n_open > num_layers
      else:
        return u
      # where, not multiply: a NaN/inf in a still-frozen layer must not leak into its update.
      return jnp.where(open_, u, jnp.zeros_like(u))

    updates = jax.tree.map(gate, updates, param_paths(updates))
    return updates, GateState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_per_param(rules: _Rules, layerwise_lr_decay: jax.Array) -> optax.GradientTransformation:
  """Multiplies each update by its param-group multiplier times the layer-wise lr decay."""

  def update_fn(updates, state, params=None):
    del params

    def scale(u, path):
      mult = rules.group_multiplier(path)
      depth = rules.depth(path)
      if rules.stacked(path):  # one rate per row: depth is [L]
        rates = mult * layerwise_lr_decay ** jnp.asarray(depth, jnp.float32)
        return (u * _per_layer(rates, u)).astype(u.dtype)
      if depth:
        mult = mult * layerwise_lr_decay**depth
      return u if (depth == 0 and mult == 1.0) else (u * mult).astype(u.dtype)

    return jax.tree.map(scale, updates, param_paths(updates)), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _direction(c: ml_collections.ConfigDict, hp: dict) -> optax.GradientTransformation:
  """The optimizer's update direction, before weight decay and learning rate."""
  if c.name == "adamw":
    return optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
  if c.name == "lion":
    return optax.scale_by_lion(b1=hp["b1"], b2=hp["b2"])
  if c.name == "sgd":
    if c.momentum > 0:
      return optax.trace(decay=hp["momentum"], nesterov=bool(c.nesterov))
    return optax.identity()
  if c.name == "rmsprop":
    parts = [optax.scale_by_rms(decay=hp["rmsprop_decay"], eps=hp["eps"])]
    if c.momentum > 0:
      parts.append(optax.trace(decay=hp["momentum"], nesterov=bool(c.nesterov)))
    return optax.chain(*parts)
  # adafactor, as in optax.adafactor but without its own lr scaling and decay.
  parts = [
    optax.scale_by_factored_rms(
      factored=True,
      decay_rate=hp["adafactor_decay_rate"],
      min_dim_size_to_factor=int(c.adafactor_min_dim_size_to_factor),
    )
  ]
  if c.adafactor_clipping_threshold > 0:
    parts.append(optax.clip_by_block_rms(hp["adafactor_clipping_threshold"]))
  if c.adafactor_param_scale:
    parts.append(optax.scale_by_param_block_rms())
  if c.b1 > 0:
    parts.append(optax.ema(hp["b1"], debias=False))
  return optax.chain(*parts)


# Knobs injected as arrays in the state (per optimizer), so a search can overwrite or trace them.
_NUMERIC_KNOBS = {
  "adamw": ("b1", "b2", "eps"),
  "lion": ("b1", "b2"),
  "sgd": ("momentum",),
  "rmsprop": ("rmsprop_decay", "eps", "momentum"),
  "adafactor": ("adafactor_decay_rate", "adafactor_clipping_threshold", "b1"),
}


def check(cfg: ml_collections.ConfigDict, total_steps: int | None = None) -> None:
  """The section's names, schedule and regexes, before any parameter exists (ranges are the run
  config's: `jaxtune.config.validate`); with `total_steps`, the warmup against it too. Raises
  ConfigError naming the key; `build_optimizer` checks the rest against the parameters."""
  c = _section(cfg)
  if c.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={c.name!r} is not one of {OPTIMIZERS}")
  for key in ("freeze", "decay_exclude", "embeddings", "penalty_exclude"):
    _compile(key, c[key])
  _parse_multipliers(c.lr_multipliers)
  make_schedule(c, c.warmup_steps + 1 if total_steps is None else total_steps)


def build_optimizer(
  cfg: ml_collections.ConfigDict, params: Any, total_steps: int, num_layers: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation for `params` and its learning-rate schedule.

  `params` is only used to check the config's regexes (and its tree structure must match the
  gradients later). Raises ValueError naming the config key on any bad setting.
  """
  c = _section(cfg)
  if c.name not in OPTIMIZERS:
    raise ConfigError(f"optim.name={c.name!r} is not one of {OPTIMIZERS}")
  if c.layerwise_lr_decay <= 0:
    raise ConfigError(f"optim.layerwise_lr_decay={c.layerwise_lr_decay!r} must be > 0")
  if c.grad_clip_norm < 0:
    raise ConfigError(f"optim.grad_clip_norm={c.grad_clip_norm!r} must be >= 0 (0 = off)")
  if c.unfreeze_every_steps < 0:
    raise ConfigError(f"optim.unfreeze_every_steps={c.unfreeze_every_steps!r} must be >= 0")
  if c.unfreeze_start_layers < 0:
    raise ConfigError(f"optim.unfreeze_start_layers={c.unfreeze_start_layers!r} must be >= 0")
  schedule = make_schedule(c, total_steps)
  rules = _rules(c, params, num_layers)
  knobs = _NUMERIC_KNOBS[c.name]

  def decay_mask(tree):
    return jax.tree.map(rules.decayed, param_paths(tree))

  # inject_hyperparams reads this signature: every named float becomes a state array.
  def core(
    learning_rate,
    peak_lr,
    lr_scale,
    weight_decay,
    layerwise_lr_decay,
    grad_clip_norm=None,
    b1=None,
    b2=None,
    eps=None,
    momentum=None,
    rmsprop_decay=None,
    adafactor_decay_rate=None,
    adafactor_clipping_threshold=None,
  ):
    hp = dict(
      b1=b1,
      b2=b2,
      eps=eps,
      momentum=momentum,
      rmsprop_decay=rmsprop_decay,
      adafactor_decay_rate=adafactor_decay_rate,
      adafactor_clipping_threshold=adafactor_clipping_threshold,
    )
    parts = []
    if grad_clip_norm is not None:
      parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts += [
      _direction(c, hp),
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      _scale_per_param(rules, layerwise_lr_decay),
      optax.scale(-learning_rate * peak_lr * lr_scale),
    ]
    return optax.chain(*parts)

  # The schedule's shape (peak 1) times the learning rate held in the state: the compiled step
  # does not depend on the learning rate's value (a search's trials reuse one compilation).
  hparams = dict(
    learning_rate=make_schedule(c, total_steps, peak=1.0),
    peak_lr=float(c.learning_rate),
    lr_scale=1.0,
    weight_decay=float(c.weight_decay),
    layerwise_lr_decay=float(c.layerwise_lr_decay),
  )
  if c.grad_clip_norm > 0:
    hparams["grad_clip_norm"] = float(c.grad_clip_norm)
  hparams.update({k: float(c[k]) for k in knobs})
  # float32 hyperparameters even for bf16 params: a bf16 lr of 1e-5 is off by up to 0.4%.
  inner = optax.inject_hyperparams(core, hyperparam_dtype=jnp.float32)(**hparams)

  every = int(c.unfreeze_every_steps)
  if every > 0:
    start = int(c.unfreeze_start_layers)
    # The second gate stops weight decay from shrinking layers that are still frozen.
    train = optax.chain(
      _unfreeze_gate(rules, start, every), inner, _unfreeze_gate(rules, start, every)
    )
  else:
    train = inner

  def labels(tree):
    return jax.tree.map(lambda p: "frozen" if rules.frozen(p) else "train", param_paths(tree))

  tx = optax.partition({"train": train, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def hyperparams(opt_state: Any) -> dict:
  """The injected hyperparameters (float32 arrays) of a `build_optimizer` state, by name.

  Replace entries (e.g. `lr_scale`, `weight_decay`) in this dict to change them between steps;
  `learning_rate` is the schedule's shape (peak 1), recomputed at every update, and the base
  learning rate is `learning_rate * peak_lr * lr_scale`.
  """
  is_hp = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_hp) if is_hp(s)]
  if len(found) != 1:
    raise ValueError(f"expected one injected-hyperparameter state, found {len(found)}")
  return found[0].hyperparams


def current_learning_rate(opt_state: Any) -> jax.Array:
  """The base learning rate of the most recent update (schedule(0) before any update).

  Per-parameter multipliers (lr_multipliers, layer-wise decay) come on top of this value.
  """
  hp = hyperparams(opt_state)
  return hp["learning_rate"] * hp["peak_lr"] * hp["lr_scale"]


# ---------------------------------------------------------------------------------------------
# Loss penalty.
# ---------------------------------------------------------------------------------------------


def penalty(params: Any, cfg: ml_collections.ConfigDict) -> jax.Array:
  """l1 * sum|w| + l2 * sum w^2 over params matching neither `penalty_exclude` nor `freeze`.

  Added to the loss by the train step (unlike decoupled weight decay, it goes through the
  optimizer's preconditioning). Frozen params are skipped: their penalty is a constant.
  """
  c = _section(cfg)
  l1, l2 = float(c.l1), float(c.l2)
  if l1 == 0.0 and l2 == 0.0:
    return jnp.zeros([], jnp.float32)
  exclude = _compile("penalty_exclude", c.penalty_exclude)
  freeze = _compile("freeze", c.freeze)
  total = jnp.zeros([], jnp.float32)
  for path, w in zip(_path_list(params), jax.tree.leaves(params), strict=True):
    if (exclude and exclude.search(path)) or (freeze and freeze.search(path)):
      continue
    w = jnp.asarray(w, jnp.float32)
    if l1:
      total += l1 * jnp.sum(jnp.abs(w))
    if l2:
      total += l2 * jnp.sum(jnp.square(w))
  return total


__all__ = [
  "DEFAULT_EMBEDDINGS",
  "DEFAULT_EXCLUDE",
  "OPTIMIZERS",
  "SCHEDULES",
  "GateState",
  "build_optimizer",
  "current_learning_rate",
  "default_config",
  "hyperparams",
  "make_schedule",
  "param_paths",
  "penalty",
]
