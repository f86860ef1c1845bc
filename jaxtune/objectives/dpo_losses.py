"""Preference losses over per-sequence log-probabilities: DPO (sigmoid, IPO, hinge), SimPO,
ORPO, and the Bradley-Terry loss of a reward model.

Pure and jittable. Every loss takes [B] arrays, one entry per (chosen, rejected) pair, and
returns a `PairLoss`: the loss summed over pairs, the weight (the number of valid pairs) and
metric sums, so micro-batches and hosts add up exactly (as `jaxtune.losses`); `pair_means`
turns one into means. The variant (`kind`) is a Python string: static under jit.

Log-probabilities are sums over the answer tokens (`sequence_logps`); the length-normalised
losses (IPO, SimPO, ORPO) divide by the token counts it returns. The formulas, their papers
and the TRL 1.16 function each matches are in docs/guides/preference.md.

Legend: B pairs (or sequences), T time, V vocab.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DPO_KINDS = ("sigmoid", "ipo", "hinge")


class PairLoss(NamedTuple):
  loss_sum: jax.Array  # summed over valid pairs
  weight: jax.Array  # number of valid pairs
  sums: dict[str, jax.Array]  # metric sums over valid pairs ('rewards/chosen', ...)


def sequence_logps(logits_BTV: jax.Array, input_ids_BT: jax.Array, loss_mask_BT: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """([B] summed log-probabilities, [B] token counts) of the tokens with loss_mask=1.

  Token t is predicted by the logits at t-1 (as `losses.causal_lm_loss`), so a mask that is 0
  on the prompt and on padding sums over the answer only. Float32 whatever the logits' dtype.
  """
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  targets = input_ids_BT[:, 1:]
  mask = loss_mask_BT[:, 1:].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((picked - logz) * mask, axis=-1), jnp.sum(mask, axis=-1)


def _valid(x: jax.Array, valid: jax.Array | None) -> jax.Array:
  return jnp.ones(x.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)


def _pair_loss(per_pair, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, valid,
               **extra) -> PairLoss:
  w = _valid(per_pair, valid)
  # Rewards are logged, never trained through (TRL detaches them too).
  cr, rr = jax.lax.stop_gradient(chosen_rewards), jax.lax.stop_gradient(rejected_rewards)
  metrics = {
    "rewards/chosen": cr, "rewards/rejected": rr,
    "rewards/accuracies": (cr > rr).astype(jnp.float32), "rewards/margins": cr - rr,
    "logps/chosen": jax.lax.stop_gradient(chosen_logps),
    "logps/rejected": jax.lax.stop_gradient(rejected_logps),
    **{k: jax.lax.stop_gradient(v) for k, v in extra.items()},
  }
  sums = {k: jnp.sum(v * w) for k, v in metrics.items()}
  return PairLoss(jnp.sum(per_pair * w), jnp.sum(w), sums)


def pair_means(out: PairLoss) -> dict[str, jax.Array]:
  """{'loss': mean loss, metric: mean} over the valid pairs of `out` (summed micro-batches)."""
  n = jnp.maximum(out.weight, 1.0)
  return {"loss": out.loss_sum / n, **{k: v / n for k, v in out.sums.items()}}


def _per_token(logps: jax.Array, counts: jax.Array) -> jax.Array:
  """Summed log-probabilities (or log-ratios) divided by their answers' token counts."""
  return logps / jnp.maximum(counts, 1.0)


def _smoothed_sigmoid(z: jax.Array, label_smoothing: float) -> jax.Array:
  """-log sigmoid(z), with probability `label_smoothing` that the pair's labels are flipped."""
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
             ref_rejected: jax.Array, *, beta: float, kind: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_counts: jax.Array | None = None,
             rejected_counts: jax.Array | None = None, sft_weight: float = 0.0,
             valid: jax.Array | None = None) -> PairLoss:
  """DPO against a reference: sigmoid (with cDPO label smoothing), IPO or hinge.

  With d = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
  sigmoid: -(1-e) log s(beta d) - e log s(-beta d); hinge: relu(1 - beta d);
  ipo: (d' - 1/(2 beta))^2 where d' divides each log-ratio by its answer's token count (as TRL,
  which says the IPO authors' results use this length normalisation), so ipo needs the counts.
  Rewards are beta times the log-ratios.

  `sft_weight` > 0 adds that times the chosen answer's mean token NLL to each pair (RPO, Pang et
  al. 2024; TRL: loss_type=[kind, 'sft'], which takes one token mean over the batch instead: the
  same when the chosen answers are equally long). DPO alone may lower the chosen answers'
  likelihood along with the rejected ones'; the term holds the chosen answers up. Needs
  chosen_counts.
  """
  if kind not in DPO_KINDS:
    raise ValueError(f"dpo_loss: kind={kind!r}: expected one of {DPO_KINDS}")
  if sft_weight and chosen_counts is None:
    raise ValueError(f"dpo_loss(sft_weight={sft_weight}) needs chosen_counts")
  chosen_ratio = policy_chosen - ref_chosen
  rejected_ratio = policy_rejected - ref_rejected
  delta = chosen_ratio - rejected_ratio
  if kind == "sigmoid":
    per_pair = _smoothed_sigmoid(beta * delta, label_smoothing)
  elif kind == "hinge":
    per_pair = jax.nn.relu(1.0 - beta * delta)
  else:
    if chosen_counts is None or rejected_counts is None:
      raise ValueError("dpo_loss(kind='ipo') needs chosen_counts and rejected_counts")
    d = _per_token(chosen_ratio, chosen_counts) - _per_token(rejected_ratio, rejected_counts)
    per_pair = (d - 1.0 / (2.0 * beta)) ** 2
  extra = {}
  if sft_weight:
    nll = -_per_token(policy_chosen, chosen_counts)
    per_pair = per_pair + sft_weight * nll
    extra["nll_loss"] = nll
  return _pair_loss(per_pair, beta * chosen_ratio, beta * rejected_ratio, policy_chosen,
                    policy_rejected, valid, **extra)


def simpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, chosen_counts: jax.Array,
               rejected_counts: jax.Array, *, beta: float, gamma: float,
               label_smoothing: float = 0.0, valid: jax.Array | None = None) -> PairLoss:
  """SimPO, no reference: -log s(beta (avg_chosen - avg_rejected) - gamma), with avg the
  length-normalised log-probability; label smoothing as in dpo_loss. Rewards: beta * avg."""
  avg_c = _per_token(policy_chosen, chosen_counts)
  avg_r = _per_token(policy_rejected, rejected_counts)
  per_pair = _smoothed_sigmoid(beta * (avg_c - avg_r) - gamma, label_smoothing)
  return _pair_loss(per_pair, beta * avg_c, beta * avg_r, policy_chosen, policy_rejected, valid)


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, switching form at -ln 2 to avoid cancellation."""
  x = jnp.minimum(x, -1e-12)  # log-probabilities are <= 0; exactly 0 would give log(0)
  return jnp.where(x < -0.6931471805599453, jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, chosen_counts: jax.Array,
              rejected_counts: jax.Array, *, lam: float, sft_nll: jax.Array | None = None,
              valid: jax.Array | None = None) -> PairLoss:
  """ORPO, no reference: sft_nll - lam * log s(log odds(chosen) - log odds(rejected)).

  Odds use the length-normalised log-probabilities p: odds = p / (1 - p). `sft_nll` [B] is each
  pair's SFT term; by default the chosen answer's mean token NLL (-avg_chosen), which keeps the
  loss a mean over pairs. TRL's ORPOTrainer instead uses one token mean over the whole batch's
  chosen sequences, prompt included: pass that as `sft_nll` to reproduce it. Rewards: lam * avg.
  """
  avg_c = _per_token(policy_chosen, chosen_counts)
  avg_r = _per_token(policy_rejected, rejected_counts)
  log_odds = (avg_c - avg_r) - (_log1mexp(avg_c) - _log1mexp(avg_r))
  ratio = jax.nn.log_sigmoid(log_odds)
  nll = -avg_c if sft_nll is None else jnp.broadcast_to(sft_nll, avg_c.shape)
  per_pair = nll - lam * ratio
  return _pair_loss(per_pair, lam * avg_c, lam * avg_r, policy_chosen, policy_rejected, valid,
                    nll_loss=nll, log_odds_ratio=ratio, log_odds_chosen=log_odds)


def bradley_terry_loss(chosen_rewards: jax.Array, rejected_rewards: jax.Array, *,
                       margin: jax.Array | None = None, center_coef: float = 0.0,
                       valid: jax.Array | None = None) -> PairLoss:
  """Reward-model loss over two scalar rewards: -log s(r_chosen - r_rejected - margin)
  + center_coef * (r_chosen + r_rejected)^2 (TRL's RewardTrainer, with its optional margin and
  center_rewards_coefficient). Rewards in the metrics are the raw scores."""
  z = chosen_rewards - rejected_rewards - (0.0 if margin is None else margin)
  per_pair = -jax.nn.log_sigmoid(z)
  if center_coef:
    per_pair = per_pair + center_coef * (chosen_rewards + rejected_rewards) ** 2
  w = _valid(per_pair, valid)
  cr, rr = jax.lax.stop_gradient(chosen_rewards), jax.lax.stop_gradient(rejected_rewards)
  sums = {"rewards/chosen": jnp.sum(cr * w), "rewards/rejected": jnp.sum(rr * w),
          "rewards/accuracies": jnp.sum((cr > rr) * w), "rewards/margins": jnp.sum((cr - rr) * w)}
  return PairLoss(jnp.sum(per_pair * w), jnp.sum(w), sums)
