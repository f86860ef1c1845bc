"""Losses as (sum, weight) pairs, so micro-batches and hosts combine them exactly.

Dividing by the whole batch's weight (tokens or examples) rather than each micro-batch's keeps
gradient accumulation equal to one big batch whatever the split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def causal_lm_loss(logits_BTV: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Next-token cross-entropy over tokens whose target has loss_mask=1 (within a segment)."""
  targets = batch["input_ids"][:, 1:]
  mask = target_mask(batch)
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - picked) * mask), jnp.sum(mask)


# head_fn(head_params, h_ND) -> logits_NV, e.g. `h @ kernel` or `h @ embedding.T`.
HeadFn = Callable[[Any, jax.Array], jax.Array]


def chunked_causal_lm_loss(
  hidden_BTD: jax.Array, head_fn: HeadFn, head_params: Any, batch: dict, *, chunk: int = 256
) -> tuple[jax.Array, jax.Array]:
  """`causal_lm_loss(head_fn(head_params, hidden_BTD), batch)` without [B,T,V] logits.

  The B*T positions (the last of each row has weight 0, so no slice or pad of the logits is
  needed) are processed `chunk` at a time in a `lax.scan`: each chunk's logits are upcast to
  float32, and under differentiation the same pass also forms dlogits = (softmax - onehot) *
  mask and pulls it back through `jax.vjp(head_fn)`, so dh and d(head_params) come out without
  a second head matmul. Memory is O(chunk * V) instead of several float32 [B,T,V] buffers; the
  residuals are dh (the size of `hidden_BTD`) and d(head_params).
  """
  B, T, D = hidden_BTD.shape
  targets = jnp.concatenate([batch["input_ids"][:, 1:], jnp.zeros((B, 1), batch["input_ids"].dtype)], 1)
  mask = jnp.concatenate([target_mask(batch), jnp.zeros((B, 1), jnp.float32)], 1)
  n = B * T
  chunk = max(1, min(chunk, n))
  pad = -n % chunk
  h = hidden_BTD.reshape(n, D)
  targets, mask = targets.reshape(n), mask.reshape(n)
  if pad:
    h = jnp.pad(h, ((0, pad), (0, 0)))
    targets, mask = jnp.pad(targets, (0, pad)), jnp.pad(mask, (0, pad))
  k = (n + pad) // chunk
  loss = _chunked_ce(head_fn, head_params, h.reshape(k, chunk, D), targets.reshape(k, chunk),
                     mask.reshape(k, chunk))
  return loss, jnp.sum(mask)


def _ce_chunks(head_fn, params, h_KCD, tgt_KC, mask_KC, *, with_grads: bool):
  """Loss sum over the chunks and, with `with_grads`, (dparams, dh_KCD) of that sum (dparams: a
  tuple of the floating leaves' gradients)."""

  def chunk_terms(p, h_CD, tgt_C, mask_C):
    if with_grads:
      logits_CV, pull = jax.vjp(head_fn, p, h_CD)
    else:
      logits_CV = head_fn(p, h_CD)
    logits = logits_CV.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    onehot = jnp.arange(logits.shape[-1]) == tgt_C[:, None]
    picked = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    loss = jnp.sum((lse - picked) * mask_C)
    if not with_grads:
      return loss, None
    dlogits = (jnp.exp(logits - lse[:, None]) - onehot) * mask_C[:, None]
    return loss, pull(dlogits.astype(logits_CV.dtype))

  # Only floating head params are summed (dp: their sums, in leaf order); integer ones (a
  # quantized table's codes, frozen) take float0 cotangents (`_chunked_ce_bwd`).
  leaves = jax.tree.leaves(params)
  sums = [i for i, x in enumerate(leaves) if _inexact(x)]

  def body(carry, xs):
    loss, dp = carry
    l, grads = chunk_terms(params, *xs)
    if grads is None:
      return (loss + l, dp), None
    dp_c, dh_CD = grads
    dp_c = jax.tree.leaves(dp_c)
    dp = tuple(a + dp_c[i].astype(jnp.float32) for a, i in zip(dp, sums, strict=True))
    return (loss + l, dp), dh_CD

  init = (jnp.zeros((), jnp.float32), tuple(jnp.zeros(leaves[i].shape, jnp.float32) for i in sums)
          if with_grads else None)
  (loss, dp), dh = jax.lax.scan(body, init, (h_KCD, tgt_KC, mask_KC))
  return loss, dp, dh


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_ce(head_fn, params, h_KCD, tgt_KC, mask_KC):
  return _ce_chunks(head_fn, params, h_KCD, tgt_KC, mask_KC, with_grads=False)[0]


def _chunked_ce_fwd(head_fn, params, h_KCD, tgt_KC, mask_KC):
  loss, dp, dh = _ce_chunks(head_fn, params, h_KCD, tgt_KC, mask_KC, with_grads=True)
  return loss, (params, dp, dh, tgt_KC, mask_KC)


def _chunked_ce_bwd(head_fn, res, g):
  params, dp, dh, tgt_KC, mask_KC = res
  leaves, tree = jax.tree.flatten(params)
  sums = iter(dp)
  dparams = jax.tree.unflatten(tree, [(g * next(sums)).astype(p.dtype) if _inexact(p)
                                      else np.zeros(p.shape, jax.dtypes.float0) for p in leaves])
  # Targets are integers (float0 cotangent); the mask is data, not a parameter.
  dtgt = jnp.zeros(tgt_KC.shape, jax.dtypes.float0)
  return dparams, (g * dh).astype(dh.dtype), dtgt, jnp.zeros_like(mask_KC)


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def _inexact(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.inexact)


def target_mask(batch: dict) -> jax.Array:
  """[B, T-1] float weights of the next-token targets."""
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
  if "segment_ids" in batch:
    # The last token of a packed document does not predict the next document's first token.
    seg = batch["segment_ids"]
    mask = mask * (seg[:, 1:] == seg[:, :-1])
  return mask


def example_weights(batch: dict, class_weights: jax.Array | None = None) -> jax.Array:
  """[B] weights of classification examples: class weight times `valid` (eval padding) times
  the row's own `weight` (data.weight_column, train rows only)."""
  labels = batch["labels"]
  w = jnp.ones(labels.shape, jnp.float32) if class_weights is None else class_weights[labels]
  if "valid" in batch:
    w = w * batch["valid"]
  if "weight" in batch:
    w = w * batch["weight"]
  return w


def classification_loss(
  logits_BL: jax.Array, batch: dict, class_weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy per example, optionally weighted per class (weight sum is the denominator)."""
  labels = batch["labels"]
  logp = jax.nn.log_softmax(logits_BL.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  w = example_weights(batch, class_weights)
  return jnp.sum(nll * w), jnp.sum(w)


def token_counts(batch: dict) -> jax.Array:
  # Preference batches hold two sequences per row (chosen_/rejected_attention_mask).
  masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
  return sum(jnp.sum(m) for m in masks) if masks else batch["input_ids"].size
