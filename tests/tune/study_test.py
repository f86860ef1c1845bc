"""Studies end to end on the tiny recipe: every sampler, pruning through the driver's hook,
resumption after a kill, two workers on one SQLite file, and a PostgreSQL storage."""

import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from jaxtune import train
from jaxtune.errors import ConfigError
from jaxtune.tune import report, space, study
from tests.tune.conftest import cli_args, cli_env


@pytest.mark.parametrize("algorithm", ["grid", "random", "tpe", "gp"])
def test_each_sampler_completes_a_tiny_search(algorithm, tiny_config, tiny_search, tmp_path):
  s = study.run(tiny_config, tiny_search(algorithm), tmp_path)
  done = s.get_trials(states=study.FINISHED)
  assert len(done) == 2
  for t in done:
    tdir = Path(t.user_attrs["workdir"])
    assert tdir.parent == tmp_path / "trials"
    assert (tdir / "results.json").exists() and list((tdir / "tb").iterdir())
    assert set(t.params) == {"optim.learning_rate", "optim.weight_decay"}
  # Plain Optuna reads the objective's name from the storage.
  loaded = optuna.load_study(study_name=tmp_path.name, storage=study.storage_url(tmp_path))
  assert loaded.metric_names == ["eval/loss"]
  if algorithm == "grid":  # grid points only
    for t in done:
      assert t.params["optim.weight_decay"] in (0.0, 0.1)
      assert min(abs(t.params["optim.learning_rate"] - v) for v in (1e-3, 3e-2)) < 1e-12
    assert not any(t.user_attrs.get("baseline") for t in done)
    return
  # The recipe's own values run first, marked as the baseline; the sampler draws the rest.
  recipe = {"optim.learning_rate": tiny_config.optim.learning_rate,
            "optim.weight_decay": tiny_config.optim.weight_decay}
  assert loaded.trials[0].params == recipe and loaded.trials[0].user_attrs["baseline"]
  assert loaded.trials[1].params != recipe and "baseline" not in loaded.trials[1].user_attrs
  if algorithm == "tpe":  # a resumed study, with a larger budget, does not queue it again
    more = tiny_search(algorithm, trials=3)
    again = study.run(tiny_config, more, tmp_path)
    assert len(again.get_trials(states=study.FINISHED)) == 3
    assert [bool(t.user_attrs.get("baseline")) for t in again.trials] == [True, False, False]
    assert report.BASELINE_NOTE in report.leaderboard(again, tmp_path / "leaderboard.csv")


def test_study_names_its_metric_and_queues_the_baseline_once(tiny_search, tmp_path):
  search = tiny_search("random")
  base = {"optim.learning_rate": 3e-3, "optim.weight_decay": 0.01}
  study.open_study(search, tmp_path, baseline=base)
  study.open_study(search, tmp_path, baseline=base)  # a resume, or a second worker
  s = optuna.load_study(study_name=tmp_path.name, storage=study.storage_url(tmp_path))
  assert s.metric_names == ["eval/loss"]
  waiting = s.get_trials(states=(optuna.trial.TrialState.WAITING,))
  assert len(waiting) == 1 and waiting[0].user_attrs == {"baseline": True}
  assert waiting[0].system_attrs["fixed_params"] == base
  # A study made without a metric name (by plain Optuna, or an older jaxtune) gets one ...
  url = f"sqlite:///{tmp_path / 'old.db'}"
  optuna.create_study(storage=url, study_name="old")
  study.open_study(search, tmp_path, storage=url, study_name="old")
  assert optuna.load_study(study_name="old", storage=url).metric_names == ["eval/loss"]
  # ... and a search for another metric is refused: the values would not be comparable.
  search.objective.metric = "eval/accuracy"
  with pytest.raises(ConfigError, match=r"optimizes 'eval/loss'.*--study_name"):
    study.open_study(search, tmp_path)


def test_baseline_outside_the_space_is_skipped_with_a_message(tiny_config, tiny_search,
                                                                tmp_path, caplog):
  search = tiny_search("tpe", trials=0)  # no trial runs: only the study is opened
  search.space["optim.weight_decay"] = space.choice(0.0, 0.1)  # the recipe has 0.01
  with caplog.at_level(logging.WARNING, logger="jaxtune.tune.study"):
    s = study.run(tiny_config, search, tmp_path)
  assert not s.trials
  assert "optim.weight_decay=0.01 is outside choice(0.0, 0.1)" in caplog.text


def test_hook_stops_a_run_like_early_stopping(tiny_config, tmp_path, caplog):
  c = space.apply(tiny_config, {"train.steps": 9, "train.eval_every": 3, "optim.warmup_steps": 2})
  c.train.progress = False
  seen = []
  result = train.train_and_evaluate(c, tmp_path, on_eval=lambda s, m: seen.append((s, m)) or True)
  assert [s for s, _ in seen] == [3] and "eval/loss" in seen[0][1]
  assert result["step"] == 3 and result["stopped_early"]
  # The hook (the search's pruner) says why itself; no early-stopping message with patience 0.
  assert "early stopping" not in caplog.text
  metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["train/stopped_by_hook"] for m in metrics if "train/stopped_by_hook" in m] == [1.0]


def test_median_pruner_stops_a_poor_trial(tiny_config, tiny_search, tmp_path):
  search = tiny_search("random", trials=3)
  search.space["optim.learning_rate"] = space.loguniform(1e-7, 3e-2)
  s = study.open_study(search, tmp_path)
  for lr in (3e-2, 2e-2, 1e-7):  # two good trials, then one that barely moves
    s.enqueue_trial({"optim.learning_rate": lr, "optim.weight_decay": 0.0})
  s = study.run(tiny_config, search, tmp_path)
  states = [t.state for t in s.get_trials()]
  assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
  pruned = s.trials[2]
  assert list(pruned.intermediate_values) == [3] and pruned.user_attrs["steps"] == 3


def _wait_for(cond, timeout, what):
  t0 = time.time()
  while not cond():
    if time.time() - t0 > timeout:
      raise TimeoutError(f"waited {timeout}s for {what}")
    time.sleep(0.2)


def test_killed_study_resumes_without_repeating_finished_trials(tmp_path):
  # Longer trials with a checkpoint every 2 steps, so the kill lands inside trial 1.
  args = cli_args(tmp_path, "--search.budget.trials=3", "--search.trial.steps=12",
                  "--search.trial.eval_every=6", "--heartbeat_s=1", "--search.algorithm=random",
                  "--search.pruner=none",
                  "--config.checkpoint.every_steps=2")
  first = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # an unread pipe could fill and block it
  ckpts = tmp_path / "trials" / "0001" / "checkpoints"
  try:
    _wait_for(lambda: ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())
              or first.poll() is not None, 240, "trial 1's first checkpoint")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  done0 = (tmp_path / "trials" / "0000" / "results.json").stat().st_mtime_ns
  time.sleep(3.5)  # the dead trial's heartbeat goes stale: > 2 x heartbeat_s in SQLite's whole seconds
  second = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=240)
  assert second.returncode == 0, second.stderr[-3000:]
  s = optuna.load_study(study_name=tmp_path.name, storage=study.storage_url(tmp_path))
  complete = s.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  dirs = [Path(t.user_attrs["workdir"]).name for t in complete]
  # Three runs, none repeated; the killed trial 1 finished in its own workdir (as trial 2).
  assert len(dirs) == 3 and len(set(dirs)) == 3 and {"0000", "0001"} <= set(dirs)
  assert s.trials[1].state == optuna.trial.TrialState.FAIL  # the killed one, retried as a copy
  retry = next(t for t in complete if Path(t.user_attrs["workdir"]).name == "0001")
  assert retry.params == s.trials[1].params
  assert (tmp_path / "trials" / "0000" / "results.json").stat().st_mtime_ns == done0
  assert "resumed from step" in second.stderr  # trial 1 continued from its checkpoint
  # Trial 0 ran the recipe's values: the summary sets the best against it, by the metric's name.
  assert s.trials[0].user_attrs["baseline"] and report.gain(s) in second.stdout
  assert "eval/loss" in report.gain(s) and "trial 0" in report.gain(s)
  assert (tmp_path / "leaderboard.csv").exists() and (tmp_path / "best_config.py").exists()
  # Each trial records the recipe, so `jaxtune report` diffs the trial against it.
  recipe = json.loads((tmp_path / "trials" / "0000" / "run.json").read_text())["extra"]["recipe"]
  assert recipe["file"].endswith("configs/tiny.py") and recipe["sha256"]


def test_two_workers_share_one_sqlite_study(tiny_search, tmp_path):
  args = cli_args(tmp_path, "--search.budget.trials=4", "--search.algorithm=random",
                  "--search.pruner=none")
  # Create the study first so the two workers do not race to create its tables.
  study.open_study(tiny_search("random"), tmp_path)
  workers = [subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
  errs = [w.communicate(timeout=300)[1] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-2000:] for e in errs)
  s = optuna.load_study(study_name=tmp_path.name, storage=study.storage_url(tmp_path))
  done = s.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  # The budget is study-wide; a worker finishing its last trial may overshoot by one.
  assert 4 <= len(done) <= 5
  dirs = [t.user_attrs["workdir"] for t in done]
  assert len(set(dirs)) == len(dirs)
  assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
  # Each trial was run by exactly one worker, and both workers ran some.
  ran = [set(map(int, re.findall(r"Trial (\d+) (?:finished|pruned)", e))) for e in errs]
  assert all(ran) and not ran[0] & ran[1]
  assert ran[0] | ran[1] == {t.number for t in done}


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def postgres():
  initdb = shutil.which("initdb") or (PG_BIN / "initdb" if (PG_BIN / "initdb").exists() else None)
  if initdb is None:
    pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/15/"
                "bin; Debian: apt-get install postgresql): the shared-storage test needs a server")
  pg_ctl = Path(initdb).parent / "pg_ctl"
  as_user = []
  root = Path(tempfile.mkdtemp(prefix="jaxtune_pg_"))
  if os.geteuid() == 0:  # the server refuses to run as root: run it as Debian's postgres user
    try:
      pwd.getpwnam("postgres")
    except KeyError:
      pytest.skip("running as root and there is no 'postgres' user to run the server as")
    as_user = ["runuser", "-u", "postgres", "--"]
    root.chmod(0o755)
    shutil.chown(root, "postgres")
  data = root / "data"
  port = _free_port()
  try:
    subprocess.run([*as_user, str(initdb), "-D", str(data), "-U", "tune", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-l", str(root / "log"), "-w",
                    "start", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"],
                   check=True, capture_output=True)
    yield f"postgresql://tune@127.0.0.1:{port}/postgres"
  finally:
    subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_postgresql_storage(postgres, tiny_config, tiny_search, tmp_path):
  s = study.run(tiny_config, tiny_search("tpe"), tmp_path, storage=postgres, study_name="pg")
  assert not (tmp_path / "study.db").exists()
  again = optuna.load_study(study_name="pg", storage=study.make_storage(postgres))
  assert len(again.get_trials(states=study.FINISHED)) == 2
  assert again.best_value == s.best_value
  text = report.leaderboard(again, tmp_path / "leaderboard.csv")
  assert text.splitlines()[1].split()[0] == str(again.best_trial.number)
