"""GGUF architectures beyond llama: tiny random transformers models written as GGUF files here.

Each file is laid out as convert_hf_to_gguf.py lays it out (tests/hf/gguf_files.py); jaxtune and
transformers' own GGUF loader (`from_pretrained(..., gguf_file=)`) each read it, and the logits
must agree, in float32 and in llama.cpp's block-quantized types.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")

import jaxtune.hf  # noqa: E402
from jaxtune.hf import gguf as jgguf  # noqa: E402
from jaxtune.hf import gguf_tokenizer  # noqa: E402
from jaxtune.hf.errors import CheckpointError, UnsupportedConfigError  # noqa: E402
from tests.hf.gguf_files import Q, write_from_hf  # noqa: E402
from tests.hf.gguf_test import _tokens  # noqa: E402

VOCAB = len(_tokens())
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 50000.0})
SPECS = {
  "llama": dict(tie_word_embeddings=True),
  "qwen2": dict(tie_word_embeddings=False),
  # transformers' GGUF loader does not read qwen3.attention.key_length and keeps Qwen3Config's
  # default head_dim (128), which real Qwen3 models have; the tiny model has it too.
  "qwen3": dict(head_dim=128, tie_word_embeddings=True),
  # Layers 0-4 local (window 4 < the 12 tokens), 5 global, 6 local: the pattern a gemma3 file
  # implies. head_dim 256: the only one at which llama.cpp and transformers agree on the query
  # scale (jaxtune refuses others).
  "gemma3": dict(num_hidden_layers=7, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                 sliding_window=4, tie_word_embeddings=True, rope_parameters={
                   "full_attention": {"rope_type": "default", "rope_theta": 50000.0},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
}
# Layers 0 and 2 local (window 4), 1 global, as a gemma2 file implies; the caps are
# Gemma2Config's defaults, which transformers' GGUF loader keeps whatever the file says.
SPECS["gemma2"] = dict(num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=256, sliding_window=4, tie_word_embeddings=True)
MODEL_TYPE = {"gemma3": "gemma3_text"}  # transformers' name for the text-only Gemma 3
# llama.cpp's Q4_K_M-style mixes use several types in one file; these are the ones gguf can
# quantize (block 32, so the tiny rows of 64 and 96 work).
MIXED = {"attn_q": Q.Q8_0, "attn_k": Q.Q5_0, "attn_v": Q.Q5_1, "attn_output": Q.Q4_1,
         "ffn_gate": Q.Q4_0, "ffn_up": Q.Q8_0, "ffn_down": Q.BF16, "token_embd": Q.Q8_0,
         "output": Q.Q4_0}


def _hf_model(arch: str, seed: int = 0):
  cfg = transformers.AutoConfig.for_model(MODEL_TYPE.get(arch, arch), **{**BASE, **SPECS[arch]})
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
    cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():  # norms start at 1 and biases at 0: perturb every tensor
      p.add_(0.1 * torch.randn_like(p))
  return model


def _mixed(name: str, arr: np.ndarray):
  return MIXED[name.split(".")[-2]]


def _ids():
  return np.random.default_rng(0).integers(0, VOCAB, (2, 12))


def _logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


def _transformers_load(path):
  return transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("quant", ["f32", "mixed"])
@pytest.mark.parametrize("arch", sorted(SPECS))
def test_logits_match_transformers_gguf_loader(tmp_path, arch, quant):
  model = _hf_model(arch)
  path = str(tmp_path / f"{arch}-{quant}.gguf")
  write_from_hf(model, path, arch, **({"qtype_of": _mixed} if quant == "mixed" else {}))
  theirs = _transformers_load(path)
  ids = _ids()
  got = np.asarray(jaxtune.hf.load(path)(ids))
  want = _logits(theirs, ids)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  if quant == "f32":  # the F32 file holds the model itself: the original's logits too
    np.testing.assert_allclose(got, _logits(model, ids), atol=1e-5, rtol=1e-5)
  else:  # and a quantized one is a different network, so the check above is not vacuous
    assert np.abs(got - _logits(model, ids)).max() > 1e-3


def test_config_per_architecture(tmp_path):
  for arch in SPECS:
    model = _hf_model(arch)
    path = str(tmp_path / f"{arch}.gguf")
    write_from_hf(model, path, arch)
    cfg, src = jgguf.open_gguf(path)
    assert cfg["model_type"] == MODEL_TYPE.get(arch, arch)
    assert cfg["architectures"] == [type(model).__name__]
    assert cfg["tie_word_embeddings"] == model.config.tie_word_embeddings
    assert src.names() == set(model.state_dict()) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set())
    if arch == "qwen2":  # Qwen2Config has no head_dim or bias switches: q/k/v always have biases
      assert {"head_dim", "attention_bias", "mlp_bias"}.isdisjoint(cfg)
    if arch == "qwen3":
      assert (cfg["head_dim"], cfg["attention_bias"]) == (128, False)


def test_qwen_rows_are_not_unpermuted(tmp_path):
  """llama.cpp permutes Q/K rows for `llama` only: a qwen2 file's rows are HF's as they are."""
  model = _hf_model("qwen2")
  path = str(tmp_path / "q.gguf")
  write_from_hf(model, path, "qwen2")
  _, src = jgguf.open_gguf(path)
  for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
               "model.layers.0.self_attn.q_proj.bias"):
    np.testing.assert_array_equal(src.get(name), model.state_dict()[name].numpy(), err_msg=name)


def _qwen2_file(tmp_path, extra_meta=(), extra_tensors=(), drop=(), arch="qwen2", strings=None):
  """A qwen2 (or `arch`) file with metadata and tensors added or removed after the converter's.

  `strings` replaces string metadata values by key."""
  model = _hf_model(arch)
  src = str(tmp_path / "src.gguf")
  write_from_hf(model, src, arch)
  reader = gguf.GGUFReader(src)
  path = str(tmp_path / "edited.gguf")
  w = gguf.GGUFWriter(path, arch)
  for key, field in reader.fields.items():
    if key.startswith("GGUF.") or key == "general.architecture":
      continue
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
      sub = field.types[-1]
      values = ([bytes(field.parts[i]).decode() for i in field.data] if sub == gguf.GGUFValueType.STRING
                else [field.parts[i][0].item() for i in field.data])
      w.add_array(key, values)
    elif kind == gguf.GGUFValueType.STRING:
      w.add_string(key, (strings or {}).get(key, bytes(field.parts[field.data[0]]).decode()))
    else:
      w.add_key_value(key, field.parts[field.data[0]][0].item(), kind)
  for key, value in extra_meta:
    w.add_key_value(key, value, gguf.GGUFValueType.UINT32)
  for t in reader.tensors:
    if t.name not in drop:
      w.add_tensor(t.name, np.array(t.data))
  for name, arr in extra_tensors:
    w.add_tensor(name, arr)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def test_qwen2_unknown_metadata_key_is_named(tmp_path):
  path = _qwen2_file(tmp_path, extra_meta=[("qwen2.attention.sliding_window", 4096)])
  with pytest.raises(UnsupportedConfigError, match=r"edited\.gguf.*'qwen2\.attention\.sliding_window'"):
    jgguf.open_gguf(path)


def test_qwen2_unknown_tensor_is_named(tmp_path):
  # An o_proj bias is a llama tensor, but Qwen2 has none: transformers would drop it silently.
  extra = [("blk.0.attn_output.bias", np.zeros(64, np.float32))]
  path = _qwen2_file(tmp_path, extra_tensors=extra)
  with pytest.raises(CheckpointError, match=r"edited\.gguf.*unknown tensor 'blk\.0\.attn_output\.bias'.*qwen2"):
    jgguf.open_gguf(path)


def test_qwen2_missing_bias_is_named(tmp_path):
  path = _qwen2_file(tmp_path, drop={"blk.1.attn_k.bias"})
  with pytest.raises(CheckpointError, match=re.escape("model.layers.1.self_attn.k_proj.bias")):
    jaxtune.hf.load(path)


def test_qwen2_tokenizer_matches_transformers(tmp_path):
  """tokenizer.ggml.pre = 'qwen2' splits digits one by one, as transformers' Qwen2 tokenizer."""
  model = _hf_model("qwen2")
  path = str(tmp_path / "tok.gguf")
  write_from_hf(model, path, "qwen2", pre="qwen2")
  ours = gguf_tokenizer.load_tokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  for text in ["the world in 2024, 12345 items", "Héllo\n\n  wörld's 😀 <|im_start|>x", "it's I'LL  \t9z"]:
    assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
  assert ours.tokenize("12345") == ["1", "2", "3", "4", "5"]


def test_gemma3_config_states_what_the_file_leaves_out(tmp_path):
  model = _hf_model("gemma3")
  path = str(tmp_path / "g.gguf")
  write_from_hf(model, path, "gemma3")
  cfg, src = jgguf.open_gguf(path)
  assert cfg["layer_types"] == model.config.layer_types == ["sliding_attention"] * 5 + [
    "full_attention", "sliding_attention"]
  assert cfg["rope_parameters"] == model.config.rope_parameters
  assert (cfg["sliding_window"], cfg["query_pre_attn_scalar"]) == (4, 256)
  # The file holds 1 + w (llama.cpp multiplies by the weight); the source gives HF's w back.
  name = "model.layers.2.pre_feedforward_layernorm.weight"
  raw = next(t for t in gguf.GGUFReader(path).tensors if t.name == "blk.2.ffn_norm.weight")
  np.testing.assert_allclose(np.asarray(raw.data), model.state_dict()[name].numpy() + 1, rtol=1e-6)
  np.testing.assert_allclose(src.get(name), model.state_dict()[name].numpy(), atol=1e-6)


def test_gemma3_other_head_dim_is_refused(tmp_path):
  """The query scale is not in the file; jaxtune does not guess it where the readers disagree."""
  model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(
    "gemma3_text", **{**BASE, **SPECS["gemma3"], "head_dim": 32}))
  path = str(tmp_path / "g.gguf")
  write_from_hf(model, path, "gemma3")
  with pytest.raises(UnsupportedConfigError, match=r"gemma3\.attention\.key_length=32.*head_dim 256"):
    jgguf.open_gguf(path)


def test_sentencepiece_tokenizer_outside_gemma3_is_refused(tmp_path):
  """Only gemma3's SentencePiece vocabulary is handed to transformers (the one checked)."""
  path = _qwen2_file(tmp_path, strings={"tokenizer.ggml.model": "llama"})
  with pytest.raises(UnsupportedConfigError, match=r"tokenizer\.ggml\.model='llama' is not supported"):
    gguf_tokenizer.load_tokenizer(path)


def test_gemma2_reads_what_the_file_leaves_out_and_its_caps(tmp_path):
  """Layer pattern and query scale as llama.cpp and transformers assume them; the tanh caps from
  the file (llama.cpp reads them; transformers' GGUF loader keeps Gemma2Config's 50 and 30)."""
  cfg = transformers.AutoConfig.for_model("gemma2", **{**BASE, **SPECS["gemma2"]},
                                          attn_logit_softcapping=0.5, final_logit_softcapping=2.0)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
    cfg, attn_implementation="eager", dtype=torch.float32).eval()
  path = str(tmp_path / "g2.gguf")
  write_from_hf(model, path, "gemma2")
  hf_cfg, src = jgguf.open_gguf(path)
  assert hf_cfg["layer_types"] == model.config.layer_types == [
    "sliding_attention", "full_attention", "sliding_attention"]
  assert (hf_cfg["sliding_window"], hf_cfg["query_pre_attn_scalar"]) == (4, 256)
  assert (hf_cfg["attn_logit_softcapping"], hf_cfg["final_logit_softcapping"]) == (0.5, 2.0)
  name = "model.layers.1.post_feedforward_layernorm.weight"  # stored as 1 + w, read back as w
  np.testing.assert_allclose(src.get(name), model.state_dict()[name].numpy(), atol=1e-6)
  ids = _ids()
  got = np.asarray(jaxtune.hf.load(path)(ids))
  np.testing.assert_allclose(got, _logits(model, ids), atol=1e-5, rtol=1e-5)
  assert np.abs(_logits(_transformers_load(path), ids) - got).max() > 1e-2  # it drops the caps


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gemma_unknown_metadata_and_tensor_are_named(tmp_path, arch):
  path = _qwen2_file(tmp_path, extra_meta=[(f"{arch}.attention.logit_softcapping", 50)], arch=arch)
  with pytest.raises(UnsupportedConfigError, match=rf"'{arch}\.attention\.logit_softcapping'"):
    jgguf.open_gguf(path)
  # Gemma 3's QK norm is not part of Gemma 2; a bias is part of neither.
  extra = "blk.0.attn_q_norm.weight" if arch == "gemma2" else "blk.0.attn_q.bias"
  path = _qwen2_file(tmp_path, extra_tensors=[(extra, np.zeros(256, np.float32))], arch=arch)
  with pytest.raises(CheckpointError, match=rf"unknown tensor '{re.escape(extra)}'.*{arch}"):
    jgguf.open_gguf(path)
