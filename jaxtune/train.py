"""The training driver: `train_and_evaluate(config, workdir)`, read top to bottom.

Sections: setup, mesh, data, model, optimizer, state and shardings, restore, loop, final.
The step itself is the pure `jaxtune.step.train_step`, jitted once here with explicit
shardings and buffer donation.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxtune import averaging, checkpoint, data, metrics, optim, sharding, step, writer
from jaxtune.config import parse_overrides, validate
from jaxtune.data import pipeline
from jaxtune.models import presets

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """A loss or gradient became NaN/Inf and the config says to stop."""


def load_model(config: ml_collections.ConfigDict, mesh, num_labels: int | None):
  """The model, placed on the mesh: HF weights, or random ones from a preset."""
  m = config.model
  compute = None if m.compute_dtype == m.param_dtype else m.compute_dtype
  if m.source.startswith("preset:"):
    model = presets.init(m.source.removeprefix("preset:"), task=m.task, num_labels=num_labels,
                         param_dtype=m.param_dtype, compute_dtype=compute, mesh=mesh, seed=config.seed)
  else:
    from jaxtune import hf

    model = hf.load(m.source, task=m.task, num_labels=num_labels, param_dtype=m.param_dtype,
                    compute_dtype=compute, mesh=mesh, allow_pickle=m.allow_pickle,
                    config_overrides=parse_overrides(m.config_overrides), seed=config.seed)
  model.remat = m.remat
  return model


def _num_layers(params: dict) -> int:
  layers = params.get("layers", {})
  return len(layers)


def _state_shardings(state, mesh):
  """Shardings of every state leaf as placed (params from their logical names, the rest by
  XLA's propagation from them), with scalars replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: x.sharding if isinstance(x, jax.Array) and x.ndim else replicated, state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  # ------------------------------------------------------------------------------- setup
  validate(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    writer.write_config(workdir, config)

  # -------------------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(**config.mesh)

  # -------------------------------------------------------------------------------- data
  splits = data.build(config, workdir)
  train_ds = splits["train"]
  batcher = pipeline.Batcher(train_ds, config.train.batch_size, config.seed)
  if config.train.epochs > 0:
    total_steps = max(1, math.ceil(config.train.epochs * batcher.steps_per_epoch))
  else:
    total_steps = config.train.steps
  if config.train.batch_size % (jax.process_count() * 1) or (
    config.train.batch_size // config.train.micro_batches
  ) % math.prod(mesh.shape[a] for a in ("data", "fsdp")):
    raise ValueError(
      f"config: train.batch_size={config.train.batch_size} / micro_batches="
      f"{config.train.micro_batches} must split evenly over the data x fsdp mesh axes "
      f"({mesh.shape['data']} x {mesh.shape['fsdp']})"
    )

  # ------------------------------------------------------------------------------- model
  model = load_model(config, mesh, splits.num_labels)
  model.train()
  train_graphdef, params = nnx.split(model)
  model.eval()
  eval_graphdef, _ = nnx.split(model)
  params = params.to_pure_dict()
  del model

  # --------------------------------------------------------------------------- optimizer
  tx, schedule = optim.build_optimizer(config.optim, params, total_steps, _num_layers(params))

  # ---------------------------------------------------------------- state and shardings
  with sharding.use_mesh(mesh):
    state = jax.jit(functools.partial(step.init_state, tx=tx, seed=config.seed,
                                      optim_cfg=config.optim))(params)
  state_sh = _state_shardings(state, mesh)
  sample = batcher.host_batch(0)
  batch_sh = pipeline.batch_shardings(mesh, sample)
  step_cfg = step.StepConfig(
    task=config.model.task, micro_batches=config.train.micro_batches,
    skip_nonfinite=config.train.on_nonfinite == "skip", optim_cfg=config.optim,
    class_weights=splits.class_weights,
  )
  traces = {"train": 0}

  def counted_step(state, batch):
    traces["train"] += 1  # runs only while tracing: counts compilations
    return step.train_step(train_graphdef, tx, step_cfg, state, batch)

  train_fn = jax.jit(counted_step, in_shardings=(state_sh, batch_sh),
                     out_shardings=(state_sh, None), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(step.eval_step, eval_graphdef, config.model.task))

  # ----------------------------------------------------------------------------- restore
  ckpt = checkpoint.Checkpointer(
    workdir / "checkpoints", save_every_steps=config.checkpoint.every_steps,
    save_every_minutes=config.checkpoint.every_minutes, keep_last=config.checkpoint.keep_last,
    keep_best=config.checkpoint.keep_best, best_metric=config.checkpoint.best_metric,
    best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save,
  )
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
  restored = ckpt.restore_latest(_ckpt_tree(abstract))
  start = 0
  if restored is not None:
    start, tree, meta = restored
    state = _from_ckpt_tree(tree, state)
    log.info("resumed from step %d (data position %s)", start, meta.get("data_position"))
  mw = writer.MetricWriter(workdir) if is_main else None
  if mw is not None:
    mw.truncate_after(start)
    if start == 0:
      writer.write_run_info(
        workdir, config_json=config.to_json_best_effort(), mesh_shape=dict(mesh.shape),
        data_fingerprint=train_ds.fingerprint(), extra={"total_steps": total_steps},
      )

  def evaluate(params, split: str) -> dict:
    return _evaluate(eval_fn, params, splits[split], config, mesh, splits.label_names)

  def save(state, s: int, eval_metrics=None, force=False):
    meta = {"step": s, "data_position": batcher.position(s), "total_steps": total_steps}
    ckpt.save(s, _ckpt_tree(state), meta=meta, metrics=eval_metrics, force=force)

  # -------------------------------------------------------------------------------- loop
  peak = writer.device_peak_flops(jax.devices()[0])
  flops_per_token = 6 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  bar = writer.ProgressBar(total_steps, initial_step=start) if is_main and config.train.progress else None
  pending: list[dict] = []
  last_eval: dict = {}
  t_log = time.perf_counter()
  s = start
  with checkpoint.PreemptionGuard() as guard, sharding.use_mesh(mesh):
    while s < total_steps:
      batch = pipeline.to_device(batcher.host_batch(s), batch_sh)
      state, m = train_fn(state, batch)
      pending.append(m)
      s += 1
      if s % config.train.log_every == 0 or s == total_steps:
        fetched = jax.device_get(pending)
        pending = []
        now = time.perf_counter()
        elapsed, t_log = now - t_log, now
        row = _log_row(fetched, elapsed, schedule(s - 1), flops_per_token, peak)
        bad = int(jax.device_get(state["first_bad_step"]))
        if bad >= 0 and config.train.on_nonfinite == "stop":
          ckpt.wait()
          raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}; the update was not applied. "
            f"Last good checkpoint: step {ckpt.latest_step()} in {workdir / 'checkpoints'}. "
            "Lower optim.learning_rate, enable optim.grad_clip_norm, or set "
            "train.on_nonfinite='skip' to skip such steps."
          )
        if mw is not None:
          mw.write(s, row)
        if bar is not None:
          bar.update(s, row)
      if config.train.eval_every and s % config.train.eval_every == 0 and s < total_steps:
        last_eval = evaluate(_eval_params(state, config), "validation")
        if mw is not None:
          mw.write(s, {f"eval/{k}": v for k, v in metrics.scalars(last_eval).items()})
        save(state, s, {f"eval/{k}": v for k, v in metrics.scalars(last_eval).items()}, force=True)
      elif ckpt.should_save(s) and s < total_steps:
        save(state, s)
      if guard.requested:
        log.warning("preemption requested: saving step %d and exiting", s)
        save(state, s, force=True)
        ckpt.wait()
        ckpt.close()
        raise SystemExit(143)

  # ------------------------------------------------------------------------------- final
  final = evaluate(_eval_params(state, config), "validation")
  final_scalars = {f"eval/{k}": v for k, v in metrics.scalars(final).items()}
  if mw is not None and start < total_steps:
    mw.write(total_steps, final_scalars)
  save(state, total_steps, final_scalars, force=True)
  ckpt.wait()
  ckpt.close()
  if bar is not None:
    bar.close()
  if mw is not None:
    mw.write_hparams(_flat_hparams(config), final_scalars)
    mw.close()
  return {"step": total_steps, "eval": final, "compilations": traces["train"],
          "state": state, "last_eval": last_eval}


def _eval_params(state: dict, config) -> dict:
  return averaging.params_for_eval(state.get("avg"), state["params"])


def _ckpt_tree(state: dict) -> dict:
  # orbax stores no None leaves: drop absent weight averages.
  return {k: v for k, v in state.items() if v is not None}


def _from_ckpt_tree(tree: dict, like: dict) -> dict:
  return {k: tree.get(k) if like[k] is not None else None for k in like}


def _log_row(fetched: list[dict], elapsed: float, lr, flops_per_token: float, peak) -> dict:
  last = fetched[-1]
  tokens = float(sum(m["train/tokens"] for m in fetched))
  row = {
    "train/loss": float(np.mean([m["train/loss"] for m in fetched])),
    "train/grad_norm": float(last["train/grad_norm"]),
    "train/learning_rate": float(lr),
    "train/tokens_per_sec": tokens / max(elapsed, 1e-9),
    "train/step_time_s": elapsed / len(fetched),
    "train/skipped_steps": int(last["train/skipped_steps"]),
  }
  if float(last["train/penalty"]):
    row["train/penalty"] = float(last["train/penalty"])
  if peak:
    row["train/mfu"] = writer.mfu(flops_per_token * tokens / len(fetched), row["train/step_time_s"],
                                  jax.device_count(), peak)
  return row


def _evaluate(eval_fn, params, ds: pipeline.Dataset, config, mesh, label_names) -> dict:
  sums = {"loss_sum": 0.0, "weight": 0.0}
  preds, labels = [], []
  bs = config.train.eval_batch_size
  shard = None
  for b in pipeline.eval_batches(ds, bs):
    if shard is None:
      shard = pipeline.batch_shardings(mesh, b) if bs % math.prod(
        mesh.shape[a] for a in ("data", "fsdp")) == 0 else None
    dev = pipeline.to_device(b, shard) if shard else jax.device_put(b)
    out = jax.device_get(eval_fn(params, dev))
    sums["loss_sum"] += float(out["loss_sum"])
    sums["weight"] += float(out["weight"])
    if "predictions" in out:
      preds.append(out["predictions"][b["valid"]])
      labels.append(b["labels"][b["valid"]])
  if config.model.task == "causal_lm":
    return metrics.lm_metrics(sums["loss_sum"], sums["weight"])
  res = metrics.classification_metrics(np.concatenate(preds), np.concatenate(labels),
                                       len(label_names), label_names)
  res["loss"] = sums["loss_sum"] / max(sums["weight"], 1e-9)
  return res


def _flat_hparams(config) -> dict:
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        walk(key + ".", v)
      elif isinstance(v, bool | int | float | str):
        flat[key] = v

  walk("", config)
  return flat

