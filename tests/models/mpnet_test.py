"""MPNet model behaviour without HF weights: buckets, shapes, names, padding, packing, scan, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from jaxtune.models import layers, mpnet

CFG = mpnet.MPNetConfig(
  vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
  max_position_embeddings=300, num_labels=3, id2label=("a", "b", "c"),
)


def _model(task="seq_cls", **kw):
  import dataclasses

  return mpnet.MPNet(dataclasses.replace(CFG, **kw), task=task, rngs=nnx.Rngs(0))


@nnx.jit
def _fwd(model, ids, mask=None, segment_ids=None, positions=None, dropout_rng=None):
  return model(ids, mask, segment_ids=segment_ids, positions=positions, dropout_rng=dropout_rng)


@pytest.fixture(scope="module")
def models():
  return {t: _model(t) for t in mpnet.bert.TASKS}


def _ids(B=2, T=8, seed=0):
  # From 2 up: 1 is the pad id, which MPNet's positions skip.
  return jax.random.randint(jax.random.key(seed), (B, T), 2, CFG.vocab_size)


def _paths(model):
  return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_buckets_are_transformers_own():
  rel = np.arange(-700, 701)
  want = MPNetEncoder.relative_position_bucket(torch.tensor(rel)).numpy()
  np.testing.assert_array_equal(np.asarray(mpnet.relative_position_bucket(jnp.asarray(rel))), want)
  # Keys before the query fill buckets 0-15, keys after 16-31; 128 tokens away is the last.
  assert want[700 - 1] == 1 and want[700 + 1] == 17 and want[700 - 128] == 15


def test_shapes_per_task(models):
  ids = _ids()
  assert _fwd(models["seq_cls"], ids).shape == (2, 3)
  assert _fwd(models["masked_lm"], ids).shape == (2, 8, 64)
  assert _fwd(models["encoder"], ids).shape == (2, 8, 32)
  assert _fwd(_model(pooling="mean"), ids).shape == (2, 3)
  # MPNetForSequenceClassification and MPNetForMaskedLM have no pooler.
  assert not hasattr(models["seq_cls"], "pooler") and not hasattr(models["masked_lm"], "pooler")


def test_parameter_paths_and_logical_axes(models):
  params = _paths(models["seq_cls"])
  want = {
    "embeddings/word_embeddings/embedding": ("vocab", "embed"),
    "embeddings/position_embeddings/embedding": ("positions", "embed"),
    "relative_attention_bias/embedding": (None, "heads"),
    "layers/1/attention/attn/q/kernel": ("embed", "heads"),
    "layers/1/attention/attn/v/bias": ("heads",),
    "layers/1/attention/attn/o/kernel": ("heads", "embed"),
    "layers/1/attention/LayerNorm/scale": ("norm",),
    "layers/0/intermediate/dense/kernel": ("embed", "mlp"),
    "layers/0/output/dense/kernel": ("mlp", "embed"),
    "classifier/dense/kernel": ("embed", None),
    "classifier/out_proj/kernel": ("embed", "labels"),
  }
  for path, names in want.items():
    assert params[path].get_metadata()["out_sharding"] == names, path
  assert not any("token_type" in p for p in params)
  mlm = _paths(models["masked_lm"])
  assert mlm["lm_head/bias"].get_metadata()["out_sharding"] == ("vocab",)
  for path, v in {**params, **mlm}.items():
    assert len(v.get_metadata()["out_sharding"]) == v[...].ndim, path


def test_position_bias_is_transformers_own(models):
  import transformers

  enc = models["encoder"]
  T = 150  # past max distance 128
  ref = MPNetEncoder(transformers.MPNetConfig(hidden_size=32, num_attention_heads=4))
  with torch.no_grad():
    ref.relative_attention_bias.weight.copy_(
      torch.tensor(np.asarray(enc.relative_attention_bias.embedding[...])))
    want = ref.compute_position_bias(torch.zeros(1, T, 32)).numpy()
  got = np.asarray(enc.position_bias(jnp.arange(T)[None]))
  assert got.shape == (1, 4, T, T)
  np.testing.assert_array_equal(got, want)


def test_padding_does_not_change_real_tokens(models):
  enc = models["encoder"]
  ids = _ids(1, 5)
  padded = jnp.concatenate([ids, jnp.ones((1, 3), ids.dtype)], axis=1)  # pad id 1
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


def test_dropout_train_and_eval():
  model, ids = _model(), _ids()
  a = _fwd(model, ids)
  model.train()
  r1 = _fwd(model, ids, dropout_rng=jax.random.key(1))
  assert not np.allclose(r1, _fwd(model, ids, dropout_rng=jax.random.key(2)))
  np.testing.assert_array_equal(r1, _fwd(model, ids, dropout_rng=jax.random.key(1)))
  model.eval()
  np.testing.assert_array_equal(_fwd(model, ids, dropout_rng=jax.random.key(1)), a)


def test_remat_and_scanned_layers_same_loss_and_grads():
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
  assert np.abs(np.asarray(g0["relative_attention_bias"]["embedding"])).max() > 0
  for remat, stacked in (("none", True), ("dots", True)):
    l1, g1 = loss_and_grads(remat, stacked)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    g1 = g1.to_pure_dict()
    g1["layers"] = {i: jax.tree.map(lambda x, i=i: x[i], g1["layers"]) for i in range(2)}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0.to_pure_dict(), g1)


def test_task_and_pooling_errors():
  with pytest.raises(ValueError, match="MPNet: task='causal_lm'"):
    _model("causal_lm")
  with pytest.raises(ValueError, match="'seq_cls', not 'encoder'"):
    _model("encoder", pooling="mean")
