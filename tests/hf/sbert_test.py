"""BERT classifiers on mean pooling: parity with torch, the sentence-transformers export, strictness.

The reference is computed from the exported files alone, as sentence-transformers computes it:
transformers' BertModel on the directory, the mean of its last hidden states over the attention
mask, then the 2_Dense linear layer read from its own safetensors file.
"""

import json
import logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxtune import hf
from jaxtune.hf import CheckpointError, UnsupportedConfigError, safetensors_io
from jaxtune.models import bert, presets

V = 96
LENGTHS = (10, 7, 3, 9)
LABELS = ("neg", "neutral", "pos")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  """A tiny random sentence encoder as sentence-transformers publishes one: a BertModel with a
  pooler, modules.json and a mean Pooling module (no head), like all-MiniLM-L6-v2."""
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=32, pad_token_id=0)
  out = tmp_path_factory.mktemp("encoder")
  transformers.BertModel(cfg).eval().save_pretrained(out)
  (out / "modules.json").write_text(json.dumps([
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
  ]))
  (out / "1_Pooling").mkdir()
  (out / "1_Pooling" / "config.json").write_text(json.dumps(
    {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
     "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
  return out


def _batch():
  rng = np.random.default_rng(0)
  ids = np.zeros((len(LENGTHS), max(LENGTHS)), np.int32)
  mask = np.zeros_like(ids)
  for b, n in enumerate(LENGTHS):
    ids[b, :n] = rng.integers(1, V, n)
    mask[b, :n] = 1
  return ids, mask


def _logits(model, ids, mask):
  return np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))


def _classifier(encoder_dir, caplog):
  with caplog.at_level(logging.INFO):
    model = hf.load(encoder_dir, task="seq_cls", pooling="mean",
                    config_overrides={"id2label": dict(enumerate(LABELS))})
  # The published pooler is not part of a mean-pooled classifier; its tensors are reported.
  assert not hasattr(model, "pooler") and "pooler.dense.weight" in caplog.text
  assert "classifier.weight, classifier.bias absent" in caplog.text
  rng = np.random.default_rng(1)  # a trained-looking head, not the zero bias of a fresh one
  model.classifier.bias.set_value(jnp.asarray(rng.normal(size=len(LABELS)), jnp.float32))
  return model


def test_mean_pooling_matches_masked_mean(encoder_dir, caplog):
  model = _classifier(encoder_dir, caplog)
  ids, mask = _batch()
  h = np.asarray(model.encode(jnp.asarray(ids), jnp.asarray(mask)))
  m = mask[..., None]
  want = (h * m).sum(1) / m.sum(1) @ np.asarray(model.classifier.kernel[...])
  want += np.asarray(model.classifier.bias[...])
  np.testing.assert_allclose(_logits(model, ids, mask), want, atol=1e-5, rtol=0)
  # Padding does not change a row's logits (the mean is over attended tokens only).
  short = _logits(model, ids[2:3, :3], mask[2:3, :3])
  np.testing.assert_allclose(short, _logits(model, ids, mask)[2:3], atol=1e-5, rtol=0)


def test_export_is_a_sentence_transformers_classifier(encoder_dir, caplog, tmp_path):
  model = _classifier(encoder_dir, caplog)
  ids, mask = _batch()
  got = _logits(model, ids, mask)
  out = hf.save(model, tmp_path / "export")

  modules = json.loads((out / "modules.json").read_text())
  assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Dense"]
  flags = json.loads((out / "1_Pooling" / "config.json").read_text())
  assert [k for k, v in flags.items() if v is True] == ["pooling_mode_mean_tokens"]
  dense = json.loads((out / "2_Dense" / "config.json").read_text())
  assert dense == {"in_features": 32, "out_features": 3, "bias": True,
                   "activation_function": "torch.nn.modules.linear.Identity"}
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["BertModel"] and config["id2label"]["2"] == "pos"
  root = safetensors_io.SafetensorsFile(out / "model.safetensors").header
  assert not any(k.startswith(("bert.", "classifier", "pooler")) for k in root)

  # sentence-transformers' computation from the files alone.
  ref = transformers.BertModel.from_pretrained(out, add_pooling_layer=False).eval()
  head = safetensors_io.SafetensorsFile(out / "2_Dense" / "model.safetensors")
  with torch.no_grad():
    h = ref(input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  m = mask[..., None]
  want = (h * m).sum(1) / m.sum(1) @ head.get("linear.weight").T + head.get("linear.bias")
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

  back = hf.load(out, task="seq_cls", pooling="mean")
  assert back.config.id2label == LABELS
  np.testing.assert_allclose(_logits(back, ids, mask), got, atol=1e-6, rtol=0)


def test_sentence_transformers_loads_the_export(encoder_dir, caplog, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  model = _classifier(encoder_dir, caplog)
  out = hf.save(model, tmp_path / "export")
  ids, mask = _batch()
  pipeline = st.SentenceTransformer(str(out), device="cpu")
  # The tiny model has no tokenizer: feed the token ids through the pipeline's modules.
  features = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask),
              "token_type_ids": torch.zeros(ids.shape, dtype=torch.long)}
  with torch.no_grad():
    want = pipeline(features)["sentence_embedding"].numpy()
  np.testing.assert_allclose(_logits(model, ids, mask), want, atol=1e-5, rtol=0)


def test_a_head_is_read_with_its_own_pooling_only(encoder_dir, caplog, tmp_path):
  out = hf.save(_classifier(encoder_dir, caplog), tmp_path / "export")
  with pytest.raises(CheckpointError, match=r"1_Pooling/config.json.*pools 'mean'.*pooling='mean'"):
    hf.load(out, task="seq_cls")
  # The encoder alone loads as any BertModel (the head is not part of it).
  assert hf.load(out, task="encoder").task == "encoder"
  flags = json.loads((out / "1_Pooling" / "config.json").read_text())
  flags.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
  (out / "1_Pooling" / "config.json").write_text(json.dumps(flags))
  with pytest.raises(UnsupportedConfigError, match="'max' pooling"):
    hf.load(out, task="seq_cls", pooling="mean")


def test_a_broken_head_is_named(encoder_dir, caplog, tmp_path):
  out = hf.save(_classifier(encoder_dir, caplog), tmp_path / "export")
  cfg = json.loads((out / "2_Dense" / "config.json").read_text())
  (out / "2_Dense" / "config.json").write_text(
    json.dumps({**cfg, "activation_function": "torch.nn.modules.activation.Tanh"}))
  with pytest.raises(CheckpointError, match=r"2_Dense/config.json.*Tanh"):
    hf.load(out, task="seq_cls", pooling="mean")
  (out / "2_Dense" / "config.json").write_text(json.dumps(cfg))
  (out / "2_Dense" / "model.safetensors").unlink()
  with pytest.raises(CheckpointError, match="2_Dense"):
    hf.load(out, task="seq_cls", pooling="mean")


def _add_dense(directory, name, out_features, activation):
  (directory / name).mkdir()
  (directory / name / "config.json").write_text(json.dumps(
    {"in_features": 32, "out_features": out_features, "bias": True,
     "activation_function": activation}))
  rng = np.random.default_rng(2)
  safetensors_io.write_safetensors(directory / name / "model.safetensors", {
    "linear.weight": rng.normal(size=(out_features, 32)).astype(np.float32),
    "linear.bias": rng.normal(size=out_features).astype(np.float32)})


def test_an_embedding_projection_is_not_a_head(encoder_dir, caplog, tmp_path):
  # LaBSE's pipeline: CLS pooling, a Dense projection with Tanh, then Normalize.
  labse = tmp_path / "labse"
  shutil.copytree(encoder_dir, labse)
  _add_dense(labse, "2_Dense", 32, "torch.nn.modules.activation.Tanh")
  (labse / "1_Pooling" / "config.json").write_text(json.dumps(
    {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
     "pooling_mode_mean_tokens": False}))
  modules = json.loads((labse / "modules.json").read_text())
  modules[2:] = [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
                 {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]
  (labse / "modules.json").write_text(json.dumps(modules))
  with caplog.at_level(logging.INFO):
    model = hf.load(labse, task="seq_cls", num_labels=2)
  assert "['2_Dense', '3_Normalize'] after the pooling are not a classifier head" in caplog.text
  assert "classifier.weight, classifier.bias absent" in caplog.text and hasattr(model, "pooler")
  # A Dense that maps to the label count is a head, and one in the wrong place is an error
  # rather than a classifier silently loaded with a fresh head.
  (labse / "2_Dense").rename(labse / "2_Projection")
  _add_dense(labse, "2_Dense", 2, "torch.nn.modules.linear.Identity")
  modules.insert(2, {"idx": 2, "name": "2h", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
  modules[3]["path"] = "2_Projection"
  (labse / "modules.json").write_text(json.dumps(modules))
  with pytest.raises(CheckpointError, match=r"modules.json: a classifier head \(2_Dense\) must follow"):
    hf.load(labse, task="seq_cls", num_labels=2, pooling="mean")


def test_mean_pooling_is_for_bert_classifiers():
  with pytest.raises(UnsupportedConfigError, match="pooling='mean'.*llama"):
    presets.init("tiny-llama", task="seq_cls", num_labels=2, pooling="mean")
  cfg = bert.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, pooling="mean")
  with pytest.raises(ValueError, match="'seq_cls', not 'encoder'"):
    bert.Bert(cfg, task="encoder", rngs=nnx.Rngs(0))


def test_lora_exports_merged_only(encoder_dir, caplog, tmp_path):
  from jaxtune import lora

  cfg = lora.default_config()
  cfg.rank, cfg.alpha = 4, 8.0
  model = lora.apply(_classifier(encoder_dir, caplog), cfg)
  for _, m in lora.lora_modules(model):  # as if trained: B away from zero
    m.lora_b.set_value(m.lora_b.get_value() + 0.05)
  ids, mask = _batch()
  got = _logits(model, ids, mask)
  # PEFT would put the adapter on BertForSequenceClassification, which pools [CLS].
  with pytest.raises(ValueError, match="pooling='mean': a PEFT adapter"):
    hf.save(model, tmp_path / "adapter", adapter_only=True, base_model_name_or_path=str(encoder_dir))
  out = hf.save(model, tmp_path / "merged")
  back = hf.load(out, task="seq_cls", pooling="mean")
  np.testing.assert_allclose(_logits(back, ids, mask), got, atol=1e-5, rtol=0)
