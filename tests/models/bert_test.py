"""BERT model behaviour without HF: shapes per task, names, dropout modes, remat, padding, packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import bert, layers

CFG = bert.BertConfig(
  vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
  max_position_embeddings=32, num_labels=3, id2label=("a", "b", "c"),
)


def _model(task="seq_cls"):
  return bert.Bert(CFG, task=task, rngs=nnx.Rngs(0))


@nnx.jit
def _fwd(model, ids, mask=None, types=None, segment_ids=None, positions=None, dropout_rng=None):
  return model(ids, mask, types, segment_ids=segment_ids, positions=positions, dropout_rng=dropout_rng)


@pytest.fixture(scope="module")
def models():
  return {t: _model(t) for t in bert.TASKS}


def _ids(B=2, T=8, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 1, CFG.vocab_size)


def _paths(model):
  return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_shapes_per_task(models):
  ids = _ids()
  assert _fwd(models["seq_cls"], ids).shape == (2, 3)
  assert _fwd(models["masked_lm"], ids).shape == (2, 8, 64)
  assert _fwd(models["encoder"], ids).shape == (2, 8, 32)
  assert not hasattr(models["masked_lm"], "pooler")  # as BertForMaskedLM


def test_parameter_paths_and_logical_axes(models):
  params = _paths(models["seq_cls"])
  want = {
    "embeddings/word_embeddings/embedding": ("vocab", "embed"),
    "embeddings/position_embeddings/embedding": ("positions", "embed"),
    "embeddings/LayerNorm/scale": ("norm",),
    "layers/1/attention/self/query/kernel": ("embed", "heads"),
    "layers/1/attention/self/query/bias": ("heads",),
    "layers/1/attention/output/dense/kernel": ("heads", "embed"),
    "layers/1/attention/output/LayerNorm/bias": ("norm",),
    "layers/0/intermediate/dense/kernel": ("embed", "mlp"),
    "layers/0/output/dense/kernel": ("mlp", "embed"),
    "pooler/dense/kernel": ("embed", None),
    "classifier/kernel": ("embed", "labels"),
    "classifier/bias": ("labels",),
  }
  for path, names in want.items():
    assert params[path].get_metadata()["out_sharding"] == names, path
  mlm = _paths(models["masked_lm"])
  assert mlm["cls/predictions/bias"].get_metadata()["out_sharding"] == ("vocab",)
  for path, v in {**params, **mlm}.items():
    assert len(v.get_metadata()["out_sharding"]) == v[...].ndim, path


def test_padding_does_not_change_real_tokens(models):
  enc = models["encoder"]
  ids = _ids(1, 5)
  padded = jnp.concatenate([ids, jnp.zeros((1, 3), ids.dtype)], axis=1)
  mask = jnp.array([[1] * 5 + [0] * 3])
  np.testing.assert_allclose(_fwd(enc, padded, mask)[:, :5], _fwd(enc, ids), atol=1e-5)


def test_segment_ids_keep_packed_documents_apart(models):
  enc = models["encoder"]
  a, b = _ids(1, 5, seed=1), _ids(1, 3, seed=2)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 3])
  positions = jnp.array([list(range(5)) + list(range(3))])
  got = _fwd(enc, packed, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(got[:, :5], _fwd(enc, a), atol=1e-5)
  np.testing.assert_allclose(got[:, 5:], _fwd(enc, b), atol=1e-5)


def test_token_types_matter(models):
  enc, ids = models["encoder"], _ids()
  zeros = _fwd(enc, ids, None, jnp.zeros_like(ids))
  np.testing.assert_array_equal(zeros, _fwd(enc, ids))
  assert not np.allclose(_fwd(enc, ids, None, jnp.ones_like(ids)), zeros)


def test_dropout_train_and_eval():
  model, ids = _model(), _ids()
  a = _fwd(model, ids)
  np.testing.assert_array_equal(a, _fwd(model, ids))
  model.train()
  with pytest.raises(ValueError, match="dropout rng"):
    _fwd(model, ids)
  r1 = _fwd(model, ids, dropout_rng=jax.random.key(1))
  r2 = _fwd(model, ids, dropout_rng=jax.random.key(2))
  assert not np.allclose(r1, r2)
  np.testing.assert_array_equal(r1, _fwd(model, ids, dropout_rng=jax.random.key(1)))
  model.eval()
  np.testing.assert_array_equal(_fwd(model, ids, dropout_rng=jax.random.key(1)), a)


def test_remat_and_stacked_layers_same_loss_and_grads():
  ids = _ids()

  def loss_and_grads(remat, stacked=False):
    model = _model()
    model.remat = remat
    if stacked:
      layers.stack_layers(model)
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, p)(ids), -1))
    return jax.jit(jax.value_and_grad(loss))(params)

  l0, g0 = loss_and_grads("none")
  for remat, stacked in (("dots", False), ("none", True), ("dots", True)):
    l1, g1 = loss_and_grads(remat, stacked)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    g1 = g1.to_pure_dict()
    if stacked:  # layer i's gradients are row i of the stacked ones
      g1["layers"] = {i: jax.tree.map(lambda x, i=i: x[i], g1["layers"]) for i in range(len(g0["layers"]))}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0.to_pure_dict(), g1)
  model = _model()
  model.remat = "sometimes"
  with pytest.raises(ValueError, match="remat"):
    _fwd(model, ids)
