"""GGUF import on tiny files written here with gguf.GGUFWriter (no download, a few seconds).

The files are laid out as llama.cpp's convert_hf_to_gguf.py lays them out (its names, its Q/K
row permutation, reversed dims), from random HF-named tensors; the un-permutation is checked
both against those tensors and against transformers' own GGUF loader.
"""

import os
import re

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxtune.hf import gguf as jgguf  # noqa: E402
from jaxtune.hf import gguf_tokenizer  # noqa: E402
from jaxtune.hf.errors import CheckpointError, UnsupportedConfigError  # noqa: E402

DIMS = dict(hidden=64, ffn=96, layers=2, heads=4, kv_heads=2, ctx=128)

# HF name suffix -> llama.cpp name suffix, written out independently of jaxtune's table.
_LAYER = {
  "input_layernorm.weight": "attn_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
}


def llama_cpp_permute(w, n_head, n_head_kv):
  """convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# A byte-level BPE vocabulary: three control tokens, the 256 byte symbols, a few merges, and a
# user-defined token.
def _byte_alphabet():
  from transformers.convert_slow_tokenizer import bytes_to_unicode

  return list(bytes_to_unicode().values())


MERGES = ["Ġ t", "h e", "Ġt he", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "i n", "Ġ in"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokens():
  merged = ["".join(m.split(" ")) for m in MERGES]
  return SPECIAL + _byte_alphabet() + merged + ["<think>"]


def hf_tensors(vocab, *, tied=True, seed=0):
  rng = np.random.default_rng(seed)
  d, f, hd = DIMS["hidden"], DIMS["ffn"], DIMS["hidden"] // DIMS["heads"]
  shapes = {
    "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    "self_attn.q_proj.weight": (DIMS["heads"] * hd, d),
    "self_attn.k_proj.weight": (DIMS["kv_heads"] * hd, d),
    "self_attn.v_proj.weight": (DIMS["kv_heads"] * hd, d),
    "self_attn.o_proj.weight": (d, DIMS["heads"] * hd),
    "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
  }
  # Trained-model-like scales (matrices ~0.1, norms ~1) keep activations tame, so float32
  # rounding differences between frameworks stay ~1e-6 and the logit check can be tight.
  def normal(*shape):
    w = 0.1 * rng.standard_normal(shape, np.float32)
    return w if len(shape) > 1 else 1 + w

  out = {"model.embed_tokens.weight": normal(vocab, d), "model.norm.weight": normal(d)}
  if not tied:
    out["lm_head.weight"] = normal(vocab, d)
  for i in range(DIMS["layers"]):
    for k, s in shapes.items():
      out[f"model.layers.{i}.{k}"] = normal(*s)
  return out


def write_gguf(path, hf, *, arch="llama", extra_meta=(), extra_tensors=(), tokenizer=True,
               add_bos=False):
  """Lay `hf` tensors out in a GGUF file the way convert_hf_to_gguf.py does (F32)."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(DIMS["layers"])
  w.add_context_length(DIMS["ctx"])
  w.add_embedding_length(DIMS["hidden"])
  w.add_feed_forward_length(DIMS["ffn"])
  w.add_head_count(DIMS["heads"])
  w.add_head_count_kv(DIMS["kv_heads"])
  w.add_layer_norm_rms_eps(1e-6)
  w.add_rope_freq_base(50000.0)
  w.add_rope_dimension_count(DIMS["hidden"] // DIMS["heads"])
  w.add_vocab_size(hf["model.embed_tokens.weight"].shape[0])
  if tokenizer:
    tokens = _tokens()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 4 if t == "<think>" else 1 for t in tokens])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
  for key, value in extra_meta:
    add = {int: w.add_uint32, float: w.add_float32, str: w.add_string}[type(value)]
    add(key, value)
  n_head, n_kv = DIMS["heads"], DIMS["kv_heads"]
  for name, arr in hf.items():
    if name == "model.embed_tokens.weight":
      gname = "token_embd.weight"
    elif name == "model.norm.weight":
      gname = "output_norm.weight"
    elif name == "lm_head.weight":
      gname = "output.weight"
    else:
      _, _, i, rest = name.split(".", 3)
      gname = f"blk.{i}.{_LAYER[rest]}"
      if rest == "self_attn.q_proj.weight":
        arr = llama_cpp_permute(arr, n_head, n_head)
      elif rest == "self_attn.k_proj.weight":
        arr = llama_cpp_permute(arr, n_head, n_kv)
    w.add_tensor(gname, np.ascontiguousarray(arr))
  for gname, arr in extra_tensors:
    w.add_tensor(gname, arr)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


@pytest.fixture
def tiny(tmp_path):
  hf = hf_tensors(len(_tokens()), tied=True)
  return write_gguf(tmp_path / "tiny.gguf", hf), hf


def test_config_from_metadata(tiny):
  path, hf = tiny
  cfg, _ = jgguf.open_gguf(path)
  assert cfg == {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0},
    "max_position_embeddings": 128, "tie_word_embeddings": True, "attention_bias": False,
    "mlp_bias": False, "vocab_size": len(_tokens()), "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 0,
  }


def test_tensors_round_trip_exactly(tmp_path):
  hf = hf_tensors(len(_tokens()), tied=False, seed=1)
  cfg, src = jgguf.open_gguf(write_gguf(tmp_path / "untied.gguf", hf))
  assert cfg["tie_word_embeddings"] is False
  assert src.names() == set(hf)
  for name, want in hf.items():
    assert src.shape(name) == want.shape, name
    got = src.get(name)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want, err_msg=name)
    assert src.file_of(name) == str(tmp_path / "untied.gguf")


def test_unpermute_inverts_permute():
  w = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
  for heads in (1, 2, 3, 6):
    np.testing.assert_array_equal(jgguf.unpermute_rotary(jgguf.permute_rotary(w, heads), heads), w)
    np.testing.assert_array_equal(jgguf.permute_rotary(w, heads), llama_cpp_permute(w, heads, None))
  assert not np.array_equal(jgguf.unpermute_rotary(w, 2), w)  # it does move rows


def test_matches_transformers_gguf_loader(tiny):
  """transformers dequantizes and un-permutes the same file; every tensor agrees exactly."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
  from transformers import AutoModelForCausalLM

  path, _ = tiny
  model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  )
  theirs = {k: v.numpy() for k, v in model.state_dict().items()}
  _, src = jgguf.open_gguf(path)
  for name in sorted(src.names()):
    np.testing.assert_array_equal(src.get(name), theirs[name], err_msg=name)

  # And through `jaxtune.hf.load`: the same network (GQA, tied head, rope theta from metadata).
  import jaxtune.hf

  ids = np.random.default_rng(0).integers(0, len(_tokens()), (2, 12))
  got = np.asarray(jaxtune.hf.load(path)(ids))
  with torch.no_grad():
    want = model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_tokenizer_from_metadata(tiny):
  path, _ = tiny
  tok = gguf_tokenizer.load_tokenizer(path)
  assert len(tok) == len(_tokens())
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
  vocab = tok.get_vocab()
  ids = tok("<|im_start|>the world<think> in 42<|im_end|>")["input_ids"]
  assert ids[0] == 1 and ids[-1] == 2  # control tokens are whole tokens
  assert vocab["<think>"] in ids and vocab["Ġworld"] in ids and vocab["Ġin"] in ids
  # "smollm" pre-tokenization isolates each digit, as llama.cpp does.
  assert tok.tokenize(" 42") == ["Ġ", "4", "2"]
  text = "Héllo, wörld 😀\n\n  spaces\tand tabs"
  assert tok.decode(tok(text)["input_ids"]) == text
  assert tok.decode(ids, skip_special_tokens=True) == "the world<think> in 42"
  rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
  assert rendered == "<|im_start|>user\nhi<|im_end|>\n"


def test_tokenizer_adds_bos_when_the_file_says_so(tmp_path):
  path = write_gguf(tmp_path / "bos.gguf", hf_tensors(len(_tokens())), add_bos=True)
  tok = gguf_tokenizer.load_tokenizer(path)
  assert tok(" the")["input_ids"] == [1, tok.get_vocab()["Ġthe"]]


def test_refuses_other_architecture(tmp_path):
  hf = hf_tensors(len(_tokens()))
  path = write_gguf(tmp_path / "gpt2.gguf", hf, arch="gpt2")
  with pytest.raises(UnsupportedConfigError, match=r"gpt2\.gguf.*general\.architecture='gpt2'"):
    jgguf.open_gguf(path)


def test_linear_rope_scaling(tmp_path):
  path = write_gguf(tmp_path / "long.gguf", hf_tensors(len(_tokens())),
                    extra_meta=[("llama.rope.scaling.type", "linear"), ("llama.rope.scaling.factor", 4.0)])
  cfg, _ = jgguf.open_gguf(path)
  assert cfg["rope_parameters"] == {"rope_type": "linear", "rope_theta": 50000.0, "factor": 4.0}


@pytest.mark.parametrize("key,value", [("llama.expert_count", 4),
                                       ("llama.attention.sliding_window", 4096),
                                       ("llama.rope.scaling.type", "yarn")])
def test_refuses_unsupported_metadata(tmp_path, key, value):
  path = write_gguf(tmp_path / "odd.gguf", hf_tensors(len(_tokens())), extra_meta=[(key, value)])
  with pytest.raises(UnsupportedConfigError, match=rf"odd\.gguf.*{re.escape(key)}"):
    jgguf.open_gguf(path)


def test_unknown_tensor_names_file_and_tensor(tmp_path):
  extra = [("blk.0.attn_qkv.weight", np.zeros((4, 64), np.float32))]
  path = write_gguf(tmp_path / "fused.gguf", hf_tensors(len(_tokens())), extra_tensors=extra)
  with pytest.raises(CheckpointError, match=r"fused\.gguf.*unknown tensor 'blk\.0\.attn_qkv\.weight'"):
    jgguf.open_gguf(path)


def test_unsupported_quant_type_names_file_and_tensor(tmp_path):
  hf = hf_tensors(len(_tokens()))
  hf["model.norm.weight"] = np.arange(64, dtype=np.int32)
  path = write_gguf(tmp_path / "ints.gguf", hf)
  with pytest.raises(CheckpointError, match=r"ints\.gguf.*'output_norm\.weight'.*I32"):
    jgguf.open_gguf(path)


def test_truncated_file_names_file_and_tensor(tiny, tmp_path):
  path, hf = tiny
  data = open(path, "rb").read()
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(data[: len(data) - 4096])  # the last tensor, blk.1.ffn_down, is 24 KiB
  with pytest.raises(CheckpointError, match=r"cut\.gguf: file is truncated.*'blk\.1\.ffn_down\.weight'"):
    jgguf.open_gguf(cut)
  head = tmp_path / "head.gguf"
  head.write_bytes(data[:200])  # inside the metadata
  with pytest.raises(CheckpointError, match=r"head\.gguf: not a readable GGUF file"):
    jgguf.open_gguf(head)
  for n, why in [(0, "it is 0 bytes, truncated"), (3, "it is 3 bytes, truncated"),
                 (24, "metadata does not fit in its 24 bytes")]:
    head.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=rf"head\.gguf: not a readable GGUF file \(.*{why}"):
      gguf_tokenizer.load_tokenizer(head)
  head.write_bytes(b"<html>not found</html>")  # a download that went wrong
  with pytest.raises(CheckpointError, match=r"head\.gguf: .*it starts with b'<htm'"):
    jgguf.open_gguf(head)


def test_refuses_llama3_rope_freqs(tmp_path):
  extra = [("rope_freqs.weight", np.ones(8, np.float32))]
  path = write_gguf(tmp_path / "l31.gguf", hf_tensors(len(_tokens())), extra_tensors=extra)
  with pytest.raises(UnsupportedConfigError, match=r"l31\.gguf.*'rope_freqs\.weight'"):
    jgguf.open_gguf(path)
