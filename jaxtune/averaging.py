"""Weight averaging for evaluation: an exponential moving average (EMA) and stochastic weight
averaging (SWA) of the parameters, kept beside the train state.

Configured by the `optim` section (`ema_decay`, `swa_start`, `swa_every`; see optim.py). All
functions are pure and jittable with the config closed over; the step may be a traced array.
Averages are kept in float32 whatever the parameter dtype, because a bf16 running average loses
the small per-step changes it is meant to accumulate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jaxtune.errors import ConfigError


class AvgState(NamedTuple):
  """Averaged weights; a field is None when that kind of averaging is off."""

  ema: Any  # float32 copy of the params tree, or None
  ema_count: jax.Array  # EMA updates so far (the first one seeds ema = params)
  swa: Any  # float32 running mean of the sampled params, or None
  swa_count: jax.Array  # params sampled into swa so far


def _section(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return cfg.optim if "optim" in cfg else cfg


def _check(c: ml_collections.ConfigDict) -> tuple[bool, bool]:
  if not 0.0 <= c.ema_decay < 1.0:
    raise ConfigError(f"optim.ema_decay={c.ema_decay!r} must be in [0, 1) (0 = off)")
  if c.swa_start >= 0 and c.swa_every < 1:
    raise ConfigError(f"optim.swa_every={c.swa_every!r} must be >= 1 when SWA is on")
  if c.swa_start < -1:
    raise ConfigError(f"optim.swa_start={c.swa_start!r} must be >= 0, or -1 for off")
  return c.ema_decay > 0, c.swa_start >= 0


def _f32_zeros(params: Any) -> Any:
  return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)


def init(params: Any, cfg: ml_collections.ConfigDict) -> AvgState | None:
  """Empty averages shaped like `params`, or None when neither EMA nor SWA is enabled."""
  use_ema, use_swa = _check(_section(cfg))
  if not (use_ema or use_swa):
    return None
  zero = jnp.zeros([], jnp.int32)
  return AvgState(
    ema=_f32_zeros(params) if use_ema else None,
    ema_count=zero,
    swa=_f32_zeros(params) if use_swa else None,
    swa_count=zero,
  )


def update(
  avg: AvgState | None, params: Any, step: jax.Array | int, cfg: ml_collections.ConfigDict
) -> AvgState | None:
  """Folds the params after update `step` into the averages.

  EMA: avg = d * avg + (1 - d) * params, except the first call, which sets avg = params (so the
  average never mixes in the zeros it was initialised with).
  SWA: running mean of the params at steps >= swa_start with (step - swa_start) % swa_every == 0.
  """
  if avg is None:
    return None
  c = _section(cfg)
  ema, ema_count, swa, swa_count = avg
  if ema is not None:
    d = jnp.where(ema_count == 0, 0.0, jnp.float32(c.ema_decay))
    ema = jax.tree.map(lambda a, p: d * a + (1.0 - d) * p.astype(jnp.float32), ema, params)
    ema_count = ema_count + 1
  if swa is not None:
    step = jnp.asarray(step, jnp.int32)
    start, every = int(c.swa_start), int(c.swa_every)
    take = (step >= start) & ((step - start) % every == 0)
    # Incremental mean: m_{n+1} = m_n + (p - m_n) / (n + 1); equals p for the first sample.
    # where, not a zero weight: a NaN in skipped params must not poison the average.
    w = 1.0 / (swa_count + 1).astype(jnp.float32)
    swa = jax.tree.map(
      lambda m, p: jnp.where(take, m + w * (p.astype(jnp.float32) - m), m), swa, params
    )
    swa_count = swa_count + take.astype(jnp.int32)
  return AvgState(ema, ema_count, swa, swa_count)


def params_for_eval(avg: AvgState | None, params: Any) -> Any:
  """The weights to evaluate, in the params' dtypes.

  SWA once it has at least one sample, else EMA once it has been updated, else the raw params.
  """
  if avg is None:
    return params
  out = params
  if avg.ema is not None:
    out = jax.tree.map(
      lambda e, p: jnp.where(avg.ema_count > 0, e.astype(p.dtype), p), avg.ema, out
    )
  if avg.swa is not None:
    out = jax.tree.map(
      lambda s, p: jnp.where(avg.swa_count > 0, s.astype(p.dtype), p), avg.swa, out
    )
  return out
