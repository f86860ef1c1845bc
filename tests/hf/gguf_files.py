"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them, for the tests.

`write_from_hf` lays a transformers model's state dict out as a GGUF file: tensor names from
the gguf package's own HF -> GGUF name map (not jaxtune's table), the Q/K row permutation for
the `llama` architecture only, Gemma 2/3's norms stored as 1 + w, the architecture's metadata keys as the converter sets them, and
each weight matrix stored as the ggml type the caller picks. `encode` turns a float32 array
into a type's bytes: `gguf.quants.quantize` where the package can quantize that type, else
random blocks of its layout with sane scales.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tests.hf.gguf_test import MERGES, SPECIAL, _tokens, llama_cpp_permute  # noqa: E402

Q = gguf.GGMLQuantizationType

# Byte offsets of the float16 scales in one block of each type that gguf cannot quantize
# (ggml-common.h's block_* structs). Random bytes there would give NaN/Inf 1 time in 32; they
# get random values of a size that keeps dequantized weights O(0.1).
_F16_FIELDS = {
  Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,),
  Q.IQ2_XXS: (0,), Q.IQ2_XS: (0,), Q.IQ2_S: (0,), Q.IQ3_XXS: (0,), Q.IQ3_S: (0,),
  Q.IQ1_S: (0,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,),
}
_SCALE = {Q.Q2_K: 1e-2, Q.Q3_K: 3e-3, Q.Q4_K: 5e-4, Q.Q5_K: 3e-4, Q.Q6_K: 1e-4, Q.IQ1_S: 2e-2,
          Q.IQ2_XXS: 2e-3, Q.IQ2_XS: 2e-3, Q.IQ2_S: 2e-3, Q.IQ3_XXS: 2e-3, Q.IQ3_S: 2e-3,
          Q.IQ4_NL: 2e-3, Q.IQ4_XS: 1e-4}


def encode(arr: np.ndarray, qtype, rng: np.random.Generator) -> np.ndarray:
  """`arr` (float32, rows of a multiple of the block size) as `qtype`'s bytes (uint8 rows)."""
  if qtype == Q.F32:
    return np.ascontiguousarray(arr, np.float32)
  if qtype == Q.F16:
    return arr.astype(np.float16)
  try:
    return gguf.quants.quantize(arr, qtype)
  except NotImplementedError:
    pass
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  n_blocks = arr.size // block
  blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
  if qtype == Q.IQ1_M:
    # The only type that spreads its f16 scale over the top nibbles of four u16 scales; the
    # top nibble of the last one holds the sign and the exponent's high bits: 0b0010 keeps
    # the scale in [2^-8, 2^-1).
    blocks[:, -1] = (blocks[:, -1] & 0x0F) | 0x20
  elif qtype == Q.NVFP4:  # four unsigned E4M3 scales: exponent 3 (2^-4), any mantissa
    blocks[:, :4] = (3 << 3) | rng.integers(0, 8, (n_blocks, 4), dtype=np.uint8)
  elif qtype == Q.MXFP4:
    blocks[:, 0] = rng.integers(118, 126, n_blocks)  # E8M0 exponent: 2^-9 .. 2^-2
  for off in _F16_FIELDS.get(qtype, ()):
    d = (rng.uniform(0.5, 1.0, n_blocks) * _SCALE.get(qtype, 1e-2)).astype(np.float16)
    blocks[:, off : off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
  return blocks.reshape(*arr.shape[:-1], arr.shape[-1] // block * size)


def write_from_hf(
  model,
  path,
  arch: str,
  *,
  qtype_of: Callable[[str, np.ndarray], object] = lambda name, arr: Q.F32,
  seed: int = 0,
  pre: str = "smollm",
) -> dict[str, tuple[object, np.ndarray]]:
  """Write `model` (a transformers causal LM) as `path`; {gguf name: (type, bytes written)}.

  `qtype_of(gguf_name, array)` picks each tensor's type; 1-D tensors (norms, biases) stay F32
  as llama.cpp keeps them. The tokenizer is tests.hf.gguf_test's byte-level BPE vocabulary.
  """
  cfg = model.config
  arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
  names = gguf.get_tensor_name_map(arch_enum, cfg.num_hidden_layers)
  head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

  w = gguf.GGUFWriter(str(path), arch)
  w.add_name(f"tiny {arch}")
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  rope = cfg.rope_parameters
  w.add_rope_freq_base((rope["full_attention"] if arch == "gemma3" else rope)["rope_theta"])
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  if arch in ("gemma2", "gemma3"):  # Gemma2/3Model.set_gguf_parameters (no local rope base)
    w.add_sliding_window(cfg.sliding_window)
  if arch == "gemma2":
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
  if arch == "llama":  # LlamaModel.set_gguf_parameters
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(head_dim)
  if "head_dim" in cfg.to_dict() and arch != "qwen2":  # TextModel, Gemma3Model: when config.json states it
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
  w.add_file_type(gguf.LlamaFileType.ALL_F32)
  tokens = _tokens()
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types([3 if t in SPECIAL else 4 if t == "<think>" else 1 for t in tokens])
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_add_bos_token(False)

  rng = np.random.default_rng(seed)
  written = {}
  for hf_name, t in model.state_dict().items():
    if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue  # llama.cpp writes `output.weight` only when it is not the embedding
    base, suffix = hf_name.rsplit(".", 1)
    gname = names.get_name(base)
    assert gname is not None, hf_name
    gname = f"{gname}.{suffix}"
    arr = t.detach().numpy().astype(np.float32)
    if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):  # LlamaModel.modify_tensors
      heads = cfg.num_attention_heads if ".attn_q." in gname else cfg.num_key_value_heads
      arr = llama_cpp_permute(arr, heads, None)
    if arch in ("gemma2", "gemma3") and gname.endswith("norm.weight"):  # modify_tensors: 1 + w
      arr = arr + np.float32(1.0)
    qtype = Q.F32 if arr.ndim == 1 else qtype_of(gname, arr)
    data = encode(arr, qtype, rng)
    w.add_tensor(gname, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    written[gname] = (qtype, data)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return written
