"""MLflow: one run per workdir, through `MlflowClient` (no global active run, so several
trackers can be open at once, as the members of a PBT population are).

Store: `tracking.mlflow_uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///WORKDIR/mlflow.db`
with artifacts in `WORKDIR/mlartifacts` (see it with `mlflow ui --backend-store-uri
sqlite:///WORKDIR/mlflow.db`). SQLite and not MLflow's `./mlruns` file store: MLflow 3 refuses
the file store unless `MLFLOW_ALLOW_FILE_STORE=true` (it is in maintenance mode), and the
SQLite store needs only SQLAlchemy and Alembic, which jaxtune has already (Optuna's storage).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from jaxtune import writer
from jaxtune.errors import ConfigError
from jaxtune.trackers import common

log = logging.getLogger(__name__)
PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter value
BATCH = 100  # parameters per log_batch call (MLflow's limit)


def tracking_uri(config, workdir) -> str:
  uri = config.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
  if uri:
    return uri
  if writer.is_remote(workdir):
    raise ConfigError(
      f"config: report_to={config.report_to!r}: the workdir {workdir} is remote, "
      "so MLflow has no local store there; set tracking.mlflow_uri (or "
      "MLFLOW_TRACKING_URI) to a tracking server or a sqlite:/// file"
    )
  return f"sqlite:///{os.path.abspath(os.fspath(workdir))}/mlflow.db"


def _client(uri: str):
  # MLflow creates a new SQLite store's tables through Alembic, one INFO line per migration.
  for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(name).setLevel(logging.WARNING)
  from mlflow.tracking import MlflowClient

  return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
  """The experiment's id, created if new; a local SQLite store keeps its artifacts beside it
  (MLflow's default would be ./mlruns in whatever directory the run was started from)."""
  from mlflow.exceptions import MlflowException

  exp = client.get_experiment_by_name(name)
  if exp is not None:
    return exp.experiment_id
  location = None
  if uri.startswith("sqlite:///"):
    location = os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "mlartifacts")
  try:
    return client.create_experiment(name, artifact_location=location)
  except MlflowException:  # another process created it first
    exp = client.get_experiment_by_name(name)
    if exp is None:
      raise
    return exp.experiment_id


def _group_parent(client, experiment_id: str, group: str, create: bool = True) -> str | None:
  """The id of the parent run of `group` (a search study) in the experiment, created if new."""
  quoted = group.replace("'", "\\'")
  found = client.search_runs(
    [experiment_id],
    f"tags.`jaxtune.group` = '{quoted}' and tags.`jaxtune.parent` = 'true'",
    max_results=1,
    order_by=["attributes.start_time ASC"],
  )
  if found:
    return found[0].info.run_id
  if not create:
    return None
  run = client.create_run(
    experiment_id, run_name=group, tags={"jaxtune.group": group, "jaxtune.parent": "true"}
  )
  return run.info.run_id


def parent_run(config, study_dir) -> tuple[Any, str]:
  """(client, run id) of the running parent run of a study's trials."""
  uri = tracking_uri(config, study_dir)
  client = _client(uri)
  run_id = _group_parent(
    client, _experiment_id(client, uri, common.experiment(config)), config.tracking.group
  )
  client.update_run(run_id, status="RUNNING")
  client.set_tag(run_id, "jaxtune.workdir", os.path.abspath(os.fspath(study_dir)))
  return client, run_id


class MlflowTracker:
  """The MLflow run of one workdir; see the package doc for what it logs."""

  def __init__(self, config, workdir):
    self.workdir = workdir
    self.uri = tracking_uri(config, workdir)
    self.client = _client(self.uri)
    self._step = 0
    self._closed = False
    exp_id = _experiment_id(self.client, self.uri, common.experiment(config))
    old = common.read_ids(workdir).get("mlflow", {})
    run = None
    if old.get("tracking_uri") == self.uri:
      from mlflow.exceptions import MlflowException

      try:
        run = self.client.get_run(old["run_id"])
      except MlflowException:
        log.warning(
          "MLflow run %s of this workdir is gone from %s: starting a new one",
          old["run_id"],
          self.uri,
        )
    if run is not None:
      self.client.update_run(run.info.run_id, status="RUNNING")
      log.info("MLflow: continuing run %s", run.info.run_id)
    else:
      tags = {
        "jaxtune.workdir": os.path.abspath(os.fspath(workdir))
        if not writer.is_remote(workdir)
        else os.fspath(workdir)
      }
      if config.tracking.group:
        tags["jaxtune.group"] = config.tracking.group
        tags["mlflow.parentRunId"] = _group_parent(self.client, exp_id, config.tracking.group)
      run = self.client.create_run(exp_id, run_name=common.run_name(config, workdir), tags=tags)
    self.run_id = run.info.run_id
    common.register(self)  # from here on, a failure ends the run FAILED
    if run.info.run_id != old.get("run_id"):
      common.write_id(workdir, "mlflow", {"run_id": run.info.run_id, "tracking_uri": self.uri})
    self._log_params(common.flat_config(config), dict(run.data.params))

  def _log_params(self, params: Mapping[str, Any], logged: Mapping[str, str]) -> None:
    """Params not yet in the run (MLflow refuses to change one: a resume with
    --allow_config_change keeps the first value; run.json records the change)."""
    from mlflow.entities import Param

    new = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in params.items() if k not in logged]
    for i in range(0, len(new), BATCH):
      self.client.log_batch(self.run_id, params=new[i : i + BATCH])

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    self._step = int(step)
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, int(step)) for k, v in common.finite(metrics).items()]
    if values:
      self.client.log_batch(self.run_id, metrics=values)

  def write_text(self, step: int, tag: str, text: str) -> None:
    self.client.log_text(self.run_id, text, f"text/{tag}/step_{int(step):07d}.md")

  def write_hparams(
    self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int | None = None
  ) -> None:
    # Only new params: the metrics are scalars `write` logged already (a second point per
    # step would be a duplicate in the run's history).
    self._log_params(hparams, self.client.get_run(self.run_id).data.params)

  def close(self, status: str = "FINISHED") -> None:
    """Logs results.json's metrics and the workdir's outputs, then ends the run."""
    if self._closed:
      return
    self._closed = True
    try:
      self.write(self._step, common.results_metrics(self.workdir))
      if not writer.is_remote(self.workdir):  # MLflow uploads local files
        for path in common.output_files(self.workdir):
          self.client.log_artifact(self.run_id, os.fspath(path))
        export = common.export_dir(self.workdir)
        if export is not None:
          self.client.log_artifacts(self.run_id, os.fspath(export), common.EXPORT_DIR)
    finally:
      self.client.set_terminated(self.run_id, status)
