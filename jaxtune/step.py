"""The pure train and eval steps, over plain pytrees, jitted once by the driver.

The train state is a dict: `step`, `params` (a pure dict of arrays, the master weights),
`opt_state`, `rng`, `avg` (weight averages or None), `skipped` (non-finite steps skipped) and
`first_bad_step` (-1 while all steps were finite). A non-finite loss, gradient or updated state
(parameters, optimizer state, averages) never reaches the state: the whole update is dropped
inside the step, and the host decides (at its next log step, so dispatch stays asynchronous)
whether to stop or carry on.

The loss and the evaluation sums are the objective's (`jaxtune.objectives`, by `model.task`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune import averaging, losses, objectives, optim
from jaxtune.objectives.base import MODEL_INPUTS, merge, model_kwargs  # noqa: F401 (step.merge, ...)

# The causal-LM loss helpers, as callers of step.causal_lm_terms (tests, benchmarks) know them.
from jaxtune.objectives.causal_lm import auto_lm_loss_chunk, causal_lm_terms, lm_head  # noqa: F401


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable: part of the jit cache key)."""

  task: str  # model.task: the objective (`jaxtune.objectives`) whose loss the step minimises
  micro_batches: int
  skip_nonfinite: bool
  optim_cfg: object  # a frozen ConfigDict section
  class_weights: tuple[float, ...] | None = None
  # Positions per chunk of the causal-LM loss (losses.chunked_causal_lm_loss); 0: plain loss,
  # -1: `auto_lm_loss_chunk()` for the backend the step is traced for.
  lm_loss_chunk: int = -1
  options: object = None  # the objective's own static settings (`Objective.options`)


def train_step(
  graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: StepConfig, state: dict,
  batch: dict, frozen: dict | None = None,
) -> tuple[dict, dict]:
  step = state["step"]
  rng = jax.random.fold_in(state["rng"], step)
  m = cfg.micro_batches
  micro = jax.tree.map(lambda x: x.reshape((m, x.shape[0] // m) + x.shape[1:]), batch)

  objective = objectives.for_task(cfg.task)
  # The whole batch's weight, so each micro-batch's share adds up to the full-batch mean.
  total = jnp.maximum(objective.batch_weight(batch, cfg), 1e-6)

  def loss_fn(params, mb, mb_rng):
    model = merge(graphdef, params, frozen)
    loss_sum, weight, *extra = objective.loss_terms(model, mb, mb_rng, cfg)
    extras = extra[0] if extra else {}
    # Extras leave the gradient: they are reported, not minimised.
    extras = jax.tree.map(lambda x: jax.lax.stop_gradient(x).astype(jnp.float32), extras)
    return loss_sum / total, (loss_sum, weight, extras)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def accumulate(carry, xs):
    grads, loss_sum, weight, extras = carry
    mb, i = xs
    g, (ls, w, ex) = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
    add = lambda a, b: jax.tree.map(jnp.add, a, b)
    return (add(grads, g), loss_sum + ls, weight + w, add(extras, ex)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
  # The extras' structure (objective-defined) from an abstract trace of one micro-batch.
  first = jax.tree.map(lambda x: x[0], micro)
  extra_shapes = jax.eval_shape(loss_fn, state["params"], first, rng)[1][2]
  zero_extras = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), extra_shapes)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zero_extras)
  (grads, loss_sum, weight, extras), _ = jax.lax.scan(accumulate, init, (micro, jnp.arange(m)))

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
  # One branch keeps the whole new state or the old one. (A jnp.where per leaf let XLA copy the
  # scalar chain that combines every leaf's check into each leaf's select: N^2 operations for N
  # leaves, and an 8B LoRA step with some 1,300 state leaves compiled for over 15 minutes.)
  params, opt_state, avg = jax.lax.cond(
    finite, lambda: (new_params, new_opt, new_avg),
    lambda: (state["params"], state["opt_state"], state["avg"]))
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
  # An objective's own train metrics: each a (sum, weight) pair over the whole batch.
  for name, (s, w) in extras.items():
    metrics[f"train/{name}"] = s / jnp.maximum(w, 1e-6)
  return new_state, metrics


def all_finite(tree) -> jax.Array:
  """True when every floating-point leaf of `tree` is free of NaN and Inf (a scalar bool)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def eval_step(graphdef: nnx.GraphDef, task: str, params: dict, frozen: dict | None,
              batch: dict, lm_loss_chunk: int = -1, options=None) -> dict:
  """Sums over one batch (loss and weight) and what the objective of `task` reads per example
  (`Objective.eval_sums`; `options`: `Objective.options(config)`)."""
  kw = {} if options is None else {"options": options}  # objectives without options take none
  return objectives.for_task(task).eval_sums(merge(graphdef, params, frozen), batch, lm_loss_chunk, **kw)


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

