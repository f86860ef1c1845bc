"""The training driver: `train_and_evaluate(config, workdir)`, read top to bottom.

Sections: setup, mesh, data, model, optimizer, state and shardings, restore, loop, final.
The step itself is the pure `jaxtune.step.train_step`, jitted once here with explicit
shardings and buffer donation. What the run trains for (its rows, loss and metrics) is the
objective's (`jaxtune.objectives`); the model and its state come from `jaxtune.build`, and the
end of the run (the best checkpoint's evaluation, results.json, the export) is `jaxtune.final`.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from jaxtune import (
  checkpoint,
  console,
  evaluate,
  final,
  metrics,
  monitor,
  objectives,
  preemption,
  resume,
  sharding,
  step,
  storage,
  trackers,
  train_curves,
  workdir_lock,
  writer,
)
from jaxtune.build import (
  Built,
  build_state,
  check_vocab,
  load_model,  # noqa: F401 (built in jaxtune.build; train.load_model stays for its callers)
  make_eval_fn,
)
from jaxtune.config import validate
from jaxtune.data import pipeline, prefetch
from jaxtune.errors import NonFiniteError
from jaxtune.finished_run import ckpt_tree, eval_params, from_ckpt_tree
from jaxtune.models import layers

log = logging.getLogger(__name__)


@storage.reports_storage_errors
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | epath.PathLike,
                       on_eval=None, *, allow_config_change: bool = False,
                       recipe: str = "") -> dict:
  """Train, evaluate and return {step, eval, results, ...}.

  `on_eval(step, eval_scalars) -> bool`, if given, sees every intermediate validation and may
  stop the run (True), which then ends like early stopping: a hyperparameter search prunes
  poor trials through it.

  The workdir is locked while the run trains (`jaxtune.workdir_lock`). A workdir with
  checkpoints resumes, with the run's config and data only (`jaxtune.resume`), unless
  `allow_config_change` (the `jaxtune train --allow_config_change` flag).

  `recipe`, the `configs/<recipe>.py[:variant]` the config came from, is recorded in run.json
  (`jaxtune report` diffs the run's config against it).
  """
  validate(config)
  workdir = epath.Path(workdir_lock.require(workdir))  # a local path or a URL such as gs://bucket/run
  workdir.mkdir(parents=True, exist_ok=True)
  # MLflow / W&B runs end FAILED (KILLED) when the run raises (is interrupted, preempted).
  with workdir_lock.hold(workdir), trackers.end_on_error():
    return _train_and_evaluate(config, workdir, on_eval, allow_config_change, recipe)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.Path, on_eval,
                        allow_config_change: bool, recipe: str = "") -> dict:
  # ------------------------------------------------------------------------------- setup
  is_main = jax.process_index() == 0
  resumed = resume.Check(workdir, config, allow_config_change)  # refuses a changed config now
  if config.export.enabled and is_main:
    # Files in workdir/export that jaxtune did not write: refused now, not after training.
    final.export_folder(workdir)

  # -------------------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(**config.mesh)
  data_ways = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
  per_pass = config.train.batch_size // config.train.micro_batches
  if per_pass % data_ways or config.train.batch_size % jax.process_count():
    raise ValueError(
      f"config: train.batch_size={config.train.batch_size} / train.micro_batches="
      f"{config.train.micro_batches} = {per_pass} must divide over the data x fsdp mesh axes "
      f"({mesh.shape['data']} x {mesh.shape['fsdp']}) and the {jax.process_count()} processes"
    )

  # -------------------------------------------------------------------------------- data
  objective = objectives.get(config)
  splits = objective.splits(config, workdir)
  # Of the rows as read: an objective may add arrays of its own later (before_training).
  data_fingerprint = splits["train"].fingerprint()
  resumed.data(data_fingerprint, splits.label_names)
  batcher = pipeline.Batcher(splits["train"], config.train.batch_size, config.seed,
                             length_buckets=config.train.length_buckets)
  if config.train.epochs > 0:
    total_steps = max(1, math.ceil(config.train.epochs * batcher.steps_per_epoch))
  else:
    total_steps = config.train.steps
  if objective.labels:  # per-class metrics (eval/f1/<label>) name the data's labels
    from jaxtune.config import check_best_metric

    check_best_metric(config, splits.label_names)

  # ------------------------------------------------------- model, optimizer, state, shardings
  built = build_state(config, mesh, config.model.num_labels or splits.num_labels, total_steps,
                      splits.label_names, restoring=resumed.active)
  check_vocab(built.model_config, splits, config)
  # E.g. a preference run's stored reference log-probabilities, from the initial weights.
  objective.before_training(config, workdir, splits, built, mesh, restoring=resumed.active)
  train_graphdef, frozen, tx, schedule = built.train_graphdef, built.frozen, built.tx, built.schedule
  state, state_sh, params = built.state, built.state_sh, built.state["params"]
  frozen_sh = None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen)
  # The step's batches: the data's, or (on-policy objectives) sampled from the current weights.
  if objective.on_policy:
    from jaxtune import rollout

    train_batches = rollout.Rollouts(config, batcher, mesh=mesh, built=built, splits=splits)
  else:
    train_batches = prefetch.StaticBatches(batcher, mesh)
  batch_sh = train_batches.shardings
  step_cfg = step.StepConfig(
    task=config.model.task, micro_batches=config.train.micro_batches,
    skip_nonfinite=config.train.on_nonfinite == "skip", optim_cfg=config.optim,
    class_weights=splits.class_weights, options=objective.options(config),
  )
  traces = {"train": 0}

  def counted_step(state, batch, frozen):
    traces["train"] += 1  # runs only while tracing: counts compilations
    return step.train_step(train_graphdef, tx, step_cfg, state, batch, frozen)

  train_fn = jax.jit(counted_step, in_shardings=(state_sh, batch_sh, frozen_sh),
                     out_shardings=(state_sh, None), donate_argnums=(0,))
  # Replicated outputs: every process can read all predictions (multi-host evaluation).
  eval_fn = make_eval_fn(built.eval_graphdef, config, mesh)

  sample_text = _text_sampler(config, built, splits, mesh)

  def run_eval(params, split) -> tuple[dict, dict]:  # a split's name, or a data set
    ds = splits[split] if isinstance(split, str) else split
    own = train_batches.evaluate(params, ds)  # an objective that evaluates by generating
    if own is not None:
      return own
    return evaluate.evaluate(eval_fn, params, frozen, ds, task=config.model.task,
                             mesh=mesh, batch_size=config.train.eval_batch_size,
                             label_names=splits.label_names,
                             length_buckets=config.train.length_buckets)

  # ----------------------------------------------------------------------------- restore
  ckpt = checkpoint.Checkpointer(
    workdir / "checkpoints", save_every_steps=config.checkpoint.every_steps,
    save_every_minutes=config.checkpoint.every_minutes, keep_last=config.checkpoint.keep_last,
    keep_best=config.checkpoint.keep_best, best_metric=config.checkpoint.best_metric,
    best_mode=config.checkpoint.best_mode, async_save=config.checkpoint.async_save,
  )
  ckpt.check_writable()
  abstract = built.abstract()
  stopper = monitor.EarlyStopping(config.checkpoint.best_mode, config.train.early_stopping_patience,
                                  config.train.early_stopping_min_delta)
  alarm = monitor.OverfitAlarm(config.train.overfit_alarm_evals)
  start, stopped_early = 0, False
  restored = ckpt.restore_latest(ckpt_tree(abstract))
  if restored is not None:
    start, tree, meta = restored
    state = from_ckpt_tree(tree, state)
    state["opt_state"] = resumed.apply(state["opt_state"], built.state["opt_state"])
    stopper.load(meta["early_stopping"])
    alarm.load(meta["overfit_alarm"])
    stopped_early = meta.get("stopped_early", False)
    # Every process says so: on a multi-host run each host's log shows where it picked up.
    console.CONSOLE.print(f"resumed from step {start} (data position {meta.get('data_position')})")
  if is_main:  # only now: a refused or failed resume leaves the run's config.json as it was
    writer.write_config(workdir, config)
    resumed.record(start)
  mw = writer.MetricWriter(
    workdir, tensorboard="tensorboard" in trackers.parse(config.report_to),
    trackers=trackers.from_config(config, workdir)) if is_main else None
  if mw is not None:
    mw.truncate_after(start)
    # Declared now, so a run that is killed or pruned still shows in TensorBoard's HParams tab.
    mw.start_hparams(_flat_hparams(config), _hparams_metrics(config, splits))
    if start == 0:
      writer.write_run_info(
        workdir, config_json=config.to_json_best_effort(), mesh_shape=dict(mesh.shape),
        data_fingerprint=data_fingerprint,
        extra={"total_steps": total_steps, "data_stats": splits.stats,
               "label_names": list(splits.label_names),
               **({"recipe": writer.recipe_info(recipe)} if recipe else {})},
      )

  curves = train_curves.TrainCurves(config, splits, mw, start)  # train vs validation metrics
  all_finite = jax.jit(step.all_finite)

  def nonfinite_error(bad: int, what: str) -> NonFiniteError:
    ckpt.wait()
    good = ckpt.latest_step(at_most=bad)
    where = (f"step {good} in {workdir / 'checkpoints'}" if good is not None
             else f"none (no checkpoint was written before step {bad})")
    return NonFiniteError(
      f"{what}; the first at step {bad}, whose update was not applied. Last good checkpoint "
      f"(from before step {bad}): {where}. Lower optim.learning_rate, enable "
      "optim.grad_clip_norm, or check the data; train.on_nonfinite='skip' skips such steps."
    )

  def check_skipped(state, steps: int) -> None:
    """on_nonfinite='skip': fail once more than max_skipped_fraction of `steps` were skipped."""
    skipped = int(jax.device_get(state["skipped"]))
    if skipped > config.train.max_skipped_fraction * steps:
      bad = int(jax.device_get(state["first_bad_step"]))
      raise nonfinite_error(bad, f"{skipped} steps had a non-finite loss, gradient or update and "
                            f"were skipped, more than train.max_skipped_fraction="
                            f"{config.train.max_skipped_fraction} of {steps} steps")

  def save(state, s: int, eval_scalars=None, force=False):
    # Only a finite state from before the first bad step under 'stop' is checkpointed; under
    # 'skip' the state stays finite (bad updates are dropped) and the newest checkpoint from
    # before the first bad step is kept by retention as the last good one.
    bad = int(jax.device_get(state["first_bad_step"]))
    if bad >= 0 and config.train.on_nonfinite == "stop":
      raise nonfinite_error(bad, "non-finite loss, gradient or update")
    if bad >= 0 and not ckpt.protected():
      ckpt.wait()
      good = ckpt.latest_step(at_most=bad)
      if good is not None:
        ckpt.protect(good)
    if not bool(all_finite(ckpt_tree(state))):
      raise NonFiniteError(f"the train state at step {s} holds NaN or Inf; not checkpointing it "
                           f"over the good ones in {workdir / 'checkpoints'}")
    meta = {"step": s, "data_position": batcher.position(s), "total_steps": total_steps,
            "early_stopping": stopper.state(), "overfit_alarm": alarm.state(),
            "stopped_early": stopped_early}
    ckpt.save(s, ckpt_tree(state), meta=meta, metrics=eval_scalars, force=force)

  # -------------------------------------------------------------------------------- loop
  peak = writer.device_peak_flops(jax.devices()[0])
  flops_per_token = 6 * sum(int(np.prod(x.shape)) for x in jax.tree.leaves((params, frozen)))
  show = is_main and config.train.progress  # the progress bar and a line per evaluation
  bar = console.CONSOLE.progress_bar(total_steps, initial_step=start,
                                     tokens_per_s_key="train/tokens_per_sec") if show else None
  eval_line = console.EvalLine(config.checkpoint.best_metric, config.checkpoint.best_mode,
                               config.model.task, stopper.best, stopper.best_step)
  pending: list[dict] = []
  train_losses: list[float] = []  # logged train losses since the last evaluation
  t_log = time.perf_counter()
  s = start
  if config.train.eval_at_start and start == 0:
    with sharding.use_mesh(mesh):
      res, _ = run_eval(eval_params(state), "validation")
    if mw is not None:
      mw.write(0, _eval_scalars(res))
      final.write_confusion(mw, 0, res, "eval", splits.label_names)
    if show:  # not a checkpoint: it cannot be the best
      console.CONSOLE.print(eval_line(0, metrics.scalars(res), track=False))
  if sample_text is not None and start == 0:
    sample_text(mw, 0, eval_params(state))  # the untrained model's answers, to compare with
  batches = train_batches.stream(s, total_steps, mw)
  # On several processes the guard agrees on the stop step; its fallback host sync (SIGINT) runs
  # at log steps, which wait for the device anyway.
  guard = preemption.PreemptionGuard(sync_every_steps=config.train.log_every)
  with guard, sharding.use_mesh(mesh), batches:
    while s < total_steps and not stopped_early:
      batch = batches.get(s, state)
      state, m = train_fn(state, batch, frozen)
      pending.append(m)
      s += 1
      if s % config.train.log_every == 0 or s == total_steps:
        fetched = jax.device_get(pending)
        pending = []
        now = time.perf_counter()
        elapsed, t_log = now - t_log, now
        row = _log_row(fetched, elapsed, schedule(s - 1), flops_per_token, peak)
        train_losses.append(row["train/loss"])
        bad = int(jax.device_get(state["first_bad_step"]))
        if bad >= 0 and config.train.on_nonfinite == "stop":
          raise nonfinite_error(bad, "non-finite loss, gradient or update")
        if bad >= 0:
          check_skipped(state, total_steps)  # already certain to exceed the share: stop now
        if mw is not None:
          mw.write(s, row)
        if bar is not None:
          bar.update(s, row)
      if config.train.eval_every and s % config.train.eval_every == 0 and s < total_steps:
        res, _ = run_eval(eval_params(state), "validation")
        scalars = _eval_scalars(res)
        scalars.update(curves(s, res, run_eval, eval_params(state)))
        if show:
          console.CONSOLE.print(eval_line(s, scalars))
        stopped_early = stopper.update(s, scalars.get(config.checkpoint.best_metric))
        stopped_by_hook = on_eval is not None and on_eval(s, scalars)
        if stopped_by_hook:  # the search's pruner: it says why itself
          scalars["train/stopped_by_hook"] = 1.0
        if train_losses and alarm.update(float(np.mean(train_losses)), res["loss"]):
          log.warning(alarm.message(s))
          scalars["alarm/overfitting"] = 1.0
          if mw is not None:
            mw.write_text(s, "alarm/overfitting", alarm.message(s))
        train_losses = []
        if stopped_early:
          log.warning("early stopping at step %d: %s did not improve for %d evaluations "
                      "(best %.5g at step %s)", s, config.checkpoint.best_metric,
                      stopper.patience, stopper.best, stopper.best_step)
          scalars["train/stopped_early"] = 1.0
        stopped_early = stopped_early or stopped_by_hook
        if mw is not None:
          mw.write(s, scalars)
          final.write_confusion(mw, s, res, "eval", splits.label_names)
        if sample_text is not None:
          sample_text(mw, s, eval_params(state))
        save(state, s, scalars, force=True)
      elif ckpt.should_save(s) and s < total_steps:
        save(state, s)
      if guard.should_stop(s):  # every process stops at the same step (orbax saves together)
        log.warning("preemption requested: saving step %d and exiting", s)
        save(state, s, force=True)
        ckpt.close()
        if mw is not None:
          mw.close()  # TensorBoard's queued events (the hparams among them) reach the disk
        raise SystemExit(143)

  # ------------------------------------------------------------------------------- final
  if bar is not None:
    bar.close()  # ends its line: the final evaluation's follows
  if config.train.on_nonfinite == "skip":
    check_skipped(state, s)
  with sharding.use_mesh(mesh):
    res, _ = run_eval(eval_params(state), "validation")
    final_scalars = _eval_scalars(res)
    final_scalars.update(curves(s, res, run_eval, eval_params(state), last=True))
  if show and start < s:
    console.CONSOLE.print(eval_line(s, final_scalars))
  if mw is not None and start < s:
    mw.write(s, final_scalars)
    final.write_confusion(mw, s, res, "eval", splits.label_names)
    if sample_text is not None:
      sample_text(mw, s, eval_params(state))
  save(state, s, final_scalars, force=True)
  results = final.best_results(config, workdir, mesh, ckpt, built, state, s, splits, run_eval, mw,
                               last_val=res)
  if mw is not None:
    mw.write_hparams(_flat_hparams(config), final_scalars)
    mw.close()
  return {"step": s, "eval": res, "results": results, "compilations": traces["train"],
          "state": state, "stopped_early": stopped_early, "resumed_from": start}


def _text_sampler(config, built: Built, splits, mesh):
  """`sample(writer, step, params)`: greedy completions of a few validation prompts written as
  text (tag samples/validation), or None when off (train.text_samples = 0, not a causal LM,
  or no tokenizer). Every process generates (the weights may span hosts); the writer of
  process 0 records it. The decode program compiles once and is reused at each evaluation."""
  n = config.train.text_samples
  if not n or not objectives.get(config).generates or splits.tokenizer is None:
    return None
  from jaxtune import generate

  tok = splits.tokenizer
  arrays = splits["validation"].arrays
  if "input_ids" not in arrays:  # preference pairs: the prompts before the chosen answers
    arrays = {k.removeprefix("chosen_"): v for k, v in arrays.items() if k.startswith("chosen_")}
  prompts = generate.prompts_from_split(arrays, n)
  stops = generate.stop_ids(tok, built.model_config, [])
  gen: list[generate.Generator] = []

  def sample(mw, s: int, params) -> None:
    model = step.merge(built.eval_graphdef, params, built.frozen)
    layers.unstack_layers(model)  # the KV cache walks the layers one by one
    if not gen:
      gen.append(generate.Generator(model, pad_id=generate.pad_id(tok)))
    with sharding.use_mesh(mesh):
      res = gen[0](prompts, max_new_tokens=config.train.text_sample_tokens, stop_ids=stops,
                   state=nnx.split(model)[1])
    if mw is not None:
      text = "\n\n".join(
        f"{i + 1}. `{tok.decode(p)!r}` → `{tok.decode(t, skip_special_tokens=True)!r}`"
        for i, (p, t) in enumerate(zip(prompts, res.tokens, strict=True)))
      mw.write_text(s, "samples/validation", text)

  return sample


def _hparams_metrics(config, splits) -> list[str]:
  """The scalar tags TensorBoard's HParams tab shows for a run: all it may write at the start."""
  names = objectives.get(config).metric_names(splits.label_names)
  if "test" in splits:
    names += tuple("test/" + n.removeprefix("eval/") for n in names)
  return ["train/loss", *names]


def _eval_scalars(res: dict) -> dict[str, float]:
  return {f"eval/{k}": v for k, v in metrics.scalars(res).items()}


_STEP_METRICS = {"train/loss", "train/penalty", "train/grad_norm", "train/tokens",
                 "train/skipped_steps"}


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
  for k in last.keys() - _STEP_METRICS:  # an objective's own (Objective.loss_terms' extras)
    row[k] = float(np.mean([m[k] for m in fetched]))
  if peak:
    row["train/mfu"] = writer.mfu(flops_per_token * tokens / len(fetched), row["train/step_time_s"],
                                  jax.device_count(), peak)
  return row


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
