"""Matmuls against a quantized frozen base weight (QLoRA) that keep no float copy of it.

A quantized weight is its codes and absmax scales (see jaxtune.quantize); `dot` dequantizes it
inside the matmul. Under plain autodiff the dequantized float weight is what the backward pass
needs for the input's gradient (dx = g @ W^T), so JAX keeps it as a residual: one float32 copy
of every layer's kernels per step, stacked [L, in, out] when the layers are scanned, which cost
more memory than the codes saved. `dot` is a custom VJP whose residuals are the codes and scales
themselves (arrays the step holds anyway): the backward pass dequantizes the weight again. The
weight is frozen, so only dx is computed; the codes take a float0 cotangent, the scales zeros.

Shape legend: I contracted input width, O output width (`contract=0`, a Linear kernel [I, O]);
a tied head contracts a table [V, D] along D (`contract=1`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def dequantize(qtype, codes: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """The float weight of (codes, scales) in `dtype`, as qwix's dequantize-first `qwix.dot` path
  computes it (scales cast to `dtype` first)."""
  import qwix  # only a quantized base (model.quantize, the jaxtune[qlora] extra) gets here

  return qwix.dequantize(qwix.QArray(codes, scale.astype(dtype), qtype=qtype))


def _contract(x: jax.Array, w: jax.Array, axis: int) -> jax.Array:
  """x [..., w.shape[axis]] contracted with w's `axis`: x @ w (axis 0) or x @ w.T (axis 1)."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (axis,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def dot(qtype, contract: int, x: jax.Array, codes: jax.Array, scale: jax.Array) -> jax.Array:
  """x [..., I] @ the dequantized weight, in x's dtype; `contract` is the weight's axis that x
  meets (0: a kernel [I, O]; 1: a table [V, D] used as x @ table.T)."""
  return _contract(x, dequantize(qtype, codes, scale, x.dtype), contract)


def _dot_fwd(qtype, contract, x, codes, scale):
  # Residuals: the codes and scales only, never the dequantized weight.
  return dot(qtype, contract, x, codes, scale), (codes, scale)


def _dot_bwd(qtype, contract, res, g):
  codes, scale = res
  dx = _contract(g, dequantize(qtype, codes, scale, g.dtype), 1 - contract)
  return dx, np.zeros(codes.shape, jax.dtypes.float0), jnp.zeros_like(scale)


dot.defvjp(_dot_fwd, _dot_bwd)
