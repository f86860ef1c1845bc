"""`jaxtune tune --backend=ray`: trials as Ray tasks on a local Ray instance started here (no
network), a worker SIGKILLed mid-trial whose trial resumes from its checkpoint, and the
one-line errors (Ray missing, bad --trial_resources, an unreachable --ray_address)."""

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from jaxtune import workdir_lock
from jaxtune.errors import ConfigError
from jaxtune.tune import ray_backend, space, study


@pytest.fixture(scope="module")
def ray_cluster():
  import ray

  # Two CPUs, on the loopback address only; the test's environment (the JAX compilation cache
  # of tests/tune/conftest.py, fake devices) is inherited by the workers Ray starts.
  # Ray starts its workers 15 nice levels below the driver; the trials here are the test's own
  # work, so they run at the test's priority.
  old = os.environ.get("RAY_worker_niceness")
  os.environ["RAY_worker_niceness"] = "0"
  for attempt in (1, 2):
    try:
      ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
      )
      break
    except Exception as e:  # Ray waits a fixed 30 s for its raylet: a loaded machine can miss it
      ray.shutdown()
      if attempt == 2 or "timed out during startup" not in str(e):
        raise
  yield ray
  ray.shutdown()
  if old is None:
    os.environ.pop("RAY_worker_niceness")
  else:
    os.environ["RAY_worker_niceness"] = old


def test_trial_resources_are_parsed_strictly():
  assert ray_backend.parse_resources("cpu=2,gpu=1") == {"cpu": 2.0, "gpu": 1.0}
  assert ray_backend.task_options(ray_backend.parse_resources("CPU=0.5, TPU=4")) == {
    "num_cpus": 0.5,
    "num_gpus": 0.0,
    "resources": {"TPU": 4.0},
    "max_retries": 0,
  }
  for bad, words in [
    ("cpu2", "'cpu2' is not NAME=AMOUNT"),
    ("cpu=2,", "an empty entry"),
    ("gpu=-1", "'gpu=-1' is not"),
    ("cpu=1,CPU=2", "cpu is given twice"),
    ("cpu=0", "needs some resource"),
    ("memory=1e9", "'memory=1e9' is not"),
  ]:
    with pytest.raises(ConfigError, match=f"--trial_resources={bad}: .*{words}"):
      ray_backend.parse_resources(bad)


def test_sqlite_study_is_refused_on_a_cluster_of_several_nodes():
  node = {"Alive": True, "Resources": {"CPU": 8.0}}
  assert ray_backend.cluster_problem([node], "sqlite:////x/study.db") is None
  problem = ray_backend.cluster_problem([node, node], "sqlite:////x/study.db")
  assert "2 nodes" in problem and "--storage=postgresql://" in problem
  assert ray_backend.cluster_problem([node, node], "postgresql://h/db") is None
  assert ray_backend.fits_somewhere([node], {"cpu": 8}) and not ray_backend.fits_somewhere(
    [node], {"cpu": 1, "gpu": 1}
  )


def test_without_ray_backend_ray_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as when it is absent
  with pytest.raises(
    ConfigError,
    match=r"--backend=ray needs Ray, which is not installed: "
    r"pip install 'jaxtune\[ray\]'",
  ):
    ray_backend.RayTrials("cpu=1")


def test_unreachable_ray_address_is_one_error(monkeypatch):
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  t0 = time.monotonic()
  with pytest.raises(
    ConfigError,
    match=rf"--ray_address=127.0.0.1:{port}: no Ray cluster "
    r"answers there .*ray start --head",
  ):
    ray_backend.RayTrials("cpu=1", f"127.0.0.1:{port}")
  assert time.monotonic() - t0 < 10  # ray.init alone would retry for minutes
  with pytest.raises(ConfigError, match="--ray_address=headnode: expected auto or HOST:PORT"):
    ray_backend.RayTrials("cpu=1", "headnode")
  monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # what ray.init joins by default
  with pytest.raises(ConfigError, match=rf"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster"):
    ray_backend.RayTrials("cpu=1")


def test_a_lost_nodes_lock_is_released_for_the_resumed_trial(tmp_path):
  # The lock file a worker on another node left when the node was lost: the storage has
  # declared that worker's trial dead, so the re-queued trial may take the workdir.
  lock = tmp_path / workdir_lock.LOCK_FILE
  dead = {"node": "10.0.0.7", "host": "node-b", "pid": 4242}
  lock.write_text(json.dumps({"pid": 4242, "host": "node-b", "since": "2026-11-29T10:00:00"}))
  assert not ray_backend.release_dead_lock(tmp_path, {**dead, "pid": 4243})  # someone else's
  assert lock.exists()
  assert ray_backend.release_dead_lock(tmp_path, dead)
  assert not lock.exists()
  assert not ray_backend.release_dead_lock(tmp_path, dead)  # nothing left to release


def _first_checkpoint_then_kill(workdir: Path, number: int, seen: dict, stop: threading.Event):
  """Waits for trial `number` to save a checkpoint, then SIGKILLs the Ray worker running it."""
  ckpts = workdir / "trials" / f"{number:04d}" / "checkpoints"
  while not stop.is_set():
    if ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()):
      # Only now: opening the storage while the study creates its tables would race it.
      storage = study.make_storage(study.storage_url(workdir))
      s = optuna.load_study(study_name=workdir.name, storage=storage)
      trial = s.trials[number]
      pid = trial.user_attrs["ray_worker"]["pid"]
      os.kill(pid, signal.SIGKILL)
      seen["pid"] = pid
      seen["steps"] = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
      seen["done0"] = (workdir / "trials" / "0000" / "results.json").stat().st_mtime_ns
      return
    time.sleep(0.05)


@pytest.mark.slow  # the one end-to-end test of the backend (Ray start, three trial runs)
def test_study_on_ray_resumes_a_killed_worker_from_its_checkpoint(
  ray_cluster, tiny_config, tiny_search, tmp_path
):
  # cpu=2 on a 2-CPU cluster: Ray runs one trial at a time. Checkpoints every 2 steps, so the
  # kill lands inside trial 1 (the one after the recipe's baseline trial 0).
  search = tiny_search("random", trials=2)
  search.pruner = "none"
  search.trial.steps, search.trial.eval_every = 8, 4
  config = space.apply(tiny_config, {"checkpoint.every_steps": 2})
  seen, stop = {}, threading.Event()
  killer = threading.Thread(
    target=_first_checkpoint_then_kill, args=(tmp_path, 1, seen, stop), daemon=True
  )
  killer.start()
  try:
    s = study.run(
      config,
      search,
      tmp_path,
      heartbeat_s=1,
      recipe="configs/tiny.py",
      launch=ray_backend.RayTrials("cpu=2"),
    )
  finally:
    stop.set()
  assert seen, "trial 1 was never killed"
  trials = s.get_trials()
  C, F = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
  # 0: the baseline; 1: killed, failed once its heartbeat went stale; 2: trial 1 re-queued.
  assert [t.state for t in trials] == [C, F, C]
  killed, resumed = trials[1], trials[2]
  assert resumed.system_attrs["failed_trial"] == killed.number
  assert resumed.params == killed.params
  assert resumed.user_attrs["workdir"] == killed.user_attrs["workdir"]
  # It continued from the checkpoint the dead worker left, not from step 0, and finished.
  assert 0 < resumed.user_attrs["resumed_from"] == max(seen["steps"]) < 8
  assert resumed.user_attrs["steps"] == 8
  assert resumed.user_attrs["ray_worker"]["pid"] != seen["pid"]
  # Every trial ran in a Ray worker, and its validation at step 4 (what a pruner judges)
  # reached the study from there.
  assert all(t.user_attrs["ray_worker"]["pid"] != os.getpid() for t in (trials[0], resumed))
  assert list(trials[0].intermediate_values) == [4]
  assert "resumed_from" not in trials[0].user_attrs
  # Finished trials never rerun: trial 0's results are the ones written before the kill, and a
  # rerun with the budget spent starts no task.
  assert (tmp_path / "trials" / "0000" / "results.json").stat().st_mtime_ns == seen["done0"]
  again = study.run(config, search, tmp_path, heartbeat_s=1, launch=ray_backend.RayTrials("cpu=2"))
  assert len(again.get_trials()) == 3
