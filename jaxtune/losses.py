"""Losses as (sum, weight) pairs, so micro-batches and hosts combine them exactly.

Dividing by the whole batch's weight (tokens or examples) rather than each micro-batch's keeps
gradient accumulation equal to one big batch whatever the split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_lm_loss(logits_BTV: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Next-token cross-entropy over tokens whose target has loss_mask=1 (within a segment)."""
  targets = batch["input_ids"][:, 1:]
  mask = target_mask(batch)
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - picked) * mask), jnp.sum(mask)


def target_mask(batch: dict) -> jax.Array:
  """[B, T-1] float weights of the next-token targets."""
  mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
  if "segment_ids" in batch:
    # The last token of a packed document does not predict the next document's first token.
    seg = batch["segment_ids"]
    mask = mask * (seg[:, 1:] == seg[:, :-1])
  return mask


def example_weights(batch: dict, class_weights: jax.Array | None = None) -> jax.Array:
  """[B] weights of classification examples: class weight times `valid` (eval padding)."""
  labels = batch["labels"]
  w = jnp.ones(labels.shape, jnp.float32) if class_weights is None else class_weights[labels]
  if "valid" in batch:
    w = w * batch["valid"]
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
  return jnp.sum(batch["attention_mask"]) if "attention_mask" in batch else batch["input_ids"].size
