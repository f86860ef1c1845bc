"""report_to=mlflow end to end, read back with MLflow's own client from the default store
(sqlite:///WORKDIR/mlflow.db): params, metric history per step, results, artifacts, run
status, and a resume that continues the same run."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from jaxtune import trackers, train


class Boom(RuntimeError):
  pass


def test_a_failed_run_resumes_into_the_same_mlflow_run(tiny_config, tmp_path):
  c = tiny_config
  c.report_to = "mlflow"
  c.tracking.experiment = "tiny"
  c.checkpoint.every_steps = 2
  c.export.enabled = True
  workdir = tmp_path / "run"

  def fail(step, scalars):
    raise Boom("the first evaluation fails")

  with pytest.raises(Boom):
    train.train_and_evaluate(c, workdir, on_eval=fail)
  ids = json.loads((workdir / trackers.IDS_FILE).read_text())["mlflow"]
  assert ids["tracking_uri"] == f"sqlite:///{workdir}/mlflow.db"
  client = MlflowClient(ids["tracking_uri"])
  assert client.get_run(ids["run_id"]).info.status == "FAILED"

  train.train_and_evaluate(c, workdir)  # resumes from the checkpoint at step 2
  exp = client.get_experiment_by_name("tiny")
  runs = client.search_runs([exp.experiment_id])
  assert [r.info.run_id for r in runs] == [ids["run_id"]]  # the same run, continued
  run = runs[0]
  assert run.info.status == "FINISHED" and run.info.run_name == "run"
  assert run.data.params["optim.learning_rate"] == str(c.optim.learning_rate)
  assert run.data.params["report_to"] == "mlflow" and run.data.params["train.steps"] == "6"
  history = client.get_metric_history(run.info.run_id, "train/loss")
  assert sorted({m.step for m in history}) == [3, 6]
  assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")) == [3, 6]
  results = json.loads((workdir / "results.json").read_text())
  assert run.data.metrics["val/loss"] == pytest.approx(results["val"]["loss"])
  assert run.data.metrics["best_step"] == results["best_step"]
  files = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert {"results.json", "config.json", "metrics.jsonl", "run.json", "export"} <= files
  export = {a.path for a in client.list_artifacts(run.info.run_id, "export")}
  assert {"export/config.json", "export/model.safetensors"} <= export
  # Artifacts live beside the store in the workdir, not in the current directory's ./mlruns.
  assert exp.artifact_location == os.fspath(workdir / "mlartifacts")
  assert not (workdir / "tb").exists()  # tensorboard is not in report_to
