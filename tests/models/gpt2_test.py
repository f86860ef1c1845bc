"""GPT-2 model behaviour without HF: shapes, names, dropout modes, remat, packing, last token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import gpt2, layers

CFG = gpt2.GPT2Config(
  vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=64, pad_token_id=0,
  embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1, num_labels=3, id2label=("a", "b", "c"),
)


def _model(task="causal_lm", cfg=CFG):
  return gpt2.GPT2(cfg, task=task, rngs=nnx.Rngs(0))


@nnx.jit
def _fwd(model, ids, mask=None, segment_ids=None, positions=None, dropout_rng=None):
  return model(ids, mask, segment_ids=segment_ids, positions=positions, dropout_rng=dropout_rng)


@pytest.fixture(scope="module")
def lm():
  return _model()


@pytest.fixture(scope="module")
def cls():
  return _model("seq_cls")


def _ids(B=2, T=8, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 1, CFG.vocab_size)


def _paths(model):
  return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_shapes_and_heads(lm, cls):
  ids = _ids()
  assert _fwd(lm, ids).shape == (2, 8, 64)
  assert _fwd(cls, ids).shape == (2, 3)
  with pytest.raises(ValueError, match="task"):
    _model("masked_lm")


def test_parameter_paths_and_logical_axes(cls):
  params = _paths(cls)
  want = {
    "wte/embedding": ("vocab", "embed"),
    "wpe/embedding": ("positions", "embed"),
    "layers/1/ln_1/scale": ("norm",),
    "layers/1/ln_1/bias": ("norm",),
    "layers/0/attn/c_attn/kernel": ("embed", "heads"),
    "layers/0/attn/c_proj/kernel": ("heads", "embed"),
    "layers/0/mlp/c_fc/kernel": ("embed", "mlp"),
    "layers/0/mlp/c_proj/kernel": ("mlp", "embed"),
    "ln_f/scale": ("norm",),
    "score/kernel": ("embed", "labels"),
  }
  for path, names in want.items():
    assert params[path].get_metadata()["out_sharding"] == names, path
  assert "score/bias" not in params
  for path, v in params.items():
    assert len(v.get_metadata()["out_sharding"]) == v[...].ndim, path


def test_hidden_states_then_logits_equals_call(lm):
  ids = _ids()
  split = nnx.jit(lambda m, ids: m.logits_from_hidden(m.hidden_states(ids)))
  np.testing.assert_allclose(split(lm, ids), _fwd(lm, ids), atol=1e-6)


def test_dropout_train_and_eval():
  model, ids = _model(), _ids()
  a, b = _fwd(model, ids), _fwd(model, ids)
  np.testing.assert_array_equal(a, b)
  model.train()
  with pytest.raises(ValueError, match="dropout rng"):
    _fwd(model, ids)
  r1 = _fwd(model, ids, dropout_rng=jax.random.key(1))
  r2 = _fwd(model, ids, dropout_rng=jax.random.key(2))
  assert not np.allclose(r1, r2)
  np.testing.assert_array_equal(r1, _fwd(model, ids, dropout_rng=jax.random.key(1)))
  model.eval()
  np.testing.assert_array_equal(_fwd(model, ids, dropout_rng=jax.random.key(1)), a)


def _loss_and_grads(remat, stacked=False):
  model = _model()
  model.remat = remat
  if stacked:
    layers.stack_layers(model)
  graphdef, params = nnx.split(model)

  def loss(p):
    logits = nnx.merge(graphdef, p)(_ids())
    return jnp.mean(jax.nn.logsumexp(logits, -1))

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def no_remat():
  return _loss_and_grads("none")


@pytest.mark.parametrize("mode", ["full", "dots"])
def test_remat_same_loss_and_grads(no_remat, mode):
  (l0, g0), (l1, g1) = no_remat, _loss_and_grads(mode)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_stacked_layers_same_loss_and_grads(no_remat):
  (l0, g0), (l1, g1) = no_remat, _loss_and_grads("full", stacked=True)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  g0, g1 = g0.to_pure_dict(), g1.to_pure_dict()
  # Layer i's gradients are row i of the stacked ones.
  for i in range(len(g0["layers"])):
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a, b[i], atol=1e-6),
                 g0["layers"][i], g1["layers"])
  del g0["layers"], g1["layers"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_bad_remat_is_named():
  model = _model()
  model.remat = "some"
  with pytest.raises(ValueError, match="remat"):
    _fwd(model, _ids())


def test_segment_ids_keep_packed_documents_apart(lm):
  model = lm
  a, b = _ids(1, 5, seed=1), _ids(1, 3, seed=2)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 3])
  positions = jnp.array([list(range(5)) + list(range(3))])
  got = _fwd(model, packed, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(got[:, :5], _fwd(model, a), atol=1e-5)
  np.testing.assert_allclose(got[:, 5:], _fwd(model, b), atol=1e-5)


def test_seq_cls_reads_last_non_pad_token(cls):
  model = cls
  ids = np.array(_ids(3, 6))
  ids[0, 4:] = 0
  ids[2, :] = 0  # all padding: HF reads position 0
  np.testing.assert_array_equal(model.last_token_index(jnp.asarray(ids)), [3, 5, 0])
  # Padding after the last token changes nothing the classifier reads (causal attention).
  short = _fwd(model, jnp.asarray(ids[:1, :4]))
  np.testing.assert_allclose(_fwd(model, jnp.asarray(ids[:1])), short, atol=1e-5)


def test_seq_cls_without_pad_id_refuses_batches():
  cfg = gpt2.GPT2Config(**{**CFG.__dict__, "pad_token_id": None})
  model = _model("seq_cls", cfg)
  assert _fwd(model, _ids(1, 5)).shape == (1, 3)
  with pytest.raises(ValueError, match="pad_token_id"):
    _fwd(model, _ids(2, 5))


def test_bfloat16_compute_keeps_float32_params():
  model = gpt2.GPT2(CFG, compute_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  out = _fwd(model, _ids())
  assert out.dtype == jnp.bfloat16
  assert all(v[...].dtype == jnp.float32 for v in _paths(model).values())
