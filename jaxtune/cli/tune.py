"""`jaxtune tune --config=configs/<recipe>.py --search=configs/search/<space>.py --workdir=DIR`.

Runs the search the search file describes (grid, random, TPE, GP or PBT) with Optuna as the
engine; the study lives in DIR/study.db unless --storage names a database URL shared by many
workers. Rerunning the same command resumes the study. Writes DIR/leaderboard.csv,
DIR/best_config.py (a runnable recipe), DIR/plots/*.png|html, and each trial's run
(metrics, TensorBoard logs, checkpoints) under DIR/trials/ (PBT: DIR/pbt/member_NN/).
--config and --config.a.b=value overrides work as for `jaxtune train` (its --help says how).
--backend=ray runs each trial as a Ray task on a Ray cluster (pip install 'jaxtune[ray]').
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from jaxtune.cli import run_app
from jaxtune.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Recipe file (configs/<recipe>.py[:variant]); override fields with --config.a.b=v.",
  lock_config=True,
)
_SEARCH = config_flags.DEFINE_config_file(
  "search", None, "Search file (configs/search/<space>.py); override fields with "
  "--search.budget.trials=N etc.",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory (study.db, trials, reports).")
_STORAGE = flags.DEFINE_string(
  "storage", "", "Optuna storage URL shared by many workers (e.g. postgresql://user@host/db); "
  "default: sqlite in --workdir.")
_STUDY = flags.DEFINE_string("study_name", "", "Study name in the storage; default: the "
                             "workdir's name.")
_POPULATION = flags.DEFINE_enum(
  "population", "auto", ["auto", "on", "off"],
  "PBT: train the members as one vmapped program (on), one after another (off), or vmapped "
  "when the population fits in device memory (auto). Vmapped members are split over the "
  "devices (--config.mesh.population, default -1: as many groups as divide both).")
_HEARTBEAT = flags.DEFINE_integer(
  "heartbeat_s", 30, "Seconds between trial heartbeats; a trial silent for twice this is "
  "taken as dead and re-queued.")
_PBT_SHARED = flags.DEFINE_bool(
  "pbt_shared", False, "PBT: share one population with every worker started with this flag on "
  "the same --workdir and --storage; each claims members from the study and trains them one "
  "interval at a time (jaxtune.tune.pbt_workers).")
_BACKEND = flags.DEFINE_enum(
  "backend", "local", ["local", "ray"],
  "Where trials run: in this process, one after another (local), or as Ray tasks on a Ray "
  "cluster (ray; pip install 'jaxtune[ray]').")
_RAY_ADDRESS = flags.DEFINE_string(
  "ray_address", "", "--backend=ray: the cluster to use: auto (the one `ray start` began on this "
  "machine) or HOST:PORT of its head node; default: $RAY_ADDRESS, else a Ray instance started "
  "for this study on this machine.")
_TRIAL_RESOURCES = flags.DEFINE_string(
  "trial_resources", "cpu=1", "--backend=ray: what each trial asks Ray for: cpu=N,gpu=N and "
  "custom resources NAME=N (e.g. TPU=4).")
flags.mark_flags_as_required(["config", "search", "workdir"])


def main(argv):
  del argv
  import warnings
  from pathlib import Path

  import optuna

  from jaxtune.tune import pbt, report, space, study

  # Heartbeats and the matplotlib plots are marked experimental in Optuna; we rely on both.
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

  from jaxtune import config as jt_config
  from jaxtune import trackers

  # Keys set with --config.a.b=v that the trials would not read are refused, before any trial.
  jt_config.check_ignored(_CONFIG.value, config_flags.get_override_values(flags.FLAGS["config"]))
  trackers.name_experiment(_CONFIG.value, flags.FLAGS["config"].config_filename)
  workdir = Path(_WORKDIR.value)
  search = _SEARCH.value
  try:  # up front, so a mistake in the search file is named before any trial starts
    space.check(search, _CONFIG.value)
  except ConfigError as e:
    raise ConfigError(f"--search={flags.FLAGS['search'].config_filename}: {e}") from e
  if _PBT_SHARED.value and search.algorithm != "pbt":
    raise ConfigError(f"--pbt_shared shares a PBT population, but search.algorithm="
                      f"{search.algorithm!r}: use a PBT search (--search=...:pbt), or drop "
                      "--pbt_shared (other searches share a study without it)")
  launch = None
  if _BACKEND.value == "ray":
    if search.algorithm == "pbt":
      raise ConfigError("--backend=ray runs Optuna searches (grid, random, tpe, gp); for "
                        "search.algorithm='pbt' use --backend=local (several PBT workers share "
                        "one population with --pbt_shared)")
    from jaxtune.tune import ray_backend

    launch = ray_backend.RayTrials(_TRIAL_RESOURCES.value, _RAY_ADDRESS.value)
  else:
    for f in (_RAY_ADDRESS, _TRIAL_RESOURCES):
      if flags.FLAGS[f.name].present:
        raise ConfigError(f"--{f.name} applies to --backend=ray only; add --backend=ray")
  if search.algorithm == "pbt" and _PBT_SHARED.value:
    from jaxtune.tune import pbt_workers

    s = pbt_workers.run(_CONFIG.value, search, workdir, _STORAGE.value, _STUDY.value,
                        _HEARTBEAT.value)
  elif search.algorithm == "pbt":
    vmapped = {"auto": None, "on": True, "off": False}[_POPULATION.value]
    s = pbt.run(_CONFIG.value, search, workdir, _STORAGE.value, _STUDY.value, vmapped=vmapped)
  else:
    try:
      s = study.run(_CONFIG.value, search, workdir, _STORAGE.value, _STUDY.value, _HEARTBEAT.value,
                    recipe=flags.FLAGS["config"].config_filename, launch=launch)
    finally:
      if launch is not None:
        launch.close()
  print(report.leaderboard(s, workdir / "leaderboard.csv"))
  if search.algorithm != "pbt":  # PBT has no baseline trial: its members start from samples
    print(report.gain(s))
  recipe = flags.FLAGS["config"].config_filename
  best = report.write_best_config(s, recipe, workdir / "best_config.py", _CONFIG.value)
  plots = report.write_plots(s, workdir / "plots")
  print(f"best: trial {s.best_trial.number}, {search.objective.metric}={s.best_value:.5g}: "
        f"{s.best_trial.params}\nbest config: {best}\n{len(plots)} plot files in "
        f"{workdir / 'plots'}; leaderboard: {workdir / 'leaderboard.csv'}")


def run(argv):
  run_app(__name__, main, argv)
