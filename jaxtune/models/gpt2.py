"""GPT-2 in Flax NNX: learned positions, pre-LN blocks, a tied LM head or a last-token classifier.

Matches HF `GPT2LMHeadModel` / `GPT2ForSequenceClassification` (transformers 5) in float32.
Shape legend as in layers.py: B batch, T time, D model, N heads, H head dim, F ffn, V vocab,
L labels.

`c_attn` (HF Conv1D, kernel [D, 3D] laid out q|k|v) is stored *head-major*: column n*3H + s*H + h
holds HF column s*D + n*H + h (s in q, k, v). Sharding that fused axis over 'tensor' then gives
each device whole heads with their own q, k and v, where HF's layout would hand a device the q of
some heads and the k of others. `jaxtune.hf.gpt2` permutes on load and back on export
(`qkv_to_head_major` / `qkv_from_head_major` there); anything reading the raw kernel (e.g. a PEFT
adapter exporter) must permute the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.models import layers

TASKS = ("causal_lm", "seq_cls")
ACT = ("batch", "length", "act_embed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
  model_type: str = "gpt2"
  vocab_size: int
  n_positions: int
  n_embd: int
  n_layer: int
  n_head: int
  n_inner: int  # resolved: HF's None means 4 * n_embd
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  initializer_range: float = 0.02
  num_labels: int = 0
  id2label: tuple[str, ...] = ()
  pad_token_id: int | None = None
  bos_token_id: int | None = 50256
  eos_token_id: int | None = 50256

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head


class GPT2Attention(nnx.Module):
  def __init__(self, cfg: GPT2Config, layer_idx: int, *, param_dtype, compute_dtype, rngs):
    D = cfg.n_embd
    kw = dict(use_bias=True, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.c_attn = layers.Linear(D, 3 * D, axes=("embed", "heads"), init_std=cfg.initializer_range, **kw)
    # HF scales residual projections by 1/sqrt(2 * n_layer) at init (GPT-2 paper).
    self.c_proj = layers.Linear(
      D, D, axes=("heads", "embed"), init_std=cfg.initializer_range / (2 * cfg.n_layer) ** 0.5, **kw
    )
    self.attn_dropout = layers.Dropout(cfg.attn_pdrop)
    self.attention_impl = "xla"  # layers.set_attention
    self.resid_dropout = layers.Dropout(cfg.resid_pdrop)
    self.num_heads = cfg.n_head
    scale = cfg.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
      scale /= float(layer_idx + 1)
    self.scale = scale

  def qkv(self, x_BTD: jax.Array, rng: layers.RngSplitter):
    """q, k, v [B, T, N, H] of the tokens in x."""
    B, T, D = x_BTD.shape
    N = self.num_heads
    # Head-major, see the module docstring.
    qkv = self.c_attn(x_BTD, lora_rng=rng.lora()).reshape(B, T, N, 3, D // N)
    return tuple(layers.constrain(qkv[:, :, :, i], ("batch", "length", "act_heads", None)) for i in range(3))

  def __call__(self, x_BTD: jax.Array, mask_B1TS: jax.Array, rng: layers.RngSplitter) -> jax.Array:
    B, T, D = x_BTD.shape
    q, k, v = self.qkv(x_BTD, rng)
    out = layers.dot_product_attention(
      q, k, v, mask_B1TS, scale=self.scale, dropout=self.attn_dropout, dropout_rng=rng(),
      implementation=self.attention_impl, causal=True,
    )
    return self.resid_dropout(self.c_proj(out.reshape(B, T, D), lora_rng=rng.lora()), rng())

  def cached(self, x_BTD: jax.Array, kv: layers.KVCache, index, mask_B1TS: jax.Array):
    """Attention of the new tokens over the cache after writing their k, v at slot `index`."""
    B, T, D = x_BTD.shape
    q, k, v = self.qkv(x_BTD, layers.RngSplitter(None))
    kv = kv.write(k, v, index)
    out = layers.dot_product_attention(q, kv.k, kv.v, mask_B1TS, scale=self.scale)
    return self.c_proj(out.reshape(B, T, D)), kv


class GPT2MLP(nnx.Module):
  def __init__(self, cfg: GPT2Config, *, param_dtype, compute_dtype, rngs):
    D, F = cfg.n_embd, cfg.n_inner
    kw = dict(use_bias=True, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.c_fc = layers.Linear(D, F, axes=("embed", "mlp"), init_std=cfg.initializer_range, **kw)
    self.c_proj = layers.Linear(
      F, D, axes=("mlp", "embed"), init_std=cfg.initializer_range / (2 * cfg.n_layer) ** 0.5, **kw
    )
    self.act = layers.activation(cfg.activation_function)
    self.dropout = layers.Dropout(cfg.resid_pdrop)

  def __call__(self, x_BTD: jax.Array, rng: layers.RngSplitter) -> jax.Array:
    h = self.act(self.c_fc(x_BTD, lora_rng=rng.lora()))
    h = layers.constrain(h, ("batch", "length", "act_mlp"))
    return self.dropout(self.c_proj(h, lora_rng=rng.lora()), rng())


class GPT2Block(nnx.Module):
  def __init__(self, cfg: GPT2Config, layer_idx: int, *, param_dtype, compute_dtype, rngs):
    kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.ln_1 = layers.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)
    self.attn = GPT2Attention(cfg, layer_idx, **kw)
    self.ln_2 = layers.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)
    self.mlp = GPT2MLP(cfg, **kw)

  def __call__(self, x_BTD: jax.Array, mask_B1TS: jax.Array, key: jax.Array | None) -> jax.Array:
    rng = layers.RngSplitter(key)
    x_BTD = x_BTD + self.attn(self.ln_1(x_BTD), mask_B1TS, rng)
    x_BTD = x_BTD + self.mlp(self.ln_2(x_BTD), rng)
    return layers.constrain(x_BTD, ACT)

  def cached(self, x_BTD: jax.Array, kv: layers.KVCache, index, mask_B1TS: jax.Array):
    """The block over new tokens with a KV cache (inference: dropout off)."""
    a_BTD, kv = self.attn.cached(self.ln_1(x_BTD), kv, index, mask_B1TS)
    x_BTD = x_BTD + a_BTD
    return x_BTD + self.mlp(self.ln_2(x_BTD), layers.RngSplitter(None)), kv


class GPT2(nnx.Module):
  """GPT-2 for `task` 'causal_lm' (logits [B, T, V]) or 'seq_cls' (logits [B, L]).

  Set `model.remat` ('none' | 'full' | 'dots') before `nnx.split` to rematerialise each layer;
  `layers.stack_layers(model)` makes the layers one scanned stack.
  """

  def __init__(
    self,
    config: GPT2Config,
    *,
    task: str = "causal_lm",
    param_dtype=jnp.float32,
    compute_dtype=None,
    rngs: nnx.Rngs,
  ):
    if task not in TASKS:
      raise ValueError(f"GPT-2: task={task!r}, expected one of {TASKS}")
    if task == "seq_cls" and config.num_labels < 1:
      raise ValueError("GPT-2 seq_cls needs config.num_labels >= 1")
    self.config = config
    self.task = task
    self.remat = "none"
    cfg, D = config, config.n_embd
    kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    std = cfg.initializer_range
    self.wte = layers.Embed(cfg.vocab_size, D, axes=("vocab", "embed"), init_std=std, **kw)
    self.wpe = layers.Embed(cfg.n_positions, D, axes=("positions", "embed"), init_std=std, **kw)
    self.drop = layers.Dropout(cfg.embd_pdrop)
    self.layers = nnx.List([GPT2Block(cfg, i, **kw) for i in range(cfg.n_layer)])
    self.ln_f = layers.LayerNorm(D, eps=cfg.layer_norm_epsilon, param_dtype=param_dtype)
    if task == "seq_cls":
      # HF's score has no bias.
      self.score = layers.Linear(D, cfg.num_labels, axes=("embed", "labels"), init_std=std, **kw)

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
    """Final-norm hidden states [B, T, D].

    Positions default to 0..T-1 for every row, as HF's forward does even with left padding
    (only `generate` derives them from the mask); pass `positions` for left padding or packing.
    `segment_ids` keep packed documents from attending to each other.
    """
    B, T = input_ids.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x = self.wte(input_ids) + self.wpe(positions)
    if token_type_ids is not None:
      # HF GPT-2 embeds token types with the word table.
      x = x + self.wte(token_type_ids)
    rng = layers.RngSplitter(dropout_rng)
    x = layers.constrain(self.drop(x, rng()), ACT)
    mask = layers.attention_mask(
      attention_mask, segment_ids, batch=B, q_len=T, kv_len=T, causal=True
    )
    x = layers.run_layers(self.layers, x, mask, remat=self.remat, rng=rng)
    return self.ln_f(x)

  # ---------------------------------------------------------------- KV-cached inference

  def init_cache(self, batch: int, max_len: int, dtype=None) -> list[layers.KVCache]:
    """Empty k/v buffers [B, max_len, N, H] per block, in the compute dtype by default."""
    cfg = self.config
    if max_len > cfg.n_positions:
      raise ValueError(f"GPT-2: {max_len} tokens exceed its n_positions={cfg.n_positions}")
    dtype = dtype or self.wte.compute_dtype or layers.weight_dtype(self.wte, "embedding")
    return [layers.KVCache.zeros(batch, max_len, cfg.n_head, cfg.head_dim, dtype)
            for _ in range(cfg.n_layer)]

  def cached_hidden_states(self, input_ids_BT, positions_BT, cache: list[layers.KVCache], index,
                           kv_mask_BS) -> tuple[jax.Array, list[layers.KVCache]]:
    """Final-norm states of T new tokens written at cache slots index..index+T-1.

    `positions_BT` index the learned position table (count real tokens only for left padding);
    `kv_mask_BS` marks the cache slots holding real tokens.
    """
    B, T = input_ids_BT.shape
    mask = layers.attention_mask(kv_mask_BS, None, batch=B, q_len=T, kv_len=kv_mask_BS.shape[1],
                                 causal=True, q_offset=index)
    x = layers.constrain(self.wte(input_ids_BT) + self.wpe(positions_BT), ACT)
    new_cache = []
    for layer, kv in zip(layers.layer_list(self.layers), cache, strict=True):
      x, kv = layer.cached(x, kv, index, mask)
      new_cache.append(kv)
    return self.ln_f(x), new_cache

  def logits_from_hidden(self, h_BTD: jax.Array) -> jax.Array:
    """LM logits [B, T, V] through the tied word table (causal_lm)."""
    return layers.constrain(self.wte.attend(h_BTD), ("batch", "length", "act_vocab"))

  def last_token_index(self, input_ids: jax.Array) -> jax.Array:
    """[B] index of the token the classifier reads, as HF GPT2ForSequenceClassification.

    The last token that is not `pad_token_id` (0 when a row is all padding); without a pad id HF
    refuses batches of more than one row, and so do we.
    """
    B, T = input_ids.shape
    if self.config.pad_token_id is None:
      if B != 1:
        raise ValueError(
          "GPT-2 seq_cls: cannot find the last token of a batch of more than one row without "
          "pad_token_id in the config (set it, e.g. with config_overrides={'pad_token_id': ...})"
        )
      return jnp.full((B,), T - 1, jnp.int32)
    non_pad = (input_ids != self.config.pad_token_id).astype(jnp.int32)
    return jnp.argmax(jnp.arange(T, dtype=jnp.int32) * non_pad, axis=-1)

  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> jax.Array:
    h = self.hidden_states(
      input_ids, attention_mask, token_type_ids,
      positions=positions, segment_ids=segment_ids, dropout_rng=dropout_rng,
    )
    if self.task == "causal_lm":
      return self.logits_from_hidden(h)
    last = self.last_token_index(input_ids)
    # Scoring the gathered rows equals HF's score-then-gather row for row, at 1/T the cost.
    # The head's LoRA key: the splitter's LoRA stream, apart from the block keys.
    lora_rng = layers.RngSplitter(dropout_rng).lora()
    return self.score(h[jnp.arange(h.shape[0]), last], lora_rng=lora_rng)
