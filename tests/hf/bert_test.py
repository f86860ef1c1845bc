"""BERT against HF transformers: float32 parity per task, export round trip, mesh load, strictness.

Tiny random HF models are written with save_pretrained into a temporary directory (no downloads);
torch float32 is the reference.
"""

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtune import hf, sharding
from jaxtune.hf import UnsupportedConfigError

V = 96
LENGTHS = (10, 7, 3, 9)
ATOL = 1e-5


def _hf_config(**kw):
  base = dict(
    vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=32, type_vocab_size=2, pad_token_id=0,
  )
  return transformers.BertConfig(**{**base, **kw})


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.3)
  return model.eval()


def _batch():
  # Right-padded pairs: segment A (type 0) then segment B (type 1), as a tokenizer makes them.
  rng = np.random.default_rng(0)
  T = max(LENGTHS)
  ids = np.zeros((len(LENGTHS), T), np.int64)
  mask = np.zeros_like(ids)
  types = np.zeros_like(ids)
  for b, n in enumerate(LENGTHS):
    ids[b, :n] = rng.integers(1, V, n)
    mask[b, :n] = 1
    types[b, n // 2 : n] = 1
  return ids, mask, types


def _torch(model, ids, mask, types, attr="logits"):
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  return getattr(out, attr).numpy()


@nnx.jit
def _forward(model, ids, mask, types):
  return model(ids, mask, types)


def _run(model, ids, mask, types):
  return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = _hf_config(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
  model = _randomize(transformers.BertForSequenceClassification(cfg), 1)
  d = tmp_path_factory.mktemp("bert_cls")
  model.save_pretrained(d)
  return d, model


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = _randomize(transformers.BertForMaskedLM(_hf_config()), 2)
  d = tmp_path_factory.mktemp("bert_mlm")
  model.save_pretrained(d)
  return d, model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  # A bare encoder: keys without the `bert.` prefix, as the real all-MiniLM-L6-v2 checkpoint.
  torch.manual_seed(0)
  model = _randomize(transformers.BertModel(_hf_config()), 3)
  d = tmp_path_factory.mktemp("bert_base")
  model.save_pretrained(d)
  return d, model


def test_seq_cls_matches_torch(cls_dir):
  d, ref = cls_dir
  batch = _batch()
  model = hf.load(d, task="seq_cls")
  assert model.config.id2label == ("neg", "neu", "pos")
  got = _run(model, *batch)
  assert got.shape == (len(LENGTHS), 3)
  np.testing.assert_allclose(got, _torch(ref, *batch), atol=ATOL, rtol=0)


def test_encoder_matches_torch_at_every_position(base_dir):
  d, ref = base_dir
  batch = _batch()
  model = hf.load(d, task="encoder")
  got = _run(model, *batch)
  np.testing.assert_allclose(got, _torch(ref, *batch, attr="last_hidden_state"), atol=ATOL, rtol=0)
  pooled = np.asarray(nnx.jit(lambda m, h: m.pooled(h))(model, jnp.asarray(got)))
  np.testing.assert_allclose(pooled, _torch(ref, *batch, attr="pooler_output"), atol=ATOL, rtol=0)


def test_masked_lm_matches_torch(mlm_dir):
  d, ref = mlm_dir
  batch = _batch()
  got = _run(hf.load(d, task="masked_lm"), *batch)
  assert got.shape == (len(LENGTHS), max(LENGTHS), V)
  np.testing.assert_allclose(got, _torch(ref, *batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("task", ["seq_cls", "masked_lm", "encoder"])
def test_save_round_trip(cls_dir, mlm_dir, base_dir, tmp_path, task):
  d, ref = {"seq_cls": cls_dir, "masked_lm": mlm_dir, "encoder": base_dir}[task]
  auto = {"seq_cls": transformers.AutoModelForSequenceClassification,
          "masked_lm": transformers.AutoModelForMaskedLM, "encoder": transformers.AutoModel}[task]
  model = hf.load(d, task=task)
  out = hf.save(model, tmp_path / "out")
  back, info = auto.from_pretrained(out, output_loading_info=True)
  assert type(back) is type(ref)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  batch = _batch()
  attr = "last_hidden_state" if task == "encoder" else "logits"
  np.testing.assert_allclose(
    _torch(back.eval(), *batch, attr=attr), _torch(ref, *batch, attr=attr), atol=ATOL, rtol=0
  )
  assert hf.load(out, task=task).config == model.config


def test_bare_encoder_as_classifier(base_dir, caplog):
  # The usual fine-tuning start: encoder weights, fresh classifier (logged), pooler used.
  d, ref = base_dir
  with caplog.at_level(logging.WARNING):
    model = hf.load(d, task="seq_cls", num_labels=2)
  assert "classifier.weight, classifier.bias absent" in caplog.text and "pooler" not in caplog.text
  batch = _batch()
  h = _torch(ref, *batch, attr="pooler_output")
  k, b = model.classifier.kernel[...], model.classifier.bias[...]
  np.testing.assert_allclose(_run(model, *batch), h @ np.asarray(k) + np.asarray(b), atol=ATOL)


def test_mlm_checkpoint_as_classifier_drops_mlm_head(mlm_dir, caplog):
  d, _ = mlm_dir
  with caplog.at_level(logging.INFO):
    model = hf.load(d, task="seq_cls", num_labels=2)
  assert "cls.predictions.bias" in caplog.text  # reported as not used for seq_cls
  assert model.pooler.dense.kernel[...].shape == (32, 32)  # BertForMaskedLM has no pooler: fresh


def test_mesh_load_shards_and_matches(cls_dir):
  d, ref = cls_dir
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = hf.load(d, task="seq_cls", mesh=mesh)
  specs = {
    "embeddings/word_embeddings/embedding": P("tensor", "fsdp"),
    "embeddings/position_embeddings/embedding": P(None, "fsdp"),
    "embeddings/token_type_embeddings/embedding": P(None, "fsdp"),  # 2 rows: replicated
    "layers/0/attention/self/query/kernel": P("fsdp", "tensor"),
    "layers/0/attention/self/value/bias": P("tensor"),
    "layers/0/attention/output/dense/kernel": P("tensor", "fsdp"),
    "layers/1/intermediate/dense/kernel": P("fsdp", "tensor"),
    "layers/1/output/dense/kernel": P("tensor", "fsdp"),
    "layers/1/output/LayerNorm/scale": P(None),
    "pooler/dense/kernel": P("fsdp", None),
    "classifier/kernel": P("fsdp", None),
  }
  flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for path, spec in specs.items():
    assert flat[path][...].sharding.spec == spec, path
  batch = _batch()
  with sharding.use_mesh(mesh):
    got = _run(model, *batch)
  np.testing.assert_allclose(got, _torch(ref, *batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("attr,value", [
  ("position_embedding_type", "relative_key"),
  ("is_decoder", True),
  ("add_cross_attention", True),
  ("hidden_act", "gelu_10"),
  ("made_up_attribute", 3),
])
def test_unsupported_config_is_named(base_dir, tmp_path, attr, value):
  d, _ = base_dir
  cfg = json.loads((d / "config.json").read_text())
  cfg[attr] = value
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "model.safetensors").symlink_to(d / "model.safetensors")
  with pytest.raises(UnsupportedConfigError, match=attr):
    hf.load(tmp_path, task="encoder")


def test_seq_cls_needs_num_labels(base_dir):
  d, _ = base_dir
  with pytest.raises(UnsupportedConfigError, match="num_labels"):
    hf.load(d, task="seq_cls")


@pytest.mark.parametrize("same", [True, False], ids=["equal", "different"])
def test_stored_mlm_decoder(mlm_dir, edited_copy, same):
  """Stored `cls.predictions.decoder.*` (tied to the word table and the vocab bias) are skipped
  when equal to what they are tied to; transformers would untie different ones: refused."""
  d, ref = mlm_dir

  def edit(t):
    t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"]
    t["cls.predictions.decoder.bias"] = t["cls.predictions.bias"] + (0.0 if same else 1.0)

  ckpt = edited_copy(d, edit)
  if not same:
    with pytest.raises(hf.CheckpointError, match=r"decoder\.bias.*cls\.predictions\.bias.*differ"):
      hf.load(ckpt, task="masked_lm")
    return
  batch = _batch()
  got = _run(hf.load(ckpt, task="masked_lm"), *batch)
  np.testing.assert_allclose(got, _torch(ref, *batch), atol=ATOL, rtol=0)
