"""llama.cpp GGUF files as HF checkpoints: a config dict and lazily dequantized tensors.

A GGUF carries a whole model in one file: the architecture numbers as `llama.*` metadata, the
tokenizer (vocabulary, merges, special ids, chat template) as `tokenizer.*` metadata, and the
weights, usually block-quantized. `open_gguf` turns the metadata into the `config.json` dict
transformers would write and the weights into a `TensorSource` under HF names, so `jaxtune.hf.load`
treats a GGUF like any HF checkpoint. The tokenizer is `jaxtune.hf.gguf_tokenizer`'s, and writing
a GGUF (`jaxtune export --format=gguf`) is `jaxtune.hf.gguf_write`'s, over this module's tables.

The file is memory-mapped by `gguf.GGUFReader`; a tensor is dequantized to float32 only when the
converter asks for it, so the host holds one dequantized tensor at a time.

Architectures (`general.architecture`): `llama`, `qwen2`, `qwen3`, `gemma2` and `gemma3` (the
Gemma 2 and Gemma 3 text families: their norms are stored as 1 + w, and the layer pattern,
Gemma 3's local rope base and the query scale are not in the file, so `hf_config` states what
llama.cpp and transformers assume; Gemma 2's attention and logit caps are), each
with its own table of metadata keys and tensor names (`ARCHS`); an unknown key under the architecture's namespace
or an unknown tensor is an error naming it. Tensor types: every ggml type the `gguf` package
dequantizes (`DEQUANTIZED`); another type is an error naming the tensor and the type. jaxtune
calls `gguf.quants.dequantize` rather than its own numpy: it is vectorised over blocks, within
2x of a whole-array numpy rewrite (~0.1 s per 10M weights, BENCHMARKS.md), and it is the
reference llama.cpp ships.

llama.cpp's layout differs from HF's in three ways, undone here:
- names: `blk.0.attn_q.weight` is `model.layers.0.self_attn.q_proj.weight` (`ARCHS[...].names`);
- dims: GGUF lists them fastest-first (`[in, out]`); the reader's numpy arrays are already
  row-major `[out, in]`, which is HF's order, so only the reported shape is reversed;
- Q/K rows: llama.cpp rotates adjacent pairs (x0, x1), (x2, x3) of each head, HF rotates halves
  (x_i, x_{i+H/2}), so convert_hf_to_gguf.py interleaves the two halves of each head's rows of
  q_proj (over n_head heads) and k_proj (over n_head_kv). `unpermute_rotary` inverts that. Only
  the `llama` architecture is permuted: llama.cpp runs Qwen2/Qwen3/Gemma 2/3 with the NeoX (halves)
  rotary, so their converters write HF's rows unchanged (transformers' GGUF loader agrees).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from pathlib import Path

import numpy as np

from jaxtune.hf.errors import CheckpointError, UnsupportedConfigError
from jaxtune.hf.safetensors_io import TensorSource

__all__ = ["ARCHS", "DEQUANTIZED", "SUPPORTED_ARCHITECTURES", "Arch", "GGUFSource", "field_value",
           "forget_readers", "gguf_package", "hf_config", "hf_name", "metadata", "open_gguf",
           "open_reader", "permute_rotary", "unpermute_rotary"]

# llama.cpp tensor name -> HF name (re.fullmatch, then expand), shared by the decoders.
_DECODER_NAMES = (
  (r"token_embd\.weight", "model.embed_tokens.weight"),
  (r"output_norm\.weight", "model.norm.weight"),
  (r"output\.weight", "lm_head.weight"),
  (r"blk\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
  (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
  (r"blk\.(\d+)\.attn_q\.weight", r"model.layers.\1.self_attn.q_proj.weight"),
  (r"blk\.(\d+)\.attn_k\.weight", r"model.layers.\1.self_attn.k_proj.weight"),
  (r"blk\.(\d+)\.attn_v\.weight", r"model.layers.\1.self_attn.v_proj.weight"),
  (r"blk\.(\d+)\.attn_output\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
  (r"blk\.(\d+)\.ffn_gate\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
  (r"blk\.(\d+)\.ffn_up\.weight", r"model.layers.\1.mlp.up_proj.weight"),
  (r"blk\.(\d+)\.ffn_down\.weight", r"model.layers.\1.mlp.down_proj.weight"),
)
_ATTN_BIAS = tuple(
  (rf"blk\.(\d+)\.attn_{g}\.bias", rf"model.layers.\1.self_attn.{h}_proj.bias")
  for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
)
_MLP_BIAS = tuple(
  (rf"blk\.(\d+)\.ffn_{p}\.bias", rf"model.layers.\1.mlp.{p}_proj.bias") for p in ("gate", "up", "down")
)
_QK_NORM = tuple(
  (rf"blk\.(\d+)\.attn_{p}_norm\.weight", rf"model.layers.\1.self_attn.{p}_norm.weight") for p in "qk"
)

# Gemma 2 and 3 (llama.cpp's Gemma2Model, Gemma3Model): sandwich norms around attention and MLP.
# Their `ffn_norm` is the norm before the MLP (HF's pre_feedforward_layernorm), not Llama's
# post-attention norm. Gemma 3 adds per-head QK norms.
_GEMMA2_NAMES = _DECODER_NAMES[:4] + (  # embeddings, final norm, head, attention input norm
  (r"blk\.(\d+)\.post_attention_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
  (r"blk\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.pre_feedforward_layernorm.weight"),
  (r"blk\.(\d+)\.post_ffw_norm\.weight", r"model.layers.\1.post_feedforward_layernorm.weight"),
) + _DECODER_NAMES[5:]  # q, k, v, o, gate, up, down
_GEMMA3_NAMES = _GEMMA2_NAMES + _QK_NORM

# `<arch>.*` metadata that `hf_config` reads. Any other key under the architecture is refused by
# name, as an unknown config.json attribute would be: it may change the computation.
_DECODER_KEYS = frozenset({
  "context_length", "embedding_length", "block_count", "feed_forward_length", "vocab_size",
  "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
  "attention.key_length", "attention.value_length", "rope.freq_base", "rope.dimension_count",
  "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length",
  "rope.scaling.finetuned", "expert_count", "expert_used_count",
})


@dataclasses.dataclass(frozen=True)
class Arch:
  """How one `general.architecture` maps onto an HF model_type."""

  model_type: str
  hf_class: str  # the causal-LM class transformers builds for it
  names: tuple[tuple[str, str], ...]
  keys: frozenset[str] = _DECODER_KEYS
  # convert_hf_to_gguf.py permuted Q/K rows for llama.cpp's interleaved (GPT-J) rotary.
  interleaved_rotary: bool = False
  # The converter stored every norm weight w as 1 + w (llama.cpp's graph multiplies by the
  # weight; HF's Gemma norms multiply by 1 + w); `get` subtracts the 1 again, as transformers'
  # GGUF loader does.
  norm_plus_one: bool = False


ARCHS = {
  "llama": Arch("llama", "LlamaForCausalLM", _DECODER_NAMES + _ATTN_BIAS + _MLP_BIAS,
                 interleaved_rotary=True),
  # Qwen2 always has q/k/v biases and no other bias; the loader reports a missing one.
  "qwen2": Arch("qwen2", "Qwen2ForCausalLM", _DECODER_NAMES + _ATTN_BIAS[:3]),
  "qwen3": Arch("qwen3", "Qwen3ForCausalLM", _DECODER_NAMES + _ATTN_BIAS + _QK_NORM),
  # Gemma 2: the tanh caps of the attention scores and the final logits are in the file.
  "gemma2": Arch("gemma2", "Gemma2ForCausalLM", _GEMMA2_NAMES,
                 keys=_DECODER_KEYS | {"attention.sliding_window", "attn_logit_softcapping",
                                       "final_logit_softcapping"}, norm_plus_one=True),
  "gemma3": Arch("gemma3_text", "Gemma3ForCausalLM", _GEMMA3_NAMES,
                 keys=_DECODER_KEYS | {"attention.sliding_window"}, norm_plus_one=True),
}
# What a gemma3 file leaves out, as llama.cpp's gemma3 graph and transformers' GGUF loader
# (Gemma3TextConfig's defaults) both assume it: every 6th layer global, the others local
# (sliding window) with rope base 1e4.
_GEMMA3_GLOBAL_EVERY = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0
# Gemma 2 (llama.cpp's gemma2 graph, Gemma2Config's defaults): every 2nd layer global, one rope
# for all; caps of 50 (attention) and 30 (logits) when the file leaves them out.
_GEMMA2_GLOBAL_EVERY = 2
_GEMMA2_CAPS = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
SUPPORTED_ARCHITECTURES = tuple(ARCHS)

# Tensors we recognise but cannot use, and why (better than "unknown tensor").
_REFUSED = {
  "rope_freqs.weight": "it holds Llama-3.1-style rope scaling factors, which the GGUF import does "
  "not reconstruct",
}

# ggml tensor types read, dequantized to float32 by `gguf.quants.dequantize`. Each is checked
# against that function in tests/hf/gguf_quant_test.py; a type the package adds later is refused
# until it is added here (and there). Q8_1/Q8_K (llama.cpp's activation types), Q1_0, the integer
# types and F64 are not dequantized by the gguf package and never hold model weights.
DEQUANTIZED = (
  "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
  "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
  "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
)


# ---------------------------------------------------------------------------------------------
# Reading the file


def gguf_package():
  """The `gguf` package, or an ImportError naming the extra that installs it."""
  try:
    import gguf
  except ImportError as e:  # an optional dependency: say which extra brings it
    raise ImportError("reading .gguf files needs the gguf package: pip install 'jaxtune[gguf]'") from e
  return gguf


class _TensorTableError(Exception):
  """Raised inside GGUFReader when the tensor table cannot be laid over the file."""


def _reader_class():
  gguf = gguf_package()

  class Reader(gguf.GGUFReader):
    """GGUFReader that names the tensor a truncated or corrupt file cuts off.

    GGUFReader maps every tensor at open; on a short file numpy's reshape fails without a
    tensor name, so on failure we walk the tensor table (already parsed) against the file size.
    """

    def _build_tensors(self, start_offs, fields):
      try:
        super()._build_tensors(start_offs, fields)
      except (ValueError, KeyError, IndexError) as e:
        raise _TensorTableError(self._diagnose(start_offs, fields) or str(e)) from e

    def _diagnose(self, start_offs, fields) -> str | None:
      size, cut = len(self.data), []
      for field in fields:
        _, _, _, dims, raw_type, offset = field.parts
        try:
          qtype = gguf.GGMLQuantizationType(int(raw_type[0]))
        except ValueError:
          return f"tensor {field.name!r} has unknown ggml type id {int(raw_type[0])}"
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        end = int(start_offs) + int(offset[0]) + math.prod(int(d) for d in dims) * type_size // block
        if end > size:
          cut.append(field.name)
      if cut:
        more = f" and {len(cut) - 5} more" if len(cut) > 5 else ""
        return f"file is truncated ({size} bytes); tensor(s) cut off: {cut[:5]}{more}"
      return None

  return Reader


@functools.lru_cache(maxsize=1)
def _cached_reader(path: str, size: int, mtime_ns: int):
  # GGUFReader parses the metadata in pure Python: ~5 s and ~160 MB of small arrays for a 49k
  # vocabulary. `load` and `load_tokenizer` on the same file share one parse; only the last
  # file's is kept (the weights themselves stay memory-mapped, not resident). The key changes
  # if the file is rewritten.
  del mtime_ns
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    what = f"it is {size} bytes, truncated" if size < 4 else f"it starts with {magic!r}"
    raise CheckpointError(f"{path}: not a readable GGUF file ({what}; a GGUF file starts "
                          "with b'GGUF')")
  try:
    return _reader_class()(path)
  except _TensorTableError as e:
    raise CheckpointError(f"{path}: {e}") from None
  except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a readable GGUF file (corrupt or truncated header: the "
                          f"metadata does not fit in its {size} bytes; {e})") from e


def forget_readers() -> None:
  """Drop the cached parse (`hf.load` once a GGUF's weights are read)."""
  _cached_reader.cache_clear()


def open_reader(path: str | os.PathLike):
  path = str(path)
  st = os.stat(path)
  return _cached_reader(path, st.st_size, st.st_mtime_ns)


def field_value(field):
  """A metadata field as a Python value (str, int, float, bool, or a list of them)."""
  gguf = gguf_package()
  kinds = field.types
  if kinds[0] == gguf.GGUFValueType.ARRAY:
    if kinds[-1] == gguf.GGUFValueType.STRING:
      return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    return [_scalar(field.parts[i][0]) for i in field.data]
  if kinds[0] == gguf.GGUFValueType.STRING:
    return bytes(field.parts[field.data[0]]).decode("utf-8")
  return _scalar(field.parts[field.data[0]][0])


def _scalar(x):
  if isinstance(x, np.floating) and x.dtype == np.float32:
    # Metadata floats are float32: give the shortest decimal that round-trips (1e-05, not
    # 9.999999747378752e-06), which is what the original config.json said.
    return float(str(x))
  return x.item()


def metadata(path: str | os.PathLike) -> dict:
  """A .gguf file's metadata (general.*, the architecture's numbers), without the vocabulary."""
  return _metadata(open_reader(path))


def _metadata(reader) -> dict:
  """Every metadata field except the big tokenizer arrays (read on demand by load_tokenizer)."""
  big = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
         "tokenizer.ggml.scores"}
  return {k: field_value(f) for k, f in reader.fields.items() if k not in big}


# ---------------------------------------------------------------------------------------------
# Config


def _architecture(meta: dict, where: str) -> str:
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise UnsupportedConfigError(
      f"{where}: general.architecture={arch!r} is not supported; jaxtune imports GGUF files of "
      f"{list(SUPPORTED_ARCHITECTURES)}"
    )
  return arch


def hf_config(meta: dict, tensor_names: set[str], where: str) -> dict:
  """The config.json transformers would write for this file (its config class's attribute names)."""
  arch = _architecture(meta, where)
  spec = ARCHS[arch]
  unknown = sorted(
    k for k in meta if k.startswith(f"{arch}.") and k[len(arch) + 1 :] not in spec.keys
  )
  if unknown:
    raise UnsupportedConfigError(
      f"{where}: unsupported GGUF metadata {unknown}; jaxtune does not implement them and will "
      "not silently ignore them"
    )

  def get(key, default=KeyError):
    full = f"{arch}.{key}"
    if full in meta:
      return meta[full]
    if default is KeyError:
      raise CheckpointError(f"{where}: required GGUF metadata {full!r} is missing")
    return default

  def require(cond: bool, key: str, why: str):
    if not cond:
      raise UnsupportedConfigError(
        f"{where}: GGUF metadata {arch}.{key}={get(key, None)!r} is not supported: {why}"
      )

  hidden, n_head = get("embedding_length"), get("attention.head_count")
  n_kv = get("attention.head_count_kv", n_head)
  if isinstance(n_kv, list):  # some writers store one count per layer
    require(len(set(n_kv)) == 1, "attention.head_count_kv", "per-layer KV head counts differ")
    n_kv = n_kv[0]
  head_dim = get("attention.key_length", hidden // n_head)
  require(get("attention.value_length", head_dim) == head_dim, "attention.value_length",
          "value and key head sizes differ")
  require(get("rope.dimension_count", head_dim) == head_dim, "rope.dimension_count",
          f"partial rotary embedding (head_dim is {head_dim})")
  require(get("expert_count", 0) == 0, "expert_count", "mixture-of-experts layers")

  rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
  scaling = get("rope.scaling.type", "none")
  require(scaling in ("none", "linear"), "rope.scaling.type", "only linear rope scaling is read")
  if scaling == "linear":
    rope.update(rope_type="linear", factor=float(get("rope.scaling.factor")))

  hf = {
    "architectures": [spec.hf_class],
    "model_type": spec.model_type,
    "hidden_size": hidden,
    "intermediate_size": get("feed_forward_length"),
    "num_hidden_layers": get("block_count"),
    "num_attention_heads": n_head,
    "num_key_value_heads": n_kv,
    "head_dim": head_dim,
    "hidden_act": "silu",  # llama.cpp's llama, qwen2 and qwen3 graphs hard-code SiLU (gemma3: below)
    "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
    "rope_parameters": rope,
    "max_position_embeddings": get("context_length"),
    # llama.cpp reuses token_embd for the output when `output.weight` is absent.
    "tie_word_embeddings": "lm_head.weight" not in tensor_names,
  }
  has = lambda pattern: any(re.search(pattern, n) for n in tensor_names)
  if arch == "llama":
    hf.update(attention_bias=has(r"self_attn\.[qkvo]_proj\.bias$"), mlp_bias=has(r"mlp\.\w+_proj\.bias$"))
  elif arch == "qwen3":
    hf["attention_bias"] = has(r"self_attn\.[qkvo]_proj\.bias$")
  elif arch in ("gemma2", "gemma3"):
    # Queries are scaled by 1/sqrt(query_pre_attn_scalar), which the file does not store:
    # llama.cpp takes head_dim (except for the 27B models), transformers' loader keeps
    # Gemma2Config's / Gemma3TextConfig's 256. They agree only at head_dim 256 (Gemma 2 2B and
    # 9B; Gemma 3 270M, 1B, 4B, 12B).
    require(head_dim == 256, "attention.key_length", "query_pre_attn_scalar is not in the file; "
            "llama.cpp and transformers' GGUF loader agree on it only for head_dim 256")
    require(scaling == "none", "rope.scaling.type", f"rope scaling of {arch} files is not read "
            "(transformers' GGUF loader ignores it)")
    every = _GEMMA3_GLOBAL_EVERY if arch == "gemma3" else _GEMMA2_GLOBAL_EVERY
    del hf["hidden_act"]
    hf.update(
      hidden_activation="gelu_pytorch_tanh",  # llama.cpp's gemma2/3 graphs: GELU (tanh approx.)
      query_pre_attn_scalar=head_dim,
      sliding_window=get("attention.sliding_window"),
      layer_types=["sliding_attention" if (i + 1) % every else "full_attention"
                   for i in range(get("block_count"))],
      attention_bias=False,
    )
    if arch == "gemma3":
      hf["rope_parameters"] = {
        "full_attention": rope,
        "sliding_attention": {"rope_type": "default", "rope_theta": _GEMMA3_LOCAL_ROPE_BASE},
      }
    else:
      # llama.cpp reads these caps (and transformers' GGUF loader does not: it keeps
      # Gemma2Config's defaults, which are llama.cpp's defaults too).
      hf.update({key: float(get(key, cap)) for key, cap in _GEMMA2_CAPS.items()})
  elif arch == "qwen2":
    # Qwen2Config has no head_dim: its attention derives it from the hidden size.
    require(head_dim * n_head == hidden, "attention.key_length",
            f"Qwen2 needs head_dim == embedding_length / head_count ({hidden} / {n_head})")
    del hf["head_dim"]
  if f"{arch}.vocab_size" in meta:  # older files leave it to the embedding's row count
    hf["vocab_size"] = meta[f"{arch}.vocab_size"]
  for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                       ("pad_token_id", "padding_token_id")):
    if f"tokenizer.ggml.{theirs}" in meta:
      hf[ours] = meta[f"tokenizer.ggml.{theirs}"]
  return hf


# ---------------------------------------------------------------------------------------------
# Tensors


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py's `permute`: each head's rows (2 halves, H/2) -> (H/2 pairs, 2)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
  """The inverse of `permute_rotary`: llama.cpp's interleaved rotary rows back to HF's halves."""
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Rows the gguf package dequantizes per call: its numpy code makes float temporaries the size
# of its input, so Gemma 3 270M's [262144, 640] Q6_K table in one call raised the loading RSS
# by 1.4 GB for a 640 MiB result; 16384 of its rows hold 40 MiB.
DEQUANTIZE_ROWS = 16384


def _dequantize_rows(data: np.ndarray, qtype) -> np.ndarray:
  """`gguf.quants.dequantize` of a tensor's blocks, DEQUANTIZE_ROWS rows at a time."""
  dequantize = gguf_package().quants.dequantize
  if data.ndim < 2 or data.shape[0] <= DEQUANTIZE_ROWS:
    return dequantize(data, qtype)
  first = dequantize(data[:DEQUANTIZE_ROWS], qtype)
  out = np.empty((data.shape[0], *first.shape[1:]), first.dtype)
  out[:DEQUANTIZE_ROWS] = first
  for i in range(DEQUANTIZE_ROWS, data.shape[0], DEQUANTIZE_ROWS):
    out[i:i + DEQUANTIZE_ROWS] = dequantize(data[i:i + DEQUANTIZE_ROWS], qtype)
  return out


class GGUFSource(TensorSource):
  """A GGUF file's tensors under HF names, dequantized to float32 one at a time on `get`."""

  def __init__(self, path: str, reader, *, arch: str, n_head: int, n_kv_head: int):
    self.path = path
    self._tensors = {}
    self._heads = {}  # HF name -> head count whose rotary permutation `get` undoes
    spec = ARCHS[arch]
    self._minus_one = spec.norm_plus_one
    for t in reader.tensors:
      if t.name in _REFUSED:
        raise UnsupportedConfigError(f"{path}: tensor {t.name!r} is not supported: {_REFUSED[t.name]}")
      hf = hf_name(t.name, arch)
      if hf is None:
        raise CheckpointError(
          f"{path}: unknown tensor {t.name!r}: not part of a {arch} model as jaxtune reads it"
        )
      if t.tensor_type.name not in DEQUANTIZED:
        raise CheckpointError(
          f"{path}: tensor {t.name!r} ({hf}) is stored as ggml type {t.tensor_type.name}, which "
          f"jaxtune does not dequantize; supported: {', '.join(DEQUANTIZED)}"
        )
      self._tensors[hf] = t
      if spec.interleaved_rotary and ".self_attn.q_proj." in hf:
        self._heads[hf] = n_head
      elif spec.interleaved_rotary and ".self_attn.k_proj." in hf:
        self._heads[hf] = n_kv_head

  def names(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    # GGUF lists dims fastest-first; HF lists them row-major.
    return tuple(int(d) for d in reversed(self._tensors[name].shape))

  def get(self, name: str) -> np.ndarray:
    t = self._tensors[name]
    try:
      arr = _dequantize_rows(t.data, t.tensor_type)
    except Exception as e:  # noqa: BLE001 - corrupt blocks, short data: name the tensor
      raise CheckpointError(f"{self.path}: cannot dequantize tensor {t.name!r} ({name}): {e}") from e
    if tuple(arr.shape) != self.shape(name):
      raise CheckpointError(
        f"{self.path}: tensor {t.name!r} dequantized to shape {tuple(arr.shape)}, but its header "
        f"says {self.shape(name)}"
      )
    if name in self._heads:
      arr = unpermute_rotary(arr, self._heads[name])
    if self._minus_one and name.endswith("norm.weight"):
      arr = arr - np.float32(1.0)
    return arr

  def file_of(self, name: str) -> str:
    return self.path


def hf_name(gguf_name: str, arch: str) -> str | None:
  """The HF name of llama.cpp tensor `gguf_name` in architecture `arch`, or None if unknown."""
  for pattern, template in ARCHS[arch].names:
    m = re.fullmatch(pattern, gguf_name)
    if m:
      return m.expand(template)
  return None


def open_gguf(path: str | os.PathLike) -> tuple[dict, GGUFSource]:
  """`(hf_config, tensors)` for a GGUF file: a config.json dict and a lazy TensorSource."""
  path = str(Path(path))
  reader = open_reader(path)
  meta = _metadata(reader)
  arch = _architecture(meta, path)  # before reading tensor names of an unknown layout
  # The config first (it needs only the names), so bad metadata is reported before tensors.
  hf = hf_config(meta, {hf_name(t.name, arch) for t in reader.tensors} - {None}, path)
  source = GGUFSource(
    path, reader, arch=arch, n_head=hf["num_attention_heads"], n_kv_head=hf["num_key_value_heads"]
  )
  if "vocab_size" not in hf:
    hf["vocab_size"] = source.shape("model.embed_tokens.weight")[0]
  return hf, source
