"""HF GPT-2 <-> jaxtune GPT2: strict config reading and writing, and the tensor table.

HF's Conv1D already stores [in, out], so kernels need no transpose; only `c_attn` is permuted
into the head-major layout jaxtune.models.gpt2 shards by (see that module's docstring). The LM
head is tied to `wte`, so a stored `lm_head.weight` is a duplicate: skipped when it equals `wte`
(`tied_keys`, checked by `convert.load_into` as transformers checks it). Checkpoints
saved from `GPT2Model` have bare keys (`h.0.attn...`), from the head models `transformer.`-prefixed
ones; both load, and export writes the prefixed form that `GPT2LMHeadModel` and
`GPT2ForSequenceClassification` save.
"""

from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from jaxtune.hf import convert
from jaxtune.hf.convert import Row, require
from jaxtune.hf.errors import UnsupportedConfigError
from jaxtune.models import gpt2, layers

ARCHITECTURES = {"causal_lm": "GPT2LMHeadModel", "seq_cls": "GPT2ForSequenceClassification"}

# HF GPT2Config defaults, for attributes a config.json leaves out (transformers 5 writes diffs).
DEFAULTS = {
  "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
  "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
  "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
  "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
  "reorder_and_upcast_attn": False, "bos_token_id": 50256, "eos_token_id": 50256,
  "pad_token_id": None, "add_cross_attention": False, "tie_word_embeddings": True,
}
# GPT2Config.attribute_map: generic names some tools write instead of GPT-2's own.
ALIASES = {
  "n_embd": "hidden_size", "n_positions": "max_position_embeddings",
  "n_head": "num_attention_heads", "n_layer": "num_hidden_layers",
}
# Only GPT2DoubleHeadsModel reads summary_*; n_ctx is the legacy twin of n_positions.
HARMLESS = {
  "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
  "summary_first_dropout", "summary_last_dropout", "n_ctx",
}


def qkv_to_head_major(x: np.ndarray, n_head: int) -> np.ndarray:
  """HF c_attn [..., 3D] laid out q|k|v -> jaxtune's [..., 3D] laid out per head (q, k, v)."""
  *lead, d3 = x.shape
  y = np.swapaxes(x.reshape(*lead, 3, n_head, d3 // (3 * n_head)), -3, -2)
  return np.ascontiguousarray(y.reshape(*lead, d3))


def qkv_from_head_major(x: np.ndarray, n_head: int) -> np.ndarray:
  """The inverse of `qkv_to_head_major`."""
  *lead, d3 = x.shape
  y = np.swapaxes(x.reshape(*lead, n_head, 3, d3 // (3 * n_head)), -3, -2)
  return np.ascontiguousarray(y.reshape(*lead, d3))


class GPT2Family(convert.Family):
  name = "gpt2"
  model_types = ("gpt2",)
  # Causal-mask buffers of old checkpoints.
  ignored = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",)

  def config_from_hf(self, hf: dict, *, task: str, num_labels: int | None, where: str):
    if task not in gpt2.TASKS:
      raise UnsupportedConfigError(f"{where}: GPT-2 supports tasks {gpt2.TASKS}, not {task!r}")
    get = convert.ConfigReader(hf, DEFAULTS, ALIASES)
    act = get("activation_function")
    require(act in layers.ACTIVATIONS, where, "activation_function", act,
            f"known activations are {sorted(layers.ACTIVATIONS)}")
    xattn = get("add_cross_attention")
    require(not xattn, where, "add_cross_attention", xattn,
            "cross-attention (encoder-decoder GPT-2) is not implemented")
    tied = get("tie_word_embeddings")
    require(bool(tied), where, "tie_word_embeddings", tied, "the GPT-2 LM head is tied to wte")
    # Our attention always takes scores and softmax in float32 after scaling, which is what
    # reorder_and_upcast_attn asks for, so both values compute the same thing.
    get("reorder_and_upcast_attn")
    n_embd, n_head = int(get("n_embd")), int(get("n_head"))
    require(n_embd % n_head == 0, where, "n_head", n_head, f"must divide n_embd={n_embd}")
    eos = get("eos_token_id")
    require(eos is None or isinstance(eos, int), where, "eos_token_id", eos, "expected one id")
    n_inner = get("n_inner")
    id2label = convert.label_names(hf, task=task, num_labels=num_labels, where=where)
    cfg = gpt2.GPT2Config(
      vocab_size=int(get("vocab_size")),
      n_positions=int(get("n_positions")),
      n_embd=n_embd,
      n_layer=int(get("n_layer")),
      n_head=n_head,
      n_inner=int(n_inner) if n_inner is not None else 4 * n_embd,
      activation_function=act,
      layer_norm_epsilon=float(get("layer_norm_epsilon")),
      scale_attn_weights=bool(get("scale_attn_weights")),
      scale_attn_by_inverse_layer_idx=bool(get("scale_attn_by_inverse_layer_idx")),
      embd_pdrop=float(get("embd_pdrop")),
      attn_pdrop=float(get("attn_pdrop")),
      resid_pdrop=float(get("resid_pdrop")),
      initializer_range=float(get("initializer_range")),
      num_labels=len(id2label),
      id2label=id2label,
      pad_token_id=get("pad_token_id"),
      bos_token_id=get("bos_token_id"),
      eos_token_id=eos,
    )
    convert.check_config_keys(hf, used=get.used, harmless=HARMLESS, where=where)
    return cfg

  def config_to_hf(self, cfg: gpt2.GPT2Config, *, task: str) -> dict:
    hf = {
      "architectures": [ARCHITECTURES[task]],
      "model_type": "gpt2",
      "vocab_size": cfg.vocab_size,
      "n_positions": cfg.n_positions,
      "n_embd": cfg.n_embd,
      "n_layer": cfg.n_layer,
      "n_head": cfg.n_head,
      "n_inner": cfg.n_inner,
      "activation_function": cfg.activation_function,
      "layer_norm_epsilon": cfg.layer_norm_epsilon,
      "scale_attn_weights": cfg.scale_attn_weights,
      "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
      "reorder_and_upcast_attn": False,
      "embd_pdrop": cfg.embd_pdrop,
      "attn_pdrop": cfg.attn_pdrop,
      "resid_pdrop": cfg.resid_pdrop,
      "initializer_range": cfg.initializer_range,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "tie_word_embeddings": True,
    }
    if task == "seq_cls":
      hf.update(convert.label_config(cfg.id2label))
    return hf

  def build(self, cfg, *, task, param_dtype, compute_dtype, rngs: nnx.Rngs) -> gpt2.GPT2:
    return gpt2.GPT2(cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)

  def table(self, cfg: gpt2.GPT2Config, *, task: str) -> list[Row]:
    to_jax = functools.partial(qkv_to_head_major, n_head=cfg.n_head)
    to_hf = functools.partial(qkv_from_head_major, n_head=cfg.n_head)
    t = "transformer."
    rows = [Row(f"{t}wte.weight", "wte/embedding"), Row(f"{t}wpe.weight", "wpe/embedding")]
    for i in range(cfg.n_layer):
      h, p = f"{t}h.{i}.", f"layers/{i}/"
      rows += [
        Row(f"{h}ln_1.weight", f"{p}ln_1/scale"),
        Row(f"{h}ln_1.bias", f"{p}ln_1/bias"),
        Row(f"{h}attn.c_attn.weight", f"{p}attn/c_attn/kernel", to_jax, to_hf),
        Row(f"{h}attn.c_attn.bias", f"{p}attn/c_attn/bias", to_jax, to_hf),
        Row(f"{h}attn.c_proj.weight", f"{p}attn/c_proj/kernel"),
        Row(f"{h}attn.c_proj.bias", f"{p}attn/c_proj/bias"),
        Row(f"{h}ln_2.weight", f"{p}ln_2/scale"),
        Row(f"{h}ln_2.bias", f"{p}ln_2/bias"),
        Row(f"{h}mlp.c_fc.weight", f"{p}mlp/c_fc/kernel"),
        Row(f"{h}mlp.c_fc.bias", f"{p}mlp/c_fc/bias"),
        Row(f"{h}mlp.c_proj.weight", f"{p}mlp/c_proj/kernel"),
        Row(f"{h}mlp.c_proj.bias", f"{p}mlp/c_proj/bias"),
      ]
    rows += [Row(f"{t}ln_f.weight", "ln_f/scale"), Row(f"{t}ln_f.bias", "ln_f/bias")]
    if task == "seq_cls":
      # nn.Linear stores [out, in]; a base LM checkpoint has no score head yet.
      rows.append(Row("score.weight", "score/kernel", convert.transpose, convert.transpose,
                      init_if_missing=True, init_std=cfg.initializer_range))
    return rows

  def tied_keys(self, cfg: gpt2.GPT2Config, *, task: str) -> dict[str, str]:
    # tie_word_embeddings is required, so a stored head is always a duplicate of wte.
    return {"lm_head.weight": "transformer.wte.weight"} if task == "causal_lm" else {}

  def normalize_key(self, key: str, *, task: str) -> str | None:
    if key.startswith("score."):
      return key if task == "seq_cls" else None
    if key == "lm_head.weight":
      return key if task == "causal_lm" else None  # the classifier has no LM head (HF drops it)
    return key if key.startswith("transformer.") else "transformer." + key


FAMILY = GPT2Family()
