"""GRPO loss and advantages against TRL 1.16's GRPOTrainer on the same log-probs and masks.

TRL's `_compute_loss` is called as it is, on a GRPOTrainer made without __init__ (no model,
no generation) holding only the attributes the loss reads; its model forward is replaced by
the given per-token log-probs, so both sides start from the same numbers and gradients are
taken with respect to those log-probs on both sides.
"""

from __future__ import annotations

import collections
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402

from jaxtune.objectives import grpo_loss as G  # noqa: E402

P, NG, T, MAXLEN = 3, 4, 7, 9  # prompts, samples per prompt, completion tokens, max length


def _data(seed=0):
  rng = np.random.default_rng(seed)
  logps = -rng.uniform(0.1, 3.0, (P * NG, T)).astype(np.float32)
  # Old and reference log-probs differ from the current ones by up to +-0.4 so that some
  # ratios fall outside [0.8, 1.28] (both clip sides) and the KL is not 0.
  old = (logps + rng.uniform(-0.4, 0.4, logps.shape)).astype(np.float32)
  ref = (logps + rng.uniform(-0.4, 0.4, logps.shape)).astype(np.float32)
  lengths = rng.integers(2, T + 1, P * NG)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  rewards = rng.uniform(0, 1, P * NG).astype(np.float32)
  rewards[NG:2 * NG] = 0.5  # one group with equal rewards: advantage 0, not NaN
  return logps, old, ref, mask, rewards


def _trl_advantages(rewards: np.ndarray, scale: str) -> np.ndarray:
  """TRL 1.16's sum_then_normalize branch of _generate_and_score_completions, line for line."""
  r = torch.from_numpy(rewards)
  mean = torch.nanmean(r.view(-1, NG), dim=1).repeat_interleave(NG, dim=0)
  if scale == "group":
    std = nanstd(r.view(-1, NG), dim=1).repeat_interleave(NG, dim=0)
  else:
    std = nanstd(r).expand_as(r)
  adv = r - mean
  if scale != "none":
    adv = adv / (std + 1e-4)
  return torch.nan_to_num(adv, nan=0.0).numpy()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(scale):
  rewards = _data()[4]
  got, metrics = G.group_advantages(jnp.asarray(rewards), NG, scale=scale)
  want = _trl_advantages(rewards, scale)
  diff = float(np.max(np.abs(np.asarray(got) - want)))
  print(f"advantages scale={scale}: max |jax - trl| = {diff:.2e}")
  assert diff < 1e-6
  assert np.allclose(np.asarray(got)[NG:2 * NG], 0.0)
  assert float(metrics["frac_reward_zero_std"]) == pytest.approx(1 / P)


def _trl_trainer(loss_type: str, beta: float, eps_low: float, eps_high: float):
  t = object.__new__(GRPOTrainer)  # skips __init__: no model, tokenizer or generation
  t.loss_type, t.beta, t.epsilon_low, t.epsilon_high = loss_type, beta, eps_low, eps_high
  t.importance_sampling_level, t.top_entropy_quantile = "token", 1.0
  t.off_policy_mask_threshold, t.use_vllm, t.vllm_importance_sampling_correction = None, False, False
  t.max_completion_length, t.current_gradient_accumulation_steps = MAXLEN, 1
  t._entropy_bonus_enabled, t.aux_loss_enabled = False, False
  t._metrics = collections.defaultdict(lambda: collections.defaultdict(list))
  t.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
  t.model = types.SimpleNamespace(training=True)
  t.accelerator = types.SimpleNamespace(num_processes=1, sync_gradients=True,
                                        gather=lambda x: x, reduce=lambda x, reduction: x)
  return t


CASES = [("dapo", 0.04), ("grpo", 0.04), ("bnpo", 0.0), ("dr_grpo", 0.1), ("grpo", 0.0)]


@pytest.mark.parametrize("loss_type,beta", CASES)
def test_loss_and_grads_match_trl(loss_type, beta):
  logps, old, ref, mask, rewards = _data(1)
  adv = _trl_advantages(rewards, "group")
  eps_low, eps_high = 0.2, 0.28

  trainer = _trl_trainer(loss_type, beta, eps_low, eps_high)
  lp = torch.from_numpy(logps).requires_grad_(True)
  trainer._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.zeros_like(lp), None)
  inputs = {
    "prompt_ids": torch.zeros((P * NG, 2), dtype=torch.long), "prompt_mask": torch.ones((P * NG, 2)),
    "completion_ids": torch.zeros((P * NG, T), dtype=torch.long), "completion_mask": torch.from_numpy(mask),
    "advantages": torch.from_numpy(adv), "old_per_token_logps": torch.from_numpy(old),
    "ref_per_token_logps": torch.from_numpy(ref),
    "num_items_in_batch": torch.tensor(mask.sum()),
  }
  want = trainer._compute_loss(None, inputs)
  want.backward()
  want_grad = lp.grad.numpy()

  def loss(lp_):
    out = G.grpo_loss(lp_, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                      ref_logps_BT=jnp.asarray(ref), beta=beta, epsilon_low=eps_low,
                      epsilon_high=eps_high, loss_type=loss_type, max_completion_length=MAXLEN)
    return out.loss_sum / out.weight, out

  (got, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(logps))
  dl = abs(float(got) - want.item())
  dg = float(np.max(np.abs(np.asarray(grad) - want_grad)))
  print(f"grpo {loss_type} beta={beta}: loss {float(got):.6f}, |dloss| = {dl:.2e}, max |dgrad| = {dg:.2e}")
  assert dl < 1e-6 and dg < 1e-7
  assert np.abs(want_grad).max() > 1e-3  # the gradient is not trivially zero

  means = G.grpo_means(out)
  m = trainer._metrics["train"]
  for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
    assert float(means[key]) == pytest.approx(m[key][0], abs=1e-6), key
  assert 0 < m["clip_ratio/region_mean"][0] < 1  # clipping happened, not everywhere
  if beta:
    assert float(means["kl"]) == pytest.approx(m["kl"][0], rel=1e-5)


def test_micro_batches_add_up():
  """Sums over two halves, divided by the summed weight, equal the whole batch's loss."""
  logps, old, ref, mask, rewards = _data(2)
  adv, _ = G.group_advantages(jnp.asarray(rewards), NG)
  for loss_type in G.LOSS_TYPES:
    kw = dict(ref_logps_BT=jnp.asarray(ref), beta=0.04, loss_type=loss_type, max_completion_length=MAXLEN)
    whole = G.grpo_loss(jnp.asarray(logps), jnp.asarray(old), adv, jnp.asarray(mask), **kw)
    halves = [G.grpo_loss(jnp.asarray(logps[s]), jnp.asarray(old[s]), adv[s], jnp.asarray(mask[s]),
                          **{**kw, "ref_logps_BT": jnp.asarray(ref[s])})
              for s in (slice(0, 6), slice(6, None))]
    summed = sum(h.loss_sum for h in halves) / sum(h.weight for h in halves)
    assert float(summed) == pytest.approx(float(whole.loss_sum / whole.weight), rel=1e-6), loss_type


def test_bad_arguments():
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="loss_type='ppo'"):
    G.grpo_loss(z, z, jnp.zeros(2), z, loss_type="ppo")
  with pytest.raises(ValueError, match="max_completion_length"):
    G.grpo_loss(z, z, jnp.zeros(2), z, loss_type="dr_grpo")
  with pytest.raises(ValueError, match="ref_logps_BT"):
    G.grpo_loss(z, z, jnp.zeros(2), z, beta=0.1)
  with pytest.raises(ValueError, match="scale='mean'"):
    G.group_advantages(jnp.zeros(4), 2, scale="mean")
