"""A jaxtune causal LM written as one llama.cpp GGUF file (`jaxtune export --format=gguf`).

The reader's tables (`jaxtune.hf.gguf.ARCHS`) run backwards: each architecture's tensor-name
table is inverted (HF name -> llama.cpp name), its metadata is written under the keys the
reader accepts for it, and the layout changes the reader undoes are done (`llama`'s Q/K rotary
row permutation, Gemma 2/3's norms stored as 1 + w). Before anything is written, the metadata is
read back through the reader's own `hf_config` and the jaxtune config it implies must equal the
model's: a model the file cannot describe (a Gemma 3 layer pattern other than llama.cpp's, a
rope scaling llama.cpp would not apply, another activation) is refused by attribute, never
written as a different network.

Tensor types (`QUANTS`), as convert_hf_to_gguf.py chooses them: 1-D tensors (norms, biases)
stay F32; 2-D weights are F32, F16, BF16, or Q8_0 (blocks of 32 along each row, one float16
scale per block; a matrix whose rows are not a multiple of 32 falls back to F16). The gguf
package's `GGUFWriter` lays the file out and `gguf.quants.quantize` makes the BF16/Q8_0 blocks,
the code llama.cpp's own converter runs. The writer spools tensors to a temporary file, so the
host holds one converted tensor at a time beyond the model itself.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from jaxtune.errors import ConfigError
from jaxtune.hf import convert, gguf, gguf_tokenizer
from jaxtune.hf.errors import UnsupportedConfigError

__all__ = ["QUANTS", "WRITTEN", "General", "write"]
log = logging.getLogger(__name__)

QUANTS = ("f32", "f16", "bf16", "q8_0")
# HF model_type -> general.architecture, for every architecture the reader reads.
WRITTEN = {spec.model_type: arch for arch, spec in gguf.ARCHS.items()}
# DecoderConfig fields a GGUF does not carry and that do not change the logits.
_NOT_IN_FILE = ("attention_dropout", "initializer_range", "pad_token_id", "bos_token_id",
                "eos_token_id", "num_labels", "id2label")


@dataclasses.dataclass(frozen=True)
class General:
  """`general.*` metadata: what llama.cpp, Ollama and the hub show about the file."""

  name: str
  base_model: str | None = None  # the base's name
  base_repo: str | None = None  # its hub id, when known (written as the repo URL)
  license: str | None = None


def _inverse_names(arch: str) -> list[tuple[re.Pattern, str]]:
  """The reader's (llama.cpp regex, HF template) rows as (HF regex, llama.cpp template)."""
  rows = []
  for pattern, template in gguf.ARCHS[arch].names:
    hf = re.compile(re.escape(template).replace(re.escape(r"\1"), r"(\d+)"))
    name = pattern.replace(r"(\d+)", r"\1").replace(r"\.", ".")
    rows.append((hf, name))
  return rows


def _gguf_name(hf_name: str, arch: str, inverse, where: str) -> str:
  for hf, template in inverse:
    if m := hf.fullmatch(hf_name):
      name = m.expand(template)
      # The reader must map it back to the same HF name (its table, not a second copy).
      if gguf.hf_name(name, arch) == hf_name:
        return name
  raise UnsupportedConfigError(f"{where}: tensor {hf_name!r} has no llama.cpp name in the "
                               f"{arch} table; jaxtune cannot write it to GGUF")


def _metadata(hf: dict, arch: str, where: str) -> dict:
  """`<arch>.*` metadata for `hf` (a config.json dict), as convert_hf_to_gguf.py writes it."""
  rope = hf["rope_parameters"]
  if arch == "gemma3":
    rope = rope["full_attention"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
  meta = {
    "context_length": hf["max_position_embeddings"],
    "embedding_length": hf["hidden_size"],
    "block_count": hf["num_hidden_layers"],
    "feed_forward_length": hf["intermediate_size"],
    "vocab_size": hf["vocab_size"],
    "attention.head_count": hf["num_attention_heads"],
    "attention.head_count_kv": hf["num_key_value_heads"],
    "attention.layer_norm_rms_epsilon": float(hf["rms_norm_eps"]),
    "rope.freq_base": float(rope["rope_theta"]),
  }
  if arch != "qwen2":  # Qwen2 derives head_dim from the hidden size
    meta.update({"attention.key_length": head_dim, "attention.value_length": head_dim})
  if arch == "llama":
    meta["rope.dimension_count"] = head_dim
  kind = rope.get("rope_type", "default")
  if kind == "linear":
    meta.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(rope["factor"])})
  elif kind != "default":
    raise UnsupportedConfigError(f"{where}: rope_type={kind!r} is not written to GGUF (the GGUF "
                                 "import reads linear scaling only)")
  if arch in ("gemma2", "gemma3"):
    meta["attention.sliding_window"] = hf["sliding_window"]
  if arch == "gemma2":  # no cap (null) cannot be written: the reader's defaults refuse it below
    meta.update({k: float(hf[k]) for k in ("attn_logit_softcapping", "final_logit_softcapping")
                 if hf.get(k) is not None})
  unknown = sorted(set(meta) - gguf.ARCHS[arch].keys)
  assert not unknown, unknown  # the reader's key table is the only list of keys
  return {f"{arch}.{k}": v for k, v in meta.items()}


def _float32(x):
  return float(str(np.float32(x))) if isinstance(x, float) else x


def _check_round_trip(model_cfg, family, meta: dict, hf_names: set[str], where: str) -> None:
  """Refuse a model whose file would read back (in jaxtune, as in llama.cpp) as another network."""
  # The reader's floats are the file's float32 values.
  file_meta = {"general.architecture": WRITTEN[model_cfg.model_type], **meta}
  read = gguf.hf_config({k: _float32(v) for k, v in file_meta.items()}, hf_names, where)
  back = family.config_from_hf(read, task="causal_lm", num_labels=None, where=where)
  back = dataclasses.replace(back, **{f: getattr(model_cfg, f) for f in _NOT_IN_FILE})
  differ = [f.name for f in dataclasses.fields(model_cfg)
            if _float32(getattr(back, f.name)) != _float32(getattr(model_cfg, f.name))]
  if differ:
    got = ", ".join(f"{f}={getattr(model_cfg, f)!r}" for f in differ)
    raise UnsupportedConfigError(
      f"{where}: the model's {got} cannot be stated in a GGUF file (llama.cpp would read "
      f"{', '.join(f'{f}={getattr(back, f)!r}' for f in differ)}); it is not written as GGUF"
    )


def _encode(arr: np.ndarray, quant: str, name: str, where: str):
  """(data, ggml type) for one tensor: 1-D stays F32; rows not a multiple of 32 get F16 for Q8_0."""
  q = gguf.gguf_package().GGMLQuantizationType
  kind = "f32" if arr.ndim == 1 else quant
  if kind == "q8_0" and arr.shape[-1] % 32:
    kind = "f16"  # convert_hf_to_gguf.py's fallback for rows that do not fill Q8_0 blocks
  if kind in ("f16", "q8_0") and np.abs(arr).max(initial=0) > np.finfo(np.float16).max:
    raise UnsupportedConfigError(f"{where}: tensor {name!r} has values beyond float16's range; "
                                 "export it with --quant=f32 or --quant=bf16")
  if kind == "f32":
    return np.ascontiguousarray(arr, np.float32), q.F32
  if kind == "f16":
    return arr.astype(np.float16), q.F16
  qtype = q.BF16 if kind == "bf16" else q.Q8_0
  return gguf.gguf_package().quants.quantize(np.ascontiguousarray(arr, np.float32), qtype), qtype


def write(model, path: str | Path, tokenizer, *, quant: str, general: General) -> Path:
  """Write `model` (a jaxtune causal LM; LoRA adapters are folded in) to the new file `path`."""
  from jaxtune import lora
  from jaxtune.hf.families import family_for_module
  from jaxtune.models import layers

  where = f"GGUF export to {path}"
  if quant not in QUANTS:
    raise ConfigError(f"--quant={quant!r}: expected one of {', '.join(QUANTS)}")
  if getattr(model, "task", None) != "causal_lm":
    raise ConfigError(f"{where}: the model is a {getattr(model, 'task', '?')} model; GGUF export "
                      f"writes causal language models ({', '.join(WRITTEN)})")
  mt = model.config.model_type
  if mt not in WRITTEN:
    raise UnsupportedConfigError(f"{where}: model_type={mt!r} cannot be written as GGUF; jaxtune "
                                 f"writes {', '.join(WRITTEN)} (export it as an HF directory)")
  if tokenizer is None:
    raise ConfigError(f"{where}: the run has no tokenizer (a preset model on synthetic data); "
                      "a GGUF file must carry one")
  arch, spec = WRITTEN[mt], gguf.ARCHS[WRITTEN[mt]]
  layers.unstack_layers(model)
  if lora.has_lora(model):
    model = lora.merge(model)
  family = family_for_module(model)
  hf = family.config_to_hf(model.config, task="causal_lm")
  meta = _metadata(hf, arch, where)
  hf_names = [row.hf for row in family.table(model.config, task="causal_lm")]
  _check_round_trip(model.config, family, meta, set(hf_names), where)
  inverse = _inverse_names(arch)
  names = {h: _gguf_name(h, arch, inverse, where) for h in hf_names}  # all named before writing

  g = gguf.gguf_package()
  writer = g.GGUFWriter(str(path), arch, use_temp_file=True)
  try:
    writer.add_name(general.name)
    if general.base_model:
      writer.add_base_model_count(1)
      writer.add_base_model_name(0, general.base_model)
      if general.base_repo:
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{general.base_repo}")
    if general.license:
      writer.add_license(general.license)
    writer.add_file_type({"f32": g.LlamaFileType.ALL_F32, "f16": g.LlamaFileType.MOSTLY_F16,
                          "bf16": g.LlamaFileType.MOSTLY_BF16,
                          "q8_0": g.LlamaFileType.MOSTLY_Q8_0}[quant])
    writer.add_quantization_version(g.GGML_QUANT_VERSION)
    for key, value in meta.items():
      add = writer.add_float32 if isinstance(value, float) else (
        writer.add_string if isinstance(value, str) else writer.add_uint32)
      add(key, value)
    gguf_tokenizer.write_tokenizer(writer, tokenizer, hf["vocab_size"], arch, where)
    heads = {"q": hf["num_attention_heads"], "k": hf["num_key_value_heads"]}
    for hf_name, arr in convert.export_tensors(family, model):
      arr = np.asarray(arr, np.float32)
      if spec.interleaved_rotary and (m := re.search(r"self_attn\.([qk])_proj\.weight$", hf_name)):
        arr = gguf.permute_rotary(arr, heads[m.group(1)])  # llama.cpp's rotary pairs
      if spec.norm_plus_one and hf_name.endswith("norm.weight"):
        arr = arr + np.float32(1.0)
      data, qtype = _encode(arr, quant, names[hf_name], where)
      writer.add_tensor(names[hf_name], data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
  finally:
    writer.close()
  log.info("wrote %s (%s, %s)", path, arch, quant)
  return Path(path)
