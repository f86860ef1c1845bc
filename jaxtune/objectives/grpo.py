"""GRPO, online RL (`model.task='grpo'`): a causal LM trained on its own samples, scored by a
reward function, with group-normalised advantages and a KL penalty to the reference.

Rows to arrays: prompts (`data.kind='prompts'`, `jaxtune.data.prompts`: plain text or chat
messages rendered with the tokenizer's chat template). The step's batches are not a function of
the data alone: the driver's `jaxtune.rollout.Rollouts` (on_policy) samples `grpo.group_size`
completions per prompt from the current weights with jaxtune's KV-cache generator, scores them
(`grpo.reward`), and hands the step prompt + completion ids, the completion mask, the
advantages and the reference log-probabilities. `train.batch_size` counts PROMPTS per step;
each step trains on batch_size x group_size completions.

Loss: `grpo_loss` (clipped surrogate + beta * k3 KL, TRL's aggregations), one update per
generation, so the old log-probabilities are the current ones with the gradient stopped (TRL
with num_iterations=1 does the same; the ratio is 1 and clipping reports 0). Metrics: reward
mean and std, KL, completion length and clip fraction on train; on validation, the mean reward
of one completion per validation prompt (greedy at grpo.eval_temperature=0), eval/loss being
minus that reward so checkpoint.best_metric='eval/loss' keeps the most rewarded weights.

Legend: B completions (prompts x G), L prompt width, N grpo.max_new_tokens, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxtune.errors import ConfigError
from jaxtune.objectives.causal_lm import CausalLM
from jaxtune.objectives.grpo_loss import LOSS_TYPES, SCALE_REWARDS, completion_logps, grpo_loss


def default_config() -> ml_collections.ConfigDict:
  """The `grpo` section of the run config (read only with model.task='grpo')."""
  c = ml_collections.ConfigDict()
  c.group_size = 4  # G completions sampled per prompt (>= 2: advantages compare within a group)
  c.max_new_tokens = 32  # N: each completion's budget (a stop token ends it earlier)
  c.temperature = 1.0  # sampling temperature of the completions (> 0)
  c.top_p = 1.0  # nucleus filter (1 = off)
  c.top_k = 0  # top-k filter (0 = off)
  c.epsilon = 0.2  # clip range low (and high, unless epsilon_high)
  c.epsilon_high = 0.0  # 0 = epsilon (DAPO's clip-higher uses e.g. 0.28)
  c.beta = 0.04  # KL penalty to the reference (0: no reference pass)
  c.loss_type = "dapo"  # grpo | bnpo | dapo | dr_grpo (as TRL names them)
  c.scale_rewards = "group"  # group | batch | none (Dr. GRPO: advantages only centred)
  # The reward (`jaxtune.rewards.load`): 'module:function' (prompts, completions) -> list[float],
  # 'classifier:RUN_DIR:LABEL' (a finished classifier's probability of LABEL) or
  # 'reward_model:RUN_DIR' (a model.task='reward' run's score).
  c.reward = ""
  c.eval_temperature = 0.0  # validation completions: 0 greedy, > 0 sampled (seeded)
  c.log_samples = 4  # prompt / completion / reward samples written as text at each log step
  return c


def check_config(config) -> None:
  """The grpo section and what GRPO needs of the rest; errors name the key."""
  g = config.grpo

  def fail(key, value, why):
    raise ConfigError(f"config: {key}={value!r}: {why}")

  if config.data.kind != "prompts":
    fail("data.kind", config.data.kind, "model.task='grpo' samples its own answers to prompts: "
         "set data.kind='prompts' (rows with a 'prompt' column)")
  if g.group_size < 2:
    fail("grpo.group_size", g.group_size, "must be >= 2: a completion's advantage is its reward "
         "against the others of its group, so a group of 1 learns nothing")
  if g.max_new_tokens < 1:
    fail("grpo.max_new_tokens", g.max_new_tokens, "must be >= 1")
  if not g.temperature > 0:
    fail("grpo.temperature", g.temperature, "must be > 0: a group of greedy samples is one answer "
         "repeated, with no reward spread to learn from")
  if not 0 < g.top_p <= 1:
    fail("grpo.top_p", g.top_p, "must be in (0, 1] (1 = off)")
  if g.top_k < 0:
    fail("grpo.top_k", g.top_k, "must be >= 0 (0 = off)")
  if not 0 < g.epsilon < 1:
    fail("grpo.epsilon", g.epsilon, "must be in (0, 1)")
  if g.epsilon_high < 0:
    fail("grpo.epsilon_high", g.epsilon_high, "must be >= 0 (0 = grpo.epsilon)")
  if g.beta < 0:
    fail("grpo.beta", g.beta, "must be >= 0 (0 = no KL penalty, no reference pass)")
  if g.loss_type not in LOSS_TYPES:
    fail("grpo.loss_type", g.loss_type, f"expected one of {LOSS_TYPES}")
  if g.scale_rewards not in SCALE_REWARDS:
    fail("grpo.scale_rewards", g.scale_rewards, f"expected one of {SCALE_REWARDS}")
  if g.eval_temperature < 0:
    fail("grpo.eval_temperature", g.eval_temperature, "must be >= 0 (0 = greedy)")
  if g.log_samples < 0:
    fail("grpo.log_samples", g.log_samples, "must be >= 0")
  if not g.reward:
    fail("grpo.reward", g.reward, "name a reward: 'module:function' taking (prompts, "
         "completions) and returning one float per completion")


class GRPO(CausalLM):
  """Exports and generates as a causal LM (inherits its card usage); trains by GRPO."""

  name = "grpo"
  on_policy = True  # batches sampled from the current weights: jaxtune.rollout.Rollouts
  head = "causal_lm"
  base_metrics = ("loss", "reward", "reward_std", "completion_length")
  line_metrics = ("reward", "completion_length")
  table_metrics = ("reward", "reward_std", "completion_length")

  def check_config(self, config) -> None:
    check_config(config)

  def options(self, config) -> ml_collections.FrozenConfigDict:
    """The grpo section, static in the step (the loss reads beta, epsilon, loss_type, ...)."""
    return ml_collections.FrozenConfigDict(config.grpo)

  def splits(self, config, workdir):
    check_config(config)  # also when a caller builds the data without jaxtune.config.validate
    return super().splits(config, workdir)

  def batch_weight(self, batch, cfg):
    g = cfg.options
    mask = batch["completion_mask"].astype(jnp.float32)
    if g.loss_type == "grpo":
      return jnp.asarray(mask.shape[0], jnp.float32)
    if g.loss_type == "dr_grpo":
      return jnp.asarray(mask.shape[0] * g.max_new_tokens, jnp.float32)
    return jnp.sum(mask)

  def loss_terms(self, model, batch, dropout_rng, cfg):
    g = cfg.options
    logps = completion_logps(model, batch, dropout_rng)
    out = grpo_loss(logps, jax.lax.stop_gradient(logps), batch["advantages"], batch["completion_mask"],
                    ref_logps_BT=batch.get("ref_logps"), beta=g.beta, epsilon_low=g.epsilon,
                    epsilon_high=g.epsilon_high or None, loss_type=g.loss_type,
                    max_completion_length=g.max_new_tokens)
    s = out.sums
    rows = jnp.asarray(batch["rewards"].shape[0], jnp.float32)
    extras = {"kl": (s["kl"], s["tokens"]),
              "clip_ratio": (s["clip_ratio/region_mean"], s["tokens"]),
              "completion_length": (s["completion_length"], s["sequences"]),
              "reward": (jnp.sum(batch["rewards"]), rows),
              "reward_std": (jnp.sum(batch["reward_std"]), rows)}
    return out.loss_sum, out.weight, extras

  def eval_sums(self, model, batch, lm_loss_chunk=-1, options=None):
    raise ConfigError("model.task='grpo' evaluates by generating and scoring completions "
                      "(the run's validation), not on a file: use `jaxtune generate` on the run")

  def metrics(self, sums, label_names=(), order=None):
    raise NotImplementedError("GRPO's metrics come from jaxtune.rollout.Rollouts.evaluate")


OBJECTIVE = GRPO()
