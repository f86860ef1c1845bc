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
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from etils import epath

from jaxtune.errors import ConfigError

KNOWN = ("tensorboard", "mlflow", "wandb")
# The module each tracker imports, and the extra that installs it.
PACKAGES = {"mlflow": ("mlflow", "jaxtune[mlflow]"), "wandb": ("wandb", "jaxtune[wandb]")}
IDS_FILE = "trackers.json"
# Workdir files logged as run artifacts at the end (those that exist), and the export folder.
OUTPUT_FILES = (
  "results.json",
  "config.json",
  "run.json",
  "metrics.jsonl",
  "text.jsonl",
  "errors.jsonl",
  "report.html",
)
EXPORT_DIR = "export"


class Tracker(Protocol):
  """What MetricWriter forwards to; `close(status)` with FINISHED, FAILED or KILLED."""

  def write(self, step: int, metrics: Mapping[str, float]) -> None: ...

  def write_text(self, step: int, tag: str, text: str) -> None: ...

  def write_hparams(
    self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int | None = None
  ) -> None: ...

  def close(self, status: str = "FINISHED") -> None: ...


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


# ------------------------------------------------------------------ failures end the runs

_open: list[list[Tracker]] = []  # trackers started inside each active `end_on_error`


def register(tracker: Tracker) -> None:
  if _open:
    _open[-1].append(tracker)


@contextlib.contextmanager
def end_on_error() -> Iterator[None]:
  """Around a run: trackers started inside it and still open when it raises end as FAILED,
  or KILLED for KeyboardInterrupt / SystemExit (a preemption exits with 143)."""
  opened: list[Tracker] = []
  _open.append(opened)
  try:
    yield
  except BaseException as e:
    status = "KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED"
    for t in opened:
      with contextlib.suppress(Exception):  # the run's own error is the one to report
        t.close(status)
    raise
  finally:
    _open.pop()


# ------------------------------------------------------------------ shared helpers


def flat_config(config) -> dict[str, Any]:
  """The config as `{'optim.learning_rate': 0.001, ...}`; lists and tuples as strings."""
  out: dict[str, Any] = {}

  def walk(prefix: str, node: Mapping) -> None:
    for k, v in node.items():
      if isinstance(v, Mapping):
        walk(f"{prefix}{k}.", v)
      else:
        out[f"{prefix}{k}"] = v if isinstance(v, bool | int | float | str) else str(v)

  walk("", config.to_dict() if hasattr(config, "to_dict") else config)
  return out


def experiment(config) -> str:
  return config.tracking.experiment or "jaxtune"


def run_name(config, workdir) -> str:
  return config.tracking.run_name or epath.Path(workdir).name


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
  """The finite float values of `metrics` (trackers take no NaN/Inf; metrics.jsonl has null)."""
  out = {}
  for k, v in metrics.items():
    try:
      v = float(v)
    except (TypeError, ValueError):
      continue
    if math.isfinite(v):
      out[str(k)] = v
  return out


def results_metrics(workdir) -> dict[str, float]:
  """results.json as flat metrics: `best_step`, `val/<metric>`, `test/<metric>`."""
  path = epath.Path(workdir) / "results.json"
  if not path.exists():
    return {}
  results = json.loads(path.read_text())
  flat = {
    f"{split}/{k}": v
    for split in ("val", "test")
    for k, v in results.get(split, {}).items()
    if isinstance(v, int | float) and not isinstance(v, bool)
  }
  if "best_step" in results:
    flat["best_step"] = results["best_step"]
  return finite(flat)


def output_files(workdir) -> list[epath.Path]:
  return [p for p in (epath.Path(workdir) / n for n in OUTPUT_FILES) if p.exists()]


def export_dir(workdir) -> epath.Path | None:
  path = epath.Path(workdir) / EXPORT_DIR
  return path if path.is_dir() and any(path.iterdir()) else None


def read_ids(workdir) -> dict:
  path = epath.Path(workdir) / IDS_FILE
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except ValueError:
    return {}  # a torn file: start new tracker runs rather than fail the run


def write_id(workdir, name: str, entry: dict) -> None:
  """Records tracker `name`'s run in workdir/trackers.json, for a resume to continue it."""
  from jaxtune import writer

  ids = read_ids(workdir)
  ids[name] = entry
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # trackers start before the writer
  writer._write_atomic(os.fspath(epath.Path(workdir) / IDS_FILE), json.dumps(ids, indent=2) + "\n")


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
