"""BERT encoder in Flax NNX: embeddings, post-LN blocks, pooler, and three heads.

Matches HF (transformers 5) in float32:
  task 'seq_cls'   BertForSequenceClassification: tanh pooler on [CLS], dropout, `classifier`.
                   With `pooling='mean'` the classifier reads the masked mean of the last hidden
                   states instead (as sentence-transformers pools, e.g. all-MiniLM-L6-v2), and
                   there is no pooler; hf.save writes that as a sentence-transformers directory.
  task 'masked_lm' BertForMaskedLM: `cls.predictions` transform, decoder tied to the word table,
                   plus a vocab bias. No pooler, as HF builds it without one.
  task 'encoder'   BertModel: returns the last hidden states [B, T, D] (feature extraction,
                   e.g. sentence embeddings); the pooler is kept so a round trip is lossless.
`encode(...)` gives the last hidden states for any task.

Shape legend as in layers.py: B batch, T time, D model, N heads, H head dim, F ffn, V vocab,
L labels. Parameter paths mirror HF (`embeddings/LayerNorm/scale`,
`layers/0/attention/self/query/kernel`) except that `encoder.layer.N` becomes `layers/N`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.models import layers

TASKS = ("seq_cls", "masked_lm", "encoder")
POOLINGS = ("cls", "mean")  # how seq_cls turns [B, T, D] into the classifier's [B, D]
ACT = ("batch", "length", "act_embed")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
  model_type: str = "bert"
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  classifier_dropout: float | None = None  # None: hidden_dropout_prob, as HF
  initializer_range: float = 0.02
  num_labels: int = 0
  id2label: tuple[str, ...] = ()
  pad_token_id: int | None = 0
  pooling: str = "cls"  # seq_cls only; one of POOLINGS

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def linear(d_in, d_out, axes, cfg: BertConfig, kw: dict) -> layers.Linear:
  return layers.Linear(d_in, d_out, axes=axes, use_bias=True, init_std=cfg.initializer_range, **kw)


def norm(cfg: BertConfig, param_dtype) -> layers.LayerNorm:
  return layers.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, param_dtype=param_dtype)


class BertEmbeddings(nnx.Module):
  """Words (+ token types) + positions, LayerNorm, dropout; MPNet has no token types."""

  def __init__(self, cfg: BertConfig, *, param_dtype, compute_dtype, rngs, token_types=True):
    D, std = cfg.hidden_size, cfg.initializer_range
    kw = dict(init_std=std, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.word_embeddings = layers.Embed(cfg.vocab_size, D, axes=("vocab", "embed"), **kw)
    self.position_embeddings = layers.Embed(
      cfg.max_position_embeddings, D, axes=("positions", "embed"), **kw
    )
    self.token_type_embeddings = (
      layers.Embed(cfg.type_vocab_size, D, axes=("vocab", "embed"), **kw) if token_types else None
    )
    self.LayerNorm = norm(cfg, param_dtype)
    self.dropout = layers.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, positions, rng: layers.RngSplitter) -> jax.Array:
    # HF's order of additions: (words + token types) + positions.
    x = self.word_embeddings(input_ids)
    if self.token_type_embeddings is not None:
      x = x + self.token_type_embeddings(token_type_ids)
    x = x + self.position_embeddings(positions)
    return self.dropout(self.LayerNorm(x), rng())


def self_attention(module, projections, x_BTD: jax.Array, mask_B1TS: jax.Array,
                   rng: layers.RngSplitter, bias_BNTS: jax.Array | None = None) -> jax.Array:
  """Multi-head attention of an encoder block, before the output projection: [B, T, D].

  `projections` are the query, key and value linears; `module` gives `num_heads`, the
  attention `dropout` and `attention_impl` (BertSelfAttention, MPNet's attention).
  """
  B, T, D = x_BTD.shape
  N = module.num_heads
  heads = ("batch", "length", "act_heads", None)
  q, k, v = (layers.constrain(p(x_BTD, lora_rng=rng.lora()).reshape(B, T, N, D // N), heads)
             for p in projections)
  out = layers.dot_product_attention(
    q, k, v, mask_B1TS, scale=(D // N) ** -0.5, dropout=module.dropout, dropout_rng=rng(),
    implementation=module.attention_impl, bias_BNTS=bias_BNTS,
  )
  return out.reshape(B, T, D)


class BertSelfAttention(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    D = cfg.hidden_size
    self.query = linear(D, D, ("embed", "heads"), cfg, kw)
    self.key = linear(D, D, ("embed", "heads"), cfg, kw)
    self.value = linear(D, D, ("embed", "heads"), cfg, kw)
    self.dropout = layers.Dropout(cfg.attention_probs_dropout_prob)
    self.attention_impl = "xla"  # layers.set_attention
    self.num_heads = cfg.num_attention_heads

  def __call__(self, x_BTD, mask_B1TS, rng, bias_BNTS=None) -> jax.Array:
    return self_attention(self, (self.query, self.key, self.value), x_BTD, mask_B1TS, rng, bias_BNTS)


class BertSelfOutput(nnx.Module):
  """dense, dropout, then LayerNorm over the residual sum (post-LN); BertOutput is the same."""

  def __init__(self, cfg: BertConfig, d_in: int, axes, kw: dict):
    self.dense = linear(d_in, cfg.hidden_size, axes, cfg, kw)
    self.LayerNorm = norm(cfg, kw["param_dtype"])
    self.dropout = layers.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, h: jax.Array, residual_BTD: jax.Array, rng: layers.RngSplitter) -> jax.Array:
    return self.LayerNorm(self.dropout(self.dense(h, lora_rng=rng.lora()), rng()) + residual_BTD)


class BertAttention(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    self.self = BertSelfAttention(cfg, kw)
    self.output = BertSelfOutput(cfg, cfg.hidden_size, ("heads", "embed"), kw)

  def __call__(self, x_BTD, mask_B1TS, rng, bias_BNTS=None):
    return self.output(self.self(x_BTD, mask_B1TS, rng, bias_BNTS), x_BTD, rng)


class BertIntermediate(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    self.dense = linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), cfg, kw)
    self.act = layers.activation(cfg.hidden_act)

  def __call__(self, x_BTD: jax.Array, rng: layers.RngSplitter) -> jax.Array:
    h = self.act(self.dense(x_BTD, lora_rng=rng.lora()))
    return layers.constrain(h, ("batch", "length", "act_mlp"))


class BertLayer(nnx.Module):
  """Attention, then the feed-forward block, each post-LN; `bias_BNTS` is an additive score
  bias shared by the layers (MPNet's relative positions; None for BERT)."""

  attention_cls = BertAttention  # MPNetLayer swaps in MPNet's attention

  def __init__(self, cfg: BertConfig, kw: dict):
    self.attention = self.attention_cls(cfg, kw)
    self.intermediate = BertIntermediate(cfg, kw)
    self.output = BertSelfOutput(cfg, cfg.intermediate_size, ("mlp", "embed"), kw)

  def __call__(self, x_BTD: jax.Array, mask_B1TS: jax.Array, bias_BNTS: jax.Array | None,
               key: jax.Array | None) -> jax.Array:
    rng = layers.RngSplitter(key)
    x_BTD = self.attention(x_BTD, mask_B1TS, rng, bias_BNTS)
    x_BTD = self.output(self.intermediate(x_BTD, rng), x_BTD, rng)
    return layers.constrain(x_BTD, ACT)


class BertPooler(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    self.dense = linear(cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg, kw)

  def __call__(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    return jnp.tanh(self.dense(h_BTD[:, 0], lora_rng=lora_rng))


class BertPredictionHeadTransform(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    self.dense = linear(cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg, kw)
    self.act = layers.activation(cfg.hidden_act)
    self.LayerNorm = norm(cfg, kw["param_dtype"])

  def __call__(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    return self.LayerNorm(self.act(self.dense(h_BTD, lora_rng=lora_rng)))


class BertLMPredictionHead(nnx.Module):
  """transform, then the word table as decoder (tied, as HF ties it) plus a vocab bias."""

  def __init__(self, cfg: BertConfig, kw: dict):
    self.transform = BertPredictionHeadTransform(cfg, kw)
    self.bias = nnx.Param(
      jnp.zeros((cfg.vocab_size,), kw["param_dtype"]), out_sharding=("vocab",), eager_sharding=False
    )


class BertOnlyMLMHead(nnx.Module):
  def __init__(self, cfg: BertConfig, kw: dict):
    self.predictions = BertLMPredictionHead(cfg, kw)


class EncoderModel(nnx.Module):
  """What BERT-style encoders share (Bert, mpnet.MPNet): embeddings, a stack of `layer_cls`
  layers, `encode`, and the task heads over it. A family gives `embed` (the embedding output
  and the score bias its layers share) and `build_heads`.

  Set `model.remat` ('none' | 'full' | 'dots') before `nnx.split` to rematerialise each layer;
  `layers.stack_layers(model)` makes the layers one scanned stack.
  """

  family = "BERT"  # in error messages
  layer_cls = BertLayer
  token_types = True

  def __init__(
    self,
    config,
    *,
    task: str = "seq_cls",
    param_dtype=jnp.float32,
    compute_dtype=None,
    rngs: nnx.Rngs,
  ):
    if task not in TASKS:
      raise ValueError(f"{self.family}: task={task!r}, expected one of {TASKS}")
    if task == "seq_cls" and config.num_labels < 1:
      raise ValueError(f"{self.family} seq_cls needs config.num_labels >= 1")
    if config.pooling not in POOLINGS:
      raise ValueError(f"{self.family}: pooling={config.pooling!r}, expected one of {POOLINGS}")
    if config.pooling != "cls" and task != "seq_cls":
      raise ValueError(
        f"{self.family}: pooling={config.pooling!r} is for task 'seq_cls', not {task!r}")
    self.config = config
    self.task = task
    self.remat = "none"
    kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
    self.embeddings = BertEmbeddings(config, token_types=self.token_types, **kw)
    self.layers = nnx.List([self.layer_cls(config, kw) for _ in range(config.num_hidden_layers)])
    self.build_heads(config, task, kw)

  def build_heads(self, cfg, task: str, kw: dict) -> None:
    raise NotImplementedError

  def embed(self, input_ids, token_type_ids, positions, rng: layers.RngSplitter):
    """(embedding output [B, T, D], additive score bias [B or 1, N, T, S] or None)."""
    raise NotImplementedError

  def encode(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
  ) -> jax.Array:
    """Last hidden states [B, T, D]."""
    B, T = input_ids.shape
    rng = layers.RngSplitter(dropout_rng)
    x, bias = self.embed(input_ids, token_type_ids, positions, rng)
    mask = layers.attention_mask(
      attention_mask, segment_ids, batch=B, q_len=T, kv_len=T, causal=False
    )
    return layers.run_layers(self.layers, layers.constrain(x, ACT), mask, bias, remat=self.remat,
                             rng=rng)

  def mlm_logits(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    raise NotImplementedError

  def pooled(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    """The pooler's tanh(dense(h[:, 0])) [B, D] (BERT seq_cls, encoder).

    `lora_rng` is the LoRA dropout key of an adapted pooler (unused otherwise); so in `mlm_logits`.
    """
    return self.pooler(h_BTD, lora_rng=lora_rng)

  def classify(self, h_BTD: jax.Array, attention_mask: jax.Array | None,
               rng: layers.RngSplitter) -> jax.Array:
    """seq_cls logits [B, L]: the classifier on the pooled [CLS] or the masked mean."""
    if self.config.pooling == "mean":
      pooled = mean_pool(h_BTD, attention_mask)
    else:
      pooled = self.pooled(h_BTD, lora_rng=rng.lora())
    return self.classifier(self.dropout(pooled, rng()), lora_rng=rng.lora())

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
    rng = layers.RngSplitter(dropout_rng)
    h = self.encode(
      input_ids, attention_mask, token_type_ids,
      positions=positions, segment_ids=segment_ids, dropout_rng=rng(),
    )
    if self.task == "encoder":
      return h
    # Heads take LoRA keys from the splitter's LoRA stream, so the dropout keys stay as they were.
    if self.task == "masked_lm":
      return self.mlm_logits(h, lora_rng=rng.lora())
    return self.classify(h, attention_mask, rng)


class Bert(EncoderModel):
  """BERT for `task` 'seq_cls' ([B, L]), 'masked_lm' ([B, T, V]) or 'encoder' ([B, T, D])."""

  def build_heads(self, cfg: BertConfig, task: str, kw: dict) -> None:
    if task == "encoder" or (task == "seq_cls" and cfg.pooling == "cls"):
      self.pooler = BertPooler(cfg, kw)
    if task == "seq_cls":
      rate = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
      self.dropout = layers.Dropout(rate)
      self.classifier = linear(cfg.hidden_size, cfg.num_labels, ("embed", "labels"), cfg, kw)
    if task == "masked_lm":
      self.cls = BertOnlyMLMHead(cfg, kw)

  def embed(self, input_ids, token_type_ids, positions, rng):
    """Token types default to 0 and positions to 0..T-1, as HF; no score bias."""
    B, T = input_ids.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((B, T), jnp.int32)
    return self.embeddings(input_ids, token_type_ids, positions, rng), None

  def mlm_logits(self, h_BTD: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    """Masked-LM logits [B, T, V] through the tied word table (masked_lm)."""
    head = self.cls.predictions
    return tied_mlm_logits(self, head.transform(h_BTD, lora_rng=lora_rng), head.bias)


def tied_mlm_logits(model: EncoderModel, t_BTD: jax.Array, bias_V: nnx.Param) -> jax.Array:
  """The MLM decoder: the word table (tied, as HF ties it) plus a vocab bias."""
  logits = model.embeddings.word_embeddings.attend(t_BTD) + bias_V[...].astype(t_BTD.dtype)
  return layers.constrain(logits, ("batch", "length", "act_vocab"))


def mean_pool(h_BTD: jax.Array, attention_mask_BT: jax.Array | None) -> jax.Array:
  """[B, D]: the mean of the hidden states over the attended tokens (all when no mask).

  Summed in float32: a bf16 sum over 512 tokens would lose the low bits sentence-transformers
  keeps. A row with no attended token gives zeros rather than 0/0.
  """
  h = h_BTD.astype(jnp.float32)
  if attention_mask_BT is None:
    return h.mean(axis=1).astype(h_BTD.dtype)
  m_BT1 = attention_mask_BT.astype(jnp.float32)[..., None]
  mean = (h * m_BT1).sum(axis=1) / jnp.maximum(m_BT1.sum(axis=1), 1.0)
  return mean.astype(h_BTD.dtype)
