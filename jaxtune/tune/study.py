"""An Optuna study over training runs: samplers, pruners, storage, resumption, trial workdirs.

Each trial is one `train.train_and_evaluate` run in `<study dir>/trials/<n>` (its own
metrics.jsonl, TensorBoard logs and checkpoints). Intermediate validations reach Optuna through
the driver's `on_eval` hook, so a pruned trial ends like an early-stopped one.

Storage: `<workdir>/study.db` (SQLite) unless a URL is given (`postgresql://...`), which lets
many machines share one study. Every trial beats a heartbeat into the storage; a trial whose
process died (no heartbeat for `2 * heartbeat_s`) is marked failed and re-queued with the same
values and workdir, so a rerun of the same command resumes it from its last checkpoint and
never repeats finished trials.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import ml_collections
import optuna

from jaxtune import metrics, trackers
from jaxtune.errors import ConfigError
from jaxtune.tune import space

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(workdir: str | Path, storage: str = "") -> str:
  return storage or f"sqlite:///{Path(workdir).resolve() / 'study.db'}"


def make_storage(url: str, heartbeat_s: int = 30) -> optuna.storages.RDBStorage:
  kwargs = {}
  if url.startswith("postgresql://"):
    url = _postgres_driver(url)
  if url.startswith("sqlite"):
    # Several local workers write to one file: wait for the lock instead of failing.
    kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
  return optuna.storages.RDBStorage(
    url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
    **kwargs)


def _postgres_driver(url: str) -> str:
  """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only it is installed."""
  import importlib.util

  if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
  return url


def make_sampler(search: ml_collections.ConfigDict, seed: int | None = None
                 ) -> optuna.samplers.BaseSampler:
  seed = int(search.seed) if seed is None else seed
  if search.algorithm == "grid":
    return optuna.samplers.GridSampler(space.grid(search), seed=seed)
  if search.algorithm == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  if search.algorithm == "tpe":
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, search.budget.trials // 4))
  if search.algorithm == "gp":
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(2, search.budget.trials // 4))
  raise ConfigError(f"search.algorithm={search.algorithm!r} has no Optuna sampler (pbt runs "
                    "through jaxtune.tune.pbt)")


def make_pruner(search: ml_collections.ConfigDict) -> optuna.pruners.BasePruner:
  if search.pruner == "median":
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  if search.pruner == "halving":
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(search.trial.eval_every))
  return optuna.pruners.NopPruner()


def open_study(search, workdir: str | Path, storage: str = "", study_name: str = "",
               heartbeat_s: int = 30, baseline: dict | None = None) -> optuna.Study:
  """The study (created, or loaded when it exists: that is how a rerun resumes).

  `baseline` values are queued as the first trial by whichever worker creates the study (the
  storage's unique study name decides, so concurrent workers never queue it twice).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  kwargs = dict(
    storage=make_storage(storage_url(workdir, storage), heartbeat_s),
    study_name=study_name or workdir.resolve().name,
    direction=search.objective.direction,
    sampler=make_sampler(search) if search.algorithm != "pbt" else None,
    pruner=make_pruner(search) if search.algorithm != "pbt" else None,
  )
  metric = search.objective.metric
  try:
    study = optuna.create_study(**kwargs)
    study.set_user_attr("objective", metric)
    _set_metric_name(study, metric)
    if baseline:
      study.enqueue_trial(baseline, user_attrs={"baseline": True})
  except optuna.exceptions.DuplicatedStudyError:
    # Another worker, or an earlier run of this one: a sampler seeded like the creator's would
    # draw the very values already tried. The baseline is never queued again here: the creator
    # queued it (or chose not to), and it is in the study's history either way.
    if search.algorithm != "pbt":
      kwargs["sampler"] = make_sampler(search, _worker_seed(int(search.seed)))
    study = optuna.create_study(**kwargs, load_if_exists=True)
    known = (study.metric_names or [None])[0] or study.user_attrs.get("objective")
    if known and known != metric:
      raise ConfigError(
        f"search.objective.metric={metric!r}, but the existing study {study.study_name!r} "
        f"optimizes {known!r}: their values are not comparable. Give this search its own "
        "--workdir or --study_name, or set search.objective.metric back to "
        f"{known!r}") from None
    if study.metric_names is None:  # a study created before jaxtune named its metric
      _set_metric_name(study, metric)
  return study


def _set_metric_name(study: optuna.Study, metric: str) -> None:
  """The objective's name in the storage, so Optuna's own tools (optuna-dashboard,
  `optuna.load_study(...).metric_names`, the plots) label values with it."""
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study.set_metric_names([metric])


def _worker_seed(seed: int) -> int:
  import hashlib
  import os
  import socket

  text = f"{seed}/{socket.gethostname()}/{os.getpid()}/{time.time_ns()}"
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def trial_overrides(search, values: dict) -> dict:
  """Every config change a trial makes: the per-trial budget, the fixed overrides, its values."""
  out = {"train.steps": int(search.trial.steps), "train.epochs": 0.0,
         "train.eval_every": int(search.trial.eval_every)}
  out.update(search.fixed.to_dict())
  out.update(values)
  return out


def trial_config(config, search, values: dict) -> ml_collections.ConfigDict:
  c = space.apply(config, trial_overrides(search, values))
  # The best checkpoint (evaluated at the end) is picked by the search's own objective.
  c.checkpoint.best_metric = search.objective.metric
  c.checkpoint.best_mode = "max" if search.objective.direction == "maximize" else "min"
  c.train.progress = False
  return c


def make_objective(config, search, workdir: Path, recipe: str = ""):
  from jaxtune import train

  metric = search.objective.metric

  def objective(trial: optuna.Trial) -> float:
    values = space.suggest(trial, search)
    # A retried trial inherits the user attrs of the one that died: same workdir, so it resumes.
    if "workdir" not in trial.user_attrs:
      trial.set_user_attr("workdir", str(workdir / "trials" / f"{trial.number:04d}"))
    tdir = Path(trial.user_attrs["workdir"])
    overrides = trial_overrides(search, values)
    trial.set_user_attr("overrides", json.dumps(overrides))
    pruned = []

    def on_eval(step: int, scalars: dict) -> bool:
      if metric not in scalars:
        raise ConfigError(f"search.objective.metric={metric!r} is not among the validation "
                          f"metrics {sorted(scalars)}; set it to one of them in the search file")
      trial.report(scalars[metric], step)
      if trial.should_prune():
        pruned.append(step)
        return True
      return False

    t0 = time.perf_counter()
    # MLflow: a child of the study's run, W&B: in the study's group (jaxtune.trackers).
    tconfig = trackers.for_trial(trial_config(config, search, values), workdir,
                                 trial.study.study_name, f"trial-{trial.number:04d}")
    result = train.train_and_evaluate(tconfig, tdir, on_eval=on_eval, recipe=recipe)
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
    trial.set_user_attr("steps", int(result["step"]))
    if result["resumed_from"]:  # a re-queued trial: the step its last checkpoint had reached
      trial.set_user_attr("resumed_from", int(result["resumed_from"]))
    val = {f"eval/{k}": v for k, v in metrics.scalars(result["results"]["val"]).items()}
    if metric not in val:
      raise ConfigError(f"search.objective.metric={metric!r} is not among the validation "
                        f"metrics {sorted(val)}; set it to one of them in the search file")
    for split in ("test",):
      if split in result["results"]:
        for k, v in metrics.scalars(result["results"][split]).items():
          trial.set_user_attr(f"{split}/{k}", v)
    if pruned:
      log.info("trial %d pruned at step %d", trial.number, pruned[0])
      raise optuna.TrialPruned(f"pruned at step {pruned[0]}")
    return val[metric]

  return objective


def share_compilations(workdir: Path) -> None:
  """JAX's persistent compilation cache in the study dir (unless one is set already): trials of
  one shape differ only in state values (the learning rate is a state array), so every trial
  after the first loads its compiled programs instead of compiling them."""
  import jax

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))


def finished(study: optuna.Study) -> int:
  return len(study.get_trials(deepcopy=False, states=FINISHED))


def run(config, search, workdir: str | Path, storage: str = "", study_name: str = "",
        heartbeat_s: int = 30, recipe: str = "", launch=None) -> optuna.Study:
  """Run trials until the study-wide budget (finished trials, minutes) is spent.

  `recipe` (`configs/<recipe>.py[:variant]`) goes into each trial's run.json, so `jaxtune report`
  on a trial shows what the search changed against the recipe.

  `launch(study, budget, timeout, job)`, if given, runs the trials elsewhere instead of in this
  process (`jaxtune.tune.ray_backend.RayTrials`); `job` holds what a remote worker needs to
  open the same study and run `make_objective` there.

  The trial budget counts every worker's finished trials, so a resumed or a second worker only
  runs what is left.
  """
  space.check(search, config)
  workdir = Path(workdir)
  share_compilations(workdir)
  baseline = None
  if search.baseline and search.algorithm == "grid":
    log.info("search.algorithm='grid' runs grid points only: no separate baseline trial with "
             "the recipe's values")
  elif search.baseline:
    baseline, why = space.baseline(search, config)
    if why:
      log.warning("%s", why)
  study = open_study(search, workdir, storage, study_name, heartbeat_s, baseline)
  budget = int(search.budget.trials)
  if search.algorithm == "grid":
    budget = min(budget, space.grid_size(search))
  left = budget - finished(study)
  if left <= 0:
    log.info("study %s already has %d finished trials (budget %d): nothing to run",
             study.study_name, finished(study), budget)
    return study
  timeout = float(search.budget.minutes) * 60 or None
  with trackers.study_run(config, workdir, study.study_name) as summary:
    if launch is None:
      study.optimize(make_objective(config, search, workdir, recipe), timeout=timeout,
                     callbacks=[optuna.study.MaxTrialsCallback(budget, states=FINISHED)],
                     catch=())
    else:
      launch(study, budget, timeout, dict(
        config=config, search=search, workdir=str(workdir.resolve()), recipe=recipe,
        storage=storage_url(workdir, storage), heartbeat_s=heartbeat_s))
    log_best(study, search, summary)
  return study


def log_best(study: optuna.Study, search, summary) -> None:
  """The best trial's objective and values, to the study's tracker run (`trackers.study_run`)."""
  if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
    best = study.best_trial
    summary({f"best/{search.objective.metric}": best.value, "best/trial": best.number},
            {f"best.{k}": v for k, v in best.params.items()})
