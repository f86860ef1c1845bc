"""Causal language modelling (`model.task='causal_lm'`): plain text, and SFT on chats or
prompt / completion pairs.

Rows to arrays: `jaxtune.data.sft` (chat templates rendered in a sandbox, completion-only loss
masks, packing by `jaxtune.data.packing`) for `data.kind='sft'`, or generated text for
`'synthetic'`. Loss: next-token cross-entropy over the tokens whose target is in the loss mask,
chunked over positions when the head allows it so no [B, T, V] logits are formed
(`causal_lm_terms`). Metrics: loss, perplexity, tokens. A finished run exports a
`...ForCausalLM` with its generation_config.json (or a GGUF file), and generates text
(`jaxtune.generate`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune import losses, metrics, quantize
from jaxtune.models import layers
from jaxtune.objectives.base import Objective, model_kwargs


def _dot_head(compute_dtype, kernel_DV, h_ND):
  dtype = compute_dtype or h_ND.dtype
  return jnp.dot(h_ND.astype(dtype), kernel_DV.astype(dtype))


def _tied_head(compute_dtype, table_VD, h_ND):
  dtype = compute_dtype or h_ND.dtype
  return jnp.einsum("nd,vd->nv", h_ND.astype(dtype), table_VD.astype(dtype))


def lm_head(model: nnx.Module) -> tuple[losses.HeadFn, jax.Array] | None:
  """(head_fn, weight) computing `model.logits_from_hidden` per chunk, or None if not plain.

  Plain: a causal LM with `hidden_states` whose head is a bias-free `layers.Linear` [D,V]
  (`lm_head`) or the tied word table [V,D] (`embed_tokens` / `wte`). A LoRA-adapted head
  (its own dropout key and adapter matrices) keeps the full-logits loss.
  """
  if not hasattr(model, "hidden_states") or not hasattr(model, "logits_from_hidden"):
    return None
  if getattr(getattr(model, "config", None), "final_logit_softcap", None):
    return None  # the head is followed by a tanh cap (Gemma 2 style): keep the full-logits loss
  head = getattr(model, "lm_head", None)
  if head is not None:
    if type(head) is not layers.Linear or head.bias is not None:
      return None
    return functools.partial(_dot_head, head.compute_dtype), layers.weight(head, "kernel")
  table = getattr(model, "embed_tokens", None)
  if table is None:
    table = getattr(model, "wte", None)
  if type(table) is not layers.Embed:
    return None
  if layers.quantized(table, "embedding") is not None:  # dequantized block by block in the loss
    return quantize.tied_head(table)
  return functools.partial(_tied_head, table.compute_dtype), layers.weight(table, "embedding")


# Float32 logits one loss chunk may hold on an accelerator (see `auto_lm_loss_chunk`).
ACCELERATOR_CHUNK_LOGITS_BYTES = 1 << 30


def auto_lm_loss_chunk(vocab: int | None = None, backend: str | None = None) -> int:
  """Loss chunk length (positions) for `backend` (default: JAX's) and a head of `vocab` logits.

  CPU: 128 positions (16 MiB of float32 logits at a 32k vocabulary) stay in the last-level
  cache: 4-5% faster steps than 256 in `benchmarks/cpu_throughput.py`, and 64 or less is slower
  again (per-chunk overhead).

  Accelerators: as many positions as fit 1 GiB of float32 logits (a power of two, at least 256;
  2048 at Llama 3's 128k vocabulary, 8192 at 32k). Every chunk adds its head gradient into a
  float32 accumulator the size of the head (1 GiB for Llama 3.2 1B's tied table), so the chunk
  count multiplies that read-modify-write: with 256-position chunks a 1B step at 8 x 2048 tokens
  did 64 of them, some 190 GB of memory traffic (about 45 ms at an H200's 4.3 TB/s): the likely
  cause of the 66 ms between its 330 ms step and the 264 ms that forward + backward (full
  logits) + update took when timed alone (BENCHMARKS.md, 2026-11-30). 2048 makes that 8.
  """
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return 128
  if not vocab:
    return 256
  fit = ACCELERATOR_CHUNK_LOGITS_BYTES // (4 * vocab)
  return max(256, 1 << (max(fit, 1).bit_length() - 1))  # the power of two at or below


def causal_lm_terms(model: nnx.Module, batch: dict, dropout_rng, chunk: int):
  """Loss (sum, weight) of a causal LM on `batch`, chunked when the head allows it."""
  head = lm_head(model) if chunk != 0 else None
  if head is None:
    logits = model(batch["input_ids"], **model_kwargs(batch), dropout_rng=dropout_rng)
    return losses.causal_lm_loss(logits, batch)
  h = model.hidden_states(batch["input_ids"], **model_kwargs(batch), dropout_rng=dropout_rng)
  if chunk < 0:
    one = jax.ShapeDtypeStruct((1, h.shape[-1]), h.dtype)
    chunk = auto_lm_loss_chunk(jax.eval_shape(head[0], head[1], one).shape[-1])
  return losses.chunked_causal_lm_loss(h, *head, batch, chunk=chunk)


class CausalLM(Objective):
  name = head = "causal_lm"
  generates = True
  pipeline_tag = "text-generation"
  auto_classes = ("AutoModelForCausalLM", "AutoPeftModelForCausalLM")
  base_metrics = metrics.LM_METRICS
  line_metrics = ("loss", "perplexity")
  table_metrics = ("loss", "perplexity", "tokens")

  def batch_weight(self, batch, cfg):
    return jnp.sum(losses.target_mask(batch))

  def loss_terms(self, model, batch, dropout_rng, cfg):
    return causal_lm_terms(model, batch, dropout_rng, cfg.lm_loss_chunk)

  def eval_sums(self, model, batch, lm_loss_chunk=-1, options=None):
    b = dict(batch)
    if "valid" in b:
      b["loss_mask"] = b["loss_mask"] * b["valid"][:, None]
    loss_sum, weight = causal_lm_terms(model, b, None, lm_loss_chunk)
    return {"loss_sum": loss_sum, "weight": weight}

  def metrics(self, sums, label_names=(), order=None):
    return metrics.lm_metrics(sums.loss_sum, sums.weight), {}

  def usage(self, config, here, *, sbert, chat):
    return [
      "`generation_config.json` carries the end-of-sequence and chat stop tokens.", "",
      "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
      f"path = {here}", "tokenizer = AutoTokenizer.from_pretrained(path)",
      "model = AutoModelForCausalLM.from_pretrained(path)",
      'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], '
      'add_generation_prompt=True, return_tensors="pt")' if chat else
      'ids = tokenizer("Hello", return_tensors="pt").input_ids',
      "out = model.generate(ids, max_new_tokens=64)",
      "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))", "```"]


OBJECTIVE = CausalLM()
