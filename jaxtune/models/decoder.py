"""Llama-style decoder-only transformers: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2 and Gemma 3.

They differ only in switches on `DecoderConfig` (biases, q/k norms, (1 + w) norms, scaled
embeddings, sliding window, activation, tied head, Gemma 2/3's extra norms and per-layer
attention kinds, Gemma 2's tanh caps), so one pre-norm block serves all of them:

  x = x + o_proj(attend(rope(q_proj(norm(x))), rope(k_proj(norm(x))), v_proj(norm(x))))
  x = x + down_proj(act(gate_proj(norm(x))) * up_proj(norm(x)))

Gemma 2 and 3 also normalise each block's output before the residual add ("sandwich" norms) and
interleave local layers (sliding-window mask; Gemma 3: rope base `rope_local_theta`) with global
ones (full causal mask, `rope_theta` and its scaling); Gemma 2 caps the attention scores with
tanh (`attn_logit_softcap`). The two kinds share one parameter structure,
so the decoder builds both masks and both rope tables once per forward ([M, ...] with M kinds)
and each layer takes its kind as data (`DecoderConfig.layer_kinds`): unrolled layers get a
constant, a scanned stack (`layers.stack_layers`) gets it as a scanned input.

`CausalLM` ends in a vocabulary head; `SequenceClassifier` scores the last non-pad token like
HF's `*ForSequenceClassification`. Parameter names mirror HF (`layers/0/self_attn/q_proj/kernel`)
so `jaxtune.hf.llama` is a plain table, and every parameter has logical axis names.

Shape legend (as in layers.py): B batch, T query time, S key time, D model width, N query heads,
K kv heads, H head dim, F ffn width, V vocab, L labels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.models import layers

TASKS = ("causal_lm", "seq_cls")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
  """Architecture of one checkpoint, read from its HF config by `jaxtune.hf.llama`.

  Frozen and hashable (it is static model metadata under jit): `rope_scaling` is a sorted
  tuple of (key, value) items, `id2label` a tuple of names, `eos_token_id` an int or tuple.
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # None: plain rope
  rms_norm_eps: float = 1e-6
  attention_bias: bool = False  # Llama: bias on q, k, v and o
  qkv_bias: bool = False  # Qwen2: bias on q, k, v only
  mlp_bias: bool = False
  qk_norm: bool = False  # Qwen3: RMSNorm over each head's H before rope
  norm_plus_one: bool = False  # Gemma: norms scale by (1 + w), in float32
  scale_embeddings: bool = False  # Gemma: embeddings times sqrt(D)
  activation: str = "silu"
  tie_embeddings: bool = False
  attention_dropout: float = 0.0
  sliding_window: int | None = None  # Mistral: a query sees the last `sliding_window` keys
  # Gemma 3: per layer "sliding_attention" (window + local rope) or "full_attention"; () means
  # every layer alike (then `sliding_window`, if set, applies to all of them, as in Mistral).
  layer_types: tuple[str, ...] = ()
  rope_local_theta: float | None = None  # Gemma 3: rope base of sliding layers (no scaling)
  query_pre_attn_scalar: float | None = None  # Gemma 3: scores scale by this**-0.5, not H**-0.5
  sandwich_norms: bool = False  # Gemma 2/3: norms on the attention and MLP outputs too
  attn_logit_softcap: float | None = None  # Gemma 2: scores -> tanh(scores / cap) * cap
  final_logit_softcap: float | None = None  # Gemma 2/3 style tanh cap on the output logits
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  pad_token_id: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  num_labels: int = 0
  id2label: tuple[str, ...] = ()

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if self.id2label and len(self.id2label) != self.num_labels:
      raise ValueError(f"id2label has {len(self.id2label)} names but num_labels={self.num_labels}")
    if self.layer_types:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
      bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if bad:
        raise ValueError(f"layer_types: unknown {bad}; expected {LAYER_TYPES}")
      if "sliding_attention" in self.layer_types and not self.sliding_window:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")

  @property
  def layer_kinds(self) -> tuple[int, ...]:
    """Per layer, its row in the mask and rope tables: 0 global (full), 1 local (sliding)."""
    return tuple(int(t == "sliding_attention") for t in self.layer_types) or (0,) * self.num_layers

  @property
  def rope_scaling_dict(self) -> dict | None:
    return dict(self.rope_scaling) if self.rope_scaling else None


# ------------------------------------------------------------------------------------ blocks


class Attention(nnx.Module):
  """Grouped-query self-attention with rotary positions.

  Split in two so a KV cache fits in without touching the math: `qkv` returns rotated
  q [B,T,N,H] and k, v [B,T,K,H] for the new tokens; `attend` takes (q, k, v, mask) over
  whatever keys it is given. Generation keeps per-layer k/v buffers [B,S_max,K,H], writes
  the new k, v at the cache index (`lax.dynamic_update_slice`), and calls `attend` on the
  buffers with `layers.attention_mask(..., kv_len=S_max, q_offset=index)`. The rope
  frequencies [H/2] come from the caller (`Decoder.rope_table`), as they differ per layer kind.
  """

  def __init__(self, cfg: DecoderConfig, *, param_dtype, compute_dtype, rngs: nnx.Rngs):
    D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype, init_std=cfg.initializer_range,
              rngs=rngs)
    qkv_bias = cfg.attention_bias or cfg.qkv_bias
    self.q_proj = layers.Linear(D, N * H, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
    self.k_proj = layers.Linear(D, K * H, axes=("embed", "kv_heads"), use_bias=qkv_bias, **kw)
    self.v_proj = layers.Linear(D, K * H, axes=("embed", "kv_heads"), use_bias=qkv_bias, **kw)
    self.o_proj = layers.Linear(N * H, D, axes=("heads", "embed"), use_bias=cfg.attention_bias, **kw)
    if cfg.qk_norm:
      # Gemma 3's per-head norms scale by (1 + w) like its other norms.
      norm = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, param_dtype=param_dtype)
      self.q_norm, self.k_norm = layers.RMSNorm(H, **norm), layers.RMSNorm(H, **norm)
    else:
      self.q_norm = self.k_norm = None
    self.dropout = layers.Dropout(cfg.attention_dropout)
    self.attention_impl = "xla"  # layers.set_attention
    self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
    self.scale = (cfg.query_pre_attn_scalar or H) ** -0.5
    self.softcap = cfg.attn_logit_softcap

  def qkv(self, x_BTD: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array,
          rng: layers.RngSplitter | None = None):
    """`rng` hands the projections their LoRA dropout keys (`rng.lora()`); None: no keys."""
    rng = rng or layers.RngSplitter(None)
    B, T, _ = x_BTD.shape
    q = self.q_proj(x_BTD, lora_rng=rng.lora()).reshape(B, T, self.num_heads, self.head_dim)
    k = self.k_proj(x_BTD, lora_rng=rng.lora()).reshape(B, T, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x_BTD, lora_rng=rng.lora()).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:  # Qwen3 and Gemma 3 normalise each head before rotating it
      q, k = self.q_norm(q), self.k_norm(k)
    q = layers.apply_rope(q, positions_BT, inv_freq)
    k = layers.apply_rope(k, positions_BT, inv_freq)
    names = ("batch", "length", "act_heads", None)
    return layers.constrain(q, names), layers.constrain(k, names), layers.constrain(v, names)

  def attend(self, q_BTNH, k_BSKH, v_BSKH, mask_B1TS, dropout_rng=None,
             rng: layers.RngSplitter | None = None) -> jax.Array:
    rng = rng or layers.RngSplitter(None)
    B, T = q_BTNH.shape[:2]
    out = layers.dot_product_attention(
      q_BTNH, k_BSKH, v_BSKH, mask_B1TS, scale=self.scale, softcap=self.softcap,
      dropout=self.dropout, dropout_rng=dropout_rng, implementation=self.attention_impl,
      causal=True,
    )
    return self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim), lora_rng=rng.lora())

  def __call__(self, x_BTD, positions_BT, inv_freq, mask_B1TS, dropout_rng=None,
               rng: layers.RngSplitter | None = None) -> jax.Array:
    """`dropout_rng` is the attention-dropout key; `rng` gives the LoRA keys (see `qkv`)."""
    q, k, v = self.qkv(x_BTD, positions_BT, inv_freq, rng)
    return self.attend(q, k, v, mask_B1TS, dropout_rng, rng)

  def cached(self, x_BTD, positions_BT, inv_freq, kv: layers.KVCache, index, mask_B1TS):
    """Attention of the new tokens over the cache after writing their k, v at slot `index`."""
    q, k, v = self.qkv(x_BTD, positions_BT, inv_freq)
    kv = kv.write(k, v, index)
    return self.attend(q, kv.k, kv.v, mask_B1TS), kv


class MLP(nnx.Module):
  """Gated feed-forward: down(act(gate(x)) * up(x))."""

  def __init__(self, cfg: DecoderConfig, *, param_dtype, compute_dtype, rngs: nnx.Rngs):
    D, F = cfg.hidden_size, cfg.intermediate_size
    kw = dict(use_bias=cfg.mlp_bias, param_dtype=param_dtype, compute_dtype=compute_dtype,
              init_std=cfg.initializer_range, rngs=rngs)
    self.gate_proj = layers.Linear(D, F, axes=("embed", "mlp"), **kw)
    self.up_proj = layers.Linear(D, F, axes=("embed", "mlp"), **kw)
    self.down_proj = layers.Linear(F, D, axes=("mlp", "embed"), **kw)
    self.activation = cfg.activation

  def __call__(self, x_BTD: jax.Array, rng: layers.RngSplitter | None = None) -> jax.Array:
    """`rng` hands the projections their LoRA dropout keys (`rng.lora()`); None: no keys."""
    rng = rng or layers.RngSplitter(None)
    gate_BTF = self.gate_proj(x_BTD, lora_rng=rng.lora())
    h_BTF = layers.activation(self.activation)(gate_BTF) * self.up_proj(x_BTD, lora_rng=rng.lora())
    h_BTF = layers.constrain(h_BTF, ("batch", "length", "act_mlp"))
    return self.down_proj(h_BTF, lora_rng=rng.lora())


class DecoderLayer(nnx.Module):
  """One block. Names mirror HF: with `sandwich_norms` (Gemma 3) `post_attention_layernorm`
  normalises the attention output and `pre_/post_feedforward_layernorm` wrap the MLP; without,
  `post_attention_layernorm` is the norm before the MLP (Llama)."""

  def __init__(self, cfg: DecoderConfig, *, param_dtype, compute_dtype, rngs: nnx.Rngs):
    norm = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, param_dtype=param_dtype)
    self.input_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
    self.self_attn = Attention(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.post_attention_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
    if cfg.sandwich_norms:
      self.pre_feedforward_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
      self.post_feedforward_layernorm = layers.RMSNorm(cfg.hidden_size, **norm)
    else:
      self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None
    self.mlp = MLP(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)

  def _add_attention(self, x_BTD, a_BTD):
    if self.pre_feedforward_layernorm is not None:
      a_BTD = self.post_attention_layernorm(a_BTD)
    return x_BTD + a_BTD

  def _add_mlp(self, x_BTD, rng=None):
    if self.pre_feedforward_layernorm is None:
      return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD), rng)
    return x_BTD + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x_BTD), rng))

  def __call__(self, x_BTD, positions_BT, masks_MB1TS, inv_freq_MH, kind, dropout_rng=None) -> jax.Array:
    """`kind` picks this layer's mask and rope rows (`DecoderConfig.layer_kinds`); a constant
    when unrolled, a scanned input when the layers are stacked."""
    # Attention dropout takes `dropout_rng` itself (as before LoRA); the LoRA keys come from
    # the splitter's separate stream, so they leave that mask unchanged.
    rng = layers.RngSplitter(dropout_rng)
    h_BTD = self.input_layernorm(x_BTD)
    a_BTD = self.self_attn(h_BTD, positions_BT, inv_freq_MH[kind], masks_MB1TS[kind], dropout_rng, rng)
    x_BTD = self._add_mlp(self._add_attention(x_BTD, a_BTD), rng)
    return layers.constrain(x_BTD, ("batch", "length", "act_embed"))

  def cached(self, x_BTD, positions_BT, inv_freq, kv: layers.KVCache, index, mask_B1TS):
    """The layer over new tokens with a KV cache (inference: no dropout, no LoRA keys)."""
    a_BTD, kv = self.self_attn.cached(self.input_layernorm(x_BTD), positions_BT, inv_freq, kv,
                                      index, mask_B1TS)
    return self._add_mlp(self._add_attention(x_BTD, a_BTD)), kv


def default_positions(
  input_ids_BT: jax.Array, attention_mask_BT: jax.Array | None, segment_ids_BT: jax.Array | None
) -> jax.Array:
  """Positions when the caller gives none.

  Packed rows restart at 0 where the segment id changes; otherwise count only real tokens
  (cumsum(mask) - 1, clipped at 0), so a left-padded row starts at 0 as in HF generation.
  """
  B, T = input_ids_BT.shape
  idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if segment_ids_BT is not None:
    starts = jnp.concatenate(
      [jnp.ones((B, 1), bool), segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1
    )
    return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  if attention_mask_BT is not None:
    return jnp.maximum(jnp.cumsum(attention_mask_BT.astype(jnp.int32), axis=1) - 1, 0)
  return idx


# ------------------------------------------------------------------------------------ models


class Decoder(nnx.Module):
  """Embeddings, the layer stack and the final norm; subclasses add the task head.

  Set `model.remat` ('none' | 'full' | 'dots') before `nnx.split` to rematerialise each layer;
  `layers.stack_layers(model)` makes the layers one scanned stack.
  """

  task: str = ""

  def __init__(self, cfg: DecoderConfig, *, param_dtype=jnp.float32, compute_dtype=None,
               rngs: nnx.Rngs):
    layers.activation(cfg.activation)  # fail at build time on an unknown name
    self.config = cfg
    self.remat = "none"
    self.compute_dtype = compute_dtype
    self.embed_tokens = layers.Embed(
      cfg.vocab_size, cfg.hidden_size, init_std=cfg.initializer_range, param_dtype=param_dtype,
      compute_dtype=compute_dtype, rngs=rngs,
    )
    self.layers = nnx.List([
      DecoderLayer(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
      for _ in range(cfg.num_layers)
    ])
    self.norm = layers.RMSNorm(
      cfg.hidden_size, eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, param_dtype=param_dtype
    )

  def embed(self, input_ids_BT: jax.Array) -> jax.Array:
    x_BTD = self.embed_tokens(input_ids_BT)
    if self.config.scale_embeddings:
      # HF Gemma rounds sqrt(D) to the activation dtype before multiplying (55.4256 -> 55.5 in bf16).
      x_BTD = x_BTD * jnp.asarray(math.sqrt(self.config.hidden_size), x_BTD.dtype)
    return layers.constrain(x_BTD, ("batch", "length", "act_embed"))

  def rope_table(self) -> jax.Array:
    """Rope inverse frequencies [M, H/2] per layer kind: global (rope_theta and its scaling),
    then, with `layer_types`, local (`rope_local_theta`, unscaled, as HF Gemma 3)."""
    cfg = self.config
    rows = [layers.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)]
    if cfg.layer_types:
      rows.append(layers.rope_inv_freq(cfg.head_dim, cfg.rope_local_theta)
                  if cfg.rope_local_theta else rows[0])
    return jnp.stack(rows)

  def masks(self, attention_mask_BS, segment_ids_BT, *, batch: int, q_len: int, kv_len: int,
            q_offset=0) -> jax.Array:
    """Attention masks [M, B, 1, T, S] per layer kind: without `layer_types` one mask (with
    `sliding_window` if set); with them the full causal mask, then the sliding-window one."""
    cfg = self.config
    kw = dict(batch=batch, q_len=q_len, kv_len=kv_len, causal=True, q_offset=q_offset)
    if not cfg.layer_types:
      return layers.attention_mask(attention_mask_BS, segment_ids_BT, sliding_window=cfg.sliding_window,
                                   **kw)[None]
    return jnp.stack([
      layers.attention_mask(attention_mask_BS, segment_ids_BT, **kw),
      layers.attention_mask(attention_mask_BS, segment_ids_BT, sliding_window=cfg.sliding_window, **kw),
    ])

  # ---------------------------------------------------------------- KV-cached inference

  def init_cache(self, batch: int, max_len: int, dtype=None) -> list[layers.KVCache]:
    """Empty k/v buffers [B, max_len, K, H] per layer, in the compute dtype by default."""
    cfg = self.config
    dtype = dtype or self.compute_dtype or layers.weight_dtype(self.embed_tokens, "embedding")
    return [layers.KVCache.zeros(batch, max_len, cfg.num_kv_heads, cfg.head_dim, dtype)
            for _ in range(cfg.num_layers)]

  def cached_hidden_states(self, input_ids_BT, positions_BT, cache: list[layers.KVCache], index,
                           kv_mask_BS) -> tuple[jax.Array, list[layers.KVCache]]:
    """Final-norm states of T new tokens written at cache slots index..index+T-1.

    `kv_mask_BS` marks the cache slots holding real tokens (left padding is False); causality
    and the sliding window compare slot numbers, as the uncached forward compares indices.
    Local layers keep every slot too (no ring buffer): their mask hides the keys that fell out
    of the window, which gives HF's sliding cache's numbers at the full cache's memory.
    """
    B, T = input_ids_BT.shape
    masks = self.masks(kv_mask_BS, None, batch=B, q_len=T, kv_len=kv_mask_BS.shape[1],
                       q_offset=index)
    inv_freq = self.rope_table()
    x_BTD = self.embed(input_ids_BT)
    new_cache = []
    kinds = self.config.layer_kinds
    for layer, kind, kv in zip(layers.layer_list(self.layers), kinds, cache, strict=True):
      x_BTD, kv = layer.cached(x_BTD, positions_BT, inv_freq[kind], kv, index, masks[kind])
      new_cache.append(kv)
    return self.norm(x_BTD), new_cache

  def hidden_states(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> jax.Array:
    """Final-norm output [B,T,D] in the compute dtype."""
    if token_type_ids is not None:
      raise ValueError(f"{self.config.model_type} has no token types; pass token_type_ids=None")
    cfg = self.config
    B, T = input_ids.shape
    if positions is None:
      positions = default_positions(input_ids, attention_mask, segment_ids)
    masks = self.masks(attention_mask, segment_ids, batch=B, q_len=T, kv_len=T)
    x_BTD = self.embed(input_ids)
    x_BTD = layers.run_layers(self.layers, x_BTD, positions, masks, self.rope_table(),
                              remat=self.remat, rng=layers.RngSplitter(dropout_rng),
                              per_layer=(np.asarray(cfg.layer_kinds, np.int32),))
    return self.norm(x_BTD)


class CausalLM(Decoder):
  """Next-token logits [B,T,V]; `hidden_states` + `logits_from_hidden` allow chunked losses."""

  task = "causal_lm"

  def __init__(self, cfg: DecoderConfig, *, param_dtype=jnp.float32, compute_dtype=None,
               rngs: nnx.Rngs):
    super().__init__(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.lm_head = None if cfg.tie_embeddings else layers.Linear(
      cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), init_std=cfg.initializer_range,
      param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs,
    )

  def logits_from_hidden(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    """Logits in the compute dtype (a loss should upcast to float32 per chunk).

    `lora_rng` is the LoRA dropout key of an adapted `lm_head` (unused otherwise).
    """
    if self.lm_head is None:
      logits = self.embed_tokens.attend(h_BTD)
    else:
      logits = self.lm_head(h_BTD, lora_rng=lora_rng)
    if cap := self.config.final_logit_softcap:
      logits = jnp.tanh(logits / cap) * cap
    return layers.constrain(logits, ("batch", "length", "act_vocab"))

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, dropout_rng=None) -> jax.Array:
    h_BTD = self.hidden_states(
      input_ids, attention_mask, token_type_ids, positions=positions, segment_ids=segment_ids,
      dropout_rng=dropout_rng,
    )
    # The head's LoRA key: the splitter's LoRA stream, apart from the layer keys.
    return self.logits_from_hidden(h_BTD, lora_rng=layers.RngSplitter(dropout_rng).lora())


class SequenceClassifier(Decoder):
  """Label logits [B,L] from the last real token of each row, as HF scores it."""

  task = "seq_cls"

  def __init__(self, cfg: DecoderConfig, *, param_dtype=jnp.float32, compute_dtype=None,
               rngs: nnx.Rngs):
    if cfg.num_labels < 1:
      raise ValueError("a sequence classifier needs num_labels >= 1")
    super().__init__(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.score = layers.Linear(
      cfg.hidden_size, cfg.num_labels, axes=("embed", "labels"), init_std=cfg.initializer_range,
      param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs,
    )

  def pooled_index(self, input_ids_BT: jax.Array, attention_mask_BT: jax.Array | None) -> jax.Array:
    """Index [B] of the token that is scored.

    HF (transformers 5) takes the rightmost token != pad_token_id, which handles left and
    right padding alike (a row of only pads gives 0). Without a pad id HF refuses batches
    larger than one; we use the rightmost attended token instead, or the last one.
    """
    T = input_ids_BT.shape[1]
    if self.config.pad_token_id is not None:
      real_BT = input_ids_BT != self.config.pad_token_id
    elif attention_mask_BT is not None:
      real_BT = attention_mask_BT.astype(bool)
    else:
      return jnp.full((input_ids_BT.shape[0],), T - 1, jnp.int32)
    return jnp.argmax(jnp.arange(T, dtype=jnp.int32) * real_BT, axis=-1)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, dropout_rng=None) -> jax.Array:
    if segment_ids is not None:
      raise ValueError("sequence classification scores one token per row; packed rows are not supported")
    h_BTD = self.hidden_states(
      input_ids, attention_mask, token_type_ids, positions=positions, dropout_rng=dropout_rng
    )
    idx_B = self.pooled_index(input_ids, attention_mask)
    pooled_BD = jnp.take_along_axis(h_BTD, idx_B[:, None, None], axis=1)[:, 0]
    # The head's LoRA key: the splitter's LoRA stream, apart from the layer keys.
    return self.score(pooled_BD, lora_rng=layers.RngSplitter(dropout_rng).lora())


def build(cfg: DecoderConfig, *, task: str, param_dtype=jnp.float32, compute_dtype=None,
          rngs: nnx.Rngs) -> Decoder:
  """The model for `task` ('causal_lm' or 'seq_cls')."""
  if task == "causal_lm":
    cls = CausalLM
  elif task == "seq_cls":
    cls = SequenceClassifier
  else:
    raise ValueError(f"task={task!r}: expected one of {TASKS}")
  return cls(cfg, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
