"""Experiment trackers a run reports to besides its workdir: `config.report_to`.

`report_to` is a comma-separated list of `tensorboard` (the default; TensorBoard events in
`workdir/tb`, written by `jaxtune.writer.MetricWriter` itself), `mlflow` and `wandb`.
`metrics.jsonl` is written whatever the list says. MLflow and W&B are `Tracker`s: the
MetricWriter of process 0 forwards every `write`, `write_text`, `write_hparams` and `close`
to them, so they see exactly what metrics.jsonl and TensorBoard see.

Each tracker logs the flattened config as parameters when it starts, metrics per step, and at
`close` the run's outputs: results.json's metrics (`val/*`, `test/*`), its files and the
export directory. The ids of its runs are kept in `workdir/trackers.json`, so resuming a
workdir continues the same MLflow and W&B runs. A run that raises ends its tracker runs as
FAILED (KILLED for an interrupt or a preemption): `end_on_error` around the driver.

Search trials are grouped: `tracking.group` (a study's name, set by `jaxtune tune`) makes the
MLflow run a child of the group's parent run (tag `mlflow.parentRunId`) and is the W&B group.

mlflow and wandb are imported only when a run reports to them (`pip install
'jaxtune[mlflow]'`, `'jaxtune[wandb]'`); `check` refuses a missing one before the run starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Any

from jaxtune.errors import ConfigError

# Shared with the MLflow and W&B trackers, which import them from common (no circle back here).
from jaxtune.trackers.common import (  # noqa: F401 (trackers.flat_config, ...)
  EXPORT_DIR,
  IDS_FILE,
  OUTPUT_FILES,
  Tracker,
  end_on_error,
  experiment,
  export_dir,
  finite,
  flat_config,
  output_files,
  read_ids,
  register,
  results_metrics,
  run_name,
  write_id,
)

KNOWN = ("tensorboard", "mlflow", "wandb")
# The module each tracker imports, and the extra that installs it.
PACKAGES = {"mlflow": ("mlflow", "jaxtune[mlflow]"), "wandb": ("wandb", "jaxtune[wandb]")}


def parse(report_to: str) -> tuple[str, ...]:
  """`'tensorboard, mlflow'` -> ('tensorboard', 'mlflow'); an unknown name is a ConfigError."""
  names = tuple(dict.fromkeys(n.strip().lower() for n in report_to.split(",") if n.strip()))
  unknown = [n for n in names if n not in KNOWN and n != "none"]
  if unknown:
    raise ConfigError(
      f"config: report_to={report_to!r}: unknown tracker(s) "
      f"{', '.join(map(repr, unknown))}; known: {', '.join(KNOWN)} "
      "(comma-separated; '' or 'none' for metrics.jsonl only)"
    )
  return tuple(n for n in names if n != "none")


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def check(report_to: str) -> tuple[str, ...]:
  """`parse`, and a ConfigError naming the pip extra for a tracker whose package is missing."""
  names = parse(report_to)
  for name in names:
    if name in PACKAGES and not _installed(PACKAGES[name][0]):
      raise ConfigError(
        f"config: report_to={report_to!r}: {name} is not installed; "
        f"pip install '{PACKAGES[name][1]}'"
      )
  return names


def uses_runs(config) -> bool:
  """Whether `config` reports to a tracker with runs of its own (MLflow, W&B)."""
  return any(n in PACKAGES for n in parse(config.report_to))


def from_config(config, workdir: str | os.PathLike) -> list[Tracker]:
  """The MLflow / W&B trackers `config.report_to` names, started for the run in `workdir`
  (resuming the runs recorded in its trackers.json); none on processes other than 0, whose
  writers write nothing either."""
  import jax

  names = check(config.report_to)
  if jax.process_index() != 0:
    return []
  out: list[Tracker] = []
  try:
    if "mlflow" in names:
      from jaxtune.trackers import mlflow as mlflow_tracker

      out.append(mlflow_tracker.MlflowTracker(config, workdir))
    if "wandb" in names:
      from jaxtune.trackers import wandb as wandb_tracker

      out.append(wandb_tracker.WandbTracker(config, workdir))
  except BaseException:
    for t in out:
      t.close("FAILED")
    raise
  return out


# ------------------------------------------------------------------ search studies


def for_trial(config, study_dir, study_name: str, trial_name: str):
  """A trial's config: grouped under the study (MLflow child of the study's parent run, W&B
  group), in the study's MLflow store, named after the trial."""
  if not uses_runs(config):
    return config
  c = config.copy_and_resolve_references()
  c.tracking.group = c.tracking.group or study_name
  c.tracking.run_name = trial_name
  if "mlflow" in parse(c.report_to):
    from jaxtune.trackers import mlflow as mlflow_tracker

    c.tracking.mlflow_uri = mlflow_tracker.tracking_uri(c, study_dir)
  return c


def name_experiment(config, recipe: str) -> None:
  """The CLI's default MLflow experiment / W&B project: the recipe's name (`configs/sft.py:x`
  -> `sft`), set only where a tracker with runs will read it."""
  if recipe and uses_runs(config) and not config.tracking.experiment:
    config.tracking.experiment = os.path.basename(recipe.partition(":")[0]).removesuffix(".py")


@contextlib.contextmanager
def study_run(config, study_dir, study_name: str) -> Iterator:
  """Around a search: the MLflow parent run of its trials (found or created by group name),
  ended FINISHED, FAILED or KILLED with the search; W&B needs none (the group is enough).
  Yields `summary(metrics, params)`, which logs the search's outcome to the parent run."""
  if "mlflow" not in check(config.report_to):
    yield lambda metrics, params: None
    return
  from mlflow.entities import Metric, Param

  from jaxtune.trackers import mlflow as mlflow_tracker

  c = for_trial(config, study_dir, study_name, study_name)
  client, run_id = mlflow_tracker.parent_run(c, study_dir)

  def summary(metrics: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    logged = client.get_run(run_id).data.params
    client.log_batch(
      run_id,
      metrics=[Metric(k, v, 0, 0) for k, v in finite(metrics).items()],
      params=[Param(k, str(v)) for k, v in params.items() if k not in logged],
    )

  status = "FINISHED"
  try:
    yield summary
  except BaseException as e:
    status = "KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED"
    raise
  finally:
    client.set_terminated(run_id, status)
