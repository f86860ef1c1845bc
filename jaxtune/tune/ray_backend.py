"""`jaxtune tune --backend=ray`: each trial runs as a Ray task with the resources it asks for.

Optuna stays the engine. This process (the driver) opens the study, then keeps as many tasks in
flight as the budget has trials left; Ray starts each when a node has its resources
(`--trial_resources=cpu=2,gpu=1`). A task opens the same study storage (the SQLite file on one
machine, PostgreSQL across many) and runs one trial through `study.optimize(n_trials=1)` with
the local objective (`study.make_objective`): Optuna samples there, the task beats the trial's
heartbeat, and its intermediate values and pruning decisions go through the storage, exactly as
for a local worker.

A worker that dies (SIGKILL, out of memory, its node lost) leaves its trial RUNNING with a
heartbeat that stops. The driver hands out no new task until the storage calls that trial stale
(`2 * heartbeat_s`) and Optuna's retry callback has queued a copy with the same values and
workdir; the next task takes the copy first and resumes it from its last checkpoint. Ray's own
retry stays off (`max_retries=0`): it would start a replacement at once, before the storage knew
the trial was dead, and that replacement would sample a new trial instead.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import warnings
from pathlib import Path

import ml_collections
import optuna

from jaxtune import workdir_lock
from jaxtune.errors import ConfigError, JaxtuneError, WorkdirError
from jaxtune.tune import study as study_lib

log = logging.getLogger(__name__)

INSTALL = "pip install 'jaxtune[ray]'"
# Failures that mean the task's worker process or node went away, not that the trial failed.
_LOST = (
  "WorkerCrashedError",
  "NodeDiedError",
  "OutOfMemoryError",
  "LocalRayletDiedError",
  "ObjectLostError",
  "OwnerDiedError",
)
# Lost workers in a row (no trial finishing between them) before the study gives up.
MAX_LOST_IN_A_ROW = 3


def import_ray():
  try:
    import ray
  except ImportError as e:
    raise ConfigError(f"--backend=ray needs Ray, which is not installed: {INSTALL}") from e
  return ray


def parse_resources(text: str) -> dict[str, float]:
  """`cpu=2,gpu=1,TPU=4` -> {'cpu': 2.0, 'gpu': 1.0, 'TPU': 4.0}; anything else is refused
  by name. `cpu` and `gpu` are Ray's num_cpus/num_gpus, other names its custom resources."""
  out: dict[str, float] = {}
  for part in text.split(","):
    m = re.fullmatch(r"\s*([A-Za-z_][\w.:-]*)\s*=\s*([0-9]*\.?[0-9]+)\s*", part)
    if m is None:
      raise ConfigError(
        f"--trial_resources={text}: {part.strip() or 'an empty entry'!r} is not "
        "NAME=AMOUNT; write e.g. --trial_resources=cpu=2,gpu=1"
      )
    name, amount = m.group(1), float(m.group(2))
    if name.lower() in ("cpu", "gpu"):
      name = name.lower()
    if name in out:
      raise ConfigError(f"--trial_resources={text}: {name} is given twice")
    if name == "memory":
      raise ConfigError(
        f"--trial_resources={text}: memory is not a trial resource here; ask for "
        "cpu, gpu or an accelerator resource (TPU=4)"
      )
    out[name] = amount
  if not any(out.values()):  # Ray would start every task at once
    raise ConfigError(f"--trial_resources={text}: a trial needs some resource (e.g. cpu=1)")
  return out


def task_options(resources: dict[str, float]) -> dict:
  custom = {k: v for k, v in resources.items() if k not in ("cpu", "gpu")}
  return {
    "num_cpus": resources.get("cpu", 1.0),
    "num_gpus": resources.get("gpu", 0.0),
    **({"resources": custom} if custom else {}),
    "max_retries": 0,
  }


def _reachable(address: str, source: str = "--ray_address") -> None:
  """A HOST:PORT (or ray://HOST:PORT) that accepts a connection: ray.init itself retries an
  unreachable head for minutes."""
  hostport = address.removeprefix("ray://")
  host, _, port = hostport.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(
      f"{source}={address}: expected auto or HOST:PORT of the cluster's "
      "head node (e.g. 10.0.0.5:6379)"
    )
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except OSError as e:
    raise ConfigError(
      f"{source}={address}: no Ray cluster answers there ({e.strerror or e}); "
      "start one with `ray start --head` or give its head node's address"
    ) from e


def cluster_problem(nodes: list[dict], storage: str) -> str | None:
  """Why the study cannot run on these nodes (`ray.nodes()`), or None."""
  alive = [n for n in nodes if n.get("Alive", n.get("alive"))]
  if len(alive) > 1 and storage.startswith("sqlite"):
    return (
      f"--backend=ray: the cluster has {len(alive)} nodes, but the study is in SQLite "
      f"({storage}), which only one machine can share; give every node one database: "
      "--storage=postgresql://user:pass@host/db (and a --workdir all nodes see)"
    )
  return None


def fits_somewhere(nodes: list[dict], resources: dict[str, float]) -> bool:
  want = {"CPU" if k == "cpu" else "GPU" if k == "gpu" else k: v for k, v in resources.items()}
  return any(
    all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in want.items() if v)
    for n in nodes
    if n.get("Alive", n.get("alive"))
  )


class RayTrials:
  """The `launch` of `study.run`: connects to (or starts) Ray, runs trials as tasks."""

  def __init__(self, resources: str = "cpu=1", address: str = ""):
    self.resources = parse_resources(resources)
    self.ray = import_ray()
    self.address = address
    self.started = False
    # ray.init(address=None) joins $RAY_ADDRESS when it is set: checked the same way.
    given, source = (
      (address, "--ray_address") if address else (os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS")
    )
    if given and given != "auto":
      _reachable(given, source)
    if not self.ray.is_initialized():
      try:
        self.ray.init(address=address or None)
      except ConnectionError as e:  # auto, with no cluster started on this machine
        raise ConfigError(
          f"--ray_address={address}: no Ray cluster runs on this machine "
          f"({' '.join(str(e).split())[:200]}); start one with `ray start --head`, "
          "or give HOST:PORT of a cluster's head node"
        ) from e
      self.started = True

  def close(self) -> None:
    if self.started:
      self.ray.shutdown()

  def __call__(self, study: optuna.Study, budget: int, timeout: float | None, job: dict) -> None:
    ray = self.ray
    nodes = ray.nodes()
    problem = cluster_problem(nodes, job["storage"])
    if problem:
      raise ConfigError(problem)
    if not fits_somewhere(nodes, self.resources):
      log.warning(
        "--trial_resources=%s: no node of the Ray cluster has that much now; the trials "
        "wait until one joins",
        ",".join(f"{k}={v:g}" for k, v in self.resources.items()),
      )
    job = dict(
      job,
      recipe=_absolute_recipe(job["recipe"]),
      study_name=study.study_name,
      config=_pack(job["config"]),
      search=_pack(job["search"]),
    )
    task = ray.remote(**task_options(self.resources))(run_one_trial)
    job_ref = ray.put(job)
    deadline = time.monotonic() + timeout if timeout else None
    inflight: dict = {}  # ObjectRef -> its task id (hex)
    dead: set[int] = set()  # numbers of trials whose worker was lost, until re-queued
    lost_in_a_row = 0
    poll = min(1.0, job["heartbeat_s"] / 2)
    while True:
      if dead:
        _fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        dead = {n for n in dead if trials[n].state == optuna.trial.TrialState.RUNNING}
      left = budget - study_lib.finished(study)
      if not dead and (deadline is None or time.monotonic() < deadline):
        for _ in range(left - len(inflight)):
          ref = task.remote(job_ref, budget)
          inflight[ref] = ref.task_id().hex()
      if not inflight and not dead:
        return
      if not inflight:
        time.sleep(poll)
        continue
      ready, _ = ray.wait(list(inflight), num_returns=1, timeout=poll if dead else None)
      for ref in ready:
        task_id = inflight.pop(ref)
        try:
          ray.get(ref)
          lost_in_a_row = 0
        except ray.exceptions.RayTaskError as e:  # the trial itself failed: as a local run would
          if isinstance(e.cause, JaxtuneError):  # a user's mistake: one line, as locally
            raise e.cause from None
          raise  # a bug: Ray's error carries the remote traceback
        except ray.exceptions.RayError as e:
          if type(e).__name__ not in _LOST:
            raise
          lost_in_a_row += 1
          running = [
            t.number
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if t.user_attrs.get("ray_task") == task_id
          ]
          dead.update(running)
          which = f"trial {running[0]}" if running else "a trial task"
          log.warning(
            "%s lost its Ray worker (%s); it is re-queued once its heartbeat is %ds "
            "stale and resumes from its last checkpoint",
            which,
            type(e).__name__,
            2 * job["heartbeat_s"],
          )
          if lost_in_a_row >= MAX_LOST_IN_A_ROW:
            raise WorkdirError(
              f"--backend=ray: {lost_in_a_row} trial workers in a row were lost (last: "
              f"{' '.join(str(e).split())[:300]}); the study is kept: rerun the command to "
              "resume it once the cluster is healthy"
            ) from e


def _fail_stale(study: optuna.Study) -> None:
  """Optuna's own check (each worker runs it before a trial): stale trials fail, and the
  storage's retry callback queues their copies."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)


_CONFIG = "__jaxtune_configdict__"


def _pack(value):
  """ConfigDicts as plain tuples for the trip to a worker: ml_collections' __setstate__ forgets
  `allow_dotted_keys`, so a search (its `space` and `fixed` have dotted keys) fails to unpickle."""
  if isinstance(value, ml_collections.ConfigDict):
    return (
      _CONFIG,
      value.allow_dotted_keys,
      value.is_locked,
      value.is_type_safe,
      {k: _pack(v) for k, v in value.items()},
    )
  return value


def _unpack(value):
  if isinstance(value, tuple) and value[:1] == (_CONFIG,):
    _, dotted, locked, type_safe, fields = value
    c = ml_collections.ConfigDict(type_safe=type_safe, allow_dotted_keys=dotted)
    for k, v in fields.items():
      c[k] = _unpack(v)
    if locked:
      c.lock()
    return c
  return value


def release_dead_lock(workdir: str | Path, dead: dict | None) -> bool:
  """Removes the workdir's lock file when it names `dead`, the worker (host, pid) of a trial the
  storage has declared dead, on another host: its node was lost, so `workdir_lock` cannot check
  that process from here and would refuse the re-queued trial. True when it was removed."""
  found = workdir_lock.holder(workdir)
  if not found or found["checked"] or not dead:
    return False
  if (found.get("host"), found.get("pid")) != (dead.get("host"), dead.get("pid")):
    return False
  (Path(workdir) / workdir_lock.LOCK_FILE).unlink(missing_ok=True)
  log.warning(
    "%s: removed the lock of pid %s on %s, the worker of this trial before the study "
    "declared it dead",
    workdir,
    dead.get("pid"),
    dead.get("host"),
  )
  return True


def _absolute_recipe(recipe: str) -> str:
  """The recipe path as the driver sees it: a task's working directory is not the driver's."""
  if not recipe:
    return recipe
  file, sep, variant = recipe.partition(":")
  return os.path.abspath(file) + sep + variant


def run_one_trial(job: dict, budget: int) -> int | None:
  """One trial of the study, in a Ray worker; returns its number (None: the budget was spent
  before it started)."""
  import ray

  job = dict(job, config=_unpack(job["config"]), search=_unpack(job["search"]))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study_lib.share_compilations(Path(job["workdir"]))
    study = study_lib.open_study(
      job["search"], job["workdir"], job["storage"], job["study_name"], job["heartbeat_s"]
    )
    if study_lib.finished(study) >= budget:  # other workers (e.g. local ones) spent it
      return None
    objective = study_lib.make_objective(
      job["config"], job["search"], Path(job["workdir"]), job["recipe"]
    )
    number = []

    def tagged(trial: optuna.Trial) -> float:
      # Which task runs the trial (the driver matches a lost task to its trial by it), and where.
      ctx = ray.get_runtime_context()
      if "ray_worker" in trial.user_attrs and "workdir" in trial.user_attrs:
        # A re-queued trial: its copied attrs still name the worker that died with it.
        release_dead_lock(trial.user_attrs["workdir"], trial.user_attrs["ray_worker"])
      trial.set_user_attr("ray_task", ctx.get_task_id())
      trial.set_user_attr(
        "ray_worker",
        {"node": ray.util.get_node_ip_address(), "host": socket.gethostname(), "pid": os.getpid()},
      )
      number.append(trial.number)
      return objective(trial)

    study.optimize(tagged, n_trials=1, catch=())
  return number[0] if number else None
