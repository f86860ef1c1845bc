"""The pure train and eval steps, over plain pytrees, jitted once by the driver.

The train state is a dict: `step`, `params` (a pure dict of arrays, the master weights),
`opt_state`, `rng`, `avg` (weight averages or None), `skipped` (non-finite steps skipped) and
`first_bad_step` (-1 while all steps were finite). A non-finite loss, gradient or updated state
(parameters, optimizer state, averages) never reaches the state: the whole update is dropped
inside the step, and the host decides (at its next log step, so dispatch stays asynchronous)
whether to stop or carry on.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune import averaging, losses, optim, quantize
from jaxtune.models import layers

# Keys of a batch that the model consumes (the rest feed the loss).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "positions", "segment_ids")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable: part of the jit cache key)."""

  task: str
  micro_batches: int
  skip_nonfinite: bool
  optim_cfg: object  # a frozen ConfigDict section
  class_weights: tuple[float, ...] | None = None
  # Positions per chunk of the causal-LM loss (losses.chunked_causal_lm_loss); 0: plain loss,
  # -1: `auto_lm_loss_chunk()` for the backend the step is traced for.
  lm_loss_chunk: int = -1


def model_kwargs(batch: dict) -> dict:
  kw = {k: batch[k] for k in MODEL_INPUTS if k in batch and k != "input_ids"}
  return kw


def loss_terms(task: str, logits: jax.Array, batch: dict, class_weights) -> tuple[jax.Array, jax.Array]:
  if task == "causal_lm":
    return losses.causal_lm_loss(logits, batch)
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  return losses.classification_loss(logits, batch, cw)


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


def auto_lm_loss_chunk() -> int:
  """Loss chunk length for the default backend.

  On a CPU a chunk of 128 positions (16 MiB of float32 logits at a 32k vocabulary) stays in the
  last-level cache: 4-5% faster steps than 256 in `benchmarks/cpu_throughput.py`, and 64 or less
  is slower again (per-chunk overhead). Accelerators keep 256 until measured there.
  """
  return 128 if jax.default_backend() == "cpu" else 256


def causal_lm_terms(model: nnx.Module, batch: dict, dropout_rng, chunk: int):
  """Loss (sum, weight) of a causal LM on `batch`, chunked when the head allows it."""
  if chunk < 0:
    chunk = auto_lm_loss_chunk()
  head = lm_head(model) if chunk > 0 else None
  if head is None:
    logits = model(batch["input_ids"], **model_kwargs(batch), dropout_rng=dropout_rng)
    return losses.causal_lm_loss(logits, batch)
  h = model.hidden_states(batch["input_ids"], **model_kwargs(batch), dropout_rng=dropout_rng)
  return losses.chunked_causal_lm_loss(h, *head, batch, chunk=chunk)


def merge(graphdef: nnx.GraphDef, params: dict, frozen: dict | None) -> nnx.Module:
  """The model from trainable `params` and, with LoRA, the `frozen` base weights."""
  return nnx.merge(graphdef, params) if frozen is None else nnx.merge(graphdef, params, frozen)


def train_step(
  graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: StepConfig, state: dict,
  batch: dict, frozen: dict | None = None,
) -> tuple[dict, dict]:
  step = state["step"]
  rng = jax.random.fold_in(state["rng"], step)
  m = cfg.micro_batches
  micro = jax.tree.map(lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)

  # The whole batch's weight, so each micro-batch's share adds up to the full-batch mean.
  if cfg.task == "causal_lm":
    total = jnp.sum(losses.target_mask(batch))
  else:
    cw = None if cfg.class_weights is None else jnp.asarray(cfg.class_weights, jnp.float32)
    total = jnp.sum(losses.example_weights(batch, cw))
  total = jnp.maximum(total, 1e-6)

  def loss_fn(params, mb, mb_rng):
    model = merge(graphdef, params, frozen)
    if cfg.task == "causal_lm":
      loss_sum, weight = causal_lm_terms(model, mb, mb_rng, cfg.lm_loss_chunk)
    else:
      logits = model(mb["input_ids"], **model_kwargs(mb), dropout_rng=mb_rng)
      loss_sum, weight = loss_terms(cfg.task, logits, mb, cfg.class_weights)
    return loss_sum / total, (loss_sum, weight)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def accumulate(carry, xs):
    grads, loss_sum, weight = carry
    mb, i = xs
    g, (ls, w) = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
    return (jax.tree.map(jnp.add, grads, g), loss_sum + ls, weight + w), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, loss_sum, weight), _ = jax.lax.scan(accumulate, init, (micro, jnp.arange(m)))

  penalty, penalty_grads = jax.value_and_grad(lambda p: optim.penalty(p, cfg.optim_cfg))(state["params"])
  grads = jax.tree.map(lambda g, pg: g + pg, grads, penalty_grads)
  # Gradients stay float32 (accumulated in float32) whatever the parameter dtype.

  loss = loss_sum / jnp.maximum(weight, 1e-6)
  grad_norm = optax.global_norm(grads)
  updates, new_opt = tx.update(grads, state["opt_state"], state["params"])
  # Casting back to the stored dtype keeps the state's types fixed (bf16 parameters and their
  # moments would otherwise be promoted by float32 hyperparameters and force a recompile).
  cast = lambda new, old: jax.tree.map(lambda a, b: a.astype(b.dtype), new, old)
  new_params = cast(optax.apply_updates(state["params"], updates), state["params"])
  new_opt = cast(new_opt, state["opt_state"])
  new_avg = state["avg"]
  if new_avg is not None:
    new_avg = cast(averaging.update(new_avg, new_params, step, cfg.optim_cfg), new_avg)
  # Finite gradients can still overflow the update (a huge learning rate, a bf16 moment), so the
  # new state is checked too, after the cast to its stored dtype: one reduction per step.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((new_params, new_opt, new_avg))

  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  params = keep(new_params, state["params"])
  opt_state = keep(new_opt, state["opt_state"])
  avg = state["avg"] if new_avg is None else keep(new_avg, state["avg"])
  new_state = {
    "step": step + 1,
    "params": params,
    "opt_state": opt_state,
    "rng": state["rng"],
    "avg": avg,
    "skipped": state["skipped"] + (~finite).astype(jnp.int32),
    "first_bad_step": jnp.where((state["first_bad_step"] < 0) & ~finite, step, state["first_bad_step"]),
  }
  metrics = {
    "train/loss": loss,
    "train/penalty": penalty,
    "train/grad_norm": grad_norm,
    "train/tokens": losses.token_counts(batch).astype(jnp.float32),
    "train/skipped_steps": new_state["skipped"],
  }
  return new_state, metrics


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and Inf (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def eval_step(graphdef: nnx.GraphDef, task: str, params: dict, frozen: dict | None,
              batch: dict, lm_loss_chunk: int = -1) -> dict:
  """Sums over one batch: loss and weight, plus predictions for classification."""
  model = merge(graphdef, params, frozen)
  if task == "causal_lm":
    b = dict(batch)
    if "valid" in b:
      b["loss_mask"] = b["loss_mask"] * b["valid"][:, None]
    loss_sum, weight = causal_lm_terms(model, b, None, lm_loss_chunk)
    return {"loss_sum": loss_sum, "weight": weight}
  logits = model(batch["input_ids"], **model_kwargs(batch))
  loss_sum, weight = losses.classification_loss(logits, batch)
  return {"loss_sum": loss_sum, "weight": weight, "predictions": jnp.argmax(logits, axis=-1),
          "logits": logits.astype(jnp.float32)}


def init_state(params: dict, tx: optax.GradientTransformation, seed: int, optim_cfg) -> dict:
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "opt_state": tx.init(params),
    "rng": jax.random.key_data(jax.random.key(seed)),
    "avg": averaging.init(params, optim_cfg),
    "skipped": jnp.zeros((), jnp.int32),
    "first_bad_step": jnp.full((), -1, jnp.int32),
  }

