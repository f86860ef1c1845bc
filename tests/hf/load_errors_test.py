"""Bad checkpoints and unsupported configs fail loudly, naming the tensor, attribute or file."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from jaxtune import hf  # noqa: E402
from jaxtune.hf import safetensors_io  # noqa: E402
from tests.hf.conftest import rewrite_safetensors  # noqa: E402

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  cfg = transformers.LlamaConfig(
    vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
  )
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(cfg).eval()
  path = tmp_path_factory.mktemp("llama")
  model.save_pretrained(path)
  return path


@pytest.fixture
def ckpt(base_dir, tmp_path):
  """A private copy to break."""
  path = tmp_path / "ckpt"
  shutil.copytree(base_dir, path)
  return path


def _edit_config(path, **changes):
  cfg = json.loads((path / "config.json").read_text())
  cfg.update(changes)
  (path / "config.json").write_text(json.dumps(cfg))


def test_missing_tensor(ckpt):
  rewrite_safetensors(ckpt, lambda t: t.pop(Q))
  with pytest.raises(hf.CheckpointError, match=rf"missing tensor.*{Q}"):
    hf.load(ckpt)


def test_unexpected_tensor(ckpt):
  extra = "model.layers.0.self_attn.rel_bias.weight"
  f = rewrite_safetensors(ckpt, lambda t: t.update({extra: np.zeros((4,), np.float32)}))
  with pytest.raises(hf.CheckpointError, match=rf"unexpected tensor.*{f}.*{extra}"):
    hf.load(ckpt)


def test_wrong_shape(ckpt):
  f = rewrite_safetensors(ckpt, lambda t: t.update({Q: np.zeros((32, 16), np.float32)}))
  with pytest.raises(hf.CheckpointError, match=rf"{f}: tensor '{Q}' has shape \(32, 16\), expected \(32, 32\)"):
    hf.load(ckpt)


def test_unsupported_rope_type(ckpt):
  _edit_config(ckpt, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(hf.UnsupportedConfigError, match=r"config\.json.*rope_parameters\.rope_type='yarn'"):
    hf.load(ckpt)


def test_old_style_unsupported_rope_scaling(ckpt):
  _edit_config(ckpt, rope_scaling={"type": "dynamic", "factor": 2.0})
  with pytest.raises(hf.UnsupportedConfigError, match=r"rope_scaling\.rope_type='dynamic'"):
    hf.load(ckpt)


def test_moe_attribute(ckpt):
  _edit_config(ckpt, num_local_experts=8)
  with pytest.raises(hf.UnsupportedConfigError, match=r"num_local_experts=8.*mixture-of-experts"):
    hf.load(ckpt)


def test_unknown_attribute(ckpt):
  _edit_config(ckpt, attn_logit_softcapping=50.0)
  with pytest.raises(hf.UnsupportedConfigError, match=r"attn_logit_softcapping"):
    hf.load(ckpt)


def test_qwen2_sliding_window_refused(ckpt):
  _edit_config(ckpt, model_type="qwen2", use_sliding_window=True, sliding_window=4,
               pretraining_tp=None)
  cfg = json.loads((ckpt / "config.json").read_text())
  for key in ("attention_bias", "mlp_bias", "pretraining_tp"):
    cfg.pop(key)
  (ckpt / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(hf.UnsupportedConfigError, match=r"use_sliding_window=True"):
    hf.load(ckpt)


def test_pretraining_tp_refused(ckpt):
  _edit_config(ckpt, pretraining_tp=2)
  with pytest.raises(hf.UnsupportedConfigError, match=r"pretraining_tp=2"):
    hf.load(ckpt)


@pytest.mark.parametrize("model_type", ["falcon", "mixtral"])  # families jaxtune lacks
def test_unknown_model_type(ckpt, model_type):
  _edit_config(ckpt, model_type=model_type)
  with pytest.raises(hf.UnsupportedConfigError, match=rf"config\.json: model_type='{model_type}'"):
    hf.load(ckpt)


def test_truncated_safetensors(ckpt):
  f = ckpt / "model.safetensors"
  data = f.read_bytes()
  f.write_bytes(data[: len(data) - 100])
  with pytest.raises(hf.CheckpointError, match=rf"{f}: file is truncated.*model\.norm\.weight"):
    hf.load(ckpt)


def test_corrupt_header(ckpt):
  f = ckpt / "model.safetensors"
  data = bytearray(f.read_bytes())
  data[8:20] = b"\x00garbage!!\xff\xfe"
  f.write_bytes(bytes(data))
  with pytest.raises(hf.CheckpointError, match=rf"{f}: not a valid safetensors file"):
    hf.load(ckpt)


def test_pickle_checkpoint_needs_allow_pickle(ckpt, base_dir):
  src = safetensors_io.SafetensorsFile(ckpt / "model.safetensors")
  torch.save({k: torch.from_numpy(np.array(src.get(k))) for k in src.header}, ckpt / "pytorch_model.bin")
  del src
  (ckpt / "model.safetensors").unlink()
  with pytest.raises(hf.CheckpointError, match=r"pytorch_model\.bin.*allow_pickle=True"):
    hf.load(ckpt)
  model = hf.load(ckpt, allow_pickle=True)
  ref = hf.load(base_dir)
  ids = jnp.arange(1, 9)[None]
  np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(ref(ids)))


def test_seq_cls_from_causal_lm_initialises_head(base_dir, caplog):
  with caplog.at_level(logging.WARNING, logger="jaxtune.hf.convert"):
    model = hf.load(base_dir, task="seq_cls", num_labels=2)
  assert any("score.weight absent from the checkpoint; initialised" in r.getMessage()
             for r in caplog.records), caplog.text
  assert model.score.kernel.shape == (32, 2)
  assert float(jnp.std(model.score.kernel[...])) > 0  # random, not zeros
  logits = model(jnp.array([[5, 6, 7, 0, 0]]), jnp.array([[1, 1, 1, 0, 0]]))
  assert logits.shape == (1, 2)


def test_label_names_follow_hf_config_rules():
  """One rule for every family: the caller's num_labels, else id2label, else num_labels."""
  from jaxtune.hf import convert

  def names(hf_cfg, num_labels=None, task="seq_cls"):
    return convert.label_names(hf_cfg, task=task, num_labels=num_labels, where="cfg")

  assert names({"id2label": {"1": "pos", "0": "neg"}}) == ("neg", "pos")
  assert names({"num_labels": 3}) == ("LABEL_0", "LABEL_1", "LABEL_2")  # HF's default names
  assert names({"id2label": {"0": "a", "1": "b"}}, 3) == ("LABEL_0", "LABEL_1", "LABEL_2")
  assert names({"id2label": {"0": "a", "1": "b"}}, 2) == ("a", "b")
  assert names({"num_labels": 3}, task="causal_lm") == ()
  with pytest.raises(hf.UnsupportedConfigError, match="num_labels"):
    names({})
  with pytest.raises(ValueError, match="at least 1"):
    names({}, 0)
  assert convert.label_config(("neg", "pos")) == {
    "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}


def test_missing_sources_name_the_path(tmp_path):
  from jaxtune import errors

  with pytest.raises(FileNotFoundError, match="no such file or directory; give an HF model") as e:
    hf.load(tmp_path / "nothing_here", task="causal_lm")
  assert isinstance(e.value, errors.CheckpointError)
  (tmp_path / "notes.txt").write_text("no tokenizer\n")
  with pytest.raises(errors.CheckpointError, match=f"{tmp_path}: no tokenizer in this directory"):
    hf.load_tokenizer(tmp_path)
  with pytest.raises(errors.ConfigError, match="task='regression'"):
    hf.load(tmp_path, task="regression")
