"""GRPO's pieces, pure and jittable: group-normalised advantages and the clipped policy-gradient
loss with a KL penalty to the reference, aggregated as TRL 1.16's GRPOTrainer names it.

Rows are completions, G consecutive rows per prompt (prompt 0's G samples, then prompt 1's,
as TRL's repeat_interleave lays them out). Per-token arrays are [B, T] over the completion
tokens, with `mask` 1 on real completion tokens. The loss is returned as (sum, weight) plus
metric sums so micro-batches add up exactly (see `jaxtune.losses`): the caller divides the
summed loss by the summed weight of the whole batch.

Legend: B completions, G samples per prompt, P prompts (B = P * G), T completion time.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtune.objectives.base import model_kwargs

# TRL's names. 'grpo': mean over each sequence's tokens, then over sequences; 'bnpo' and
# 'dapo': mean over all tokens of the batch (TRL's bnpo normalises each micro-batch, dapo the
# whole batch; with the whole-batch weight here both are the whole-batch token mean); 'dr_grpo':
# token sum over (sequences * max_completion_length), a constant, so no length bias.
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "batch", "none")
ADV_EPS = 1e-4  # TRL's: advantages = (r - mean) / (std + 1e-4)


class GRPOLoss(NamedTuple):
  loss_sum: jax.Array
  weight: jax.Array  # what the whole batch's loss_sum is divided by (see LOSS_TYPES)
  sums: dict[str, jax.Array]  # token sums ('kl', 'clip_ratio/...', 'tokens'), 'completion_length', 'sequences'


def _std(x: jax.Array, axis=None) -> jax.Array:
  """Unbiased (n - 1) standard deviation, as torch's and TRL's nanstd."""
  return jnp.std(x, axis=axis, ddof=1)


def group_advantages(rewards_B: jax.Array, group_size: int, *, scale: str = "group"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(advantages [B], metrics): reward minus its group's mean, divided by (std + 1e-4).

  `scale` as TRL's scale_rewards: 'group' (each prompt's std, the GRPO paper), 'batch' (one std
  over the batch) or 'none' (Dr. GRPO: only centred). Metrics: reward mean and std over the
  batch, the mean within-group std, and the fraction of groups whose rewards are all equal
  (they carry no signal).
  """
  if scale not in SCALE_REWARDS:
    raise ValueError(f"group_advantages: scale={scale!r}: expected one of {SCALE_REWARDS}")
  r = rewards_B.astype(jnp.float32).reshape(-1, group_size)  # [P, G]
  centred = (r - jnp.mean(r, axis=1, keepdims=True)).reshape(-1)
  group_std = _std(r, axis=1) if group_size > 1 else jnp.zeros(r.shape[0], jnp.float32)
  if scale == "group":
    adv = centred / (jnp.repeat(group_std, group_size) + ADV_EPS)
  elif scale == "batch":
    adv = centred / (_std(r) + ADV_EPS)
  else:
    adv = centred
  metrics = {"reward/mean": jnp.mean(r), "reward/std": _std(r),
             "reward/group_std": jnp.mean(group_std),
             "frac_reward_zero_std": jnp.mean(jnp.isclose(group_std, 0.0).astype(jnp.float32))}
  return adv, metrics


def grpo_loss(logps_BT: jax.Array, old_logps_BT: jax.Array, advantages_B: jax.Array,
              mask_BT: jax.Array, *, ref_logps_BT: jax.Array | None = None, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float | None = None,
              loss_type: str = "dapo", max_completion_length: int | None = None) -> GRPOLoss:
  """The clipped surrogate -min(ratio A, clip(ratio, 1-el, 1+eh) A) per token, plus
  beta * k3 KL to the reference, k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's unbiased,
  non-negative estimator; TRL's). ratio = exp(logp - old_logp) per token; with one update per
  generation old_logp is logp with its gradient stopped, so ratio is 1 and clipping only acts
  on later updates of the same samples. TRL's default loss_type is 'dapo'.
  """
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"grpo_loss: loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
  if loss_type == "dr_grpo" and not max_completion_length:
    raise ValueError("grpo_loss(loss_type='dr_grpo') needs max_completion_length")
  eh = epsilon_low if epsilon_high is None else epsilon_high
  mask = mask_BT.astype(jnp.float32)
  logps = logps_BT.astype(jnp.float32)
  adv = advantages_B.astype(jnp.float32)[:, None]
  ratio = jnp.exp(logps - jax.lax.stop_gradient(old_logps_BT.astype(jnp.float32)))
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + eh)
  per_token = -jnp.minimum(ratio * adv, clipped * adv)
  if beta:
    if ref_logps_BT is None:
      raise ValueError("grpo_loss: beta != 0 needs ref_logps_BT")
    d = jax.lax.stop_gradient(ref_logps_BT.astype(jnp.float32)) - logps
    kl = jnp.exp(d) - d - 1.0
    per_token = per_token + beta * kl
  else:
    kl = jnp.zeros_like(per_token)

  lengths = jnp.sum(mask, axis=-1)
  token_sum = jnp.sum(per_token * mask)
  if loss_type == "grpo":
    loss_sum = jnp.sum(jnp.sum(per_token * mask, axis=-1) / jnp.maximum(lengths, 1.0))
    weight = jnp.asarray(mask.shape[0], jnp.float32)
  elif loss_type == "dr_grpo":
    loss_sum, weight = token_sum, jnp.asarray(mask.shape[0] * max_completion_length, jnp.float32)
  else:
    loss_sum, weight = token_sum, jnp.sum(mask)

  r = jax.lax.stop_gradient(ratio)
  low = ((r < 1.0 - epsilon_low) & (adv < 0)).astype(jnp.float32)
  high = ((r > 1.0 + eh) & (adv > 0)).astype(jnp.float32)
  token_mean_sums = {"kl": jax.lax.stop_gradient(kl), "clip_ratio/low_mean": low,
                     "clip_ratio/high_mean": high, "clip_ratio/region_mean": jnp.maximum(low, high)}
  sums = {k: jnp.sum(v * mask) for k, v in token_mean_sums.items()}
  sums.update(tokens=jnp.sum(mask), completion_length=jnp.sum(lengths),
              sequences=jnp.asarray(mask.shape[0], jnp.float32))
  return GRPOLoss(loss_sum, weight, sums)


def grpo_means(out: GRPOLoss) -> dict[str, jax.Array]:
  """{'loss', 'kl', 'clip_ratio/...' (token means), 'completion_length' (sequence mean)}."""
  tokens = jnp.maximum(out.sums["tokens"], 1.0)
  means = {k: v / tokens for k, v in out.sums.items() if k in ("kl",) or k.startswith("clip_ratio/")}
  means["completion_length"] = out.sums["completion_length"] / jnp.maximum(out.sums["sequences"], 1.0)
  return {"loss": out.loss_sum / jnp.maximum(out.weight, 1e-6), **means}


def completion_logps(model, batch: dict, dropout_rng=None) -> jax.Array:
  """[B, N] float32 log-probabilities of the completion tokens (the last N of each row) under
  `model`; logits are formed for those N positions only."""
  n = batch["completion_mask"].shape[1]
  ids = batch["input_ids"]
  h = model.hidden_states(ids, **model_kwargs(batch), dropout_rng=dropout_rng)
  logits = model.logits_from_hidden(h[:, -n - 1:-1]).astype(jnp.float32)  # [B, N, V]
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, ids[:, -n:, None], axis=-1)[..., 0]
  return picked - logz
