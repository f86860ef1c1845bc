"""Blocks shared by every model family: linear, embedding, norms, rotary, attention, dropout.

Shape legend for einsum strings and suffixes: B batch, T query time, S key time, D model width,
N query heads, K kv heads, G query heads per kv head (N = K * G), H head dim, F ffn width, V vocab.

Every parameter carries logical axis names (`out_sharding` metadata); `jaxtune.sharding` maps
them onto mesh axes with one rules table. Parameters are stored in `param_dtype` and cast to
`compute_dtype` where they are used, so float32 master weights can run bfloat16 math.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune import sharding
from jaxtune.models import qmatmul

Dtype = jnp.dtype | str


def _param(value: jax.Array, names: Sequence[str | None]) -> nnx.Param:
  # Eager sharding is off: the model is built abstractly and placed by jaxtune.sharding.
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def quantized(module: nnx.Module, name: str):
  """`module.<name>` as a qwix QArray when it is a quantized frozen base weight (codes in
  `<name>`, absmax scales in `<name>_scale`; see jaxtune.quantize), else None."""
  scale = getattr(module, name + "_scale", None)
  if scale is None:
    return None
  import qwix  # only a quantized base (model.quantize, the jaxtune[qlora] extra) gets here

  qtype = module.quant_type if module.quant_type == "nf4" else jnp.dtype(module.quant_type)
  return qwix.QArray(getattr(module, name)[...], scale[...], qtype=qtype)


def weight(module: nnx.Module, name: str) -> jax.Array:
  """`module.<name>` as a floating array: the parameter, or a quantized weight dequantized here,
  inside the computation that reads it (so only this one weight exists in full precision)."""
  q = quantized(module, name)
  if q is None:
    return getattr(module, name)[...]
  import qwix

  return qwix.dequantize(q)


def weight_dtype(module: nnx.Module, name: str):
  """The floating dtype `weight` returns (a quantized weight's scales keep the param dtype)."""
  scale = getattr(module, name + "_scale", None)
  return (getattr(module, name) if scale is None else scale)[...].dtype


def normal_init(std: float) -> Callable[[jax.Array, tuple[int, ...], Dtype], jax.Array]:
  def init(key, shape, dtype):
    return (std * jax.random.normal(key, shape)).astype(dtype)

  return init


class Linear(nnx.Module):
  """y = x @ kernel + bias, kernel stored [in, out] (the transpose of torch's nn.Linear)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str | None, str | None],
    use_bias: bool = False,
    init_std: float = 0.02,
    param_dtype: Dtype = jnp.float32,
    compute_dtype: Dtype | None = None,
    rngs: nnx.Rngs,
  ):
    self.kernel = _param(
      normal_init(init_std)(rngs.params(), (in_features, out_features), param_dtype), axes
    )
    self.bias = (
      _param(jnp.zeros((out_features,), param_dtype), (axes[1],)) if use_bias else None
    )
    self.compute_dtype = compute_dtype

  def __call__(self, x: jax.Array, *, lora_rng: jax.Array | None = None) -> jax.Array:
    # `lora_rng` is the dropout key of a LoRA adapter (jaxtune.lora.LoRALinear); a plain Linear
    # has no randomness and ignores it, so model code can pass it whether or not LoRA is on.
    del lora_rng
    dtype = self.compute_dtype or x.dtype
    q = quantized(self, "kernel")
    if q is None:
      y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))
    else:
      # Dequantized inside the matmul, and again in the backward pass (no float kernel is kept).
      y = qmatmul.dot(q.qtype, 0, x.astype(dtype), q.qvalue, q.scale)
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class Embed(nnx.Module):
  """Token (or position) embedding table [V, D]; `attend` reuses it as a tied output head."""

  def __init__(
    self,
    num_embeddings: int,
    features: int,
    *,
    axes: tuple[str | None, str | None] = ("vocab", "embed"),
    init_std: float = 0.02,
    param_dtype: Dtype = jnp.float32,
    compute_dtype: Dtype | None = None,
    rngs: nnx.Rngs,
  ):
    self.embedding = _param(
      normal_init(init_std)(rngs.params(), (num_embeddings, features), param_dtype), axes
    )
    self.compute_dtype = compute_dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    q = quantized(self, "embedding")
    if q is not None:
      import qwix

      # Rows of a quantized table: gather their codes and scales, dequantize only those.
      rows = qwix.dequantize(qwix.QArray(q.qvalue[ids], q.scale[ids], qtype=q.qtype))
      return rows.astype(self.compute_dtype or rows.dtype)
    table = self.embedding[...]
    return jnp.take(table, ids, axis=0).astype(self.compute_dtype or table.dtype)

  def attend(self, x_BTD: jax.Array) -> jax.Array:
    dtype = self.compute_dtype or x_BTD.dtype
    q = quantized(self, "embedding")
    if q is not None:
      return qmatmul.dot(q.qtype, 1, x_BTD.astype(dtype), q.qvalue, q.scale)
    table = self.embedding[...]
    return jnp.einsum("...d,vd->...v", x_BTD.astype(dtype), table.astype(dtype))


class RMSNorm(nnx.Module):
  """Root-mean-square norm computed in float32; Gemma scales by (1 + w) instead of w."""

  def __init__(
    self,
    dim: int,
    *,
    eps: float = 1e-6,
    plus_one: bool = False,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    init = jnp.zeros if plus_one else jnp.ones
    self.scale = _param(init((dim,), param_dtype), ("norm",))
    self.eps = eps
    self.plus_one = plus_one

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    w = self.scale[...].astype(jnp.float32)
    if self.plus_one:
      # Gemma multiplies in float32 before casting back (HF GemmaRMSNorm).
      return (x32 * (1.0 + w)).astype(dtype)
    # Llama casts the normalised activations to the input dtype before the weight (HF order).
    return w.astype(dtype) * x32.astype(dtype) if dtype != jnp.float32 else w * x32


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, statistics in float32."""

  def __init__(
    self,
    dim: int,
    *,
    eps: float = 1e-5,
    use_bias: bool = True,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    self.scale = _param(jnp.ones((dim,), param_dtype), ("norm",))
    self.bias = _param(jnp.zeros((dim,), param_dtype), ("norm",)) if use_bias else None
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


class Dropout(nnx.Module):
  """Dropout that takes its key at call time, so a pure train step can fold in the step.

  Deterministic by default; `model.train()` switches it on (NNX sets `deterministic=False`).
  """

  def __init__(self, rate: float):
    self.rate = float(rate)
    self.deterministic = True

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    if rng is None:
      raise ValueError("the model is in training mode with dropout but got no dropout rng")
    keep = keep_mask(rng, 1.0 - self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


def keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...]) -> jax.Array:
  """A Bernoulli(keep_prob) mask from one 32-bit hash per element.

  `jax.random.bernoulli` runs threefry (20 rounds over two words) per element: on a CPU the
  dropout masks of a 6-layer MiniLM step took about 0.7 s, as long as the matmuls. Dropout does
  not need a cryptographic stream: one threefry draw seeds the site, and each element's bits
  are the murmur3 finaliser of (index * golden ratio) xor seed (about 5x faster). The index is
  the element's position in the global array, so the mask does not depend on the sharding.
  """
  seed = jax.random.bits(key, (), jnp.uint32)
  size = math.prod(shape)
  x = jax.lax.iota(jnp.uint32, size).reshape(shape) * jnp.uint32(0x9E3779B1) ^ seed
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  x = x ^ (x >> 16)
  # keep iff x < keep_prob * 2^32 (a float comparison would lose the low bits).
  threshold = min(int(round(keep_prob * 2.0**32)), 2**32 - 1)
  return x < jnp.uint32(threshold)


class RngSplitter:
  """Hands out a fresh dropout key per call site from one key (None stays None).

  Dropout sites take `rng()`: fold_in(key, 1), fold_in(key, 2), ... LoRA adapters take
  `rng.lora()` (passed as `proj(x, lora_rng=rng.lora())`), a second stream over
  fold_in(key, 0), a key no dropout site gets. Keeping the streams apart means the LoRA keys
  moved no existing dropout mask; with no dropout (or no LoRA dropout) they are dead code.
  """

  def __init__(self, rng: jax.Array | None):
    self._rng = rng
    self._n = 0
    self._lora: RngSplitter | None = None

  def __call__(self) -> jax.Array | None:
    if self._rng is None:
      return None
    self._n += 1
    return jax.random.fold_in(self._rng, self._n)

  def lora(self) -> jax.Array | None:
    """A fresh key for one LoRA linear's dropout (see `jaxtune.lora.LoRALinear`)."""
    if self._lora is None:
      self._lora = RngSplitter(None if self._rng is None else jax.random.fold_in(self._rng, 0))
    return self._lora()


REMAT = ("none", "full", "dots")


def _remat_policy(mode: str):
  if mode not in REMAT:
    raise ValueError(f"remat={mode!r}: expected one of {REMAT}")
  return jax.checkpoint_policies.checkpoint_dots if mode == "dots" else None


STACK_AXIS = "layers"  # logical name of the leading axis of stacked layer weights (not sharded)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def is_stacked(stack) -> bool:
  """True when `stack` is one layer module holding every layer's weights (`stack_layers`)."""
  return not isinstance(stack, nnx.List)


def stack_layers(model: nnx.Module, mesh=None) -> None:
  """In place: `model.layers` (an nnx.List of identical layers) becomes one layer module whose
  parameters carry a leading layer axis (logical name STACK_AXIS), which `run_layers` scans.

  Scanning compiles the layer once: the optimised step program no longer grows with depth, and
  the optimizer updates one [L, ...] array per weight instead of L arrays. The parameter paths
  lose the layer index (`layers/self_attn/q_proj/kernel`, shape [L, D, N*H]). `unstack_layers`
  restores the HF layout for export and generation. Needs layers of one structure (LoRA on every
  layer alike, or none), since one body is compiled for all of them. While it runs, the layer
  weights exist twice (per layer and stacked); placed on `mesh` by their logical names.
  """
  stack = model.layers
  if is_stacked(stack):
    return
  splits = [nnx.split(layer) for layer in stack]
  graphdef = splits[0][0]
  for i, (g, _) in enumerate(splits[1:], 1):
    if g != graphdef:
      raise ValueError(
        f"model.scan_layers: layer {i} of {type(model).__name__} differs in structure from layer "
        "0 (LoRA targets naming some layers only?); scanning needs identical layers: set "
        "model.scan_layers=False or target every layer alike"
      )

  def stacked(*vs: nnx.Variable) -> nnx.Variable:
    names = vs[0].get_metadata().get("out_sharding") or (None,) * vs[0].get_value().ndim
    value = jnp.stack([v.get_value() for v in vs])
    names = (STACK_AXIS, *names)
    if mesh is not None:
      value = jax.device_put(value, sharding.named_sharding(mesh, names, value.shape))
    return vs[0].replace(value, out_sharding=names)

  state = jax.tree.map(stacked, *(st for _, st in splits), is_leaf=_is_var)
  model.layers = nnx.merge(graphdef, state)


def unstack_layers(model: nnx.Module) -> None:
  """In place: the inverse of `stack_layers` (a no-op on unstacked models)."""
  if not is_stacked(model.layers):
    return
  graphdef, state = nnx.split(model.layers)
  n = jax.tree.leaves(state)[0].shape[0]

  def layer(i: int) -> nnx.Module:
    one = lambda v: v.replace(v.get_value()[i], out_sharding=tuple(v.get_metadata()["out_sharding"][1:]))
    return nnx.merge(graphdef, jax.tree.map(one, state, is_leaf=_is_var))

  model.layers = nnx.List([layer(i) for i in range(n)])


def num_layers(stack) -> int:
  return jax.tree.leaves(nnx.state(stack))[0].shape[0] if is_stacked(stack) else len(stack)


def layer_list(stack) -> list[nnx.Module]:
  """The layers one by one, for code that walks them (the KV cache); stacked layers refuse."""
  if is_stacked(stack):
    raise ValueError("the model's layers are stacked (model.scan_layers); "
                     "call jaxtune.models.layers.unstack_layers(model) first")
  return list(stack)


def run_layers(stack, x: jax.Array, *args, remat: str, rng: RngSplitter,
               per_layer: tuple = ()) -> jax.Array:
  """`x = layer(x, *args, *(a[i] for a in per_layer), rng())` for every layer i of `stack`.

  remat: 'none', 'full' (keep only each layer's input for the backward pass) or 'dots' (also keep
  matmul outputs; recompute norms, activations, softmax). The args cross the remat boundary, so
  they are arrays or None. `per_layer` holds arrays with a leading layer axis, for data that
  differs between layers of one structure (Gemma 3's local/global kind).

  An nnx.List is unrolled: XLA compiles every layer separately, and each gets its per-layer
  entries as constants. Stacked layers (`stack_layers`) run as one `lax.scan`, the layer
  compiled once, the per-layer entries scanned beside the weights. The dropout keys are drawn
  in the same order either way, so both layouts give the same numbers.
  """
  policy = _remat_policy(remat)
  keys = [rng() for _ in range(num_layers(stack))]
  if not is_stacked(stack):
    call = lambda layer, *a: layer(*a)
    if remat != "none":
      call = nnx.remat(call, policy=policy)
    for i, (layer, key) in enumerate(zip(stack, keys, strict=True)):
      x = call(layer, x, *args, *(a[i] for a in per_layer), key)
    return x

  graphdef, state = nnx.split(stack)

  def body(h, xs):
    weights, extra, key = xs
    return nnx.merge(graphdef, weights)(h, *args, *extra, key), None

  if remat != "none":
    # prevent_cse=False: inside scan XLA cannot merge the recomputation into the forward anyway.
    body = jax.checkpoint(body, policy=policy, prevent_cse=False)
  extra = tuple(jnp.asarray(a) for a in per_layer)
  x, _ = jax.lax.scan(body, x, (state, extra, None if keys[0] is None else jnp.stack(keys)))
  return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


# ------------------------------------------------------------------------------------ rotary


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> jax.Array:
  """Inverse frequencies [H/2], with the rope scalings we support ('linear', 'llama3')."""
  inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  kind = (scaling or {}).get("rope_type", "default")
  if kind == "default":
    return inv
  if kind == "linear":
    return inv / scaling["factor"]
  if kind == "llama3":
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_len / low, old_len / high
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv / factor + smooth * inv
    out = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return jnp.where(mid, smoothed, out)
  raise ValueError(f"unsupported rope scaling type {kind!r}")


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotate halves (the HF `rotate_half` layout), angles in float32."""
  angles = positions_BT[..., None].astype(jnp.float32) * inv_freq  # B T H/2
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  x32 = x_BTNH.astype(jnp.float32)
  half = x32.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x_BTNH.dtype)


# --------------------------------------------------------------------------------- attention


def attention_mask(
  attention_mask_BS: jax.Array | None,
  segment_ids_BT: jax.Array | None,
  *,
  batch: int,
  q_len: int,
  kv_len: int,
  causal: bool,
  sliding_window: int | None = None,
  q_offset: jax.Array | int = 0,
) -> jax.Array:
  """Boolean mask [B, 1, T, S], True where a query may attend a key.

  Padding masks keys; segment ids keep packed documents apart; causal and sliding-window
  limits compare token indices (`q_offset` shifts queries for a KV cache).
  """
  mask = jnp.ones((batch, 1, q_len, kv_len), dtype=bool)
  if attention_mask_BS is not None:
    mask &= attention_mask_BS.astype(bool)[:, None, None, :]
  if segment_ids_BT is not None:
    mask &= (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
  if causal or sliding_window:
    q_idx = jnp.arange(q_len)[:, None] + q_offset
    k_idx = jnp.arange(kv_len)[None, :]
    if causal:
      mask &= (k_idx <= q_idx)[None, None]
    if sliding_window:
      mask &= (q_idx - k_idx < sliding_window)[None, None]
  return mask


ATTENTION = ("auto", "xla", "cudnn")


def resolve_attention(name: str, dtype, *, dropout: Dropout | None, softcap: float | None,
                      bias: bool = False) -> str:
  """The implementation `name` means here: 'auto' is cuDNN flash attention on a GPU when it
  applies (16-bit inputs, no attention dropout in training, no softcap, no additive score bias),
  else plain XLA. (cuDNN's bias gradient is not wired in: MPNet's relative bias trains.)

  TPU runs the XLA path too: a Pallas splash-attention kernel is not wired in yet.
  """
  if name not in ATTENTION:
    raise ValueError(f"config: model.attention={name!r}, expected one of {ATTENTION}")
  dropping = dropout is not None and not dropout.deterministic and dropout.rate > 0
  if name == "cudnn":
    if jax.default_backend() != "gpu":
      raise ValueError(f"config: model.attention='cudnn' needs a GPU; this backend is "
                       f"{jax.default_backend()!r} (use 'auto' or 'xla')")
    if dropping or softcap or bias:
      raise ValueError("config: model.attention='cudnn' supports neither attention dropout in "
                       "training, logit softcapping nor a relative-position bias (MPNet); use "
                       "'auto' to fall back to XLA")
    return name
  if name == "auto" and jax.default_backend() == "gpu" and not (dropping or softcap or bias) and (
    jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  ):
    return "cudnn"
  return "xla"


def dot_product_attention(
  q_BTNH: jax.Array,
  k_BSKH: jax.Array,
  v_BSKH: jax.Array,
  mask_B1TS: jax.Array,
  *,
  scale: float,
  dropout: Dropout | None = None,
  dropout_rng: jax.Array | None = None,
  softcap: float | None = None,
  implementation: str = "xla",
  causal: bool = False,
  bias_BNTS: jax.Array | None = None,
) -> jax.Array:
  """Grouped-query attention; plain XLA by default, scores and softmax in float32.

  `bias_BNTS` (batch may be 1) is added to the scaled scores before masking, as HF adds a
  relative-position bias (MPNet); it keeps the XLA path (see `resolve_attention`).

  Masked scores get the dtype's most negative value rather than -inf, so a row with no
  visible key (a padding query) gives a finite uniform average instead of NaN, as in HF.
  `implementation` is resolved by `resolve_attention`; with cuDNN, `causal` lets the kernel
  skip the blocks above the diagonal (the mask, which also carries padding and segments, is
  still applied).
  """
  impl = resolve_attention(implementation, q_BTNH.dtype, dropout=dropout, softcap=softcap,
                           bias=bias_BNTS is not None)
  if impl == "cudnn":
    return jax.nn.dot_product_attention(
      q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS, scale=scale, is_causal=causal,
      implementation="cudnn",
    )
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  q = q_BTNH.reshape(B, T, K, N // K, H)
  scores = jnp.einsum("btkgh,bskh->bkgts", q, k_BSKH, preferred_element_type=jnp.float32)
  scores = scores * scale
  if bias_BNTS is not None:
    b = bias_BNTS.astype(jnp.float32)
    scores = scores + b.reshape(b.shape[0], K, N // K, *b.shape[2:])
  if softcap:
    scores = jnp.tanh(scores / softcap) * softcap
  mask = mask_B1TS[:, :, None]  # B 1 1 T S
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None:
    probs = dropout(probs, dropout_rng)
  out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v_BSKH.dtype), v_BSKH)
  return out.reshape(B, T, N, H)


# ---------------------------------------------------------------------------------- KV cache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """One attention layer's keys and values [B, S_max, K, H] for incremental decoding.

  Preallocated at the full generation length so every decode step has the same shapes (one
  compile); new tokens are written in place at a slot index that all rows share.
  """

  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
    shape = (batch, max_len, kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def write(self, k_BTKH: jax.Array, v_BTKH: jax.Array, index) -> KVCache:
    at = (0, index, 0, 0)
    return KVCache(jax.lax.dynamic_update_slice(self.k, k_BTKH.astype(self.k.dtype), at),
                   jax.lax.dynamic_update_slice(self.v, v_BTKH.astype(self.v.dtype), at))


def set_attention(model: nnx.Module, name: str) -> None:
  """Pick the attention implementation (`ATTENTION`) of every attention module in `model`."""
  resolve_attention(name, jnp.float32, dropout=None, softcap=None)  # validates the name
  for _, module in model.iter_modules():
    if hasattr(module, "attention_impl"):
      module.attention_impl = name


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Pin an activation's sharding at a block boundary by logical names (no-op without a mesh)."""
  return sharding.constrain(x, names)
