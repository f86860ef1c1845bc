"""The objectives registry and the interface the step, evaluation and config checks ask
(issue 18): a new objective plugs into the train and eval steps without any task string in
them, and micro-batching stays exact through its own `batch_weight`."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import config as jt_config
from jaxtune import evaluate, objectives, step
from jaxtune.errors import ConfigError
from jaxtune.models import decoder
from jaxtune.objectives.base import Objective, model_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
import tiny  # noqa: E402

VOCAB = 29


class RowEnergy(Objective):
  """A made-up objective: per row, the mean squared logit over its real tokens; the rows count
  as 1, 2, 3, ... (a per-row weight), so micro-batch shares must use the whole batch's weight."""

  name = "row_energy"
  head = "causal_lm"
  base_metrics = ("loss", "rows")

  def _terms(self, model, batch, rng):
    logits = model(batch["input_ids"], **model_kwargs(batch), dropout_rng=rng).astype(jnp.float32)
    mask = batch["attention_mask"].astype(jnp.float32)
    per_row = jnp.sum(jnp.mean(logits**2, axis=-1) * mask, axis=1) / jnp.sum(mask, axis=1)
    w = batch["row_weight"].astype(jnp.float32)
    # An extra of its own: the unweighted mean energy per row, as (sum, count).
    extras = {"row_energy": (jnp.sum(per_row), jnp.float32(per_row.shape[0]))}
    return jnp.sum(per_row * w), jnp.sum(w), extras

  def batch_weight(self, batch, cfg):
    return jnp.sum(batch["row_weight"].astype(jnp.float32))

  def loss_terms(self, model, batch, dropout_rng, cfg):
    return self._terms(model, batch, dropout_rng)

  def eval_sums(self, model, batch, lm_loss_chunk=-1):
    loss_sum, weight, extras = self._terms(model, batch, None)
    return {"loss_sum": loss_sum, "weight": weight, "extras": extras}

  def metrics(self, sums, label_names=(), order=None):
    return {"loss": sums.loss_sum / sums.weight, "rows": sums.weight, **sums.extra_means()}, {}


@pytest.fixture
def row_energy(monkeypatch):
  monkeypatch.setitem(objectives.REGISTRY, RowEnergy.name, RowEnergy())
  return RowEnergy.name


def _model_and_batch():
  cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                              intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                              head_dim=8)
  graphdef, params = nnx.split(decoder.build(cfg, task="causal_lm", rngs=nnx.Rngs(0)))
  ids = np.random.default_rng(0).integers(0, VOCAB, (4, 10)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  batch = {"input_ids": ids, "attention_mask": mask,
           "row_weight": np.arange(1, 5, dtype=np.float32)}
  return graphdef, nnx.to_pure_dict(params), batch


def test_every_task_has_its_objective_and_an_unknown_one_names_the_key():
  for task in jt_config.TASKS:
    c = tiny.get_config()
    c.model.task = task
    assert objectives.get(c).name == task
  assert objectives.for_task("seq_cls").labels and not objectives.for_task("seq_cls").generates
  assert objectives.for_task("causal_lm").generates
  with pytest.raises(ConfigError, match=r"model.task='dpo'"):
    objectives.for_task("dpo")


def test_a_registered_objective_drives_the_train_step_exactly_over_micro_batches(row_energy):
  graphdef, params, batch = _model_and_batch()
  optim_cfg = tiny.get_config().optim
  tx = optax.sgd(0.1)
  model = nnx.merge(graphdef, params)
  # The loss the step must minimise: the objective's weighted mean over the whole batch.
  ref_sum, ref_w, ref_extras = RowEnergy()._terms(model, batch, None)
  energy = ref_extras["row_energy"][0] / ref_extras["row_energy"][1]
  outs = []
  for m in (1, 2):
    cfg = step.StepConfig(task=row_energy, micro_batches=m, skip_nonfinite=False,
                          optim_cfg=optim_cfg)
    state = step.init_state(params, tx, 0, optim_cfg)
    new, metrics = jax.jit(lambda s, b, cfg=cfg: step.train_step(graphdef, tx, cfg, s, b))(state, batch)
    np.testing.assert_allclose(metrics["train/loss"], ref_sum / ref_w, rtol=1e-6)
    # The objective's own metric, summed over micro-batches before dividing.
    np.testing.assert_allclose(metrics["train/row_energy"], energy, rtol=1e-6)
    outs.append(new["params"])
  for other in outs[1:]:  # micro-batches weighted by the whole batch's weight: the same update
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_registered_objective_drives_evaluation_and_its_metric_names(row_energy):
  graphdef, params, batch = _model_and_batch()
  out = jax.device_get(step.eval_step(graphdef, row_energy, params, None, batch))
  sums = evaluate.Sums()
  sums.add(out, batch)
  res, details = sums.result(row_energy)
  assert res["rows"] == pytest.approx(10.0) and details == {}
  sums.add(out, batch)  # a second batch: extras add up as sums, not as means
  assert sums.extras["row_energy"][1] == pytest.approx(8.0)
  assert sums.result(row_energy)[0]["row_energy"] == pytest.approx(float(out["extras"]["row_energy"][0]) / 4)
  assert objectives.for_task(row_energy).metric_names() == ("eval/loss", "eval/rows")
