"""MPNet against HF transformers: float32 parity per task, export round trips (transformers,
PEFT, sentence-transformers), mesh load, scanned layers, strictness.

Tiny random HF models are written with save_pretrained into a temporary directory (no downloads);
torch float32 is the reference. Rows run past 128 tokens, so every relative-position bucket
(exact, logarithmic and the last one) is exercised.
"""

import json
import logging
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtune import hf, lora, sharding
from jaxtune.hf import CheckpointError, UnsupportedConfigError, safetensors_io
from jaxtune.hf.errors import ModelNotFoundError
from jaxtune.models import layers

V = 96
PAD = 1  # MPNet's pad id; real tokens are drawn from 3 up
LENGTHS = (150, 97, 3, 40)
ATOL = 1e-5
LABELS = ("neg", "neu", "pos")


def _hf_config(**kw):
  base = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=160, layer_norm_eps=1e-5)
  return transformers.MPNetConfig(**{**base, **kw})


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.3)
  return model.eval()


def _batch():
  rng = np.random.default_rng(0)
  ids = np.full((len(LENGTHS), max(LENGTHS)), PAD, np.int64)
  mask = np.zeros_like(ids)
  for b, n in enumerate(LENGTHS):
    ids[b, :n] = rng.integers(3, V, n)
    mask[b, :n] = 1
  return ids, mask


def _torch(model, ids, mask, attr="logits"):
  with torch.no_grad():
    out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
  return getattr(out, attr).numpy()


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)


def _run(model, ids, mask):
  return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))


def _save(tmp_path_factory, name, model):
  d = tmp_path_factory.mktemp(name)
  model.save_pretrained(d)
  return d, model


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
  cfg = _hf_config(id2label=dict(enumerate(LABELS)))
  return _save(tmp_path_factory, "cls", _randomize(transformers.MPNetForSequenceClassification(cfg), 1))


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
  return _save(tmp_path_factory, "mlm", _randomize(transformers.MPNetForMaskedLM(_hf_config()), 2))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  # A bare encoder: keys without the `mpnet.` prefix, as the real all-mpnet-base-v2 checkpoint.
  return _save(tmp_path_factory, "base", _randomize(transformers.MPNetModel(_hf_config()), 3))


def test_seq_cls_matches_torch(cls_dir):
  d, ref = cls_dir
  model = hf.load(d, task="seq_cls")
  assert model.config.id2label == LABELS
  got = _run(model, *_batch())
  assert got.shape == (len(LENGTHS), 3)
  np.testing.assert_allclose(got, _torch(ref, *_batch()), atol=ATOL, rtol=0)


def test_encoder_matches_torch_at_every_position(base_dir):
  # Padding included: HF gives pad tokens position 1, real ones 2, 3, ...; so does jaxtune.
  d, ref = base_dir
  model = hf.load(d, task="encoder")
  got = _run(model, *_batch())
  np.testing.assert_allclose(got, _torch(ref, *_batch(), attr="last_hidden_state"), atol=ATOL, rtol=0)
  pooled = np.asarray(nnx.jit(lambda m, h: m.pooled(h))(model, jnp.asarray(got)))
  np.testing.assert_allclose(pooled, _torch(ref, *_batch(), attr="pooler_output"), atol=ATOL, rtol=0)


def test_masked_lm_matches_torch(mlm_dir):
  d, ref = mlm_dir
  got = _run(hf.load(d, task="masked_lm"), *_batch())
  assert got.shape == (len(LENGTHS), max(LENGTHS), V)
  np.testing.assert_allclose(got, _torch(ref, *_batch()), atol=ATOL, rtol=0)


def _loads_cleanly(auto, out, ref):
  """transformers loads `out` as `ref`'s class with nothing missing, unexpected or mismatched."""
  back, info = auto.from_pretrained(out, output_loading_info=True)
  assert type(back) is type(ref)
  assert not any(info.values()), info
  return back.eval()


@pytest.mark.parametrize("task", ["seq_cls", "masked_lm", "encoder"])
def test_save_round_trip(cls_dir, mlm_dir, base_dir, tmp_path, task):
  d, ref = {"seq_cls": cls_dir, "masked_lm": mlm_dir, "encoder": base_dir}[task]
  auto = {"seq_cls": transformers.AutoModelForSequenceClassification,
          "masked_lm": transformers.AutoModelForMaskedLM, "encoder": transformers.AutoModel}[task]
  model = hf.load(d, task=task)
  out = hf.save(model, tmp_path / "out")
  back = _loads_cleanly(auto, out, ref)
  attr = "last_hidden_state" if task == "encoder" else "logits"
  np.testing.assert_allclose(_torch(back, *_batch(), attr=attr), _torch(ref, *_batch(), attr=attr),
                             atol=ATOL, rtol=0)
  assert hf.load(out, task=task).config == model.config


def test_scanned_layers_match_and_export(cls_dir, tmp_path):
  d, ref = cls_dir
  model = hf.load(d, task="seq_cls")
  layers.stack_layers(model)
  assert layers.is_stacked(model.layers)
  assert model.layers.attention.attn.q.kernel[...].shape == (2, 32, 32)
  got = _run(model, *_batch())
  np.testing.assert_allclose(got, _torch(ref, *_batch()), atol=ATOL, rtol=0)
  out = hf.save(model, tmp_path / "out")  # unstacks in place, back to the HF layout
  back = _loads_cleanly(transformers.AutoModelForSequenceClassification, out, ref)
  np.testing.assert_allclose(_torch(back, *_batch()), got, atol=ATOL, rtol=0)


def test_mesh_load_shards_and_matches(cls_dir):
  d, ref = cls_dir
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = hf.load(d, task="seq_cls", mesh=mesh)
  specs = {
    "embeddings/word_embeddings/embedding": P("tensor", "fsdp"),
    "embeddings/position_embeddings/embedding": P(None, "fsdp"),
    "relative_attention_bias/embedding": P(None, "tensor"),
    "layers/0/attention/attn/q/kernel": P("fsdp", "tensor"),
    "layers/0/attention/attn/v/bias": P("tensor"),
    "layers/0/attention/attn/o/kernel": P("tensor", "fsdp"),
    "layers/1/intermediate/dense/kernel": P("fsdp", "tensor"),
    "layers/1/output/dense/kernel": P("tensor", "fsdp"),
    "layers/1/output/LayerNorm/scale": P(None),
    "classifier/dense/kernel": P("fsdp", None),
    "classifier/out_proj/kernel": P("fsdp", None),
  }
  flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for path, spec in specs.items():
    assert flat[path][...].sharding.spec == spec, path
  with sharding.use_mesh(mesh):
    got = _run(model, *_batch())
  np.testing.assert_allclose(got, _torch(ref, *_batch()), atol=ATOL, rtol=0)


def test_bare_encoder_as_classifier(base_dir, caplog):
  # The usual fine-tuning start: encoder weights, fresh head (logged), the pooler not used.
  d, ref = base_dir
  with caplog.at_level(logging.INFO):
    model = hf.load(d, task="seq_cls", num_labels=2)
  assert "classifier.dense.weight, classifier.dense.bias, classifier.out_proj.weight" in caplog.text
  assert "pooler.dense.weight" in caplog.text and not hasattr(model, "pooler")
  h = _torch(ref, *_batch(), attr="last_hidden_state")[:, 0]
  c = model.classifier
  x = np.tanh(h @ np.asarray(c.dense.kernel[...]) + np.asarray(c.dense.bias[...]))
  want = x @ np.asarray(c.out_proj.kernel[...]) + np.asarray(c.out_proj.bias[...])
  np.testing.assert_allclose(_run(model, *_batch()), want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attr,value,why", [
  ("relative_attention_num_buckets", 16, "always computes 32 buckets"),
  ("pad_token_id", 0, "padding index 1"),
  ("hidden_act", "gelu_10", "known activations"),
  ("made_up_attribute", 3, "jaxtune does not implement"),
])
def test_unsupported_config_is_named(base_dir, tmp_path, attr, value, why):
  d, _ = base_dir
  cfg = json.loads((d / "config.json").read_text())
  cfg[attr] = value
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "model.safetensors").symlink_to(d / "model.safetensors")
  with pytest.raises(UnsupportedConfigError, match=f"{attr}.*{why}"):
    hf.load(tmp_path, task="encoder")


def _extra(t):
  t["encoder.layer.0.attention.attn.r.weight"] = t["encoder.layer.0.attention.attn.q.weight"]


@pytest.mark.parametrize("edit,error", [
  (_extra, r"unexpected tensor.*attention\.attn\.r\.weight"),
  (lambda t: t.pop("encoder.relative_attention_bias.weight"),
   r"missing tensor.*encoder\.relative_attention_bias\.weight"),
], ids=["unexpected", "missing"])
def test_unknown_and_missing_tensors_are_named(base_dir, edited_copy, edit, error):
  with pytest.raises(CheckpointError, match=error):
    hf.load(edited_copy(base_dir[0], edit), task="encoder")


@pytest.mark.parametrize("same", [True, False], ids=["equal", "different"])
def test_stored_mlm_decoder_is_tied(mlm_dir, edited_copy, same):
  """Stored `lm_head.decoder.*` (tied to the word table and `lm_head.bias`) are skipped when
  equal to what they are tied to; transformers would untie different ones: refused."""
  d, ref = mlm_dir

  def edit(t):
    t["lm_head.decoder.weight"] = t["mpnet.embeddings.word_embeddings.weight"]
    t["lm_head.decoder.bias"] = t["lm_head.bias"] + (0.0 if same else 1.0)

  ckpt = edited_copy(d, edit)
  if not same:
    with pytest.raises(CheckpointError, match=r"lm_head\.decoder\.bias.*lm_head\.bias.*differ"):
      hf.load(ckpt, task="masked_lm")
    return
  np.testing.assert_allclose(_run(hf.load(ckpt, task="masked_lm"), *_batch()),
                             _torch(ref, *_batch()), atol=ATOL, rtol=0)


def test_lora_adapter_loads_in_peft(base_dir, tmp_path):
  """Default targets (attn q/k/v/o, intermediate and output dense) on a classifier started from
  the bare encoder: PEFT on MPNetForSequenceClassification computes jaxtune's logits."""
  peft = pytest.importorskip("peft")
  d, _ = base_dir
  cfg = lora.default_config()
  cfg.rank, cfg.alpha = 4, 8.0
  model = lora.apply(hf.load(d, task="seq_cls", num_labels=3), cfg)
  paths = sorted(p for p, _ in lora.lora_modules(model))
  assert paths[:6] == ["layers/0/attention/attn/k", "layers/0/attention/attn/o",
                       "layers/0/attention/attn/q", "layers/0/attention/attn/v",
                       "layers/0/intermediate/dense", "layers/0/output/dense"]
  assert len(paths) == 12  # nothing in the head or the pooler
  rng = np.random.default_rng(0)
  for _, m in lora.lora_modules(model):  # as if trained
    m.lora_b.set_value(jnp.asarray(0.3 * rng.standard_normal(m.lora_b[...].shape), jnp.float32))
  got = _run(model, *_batch())
  out = hf.save(model, tmp_path / "adapter", adapter_only=True, base_model_name_or_path=str(d))
  adapter_config = json.loads((out / "adapter_config.json").read_text())
  # The two-linear head is one module to PEFT (its SEQ_CLS default), saved whole.
  assert adapter_config["modules_to_save"] == ["classifier"]
  assert len(adapter_config["target_modules"]) == 12  # full names: 'dense' alone would hit the head
  base = transformers.AutoModelForSequenceClassification.from_pretrained(d, num_labels=3)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
  assert not [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
  np.testing.assert_allclose(_torch(peft_model, *_batch()), got, atol=ATOL, rtol=0)
  # Merged, the same model is a plain MPNetForSequenceClassification.
  merged = hf.save(model, tmp_path / "merged")
  back = transformers.AutoModelForSequenceClassification.from_pretrained(merged).eval()
  np.testing.assert_allclose(_torch(back, *_batch()), got, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def sbert_dir(base_dir):
  """The base encoder as sentence-transformers publishes one (modules.json, mean Pooling,
  Normalize), like all-mpnet-base-v2."""
  d, _ = base_dir
  (d / "modules.json").write_text(json.dumps([
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
  ]))
  (d / "1_Pooling").mkdir(exist_ok=True)
  (d / "1_Pooling" / "config.json").write_text(json.dumps(
    {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
     "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
  return d


def test_mean_pooled_classifier_exports_for_sentence_transformers(sbert_dir, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  model = hf.load(sbert_dir, task="seq_cls", pooling="mean",
                  config_overrides={"id2label": dict(enumerate(LABELS))})
  model.classifier.bias.set_value(jnp.asarray([0.5, -0.2, 0.1], jnp.float32))
  ids, mask = _batch()
  got = _run(model, ids, mask)
  h = np.asarray(model.encode(jnp.asarray(ids), jnp.asarray(mask)))
  mean = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  want = mean @ np.asarray(model.classifier.kernel[...]) + np.asarray(model.classifier.bias[...])
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

  out = hf.save(model, tmp_path / "export", max_seq_length=max(LENGTHS))
  assert json.loads((out / "config.json").read_text())["architectures"] == ["MPNetModel"]
  root = safetensors_io.SafetensorsFile(out / "model.safetensors").header
  assert "encoder.relative_attention_bias.weight" in root
  assert not any(k.startswith(("mpnet.", "classifier", "pooler")) for k in root)
  pipeline = st.SentenceTransformer(str(out), device="cpu")
  assert [type(m).__name__ for m in pipeline] == ["Transformer", "Pooling", "Dense"]
  with torch.no_grad():
    emb = pipeline({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})
  np.testing.assert_allclose(emb["sentence_embedding"].numpy(), got, atol=ATOL, rtol=0)
  back = hf.load(out, task="seq_cls", pooling="mean")
  assert back.config.id2label == LABELS
  np.testing.assert_allclose(_run(back, ids, mask), got, atol=1e-6, rtol=0)


def test_missing_mpnet_asset_says_how_to_fetch(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXTUNE_CACHE", str(tmp_path))
  from jaxtune.data import assets

  with pytest.raises(ModelNotFoundError, match=r"python -m jaxtune\.data\.assets fetch mpnet"):
    hf.load(assets.mpnet_dir(), task="seq_cls", num_labels=2)
