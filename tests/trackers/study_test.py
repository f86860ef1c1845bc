"""A search reporting to MLflow: one parent run for the study, a child run per trial."""

import sys

from mlflow.tracking import MlflowClient

from jaxtune.tune import study
from tests.trackers.conftest import REPO


def test_study_trials_are_nested_mlflow_runs(tiny_config, tmp_path):
  sys.path.insert(0, str(REPO))
  from configs.search import tiny

  search = tiny.get_config("random")
  search.budget.trials = 2
  c = tiny_config
  c.report_to = "mlflow"
  s = study.run(c, search, tmp_path / "study", study_name="lr-search")
  client = MlflowClient(f"sqlite:///{tmp_path / 'study'}/mlflow.db")  # the study's store
  exp = client.get_experiment_by_name("jaxtune")
  runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
  assert sorted(runs) == ["lr-search", "trial-0000", "trial-0001"]
  parent = runs["lr-search"]
  assert parent.info.status == "FINISHED"
  assert parent.data.metrics["best/eval/loss"] == s.best_value
  assert float(parent.data.params["best.optim.learning_rate"]) == s.best_params["optim.learning_rate"]
  for t in s.trials:
    child = runs[f"trial-{t.number:04d}"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED"
    assert float(child.data.params["optim.learning_rate"]) == t.params["optim.learning_rate"]
    assert child.data.metrics["eval/loss"] == t.value  # the objective, as the last eval/loss


def test_pbt_members_are_nested_mlflow_runs(tiny_config, tmp_path):
  sys.path.insert(0, str(REPO))
  from configs.search import tiny
  from jaxtune.tune import pbt

  search = tiny.get_config("pbt")
  search.pbt.population, search.pbt.quantile = 2, 0.5
  c = tiny_config
  c.report_to = "mlflow"
  s = pbt.run(c, search, tmp_path / "study", study_name="pbt-search", vmapped=True)
  client = MlflowClient(f"sqlite:///{tmp_path / 'study'}/mlflow.db")
  runs = {r.info.run_name: r for r in client.search_runs(
    [client.get_experiment_by_name("jaxtune").experiment_id])}
  assert sorted(runs) == ["member-00", "member-01", "pbt-search"]
  parent = runs.pop("pbt-search")
  assert parent.info.status == "FINISHED"
  assert parent.data.metrics["best/eval/loss"] == s.best_value
  for name, child in runs.items():
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/loss")]
    assert steps == [3, 6], name  # one point per generation
