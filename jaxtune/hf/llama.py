"""HF <-> jaxtune map for the Llama-style decoders: llama, mistral, qwen2, qwen3, gemma, gemma2,
gemma3_text.

`config_from_hf` reads a config.json strictly: every attribute is either used, known to be
harmless, or refused by name (MoE, rope types other than default/linear/llama3, Qwen sliding
windows, tensor-parallel pretraining, ...). Missing attributes take the defaults of the
transformers 5 config class for that model_type, so a short config means what HF means by it.
`table` lists one Row per HF tensor; `config_to_hf` writes a config.json that transformers
loads as `<Arch>ForCausalLM` or `<Arch>ForSequenceClassification` (Gemma 3 text:
`Gemma3ForCausalLM`, `Gemma3TextForSequenceClassification`).
"""

from __future__ import annotations

import logging
import re

from flax import nnx

from jaxtune.hf import convert
from jaxtune.hf.convert import Row, require, transpose
from jaxtune.hf.errors import UnsupportedConfigError
from jaxtune.models import decoder, layers

log = logging.getLogger(__name__)

ARCH = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma",
        "gemma2": "Gemma2", "gemma3_text": "Gemma3"}
_SEQ_CLS_ARCH = {"gemma3_text": "Gemma3TextForSequenceClassification"}  # else ARCH + ForSeq...
GEMMA = ("gemma", "gemma2", "gemma3_text")  # (1 + w) norms, sqrt(D)-scaled embeddings, hidden_activation
SANDWICH = ("gemma2", "gemma3_text")  # norms around attention and MLP, local/global layer kinds

# Defaults of the transformers 5 config classes for attributes a config.json may leave out
# (None for num_key_value_heads / head_dim means "derive from the head count").
_DEFAULTS = {
  "llama": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=None,
                bos_token_id=1, eos_token_id=2),
  "mistral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                  max_position_embeddings=4096 * 32, tie_word_embeddings=False,
                  pad_token_id=None, bos_token_id=1, eos_token_id=2, sliding_window=4096),
  "qwen2": dict(num_key_value_heads=32, head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=32768, tie_word_embeddings=False, pad_token_id=None,
                bos_token_id=None, eos_token_id=None),
  "qwen3": dict(num_key_value_heads=32, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=32768, tie_word_embeddings=False, pad_token_id=None,
                bos_token_id=None, eos_token_id=None),
  "gemma": dict(num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh",
                rms_norm_eps=1e-6, max_position_embeddings=8192, tie_word_embeddings=True,
                pad_token_id=0, bos_token_id=2, eos_token_id=1),
  # sliding_window_pattern: not a Gemma2Config attribute; its layer_types default (every 2nd
  # layer global) expressed as `_gemma3_layer_types` derives Gemma 3's.
  "gemma2": dict(num_key_value_heads=4, head_dim=256, hidden_act="gelu_pytorch_tanh",
                 rms_norm_eps=1e-6, max_position_embeddings=8192, tie_word_embeddings=True,
                 pad_token_id=0, bos_token_id=2, eos_token_id=1, sliding_window=4096,
                 query_pre_attn_scalar=256, sliding_window_pattern=2,
                 final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
  "gemma3_text": dict(num_key_value_heads=4, head_dim=256, hidden_act="gelu_pytorch_tanh",
                      rms_norm_eps=1e-6, max_position_embeddings=131072, tie_word_embeddings=True,
                      pad_token_id=0, bos_token_id=2, eos_token_id=1, sliding_window=4096,
                      query_pre_attn_scalar=256, sliding_window_pattern=6, rope_theta=1e6,
                      rope_local_base_freq=1e4),
}

# Attributes read below, per model_type (beyond the ones every type shares).
_COMMON = {
  "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
  "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "max_position_embeddings",
  "tie_word_embeddings", "attention_dropout", "rope_parameters", "rope_theta", "rope_scaling",
  "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id", "id2label", "num_labels",
}
_USED = {
  "llama": _COMMON | {"attention_bias", "mlp_bias", "pretraining_tp"},
  "mistral": _COMMON | {"sliding_window"},
  "qwen2": _COMMON | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
  "qwen3": _COMMON | {"attention_bias", "use_sliding_window", "sliding_window",
                      "max_window_layers", "layer_types"},
  "gemma": _COMMON | {"attention_bias", "hidden_activation", "use_bidirectional_attention"},
  "gemma2": _COMMON | {
    "attention_bias", "hidden_activation", "use_bidirectional_attention", "query_pre_attn_scalar",
    "sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
  },
  "gemma3_text": _COMMON | {
    "attention_bias", "hidden_activation", "use_bidirectional_attention", "query_pre_attn_scalar",
    "sliding_window", "sliding_window_pattern", "_sliding_window_pattern", "layer_types",
    "rope_local_base_freq", "final_logit_softcapping", "attn_logit_softcapping",
  },
}
# Present in real checkpoints of that type and without effect on the computation.
_HARMLESS: dict[str, set[str]] = {"llama": set(), "mistral": set(), "qwen2": set(), "qwen3": set(),
                                  "gemma": set(), "gemma2": {"cache_implementation"},
                                  # "hybrid": HF's cache layout (sliding layers keep a window)
                                  "gemma3_text": {"cache_implementation"}}
# Switches some configs carry set to false; any other value changes the network.
_MUST_BE_OFF = ("use_mrope",)
# Mixture-of-experts attributes: a dense model never sets them to anything truthy.
_MOE = (
  "num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
  "moe_intermediate_size", "shared_expert_intermediate_size", "n_shared_experts",
  "decoder_sparse_step", "moe_layer_freq", "first_k_dense_replace", "mlp_only_layers",
  "router_aux_loss_coef", "output_router_logits", "norm_topk_prob",
)
_ROPE_KEYS = {
  "default": {"rope_type", "type", "rope_theta"},
  "linear": {"rope_type", "type", "rope_theta", "factor"},
  "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings"},
}


def _get(hf: dict, defaults: dict, key: str, fallback=None):
  if key in hf:
    return hf[key]
  return defaults.get(key, fallback)


def _required(hf: dict, key: str, where: str):
  if hf.get(key) is None:
    raise UnsupportedConfigError(f"{where}: config attribute {key!r} is missing")
  return hf[key]


def _rope(hf: dict, max_pos: int, where: str) -> tuple[float, tuple | None]:
  """(theta, frozen scaling) from `rope_parameters` (transformers 5) or `rope_scaling` (older).

  Like transformers, a non-empty `rope_scaling` wins over `rope_parameters`, and a top-level
  `rope_theta` fills in a theta the dict lacks.
  """
  attr = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
  params = hf.get(attr) or {}
  require(isinstance(params, dict), where, attr, params, "expected a dict")
  kind = params.get("rope_type", params.get("type", "default"))
  require(kind in _ROPE_KEYS, where, f"{attr}.rope_type", kind,
          f"only {sorted(_ROPE_KEYS)} rotary embeddings are implemented")
  extra = sorted(set(params) - _ROPE_KEYS[kind])
  require(not extra, where, f"{attr}", params, f"keys {extra} are not implemented for rope type {kind!r}")
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  if kind == "default":
    return theta, None
  scaling = {"rope_type": kind, "factor": float(_required(params, "factor", f"{where}: {attr}"))}
  if kind == "llama3":
    for k in ("low_freq_factor", "high_freq_factor"):
      scaling[k] = float(_required(params, k, f"{where}: {attr}"))
    scaling["original_max_position_embeddings"] = int(
      params.get("original_max_position_embeddings") or max_pos
    )
  return theta, tuple(sorted(scaling.items()))


def _gemma3_rope(hf: dict, defaults: dict, max_pos: int, where: str):
  """(global theta, global scaling, local theta) of a Gemma 3 text config.

  transformers 5 writes `rope_parameters` per layer type ({"full_attention": {...},
  "sliding_attention": {...}}); older configs have `rope_theta`, `rope_scaling` (global layers
  only) and `rope_local_base_freq`. Local layers must use plain rope, as HF's do.
  """
  params = hf.get("rope_parameters") or {}
  require(isinstance(params, dict), where, "rope_parameters", params, "expected a dict")
  if set(params) & set(decoder.LAYER_TYPES):
    extra = sorted(set(params) - set(decoder.LAYER_TYPES))
    require(not extra, where, "rope_parameters", params, f"unexpected keys {extra} beside {decoder.LAYER_TYPES}")
    full, local = dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
  else:
    full, local = dict(params), {}
  if hf.get("rope_scaling"):  # transformers: rope_scaling updates the global layers' parameters
    full.update(hf["rope_scaling"])
  full.setdefault("rope_theta", _get(hf, defaults, "rope_theta"))
  local.setdefault("rope_theta", _get(hf, defaults, "rope_local_base_freq"))
  theta, scaling = _rope({"rope_parameters": full}, max_pos, f"{where} (full_attention)")
  local_theta, local_scaling = _rope({"rope_parameters": local}, max_pos, f"{where} (sliding_attention)")
  require(local_scaling is None, where, "rope_parameters.sliding_attention", local,
          "only plain (default) rope is implemented on sliding-window layers")
  return theta, scaling, local_theta


def _gemma3_layer_types(hf: dict, defaults: dict, layers_n: int, where: str) -> tuple[str, ...]:
  """`layer_types`, or HF's derivation from the pattern: every n-th layer global, others local."""
  types = hf.get("layer_types")
  if types is None:
    n = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern"))
    n = int(n or defaults["sliding_window_pattern"])
    types = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(layers_n)]
  require(isinstance(types, list) and len(types) == layers_n, where, "layer_types", types,
          f"expected a list of {layers_n} layer types")
  bad = sorted(set(types) - set(decoder.LAYER_TYPES))
  require(not bad, where, "layer_types", types, f"unknown layer types {bad}; known: {decoder.LAYER_TYPES}")
  return tuple(types)


class DecoderFamily(convert.Family):
  name = "llama"
  model_types = tuple(ARCH)
  ignored = (r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.(inv_freq|original_inv_freq)",)

  # ------------------------------------------------------------------------------- config

  def config_from_hf(self, hf: dict, *, task: str, num_labels: int | None, where: str):
    if task not in decoder.TASKS:
      raise UnsupportedConfigError(f"{where}: task={task!r} is not available for "
                                   f"{hf.get('model_type')}; expected one of {decoder.TASKS}")
    mt = hf.get("model_type")
    if mt not in ARCH:
      raise UnsupportedConfigError(f"{where}: model_type={mt!r} is not handled by {__name__}")
    defaults = _DEFAULTS[mt]
    for key in _MOE:
      require(not hf.get(key), where, key, hf.get(key), "mixture-of-experts layers are not implemented")
    for key in _MUST_BE_OFF:
      require(not hf.get(key), where, key, hf.get(key), "not implemented")
    convert.check_config_keys(
      hf, used=_USED[mt], harmless=_HARMLESS[mt] | set(_MOE) | set(_MUST_BE_OFF), where=where
    )
    hidden = int(_required(hf, "hidden_size", where))
    heads = int(_required(hf, "num_attention_heads", where))
    kv_heads = _get(hf, defaults, "num_key_value_heads") or heads
    head_dim = _get(hf, defaults, "head_dim") or hidden // heads
    max_pos = int(_get(hf, defaults, "max_position_embeddings"))
    if mt != "gemma3_text":  # Gemma 3 has a rope per layer type (below)
      theta, scaling = _rope(hf, max_pos, where)

    act = _get(hf, defaults, "hidden_act")
    if mt in GEMMA:
      # Gemma's `hidden_activation` overrides `hidden_act`; the legacy "gelu" meant the tanh
      # approximation, and transformers 5 rewrites it so.
      act = hf.get("hidden_activation") or act
      act = "gelu_pytorch_tanh" if act == "gelu" else act
      require(not hf.get("use_bidirectional_attention"), where, "use_bidirectional_attention",
              hf.get("use_bidirectional_attention"), "only causal attention is implemented")
    require(act in layers.ACTIVATIONS, where, "hidden_act", act,
            f"known activations: {sorted(layers.ACTIVATIONS)}")
    if mt == "llama":
      tp = hf.get("pretraining_tp", 1)
      require(tp in (None, 1), where, "pretraining_tp", tp, "only pretraining_tp=1 is implemented")

    sliding = None
    gemma3: dict = {}
    if mt == "mistral":
      sliding = _get(hf, defaults, "sliding_window")
    if mt in SANDWICH:
      sliding = _get(hf, defaults, "sliding_window")
      local_theta = None  # Gemma 2: one rope for both layer kinds
      if mt == "gemma3_text":
        theta, scaling, local_theta = _gemma3_rope(hf, defaults, max_pos, where)
      types = _gemma3_layer_types(hf, defaults, int(_required(hf, "num_hidden_layers", where)), where)
      require(sliding or "sliding_attention" not in types, where, "sliding_window", sliding,
              "layer_types has sliding_attention layers, which need a window size")
      caps = {}
      for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        cap = _get(hf, defaults, key)
        require(cap is None or (isinstance(cap, int | float) and cap > 0), where, key, cap,
                "expected null or a positive number")
        caps[key] = float(cap) if cap else None
      if mt == "gemma3_text":
        # transformers' Gemma3Attention never passes this cap to its attention functions, so a
        # set value is ignored there; refused here rather than guessing which network is meant.
        require(caps["attn_logit_softcapping"] is None, where, "attn_logit_softcapping",
                hf.get("attn_logit_softcapping"), "transformers' Gemma 3 does not apply it; set null")
      gemma3 = dict(
        layer_types=types, rope_local_theta=local_theta, sandwich_norms=True,
        query_pre_attn_scalar=float(_get(hf, defaults, "query_pre_attn_scalar")),
        final_logit_softcap=caps["final_logit_softcapping"],
        attn_logit_softcap=caps["attn_logit_softcapping"],
      )
    if mt in ("qwen2", "qwen3"):
      use = hf.get("use_sliding_window", False)
      require(not use, where, "use_sliding_window", use,
              "Qwen's per-layer sliding-window attention is not implemented")
      types = hf.get("layer_types") or []
      require(all(t == "full_attention" for t in types), where, "layer_types", types,
              "only full_attention layers are implemented")

    id2label = convert.label_names(hf, task=task, num_labels=num_labels, where=where)
    eos = _get(hf, defaults, "eos_token_id")
    return decoder.DecoderConfig(
      model_type=mt,
      vocab_size=int(_required(hf, "vocab_size", where)),
      hidden_size=hidden,
      intermediate_size=int(_required(hf, "intermediate_size", where)),
      num_layers=int(_required(hf, "num_hidden_layers", where)),
      num_heads=heads,
      num_kv_heads=int(kv_heads),
      head_dim=int(head_dim),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(_get(hf, defaults, "rms_norm_eps")),
      attention_bias=bool(hf.get("attention_bias", False)) if mt != "qwen2" else False,
      qkv_bias=mt == "qwen2",
      mlp_bias=bool(hf.get("mlp_bias", False)) if mt == "llama" else False,
      qk_norm=mt in ("qwen3", "gemma3_text"),
      norm_plus_one=mt in GEMMA,
      scale_embeddings=mt in GEMMA,
      activation=act,
      tie_embeddings=bool(_get(hf, defaults, "tie_word_embeddings")),
      attention_dropout=float(hf.get("attention_dropout") or 0.0),
      sliding_window=int(sliding) if sliding else None,
      max_position_embeddings=max_pos,
      initializer_range=float(hf.get("initializer_range") or 0.02),
      pad_token_id=_get(hf, defaults, "pad_token_id"),
      bos_token_id=_get(hf, defaults, "bos_token_id"),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      num_labels=len(id2label),
      id2label=id2label,
      **gemma3,
    )

  def config_to_hf(self, cfg: decoder.DecoderConfig, *, task: str) -> dict:
    mt = cfg.model_type
    where = f"export of a {mt} model"
    # Refuse switches this model_type's HF class cannot express, rather than write a config
    # transformers would load as a different network.
    gemma3 = mt in SANDWICH  # Gemma 2 or 3
    fixed = {
      "qkv_bias": mt == "qwen2", "qk_norm": mt in ("qwen3", "gemma3_text"),
      "norm_plus_one": mt in GEMMA, "scale_embeddings": mt in GEMMA, "sandwich_norms": gemma3,
    }
    if not gemma3:
      fixed.update(layer_types=(), rope_local_theta=None, query_pre_attn_scalar=None,
                   final_logit_softcap=None)
    if mt != "gemma2":
      fixed["attn_logit_softcap"] = None
    else:
      fixed["rope_local_theta"] = None
    if mt not in ("llama",):
      fixed["mlp_bias"] = False
    if mt in ("mistral", "qwen2"):
      fixed["attention_bias"] = False
    if mt not in ("mistral", *SANDWICH):
      fixed["sliding_window"] = None
    for attr, want in fixed.items():
      require(getattr(cfg, attr) == want, where, attr, getattr(cfg, attr),
              f"{ARCH[mt]} in transformers has {attr}={want!r}")
    head = "ForSequenceClassification" if task == "seq_cls" else "ForCausalLM"
    arch = _SEQ_CLS_ARCH.get(mt, ARCH[mt] + head) if task == "seq_cls" else ARCH[mt] + head
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    rope.update(cfg.rope_scaling_dict or {})
    out = {
      "architectures": [arch],
      "model_type": mt,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "hidden_act": cfg.activation,
      "rms_norm_eps": cfg.rms_norm_eps,
      "max_position_embeddings": cfg.max_position_embeddings,
      "rope_parameters": rope,
      "tie_word_embeddings": cfg.tie_embeddings,
      "attention_dropout": cfg.attention_dropout,
      "initializer_range": cfg.initializer_range,
      "pad_token_id": cfg.pad_token_id,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple) else cfg.eos_token_id,
    }
    if mt == "qwen2":
      # Qwen2's HF class has no head_dim attribute; its attention derives it.
      require(cfg.head_dim * cfg.num_heads == cfg.hidden_size, where, "head_dim", cfg.head_dim,
              "Qwen2 needs head_dim == hidden_size // num_attention_heads")
    else:
      out["head_dim"] = cfg.head_dim
    if mt in ("llama", "qwen3", "gemma", *SANDWICH):
      out["attention_bias"] = cfg.attention_bias
    if gemma3:
      out["hidden_activation"] = out.pop("hidden_act")
      types = cfg.layer_types or (
        ("sliding_attention" if cfg.sliding_window else "full_attention"),) * cfg.num_layers
      local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
      # Integers where Gemma 2/3's strict config fields want them (query_pre_attn_scalar: int).
      scalar = cfg.query_pre_attn_scalar or cfg.head_dim
      require(float(scalar).is_integer(), where, "query_pre_attn_scalar", scalar,
              f"{ARCH[mt]}'s config takes an integer")
      out.update(
        layer_types=list(types), sliding_window=cfg.sliding_window or 4096,
        query_pre_attn_scalar=int(scalar), final_logit_softcapping=cfg.final_logit_softcap,
        attn_logit_softcapping=cfg.attn_logit_softcap, use_bidirectional_attention=False,
      )
      if mt == "gemma3_text":
        out["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    if mt == "llama":
      out.update(mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    if mt == "mistral":
      out["sliding_window"] = cfg.sliding_window
    if mt in ("qwen2", "qwen3"):
      out.update(use_sliding_window=False, sliding_window=None,
                 layer_types=["full_attention"] * cfg.num_layers)
    if task == "seq_cls":
      out.update(convert.label_config(cfg.id2label))
    return out

  # -------------------------------------------------------------------------------- model

  def build(self, cfg, *, task: str, param_dtype, compute_dtype, rngs: nnx.Rngs) -> nnx.Module:
    return decoder.build(cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype,
                         rngs=rngs)

  def table(self, cfg: decoder.DecoderConfig, *, task: str) -> list[Row]:
    rows = [Row("model.embed_tokens.weight", "embed_tokens/embedding")]
    attn_bias = ("q", "k", "v", "o") if cfg.attention_bias else ("q", "k", "v") if cfg.qkv_bias else ()
    for i in range(cfg.num_layers):
      hf, jx = f"model.layers.{i}", f"layers/{i}"
      rows.append(Row(f"{hf}.input_layernorm.weight", f"{jx}/input_layernorm/scale"))
      for p in ("q", "k", "v", "o"):
        name = f"self_attn.{p}_proj"
        rows.append(Row(f"{hf}.{name}.weight", f"{jx}/self_attn/{p}_proj/kernel", transpose, transpose))
        if p in attn_bias:
          rows.append(Row(f"{hf}.{name}.bias", f"{jx}/self_attn/{p}_proj/bias"))
      if cfg.qk_norm:
        for p in ("q", "k"):
          rows.append(Row(f"{hf}.self_attn.{p}_norm.weight", f"{jx}/self_attn/{p}_norm/scale"))
      rows.append(Row(f"{hf}.post_attention_layernorm.weight", f"{jx}/post_attention_layernorm/scale"))
      if cfg.sandwich_norms:
        for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
          rows.append(Row(f"{hf}.{n}.weight", f"{jx}/{n}/scale"))
      for p in ("gate", "up", "down"):
        rows.append(Row(f"{hf}.mlp.{p}_proj.weight", f"{jx}/mlp/{p}_proj/kernel", transpose, transpose))
        if cfg.mlp_bias:
          rows.append(Row(f"{hf}.mlp.{p}_proj.bias", f"{jx}/mlp/{p}_proj/bias"))
    rows.append(Row("model.norm.weight", "norm/scale"))
    if task == "causal_lm" and not cfg.tie_embeddings:
      rows.append(Row("lm_head.weight", "lm_head/kernel", transpose, transpose))
    if task == "seq_cls":
      rows.append(Row("score.weight", "score/kernel", transpose, transpose, init_if_missing=True,
                      init_std=cfg.initializer_range))
    return rows

  def tied_keys(self, cfg: decoder.DecoderConfig, *, task: str) -> dict[str, str]:
    # Some tied checkpoints also store the head (and torch .bin files always do).
    return {"lm_head.weight": "model.embed_tokens.weight"} if cfg.tie_embeddings else {}

  def normalize_key(self, key: str, *, task: str) -> str | None:
    if task == "seq_cls" and key == "lm_head.weight":
      return None  # a causal-LM checkpoint fine-tuned for classification: HF drops it too
    # A bare base model (`LlamaModel.save_pretrained`) has no `model.` prefix.
    if re.match(r"(embed_tokens|layers|norm)\.", key):
      return "model." + key
    return key


FAMILY = DecoderFamily()
