"""What the run trackers (MLflow, W&B) share: the interface, the runs a failure must end, the
config and results as flat metrics, and the workdir's record of tracker runs (trackers.json).

`jaxtune.trackers` re-exports these; `mlflow` and `wandb` import them from here, so neither
imports the package that imports them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from etils import epath

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
