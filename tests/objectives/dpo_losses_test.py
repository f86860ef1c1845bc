"""Pair losses without a model: the Bradley-Terry loss against TRL's RewardTrainer, and the
(sum, weight) contract: micro-batches and padded pairs add up to the whole batch's means."""

from __future__ import annotations

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.objectives import dpo_losses as L

B = 6


def _logps(seed=0):
  rng = np.random.default_rng(seed)
  pc, pr, rc, rr = (-rng.uniform(5, 40, B).astype(np.float32) for _ in range(4))
  nc, nr = rng.integers(3, 12, B).astype(np.float32), rng.integers(3, 12, B).astype(np.float32)
  return pc, pr, rc, rr, nc, nr


@pytest.mark.parametrize("margin,center", [(False, None), (True, 0.01)])
def test_bradley_terry_matches_trl_reward_trainer(margin, center):
  torch = pytest.importorskip("torch")
  pytest.importorskip("trl")
  from trl.trainer.reward_trainer import RewardTrainer

  rng = np.random.default_rng(1)
  rewards = rng.normal(size=2 * B).astype(np.float32)
  m = rng.uniform(0, 1, B).astype(np.float32)
  t = object.__new__(RewardTrainer)  # skips __init__: compute_loss reads only these
  t.model = types.SimpleNamespace(training=False)
  t.args = types.SimpleNamespace(center_rewards_coefficient=center)
  t.accelerator = types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
  t._metrics, t._total_train_tokens = {"eval": collections.defaultdict(list)}, 0
  r = torch.from_numpy(rewards).requires_grad_(True)
  inputs = {"input_ids": torch.zeros((2 * B, 3), dtype=torch.long)}
  if margin:
    inputs["margin"] = torch.from_numpy(m)
  want = t.compute_loss(lambda **kw: types.SimpleNamespace(logits=r[:, None]), inputs)
  want.backward()

  def loss(rw):
    out = L.bradley_terry_loss(rw[:B], rw[B:], margin=jnp.asarray(m) if margin else None,
                               center_coef=center or 0.0)
    return out.loss_sum / out.weight, out

  (got, out), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(rewards))
  print(f"bradley-terry margin={margin} center={center}: |dloss| = {abs(float(got) - want.item()):.2e}, "
        f"max |dgrad| = {np.max(np.abs(np.asarray(grad) - r.grad.numpy())):.2e}")
  assert float(got) == pytest.approx(want.item(), abs=1e-6)
  np.testing.assert_allclose(np.asarray(grad), r.grad.numpy(), atol=1e-7)
  means = L.pair_means(out)
  assert float(means["rewards/accuracies"]) == pytest.approx(t._metrics["eval"]["accuracy"][0])
  assert float(means["rewards/margins"]) == pytest.approx(t._metrics["eval"]["margin"][0], abs=1e-6)


LOSSES = {
  "sigmoid": lambda pc, pr, rc, rr, nc, nr, v: L.dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1, valid=v),
  "ipo": lambda pc, pr, rc, rr, nc, nr, v: L.dpo_loss(pc, pr, rc, rr, beta=0.5, kind="ipo", chosen_counts=nc,
                                                      rejected_counts=nr, valid=v),
  "hinge": lambda pc, pr, rc, rr, nc, nr, v: L.dpo_loss(pc, pr, rc, rr, beta=0.1, kind="hinge", valid=v),
  "rpo": lambda pc, pr, rc, rr, nc, nr, v: L.dpo_loss(pc, pr, rc, rr, beta=0.1, sft_weight=0.5,
                                                      chosen_counts=nc, valid=v),
  "simpo": lambda pc, pr, rc, rr, nc, nr, v: L.simpo_loss(pc, pr, nc, nr, beta=2.0, gamma=0.5, valid=v),
  "orpo": lambda pc, pr, rc, rr, nc, nr, v: L.orpo_loss(pc, pr, nc, nr, lam=0.1, valid=v),
  "bt": lambda pc, pr, rc, rr, nc, nr, v: L.bradley_terry_loss(pc / 10, pr / 10, valid=v),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_micro_batches_and_padding_add_up(name):
  fn = LOSSES[name]
  arrays = [jnp.asarray(a) for a in _logps()]
  whole = L.pair_means(fn(*arrays, None))
  # two micro-batches, the second padded with two invalid pairs (as an eval batch)
  first = fn(*[a[:4] for a in arrays], None)
  padded = [jnp.concatenate([a[4:], a[:2]]) for a in arrays]
  second = fn(*padded, jnp.asarray([1, 1, 0, 0]))
  summed = L.PairLoss(first.loss_sum + second.loss_sum, first.weight + second.weight,
                      {k: first.sums[k] + second.sums[k] for k in first.sums})
  for k, v in L.pair_means(summed).items():
    assert float(v) == pytest.approx(float(whole[k]), rel=1e-6, abs=1e-7), k
  assert float(summed.weight) == B


def test_orpo_default_sft_term_is_the_chosen_mean_nll():
  pc, pr, rc, rr, nc, nr = (jnp.asarray(a) for a in _logps())
  with_default = L.orpo_loss(pc, pr, nc, nr, lam=0.0)
  assert float(with_default.loss_sum) == pytest.approx(float(jnp.sum(-pc / nc)), rel=1e-6)


def test_sft_weight_adds_the_chosen_mean_nll():
  pc, pr, rc, rr, nc, nr = (jnp.asarray(a) for a in _logps())
  plain = L.dpo_loss(pc, pr, rc, rr, beta=0.1)
  rpo = L.dpo_loss(pc, pr, rc, rr, beta=0.1, sft_weight=0.5, chosen_counts=nc)
  assert float(rpo.loss_sum - plain.loss_sum) == pytest.approx(0.5 * float(jnp.sum(-pc / nc)), rel=1e-6)
  assert float(rpo.sums["nll_loss"]) == pytest.approx(float(jnp.sum(-pc / nc)), rel=1e-6)
  assert "nll_loss" not in plain.sums


def test_bad_arguments():
  z = jnp.zeros(2)
  with pytest.raises(ValueError, match="kind='kto'"):
    L.dpo_loss(z, z, z, z, beta=0.1, kind="kto")
  with pytest.raises(ValueError, match="chosen_counts"):
    L.dpo_loss(z, z, z, z, beta=0.1, kind="ipo")
  with pytest.raises(ValueError, match="sft_weight"):
    L.dpo_loss(z, z, z, z, beta=0.1, sft_weight=1.0)
