"""Leaderboard, the best configuration as a runnable recipe, and plots, from a study whose
trials are recorded directly (no training)."""

import csv
import json
import warnings

import optuna

from jaxtune import recipes
from jaxtune.tune import report, space
from tests.tune.conftest import REPO


def _tiny():
  return recipes.load(f"{REPO}/configs/tiny.py", "")


def _study(tmp_path):
  """Three completed trials (the first with the recipe's values) and a pruned one; named like
  a study written before jaxtune set metric names (only the `objective` user attr)."""
  s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="r",
                          direction="maximize")
  s.set_user_attr("objective", "eval/accuracy")
  search = space.default()
  search.space["optim.learning_rate"] = space.loguniform(1e-5, 1e-2)
  search.space["optim.weight_decay"] = space.uniform(0.0, 0.1)
  dists = space.distributions(search)
  for lr, wd, acc in [(1e-4, 0.01, 0.7), (3e-4, 0.05, 0.8), (1e-3, 0.0, 0.75)]:
    params = {"optim.learning_rate": lr, "optim.weight_decay": wd}
    overrides = {"train.steps": 40, "train.epochs": 0.0, **params}
    s.add_trial(optuna.create_trial(params=params, distributions=dists, value=acc,
                                    intermediate_values={20: acc - 0.1, 40: acc},
                                    user_attrs={"overrides": json.dumps(overrides), "steps": 40,
                                                "test/accuracy": acc - 0.02,
                                                "baseline": acc == 0.7}))
  s.add_trial(optuna.create_trial(state=optuna.trial.TrialState.PRUNED, params=params,
                                  distributions=dists, intermediate_values={20: 0.6}))
  return s


def test_leaderboard_orders_best_first(tmp_path):
  s = _study(tmp_path)
  text = report.leaderboard(s, tmp_path / "leaderboard.csv")
  rows = list(csv.DictReader(open(tmp_path / "leaderboard.csv")))
  assert [r["trial"] for r in rows] == ["1", "2", "0", "3"]  # pruned last
  assert rows[0]["eval/accuracy"] == "0.8" and rows[0]["test/accuracy"] == str(0.8 - 0.02)
  assert rows[-1]["state"] == "pruned"
  assert text.splitlines()[1].split()[:2] == ["1", "complete"]
  # The recipe's own values are marked, in the CSV and the printed table.
  assert [r["note"] for r in rows] == ["", "", report.BASELINE_NOTE, ""]
  assert report.BASELINE_NOTE in next(line for line in text.splitlines()
                                       if line.split()[0] == "0")


def test_gain_over_the_recipe(tmp_path):
  s = _study(tmp_path)
  line = report.gain(s)
  assert "eval/accuracy 0.7 (baseline, trial 0) -> 0.8 (best, trial 1), +0.1" in line
  empty = optuna.create_study(direction="maximize")
  assert "no completed baseline" in report.gain(empty)


def test_best_config_is_a_runnable_recipe(tmp_path):
  s = _study(tmp_path)
  run_config = space.apply(_tiny(), {"data.seq_len": 32})  # as --config.data.seq_len=32
  path = report.write_best_config(s, f"{REPO}/configs/tiny.py", tmp_path / "best_config.py",
                                  run_config)
  c = recipes.load(path)
  assert c.optim.learning_rate == 3e-4 and c.optim.weight_decay == 0.05
  assert c.train.steps == 40 and c.model.source == "preset:tiny-llama"
  assert c.data.seq_len == 32
  assert "trial 1" in path.read_text()


def test_plots_as_png_and_html(tmp_path):
  files = report.write_plots(_study(tmp_path), tmp_path / "plots")
  names = {f.name for f in files}
  for plot in report.PLOTS:
    assert {f"{plot}.png", f"{plot}.html"} <= names
  assert all(f.stat().st_size > 1000 for f in files)
  for plot in report.PLOTS:  # the metric, not Optuna's "Objective Value", in every HTML plot
    # plotly's JSON writes "/" as "\u002f" (the page shows "/").
    html = (tmp_path / "plots" / f"{plot}.html").read_text().replace("\\u002f", "/")
    assert "eval/accuracy" in html and "Objective Value" not in html, plot


def test_plots_name_the_metric_on_their_axes(tmp_path):
  s = _study(tmp_path)
  with_names = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'study.db'}")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    with_names.set_metric_names(["eval/accuracy"])
  metric = report.metric_name(s)
  assert metric == report.metric_name(with_names) == "eval/accuracy"
  base = report.baseline_trial(s)
  assert base.number == 0
  history = report.plotly_figure(s, "optimization_history", metric, "t", base)
  assert history.layout.yaxis.title.text == "eval/accuracy"
  assert any("baseline" in a.text for a in history.layout.annotations)  # the recipe's line
  importances = report.plotly_figure(s, "param_importances", metric, "t")
  assert [t.name for t in importances.data] == ["eval/accuracy"]
  coords = report.plotly_figure(s, "parallel_coordinate", metric, "t")
  assert coords.layout.xaxis.ticktext[0] == "eval/accuracy"
