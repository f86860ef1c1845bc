"""A quantized frozen base for LoRA runs (QLoRA): `model.quantize = 'int8' | 'nf4'`.

The frozen weights of a LoRA run, every `layers.Linear` kernel [in, out] and `layers.Embed`
table [V, D], are held as qwix QArrays in two `QuantizedBase` variables: the codes take the
parameter's place (`.../q_proj/kernel`: int8, or NF4 indices as 4-bit `uint4`, same shape and
logical axes, so sharding and `scan_layers` treat them like the weight they replace), and the
absmax scales sit beside them (`.../q_proj/kernel_scale`, one per block of `BLOCK` along the
contracted axis (the table's width) and per output channel (row), in the parameter dtype).
LoRA adapters and `lora.train_also` modules (a classification head) stay float `nnx.Param`s:
the optimizer and the checkpoints see only them, and the codes ride in the frozen state.

Dequantization happens where a weight is read, inside the jitted step (`layers.quantized`,
`layers.weight`): a Linear (and a tied head's full logits) calls `qmatmul.dot`, which
dequantizes into the matmul and again in the backward pass, so the residuals kept between
forward and backward are the codes and scales, never a float copy of a layer; an embedding
lookup dequantizes the gathered rows only; in the chunked causal-LM loss (training and
evaluation) the tied head is `tied_head`'s, which dequantizes `HEAD_ROWS` rows of the table at
a time, so no float [V, D] copy of it ever exists. `hf.load` quantizes tensor by tensor as it
reads them, so the whole model never exists in full precision; exports dequantize
(`lora.merge` -> `dequantize_model`).

qwix's model-level API (`quantize_model`, `LoraProvider`) is not used: it intercepts jnp.dot
by looking up the caller's `self` on the Python stack and the weight by object identity during
a first call of the model, and brings its own LoRA parameters. jaxtune keeps its own LoRA
layers (PEFT export, logical-axis sharding, scan over layers) and a pure jitted step over
split states, so it stores qwix's QArray pieces itself and calls qwix's quantize, dot and
dequantize (see BUILD.md).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxtune import sharding
from jaxtune.errors import ConfigError
from jaxtune.models import layers, qmatmul
from jaxtune.patterns import compile_pattern

QTYPES = ("int8", "nf4")
# Block (tile) of the contracted axis sharing one absmax scale; QLoRA's NF4 block size. An axis
# that 64 does not divide gets one scale per channel over its whole length.
BLOCK = 64
# Kept in float: MPNet's relative-position bias table is indexed directly, not looked up or
# multiplied (and is tiny).
_KEEP_FLOAT = compile_pattern("model.quantize", r"(^|/)relative_attention_bias$")


# Rows of a quantized tied head dequantized at once inside the chunked loss (`tied_head`):
# 8192 x 640 float32 is 20 MiB for Gemma 3 270M, where its whole [262144, 640] table is 640 MiB.
HEAD_ROWS = 8192


class QuantizedBase(nnx.Variable):
  """Codes or scales of a quantized frozen base weight: never an `nnx.Param`, never trained."""


def check(quantize: str, lora_rank: int) -> None:
  """The run config's `model.quantize` against `lora.rank`, before anything is loaded."""
  if quantize == "":
    return
  if quantize not in QTYPES:
    raise ConfigError(f"config: model.quantize={quantize!r}: expected '' (off) or one of "
                      f"{', '.join(QTYPES)}")
  if lora_rank <= 0:
    raise ConfigError(
      f"config: model.quantize={quantize!r} quantizes the frozen base of a LoRA run; full "
      "fine-tuning of a quantized base is not supported: set lora.rank > 0 or unset model.quantize")
  try:
    import qwix  # noqa: F401
  except ImportError as e:
    raise ConfigError(f"config: model.quantize={quantize!r} needs the qwix package: "
                      "pip install 'jaxtune[qlora]'") from e


def _path(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def plan(model: nnx.Module, keep_float: str = "") -> dict[str, tuple[tuple, str, int]]:
  """{param path: (module path, attribute, tiled axis)} of the weights `quantize` stores
  quantized: Linear kernels (tiled along `in`) and Embed tables (tiled along D), except those
  whose path matches `keep_float` (the run's `lora.train_also`: trained, so float)."""
  keep = compile_pattern("lora.train_also", keep_float)
  out = {}
  for path, m in nnx.iter_modules(model):
    if isinstance(m, layers.Linear):
      attr, axis = "kernel", 0
    elif isinstance(m, layers.Embed):
      attr, axis = "embedding", 1
    else:
      continue
    name = _path((*path, attr))
    if (keep and keep.search(name)) or _KEEP_FLOAT.search(_path(path)):
      continue
    if hasattr(m, attr + "_scale"):
      raise ValueError(f"{name} is already quantized; quantize the model once")
    out[name] = (path, attr, axis)
  if not out:
    raise ConfigError(f"model.quantize: {type(model).__name__} has no linear or embedding weight "
                      f"outside lora.train_also={keep_float!r} to quantize; unset model.quantize")
  return out


@functools.cache
def _encoder(qtype: str, shape: tuple[int, ...], axis: int, out_shardings):
  import qwix

  block = BLOCK if shape[axis] % BLOCK == 0 else shape[axis]
  channels = tuple(i for i in range(len(shape)) if i != axis)

  def encode(value):
    q = qwix.quantize(value, "nf4" if qtype == "nf4" else jnp.int8,
                      channelwise_axes=channels, tiled_axes={axis: block})
    return q.qvalue, q.scale

  return jax.jit(encode, out_shardings=out_shardings)


# Elements of a weight on one device encoded in one call. qwix's encode of the whole
# [262144, 640] Gemma 3 table held float32 temporaries of the table's size: ~0.8 GB of the
# load's peak RSS, for the one tensor (BENCHMARKS.md, issue 17).
ENCODE_CHUNK = 1 << 23


def encode(value: jax.Array, qtype: str, axis: int, names=None) -> tuple[jax.Array, jax.Array]:
  """(codes, scales) of one float weight, placed like it (by its logical `names` on its mesh)."""
  placed = getattr(value, "sharding", None)
  out = None
  if isinstance(placed, NamedSharding) and names is not None:
    scale_shape = list(value.shape)
    scale_shape[axis] //= BLOCK if value.shape[axis] % BLOCK == 0 else value.shape[axis]
    out = (sharding.named_sharding(placed.mesh, names, value.shape),
           sharding.named_sharding(placed.mesh, names, tuple(scale_shape)))
  one_device = placed is None or len(placed.device_set) == 1
  if one_device and value.ndim == 2 and value.size > ENCODE_CHUNK:
    codes, scales = _encode_in_slices(value, qtype, axis)
    return (codes, scales) if out is None else (jax.device_put(codes, out[0]),
                                                jax.device_put(scales, out[1]))
  return _encoder(qtype, tuple(value.shape), axis, out)(value)


def _encode_in_slices(value: jax.Array, qtype: str, axis: int) -> tuple[jax.Array, jax.Array]:
  """`encode` slice by slice along the other axis (blocks lie along `axis`, so no block is cut):
  the temporaries are one slice's. Slices of a power of two rows: one compile for a vocabulary
  of 2^k rows, two otherwise (the last slice)."""
  other = 1 - axis
  n = value.shape[other]
  step = 1 << max(0, (ENCODE_CHUNK // value.shape[axis]).bit_length() - 1)
  parts = []
  for start in range(0, n, step):
    piece = jax.lax.slice_in_dim(value, start, min(start + step, n), axis=other)
    parts.append(jax.block_until_ready(_encoder(qtype, tuple(piece.shape), axis, None)(piece)))
    del piece
  codes = jnp.concatenate([c for c, _ in parts], axis=other)
  scales = jnp.concatenate([s for _, s in parts], axis=other)
  return codes, scales


def install(module: nnx.Module, attr: str, codes: jax.Array, scale: jax.Array, qtype: str) -> None:
  """In place: `module.<attr>` becomes the codes and `<attr>_scale` the scales (same logical
  axes as the weight they replace)."""
  names = tuple(getattr(module, attr).get_metadata().get("out_sharding") or (None,) * codes.ndim)
  setattr(module, attr, QuantizedBase(codes, out_sharding=names, eager_sharding=False))
  setattr(module, attr + "_scale", QuantizedBase(scale, out_sharding=names, eager_sharding=False))
  module.quant_type = qtype


def _module(root: nnx.Module, path: tuple) -> nnx.Module:
  m = root
  for p in path:
    m = m[p] if isinstance(p, int) else getattr(m, p)
  return m


def apply(model: nnx.Module, qtype: str, keep_float: str = "") -> nnx.Module:
  """In place: quantize every weight `plan` picks of a built model (the random-weight presets;
  `hf.load` quantizes while it reads instead). Returns the model."""
  for path, attr, axis in plan(model, keep_float).values():
    m = _module(model, path)
    var = getattr(m, attr)
    names = var.get_metadata().get("out_sharding")
    codes, scale = encode(var.get_value(), qtype, axis, names)
    install(m, attr, codes, scale, qtype)
  return model


def install_all(model: nnx.Module, encoded: Mapping[str, tuple[jax.Array, jax.Array]],
                planned: Mapping[str, tuple[tuple, str, int]], qtype: str) -> nnx.Module:
  """In place: put the (codes, scales) `hf.load` encoded per parameter path into `model`."""
  for name, (codes, scale) in encoded.items():
    path, attr, _ = planned[name]
    install(_module(model, path), attr, codes, scale, qtype)
  return model


def is_quantized(model: nnx.Module) -> bool:
  return any(hasattr(m, "quant_type") for _, m in nnx.iter_modules(model))


def dequantize_model(model: nnx.Module) -> nnx.Module:
  """In place: every quantized weight back to a float `nnx.Param` (the scales' dtype, i.e. the
  run's param dtype) for export; values are the dequantized codes, not the original weights."""
  for _, m in list(nnx.iter_modules(model)):
    if not hasattr(m, "quant_type"):
      continue
    for attr in ("kernel", "embedding"):
      if hasattr(m, attr + "_scale"):
        value = layers.weight(m, attr)
        names = getattr(m, attr).get_metadata().get("out_sharding")
        delattr(m, attr + "_scale")
        setattr(m, attr, nnx.Param(value, out_sharding=names, eager_sharding=False))
    del m.quant_type
  return model


def _bits(dtype) -> int:
  dtype = jnp.dtype(dtype)
  return jnp.iinfo(dtype).bits if jnp.issubdtype(dtype, jnp.integer) else dtype.itemsize * 8


def param_bytes(tree) -> int:
  """Bytes of every array in `tree` (an nnx State, pure dict or module) at its storage width:
  4-bit codes count half a byte (XLA packs uint4 two to a byte; numpy's itemsize says 1)."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree)
  leaves = jax.tree.leaves(tree)
  return sum(int(np.prod(x.shape)) * _bits(x.dtype) // 8 for x in leaves if hasattr(x, "dtype"))


# ---------------------------------------------------------------------------------------------
# The tied LM head of a quantized base, for the chunked loss


def tied_head(table: layers.Embed):
  """(head_fn, head_params) of a tied head whose table is quantized, for
  `losses.chunked_causal_lm_loss`: logits [N, V] = h [N, D] @ table.T, the table dequantized
  `HEAD_ROWS` rows at a time inside each loss chunk (and again, block by block, for dh in the
  backward pass) rather than as one float [V, D] temporary per step.

  The table is frozen (a `QuantizedBase`, never trained), so no gradient flows to its codes or
  scales: only dh is computed."""
  q = layers.quantized(table, "embedding")
  V = q.qvalue.shape[0]
  blocks = -(-V // HEAD_ROWS)
  while V % blocks:  # equal blocks (scanned); a vocabulary without a fitting divisor: one block
    blocks += 1
  if V // blocks < HEAD_ROWS // 8:
    blocks = 1
  return functools.partial(_tied_logits, q.qtype, table.compute_dtype, blocks), (q.qvalue, q.scale)


def _rows(qtype, params, i, rows: int, dtype) -> jax.Array:
  """Rows [i * rows, (i + 1) * rows) of the quantized table, dequantized to `dtype`."""
  codes, scale = (jax.lax.dynamic_slice_in_dim(x, i * rows, rows) for x in params)
  return qmatmul.dequantize(qtype, codes, scale, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _tied_logits(qtype, compute_dtype, blocks: int, params, h_ND):
  dtype = compute_dtype or h_ND.dtype
  h_ND = h_ND.astype(dtype)
  V, rows = params[0].shape[0], params[0].shape[0] // blocks

  def block(logits_NV, i):
    part = jnp.einsum("nd,vd->nv", h_ND, _rows(qtype, params, i, rows, dtype))
    return jax.lax.dynamic_update_slice_in_dim(logits_NV, part, i * rows, axis=1), None

  logits_NV, _ = jax.lax.scan(block, jnp.zeros((h_ND.shape[0], V), dtype), jnp.arange(blocks))
  return logits_NV


def _tied_logits_fwd(qtype, compute_dtype, blocks, params, h_ND):
  # Residuals are the inputs only: the backward pass dequantizes each block again.
  return _tied_logits(qtype, compute_dtype, blocks, params, h_ND), (params, h_ND)


def _tied_logits_bwd(qtype, compute_dtype, blocks, res, g_NV):
  params, h_ND = res
  dtype = compute_dtype or h_ND.dtype
  rows = params[0].shape[0] // blocks

  def block(dh_ND, i):
    g = jax.lax.dynamic_slice_in_dim(g_NV, i * rows, rows, axis=1).astype(dtype)
    return dh_ND + jnp.einsum("nv,vd->nd", g, _rows(qtype, params, i, rows, dtype),
                              preferred_element_type=jnp.float32), None

  dh_ND, _ = jax.lax.scan(block, jnp.zeros(h_ND.shape, jnp.float32), jnp.arange(blocks))
  codes, scale = params
  # Frozen: integer codes take a float0 cotangent, the scales zeros.
  return (np.zeros(codes.shape, jax.dtypes.float0), jnp.zeros_like(scale)), dh_ND.astype(h_ND.dtype)


_tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)
