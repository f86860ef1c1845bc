"""MPNet encoder in Flax NNX: BERT's post-LN blocks plus a relative-position bias.

Matches HF (transformers 5) in float32. What differs from BERT (models/bert.py, whose blocks
this reuses):
  - no token types; positions are RoBERTa's: real tokens count from pad id + 1 (= 2), padding
    sits at the pad id (HF fixes it at 1 whatever the config's pad_token_id says);
  - one table `relative_attention_bias` [32 buckets, N] shared by every layer: the bias of
    key s for query t is row bucket(s - t), added to the scaled attention scores;
  - attention projections are named `attention/attn/{q,k,v,o}`, its LayerNorm
    `attention/LayerNorm`;
  - task 'seq_cls' (MPNetForSequenceClassification) has no pooler: `classifier` is a head of its
    own, dropout, dense, tanh, dropout, `out_proj` on <s> (position 0). With `pooling='mean'`
    the classifier is one linear layer on the masked mean, as BERT's (hf.sbert exports both);
  - task 'masked_lm' (MPNetForMaskedLM): `lm_head` dense, exact GELU, layer_norm, the tied
    word table and a vocab bias; 'encoder' (MPNetModel) keeps the pooler, as BERT.

Shape legend as in layers.py: B batch, T query time, S key time, D model, N heads, L labels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.models import bert, layers

# transformers' MPNet computes the buckets with these constants whatever the config says
# (MPNetEncoder.compute_position_bias and relative_position_bucket's defaults).
NUM_BUCKETS = 32
MAX_DISTANCE = 128
PADDING_IDX = 1  # MPNetEmbeddings.padding_idx


@dataclasses.dataclass(frozen=True, kw_only=True)
class MPNetConfig:
  model_type: str = "mpnet"
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 514
  layer_norm_eps: float = 1e-5
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  initializer_range: float = 0.02
  relative_attention_num_buckets: int = NUM_BUCKETS
  num_labels: int = 0
  id2label: tuple[str, ...] = ()
  pooling: str = "cls"  # seq_cls only; one of bert.POOLINGS

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def relative_position_bucket(rel: jax.Array) -> jax.Array:
  """HF's bucket of a relative position (key - query): 0-15 for keys at or before the query,
  16-31 after; exact below 8 tokens, logarithmic up to 128, the last bucket beyond.

  HF computes 8 + int(8 * log(n / 8) / log(16)) in float32. That is 8 + floor(log2(n² / 64)), so
  the comparisons here are on integers, the same on every backend (at n = 16, 32, 64 a float log
  rounding one ulp low would move the bucket down).
  """
  half = NUM_BUCKETS // 2
  max_exact = half // 2
  n = -rel
  ret = jnp.where(n < 0, half, 0)
  n = jnp.minimum(jnp.abs(n), MAX_DISTANCE)  # every n >= 128 is in the last bucket; no overflow
  # bucket >= max_exact + k  <=>  n² >= max_exact² * 2^k, for k = 1 .. half - max_exact - 1
  large = max_exact + sum((n * n >= max_exact**2 << k).astype(jnp.int32)
                          for k in range(1, half - max_exact))
  return ret + jnp.where(n < max_exact, n, large)


class MPNetSelfAttention(nnx.Module):
  def __init__(self, cfg: MPNetConfig, kw: dict):
    D = cfg.hidden_size
    self.q = bert.linear(D, D, ("embed", "heads"), cfg, kw)
    self.k = bert.linear(D, D, ("embed", "heads"), cfg, kw)
    self.v = bert.linear(D, D, ("embed", "heads"), cfg, kw)
    self.o = bert.linear(D, D, ("heads", "embed"), cfg, kw)
    self.dropout = layers.Dropout(cfg.attention_probs_dropout_prob)
    self.attention_impl = "xla"  # layers.set_attention
    self.num_heads = cfg.num_attention_heads

  def __call__(self, x_BTD, mask_B1TS, rng, bias_BNTS) -> jax.Array:
    h = bert.self_attention(self, (self.q, self.k, self.v), x_BTD, mask_B1TS, rng, bias_BNTS)
    return self.o(h, lora_rng=rng.lora())


class MPNetAttention(nnx.Module):
  """attn (ending in its `o` projection), dropout, LayerNorm over the residual sum."""

  def __init__(self, cfg: MPNetConfig, kw: dict):
    self.attn = MPNetSelfAttention(cfg, kw)
    self.LayerNorm = bert.norm(cfg, kw["param_dtype"])
    self.dropout = layers.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, x_BTD, mask_B1TS, rng, bias_BNTS) -> jax.Array:
    return self.LayerNorm(self.dropout(self.attn(x_BTD, mask_B1TS, rng, bias_BNTS), rng()) + x_BTD)


class MPNetLayer(bert.BertLayer):
  """BERT's layer (intermediate/output blocks, order, post-LN) with MPNet's attention."""

  attention_cls = MPNetAttention


class MPNetClassificationHead(nnx.Module):
  """dropout, dense, tanh, dropout, out_proj on the first token (MPNetClassificationHead)."""

  def __init__(self, cfg: MPNetConfig, kw: dict):
    D = cfg.hidden_size
    self.dense = bert.linear(D, D, ("embed", None), cfg, kw)
    self.out_proj = bert.linear(D, cfg.num_labels, ("embed", "labels"), cfg, kw)
    self.dropout = layers.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, h_BTD: jax.Array, rng: layers.RngSplitter) -> jax.Array:
    x = self.dropout(h_BTD[:, 0], rng())
    x = jnp.tanh(self.dense(x, lora_rng=rng.lora()))
    return self.out_proj(self.dropout(x, rng()), lora_rng=rng.lora())


class MPNetLMHead(nnx.Module):
  def __init__(self, cfg: MPNetConfig, kw: dict):
    D = cfg.hidden_size
    self.dense = bert.linear(D, D, ("embed", None), cfg, kw)
    self.layer_norm = bert.norm(cfg, kw["param_dtype"])
    self.bias = nnx.Param(
      jnp.zeros((cfg.vocab_size,), kw["param_dtype"]), out_sharding=("vocab",), eager_sharding=False
    )


class MPNet(bert.EncoderModel):
  """MPNet for `task` 'seq_cls' ([B, L]), 'masked_lm' ([B, T, V]) or 'encoder' ([B, T, D])."""

  family = "MPNet"
  layer_cls = MPNetLayer
  token_types = False

  def build_heads(self, cfg: MPNetConfig, task: str, kw: dict) -> None:
    # Shared by all layers (HF keeps it on the encoder), so it stays outside the layer stack.
    self.relative_attention_bias = layers.Embed(
      cfg.relative_attention_num_buckets, cfg.num_attention_heads, axes=(None, "heads"),
      init_std=cfg.initializer_range, param_dtype=kw["param_dtype"], rngs=kw["rngs"],
    )
    if task == "encoder":
      self.pooler = bert.BertPooler(cfg, kw)
    if task == "seq_cls" and cfg.pooling == "mean":
      self.dropout = layers.Dropout(cfg.hidden_dropout_prob)
      self.classifier = bert.linear(cfg.hidden_size, cfg.num_labels, ("embed", "labels"), cfg, kw)
    elif task == "seq_cls":
      self.classifier = MPNetClassificationHead(cfg, kw)
    if task == "masked_lm":
      self.lm_head = MPNetLMHead(cfg, kw)

  def position_bias(self, positions_BT: jax.Array) -> jax.Array:
    """The relative-position bias [B or 1, N, T, S] in float32 (added to float32 scores)."""
    rel_BTS = positions_BT[:, None, :] - positions_BT[:, :, None]
    bias_BTSN = self.relative_attention_bias.embedding[...][relative_position_bucket(rel_BTS)]
    return jnp.transpose(bias_BTSN, (0, 3, 1, 2)).astype(jnp.float32)

  def embed(self, input_ids, token_type_ids, positions, rng):
    """`token_type_ids` are accepted and unused: MPNet has none (HF's MPNetModel takes none).

    `positions` count from 0 in each document (jaxtune's packing); the embedding reads row
    position + 2, which is HF's position id of a real token. Without them, the position ids are
    HF's, counted over the tokens that are not the pad id 1, and the relative bias uses 0..T-1.
    """
    del token_type_ids
    if positions is None:
      real = (input_ids != PADDING_IDX).astype(jnp.int32)
      embed_positions = jnp.cumsum(real, axis=1) * real + PADDING_IDX
      positions = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None]
    else:
      embed_positions = positions + PADDING_IDX + 1
    x = self.embeddings(input_ids, None, embed_positions, rng)
    return x, self.position_bias(positions)

  def mlm_logits(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    """Masked-LM logits [B, T, V] (masked_lm); the GELU is exact whatever hidden_act is, as HF."""
    head = self.lm_head
    t = head.layer_norm(layers.activation("gelu")(head.dense(h_BTD, lora_rng=lora_rng)))
    return bert.tied_mlm_logits(self, t, head.bias)

  def classify(self, h_BTD, attention_mask, rng) -> jax.Array:
    if self.config.pooling == "mean":
      return super().classify(h_BTD, attention_mask, rng)
    return self.classifier(h_BTD, rng)
