"""What a study leaves behind: leaderboard.csv, best_config.py, and plots as PNG and HTML."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import optuna

from jaxtune import recipes, resume

log = logging.getLogger(__name__)

PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
TITLES = {"optimization_history": "Optimization history of {}",
          "param_importances": "Hyperparameter importances for {}",
          "parallel_coordinate": "Parallel coordinates of {}"}
# How the leaderboard marks the trial that ran the recipe's own values.
BASELINE_NOTE = "baseline (recipe values)"


def metric_name(study: optuna.Study) -> str:
  """The objective's name: the study's metric name (`set_metric_names`), else the `objective`
  user attr of studies written before jaxtune set it."""
  return (study.metric_names or [None])[0] or study.user_attrs.get("objective", "value")


def rows(study: optuna.Study) -> list[dict]:
  """Finished trials, best first (pruned trials after completed ones, by their last value)."""
  maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
  metric = metric_name(study)
  out = []
  for t in study.get_trials(deepcopy=False):
    if t.state == optuna.trial.TrialState.COMPLETE:
      value = t.value
    elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
      value = t.intermediate_values[max(t.intermediate_values)]
    else:
      continue
    row = {"trial": t.number, "state": t.state.name.lower(), metric: value,
           "steps": t.user_attrs.get("steps", ""), "seconds": t.user_attrs.get("seconds", "")}
    if t.user_attrs.get("baseline"):
      row["note"] = BASELINE_NOTE
    for k in ("member", "generation", "parent"):
      if k in t.user_attrs:
        row[k] = t.user_attrs[k]
    row.update(t.params)
    # Overall test scalars (accuracy, loss, f1_macro, ...), not the per-class ones.
    row.update({k: v for k, v in t.user_attrs.items() if k.startswith("test/") and k.count("/") == 1})
    out.append(row)
  sign = -1 if maximize else 1
  out.sort(key=lambda r: (r["state"] != "complete", sign * r[metric]))
  return out


def leaderboard(study: optuna.Study, path: str | Path, top: int = 10) -> str:
  """Writes every finished trial to `path` (CSV) and returns the top rows as text."""
  table = rows(study)
  if not table:
    return "no finished trials"
  cols = list(dict.fromkeys(k for r in table for k in r))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(table)

  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)

  shown = [[fmt(r.get(c, "")) for c in cols] for r in table[:top]]
  widths = [max(len(c), *(len(s[i]) for s in shown)) for i, c in enumerate(cols)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(s, widths, strict=True)) for s in shown]
  return "\n".join(lines)


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  """The completed trial that ran the recipe's own values (the last one, if it was retried)."""
  done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
          if t.user_attrs.get("baseline")]
  return done[-1] if done else None


def gain(study: optuna.Study) -> str:
  """One line: the best trial against the recipe's own values, at the same budget."""
  base = baseline_trial(study)
  if base is None or not study.get_trials(deepcopy=False,
                                          states=(optuna.trial.TrialState.COMPLETE,)):
    return "no completed baseline trial (the recipe's own values): no gain to report"
  metric, best = metric_name(study), study.best_trial
  if best.number == base.number:
    return (f"the recipe's own values (trial {base.number}) are still the best: "
            f"{metric}={base.value:.5g}")
  maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
  delta = best.value - base.value if maximize else base.value - best.value
  return (f"gain over the recipe's values: {metric} {base.value:.5g} (baseline, trial "
          f"{base.number}) -> {best.value:.5g} (best, trial {best.number}), {delta:+.4g}")


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
  done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if not done:
    raise ValueError(f"study {study.study_name!r} has no completed trial yet")
  return study.best_trial


def write_best_config(study: optuna.Study, recipe: str, path: str | Path, config=None) -> Path:
  """The best trial as a runnable recipe: it loads `recipe` and sets the winning values.

  `config`, the run config the search started from, carries the command line's --config.*
  overrides: those that differ from the recipe are written too.
  """
  t = best_trial(study)
  file, _, arg = recipe.partition(":")
  file = str(Path(file).resolve())
  overrides = {}
  if config is not None:
    base, given = resume.flat(recipes.load(file, arg or "")), resume.flat(config)
    overrides = {k: v for k, v in given.items() if k in base and base[k] != v}
  overrides.update(json.loads(t.user_attrs.get("overrides", "{}")) or dict(t.params))
  metric = metric_name(study)
  lines = [
    f'"""Best configuration of study {study.study_name!r}: trial {t.number}, '
    f'{metric}={t.value:.6g}.',
    "",
    f"Written by `jaxtune tune`; it loads the recipe {recipe!r} and sets the searched values",
    "(with the command line's overrides and the per-trial step budget the trial trained with).",
    '"""',
    "",
    "import importlib.util",
    "",
    f"RECIPE = {file!r}",
    f"VARIANT = {arg or None!r}",
    f"OVERRIDES = {overrides!r}",
    "",
    "",
    "def get_config(arg=None):",
    "  del arg",
    '  spec = importlib.util.spec_from_file_location("_jaxtune_base_recipe", RECIPE)',
    "  module = importlib.util.module_from_spec(spec)",
    "  spec.loader.exec_module(module)",
    "  c = module.get_config(VARIANT)",
    "  for key, value in OVERRIDES.items():",
    "    *parents, leaf = key.split('.')",
    "    node = c",
    "    for p in parents:",
    "      node = node[p]",
    "    node[leaf] = type(node[leaf])(value)",
    "  return c",
    "",
  ]
  path = Path(path)
  path.write_text("\n".join(lines))
  return path


def write_plots(study: optuna.Study, outdir: str | Path) -> list[Path]:
  """Each plot as PNG (matplotlib) and HTML (plotly); a plot that needs more trials or more
  than one parameter (importances, parallel coordinates) is skipped with a log line."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from optuna.visualization import matplotlib as vis_mpl

  outdir = Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  written = []
  import warnings

  metric = metric_name(study)
  base = baseline_trial(study)
  for name in PLOTS:
    # Optuna labels the objective "Objective Value" unless told its name.
    title = TITLES[name].format(metric)
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = getattr(vis_mpl, f"plot_{name}")(study, target_name=metric)
        first = ax if hasattr(ax, "figure") else ax.flat[0]
        for loc in ("left", "right"):  # Optuna puts some of its titles on the left
          first.set_title("", loc=loc)
        first.set_title(title)
        if name == "optimization_history" and base is not None:
          first.axhline(base.value, color="gray", linestyle="--", linewidth=1,
                        label=f"baseline (recipe values, trial {base.number})")
          first.legend(loc="best")
        fig = first.figure
        fig.savefig(outdir / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        figure = plotly_figure(study, name, metric, title, base)
        figure.write_html(outdir / f"{name}.html", include_plotlyjs="directory")
      written += [outdir / f"{name}.png", outdir / f"{name}.html"]
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
      log.info("plot %s skipped: %s", name, e)
  return written


def plotly_figure(study: optuna.Study, name: str, metric: str, title: str,
                  base: optuna.trial.FrozenTrial | None = None):
  """Optuna's plotly plot `name`, its objective axis and title named for `metric`; the
  optimization history also draws the baseline trial's value as a dashed line."""
  from optuna import visualization as vis

  fig = getattr(vis, f"plot_{name}")(study, target_name=metric)
  fig.update_layout(title=title)
  if name == "optimization_history" and base is not None:
    fig.add_hline(y=base.value, line_dash="dash", line_color="gray",
                  annotation_text=f"baseline (recipe values, trial {base.number})")
  return fig
