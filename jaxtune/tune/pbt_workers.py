"""Population-based training shared by many workers: `jaxtune tune --search=...:pbt --pbt_shared`
started on one machine or many, all with the same --workdir (a shared filesystem) and --storage.

The population lives in the study and the workdir, not in any one process:

* every member at every generation (a *member-generation*) is one Optuna trial, queued WAITING
  when its generation may start: generation 0 at once, generation g+1 when all of g is in;
* a worker claims one by moving it WAITING -> RUNNING in the storage, the row-locked update that
  Optuna's own `ask()` uses for queued trials (one worker gets True, every other False), trains
  it for one interval, evaluates it and tells the study its score;
* a claim lasts as long as its worker's heartbeat: a worker killed mid-interval goes silent,
  after 2 x --heartbeat_s any worker marks the trial failed (`optuna.storages.fail_stale_trials`)
  and the storage's retry callback queues a copy, which the next free worker claims;
* a member's state is one file in the shared workdir, `pbt/member_NN/gen_GGG.msgpack` (weights,
  optimizer state, the step it reached), written every checkpoint.every_steps inside the
  interval and at its end: a claimed member resumes from it and no step past a checkpoint is
  trained twice; generation g+1 starts from (a copy of) a generation-g file, whoever wrote it;
* exploit and explore are `pbt.exploit_explore`, a pure function of the scores and a random
  stream seeded by search.seed: each worker replays it from the study's scores and gets the same
  moves, so no worker coordinates the others, and the trials, lineage and scores are those of the
  one-process PBT run with --population=off (one member at a time, the same step function).

A generation waits for all its members before its exploit: it ranks the whole generation, as the
one-process PBT does, rather than whatever is in after a timeout (that ranking would depend on
which worker was slow, and the result on timing). A lost member is re-queued (a dead worker is
found by its heartbeat), so the wait ends while any worker lives; search.budget.minutes bounds
each worker's wall time, and a rerun joins where the study stands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import jax
import numpy as np
import optuna
from flax import serialization

from jaxtune import trackers, writer
from jaxtune.errors import ConfigError, JaxtuneError, OutputError
from jaxtune.tune import pbt, population, space
from jaxtune.tune import study as study_lib

log = logging.getLogger(__name__)

State = optuna.trial.TrialState
LIVE = (State.WAITING, State.RUNNING, State.COMPLETE)
POLL_S = 1.0  # how often an idle worker looks for a member to train
MAX_TRIES = 4  # a member-generation that failed this often (not by a kill alone) stops the search
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def run(
  config,
  search,
  workdir: str | Path,
  storage: str = "",
  study_name: str = "",
  heartbeat_s: int = 30,
) -> optuna.Study:
  """Work on the shared population until every generation is in (or search.budget.minutes)."""
  pbt.check(search, config)
  workdir = Path(workdir)
  pdir = workdir / "pbt"
  pdir.mkdir(parents=True, exist_ok=True)
  study_lib.share_compilations(workdir)
  # Workers started together would race to create the study's tables (SQLite: a failed
  # alembic stamp); the lock lets the first create them and the others open them.
  with _flock(pdir / "queue.lock"):
    study = study_lib.open_study(search, workdir, storage, study_name, heartbeat_s)
    _join(study)
    db = study_lib.make_storage(study_lib.storage_url(workdir, storage), heartbeat_s)
  w = Worker(config, search, study, pdir, db, heartbeat_s, workdir)
  minutes = float(search.budget.minutes)
  deadline = time.monotonic() + minutes * 60 if minutes else None
  with trackers.end_on_error(), trackers.study_run(config, workdir, study.study_name) as summary:
    try:
      w.loop(deadline)
    finally:
      w.close()
    study_lib.log_best(study, search, summary)
  return study


def _join(study: optuna.Study) -> None:
  mode = study.user_attrs.get("pbt")
  if mode == "shared":
    return
  if study.get_trials(deepcopy=False):
    raise ConfigError(
      f"study {study.study_name!r} was made by the one-process PBT (its "
      "population is in pbt/population.msgpack): rerun it without --pbt_shared, "
      "or give the shared search its own --workdir or --study_name"
    )
  study.set_user_attr("pbt", "shared")


@contextlib.contextmanager
def _flock(path: Path):
  """An advisory lock on a file in the shared workdir, held while queueing, so workers started
  together do not queue generation 0 twice. Released by the kernel when its holder dies; where
  the filesystem has no locks (some network mounts) queueing goes on without it, and a member
  queued twice is still trained once (`Worker.claim`)."""
  import fcntl

  with open(path, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass
    yield


class _LostClaim(Exception):
  """This worker's claim expired (its heartbeat was late: a suspended process, a stalled
  filesystem) and the member went to another worker."""


class _Heartbeat:
  """Beats for a claimed trial until stopped; a worker that dies stops beating."""

  def __init__(self, storage, trial_id: int, every_s: float):
    storage.record_heartbeat(trial_id)
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=self._beat, args=(storage, trial_id, every_s), daemon=True
    )
    self._thread.start()

  def _beat(self, storage, trial_id: int, every_s: float) -> None:
    while not self._stop.wait(every_s):
      storage.record_heartbeat(trial_id)

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


class Worker:
  """One process's share of the work: claims member-generations and trains them one at a time."""

  def __init__(self, config, search, study, pdir: Path, storage, heartbeat_s: int, workdir: Path):
    self.config, self.search, self.study, self.pdir = config, search, study, pdir
    self.storage, self.heartbeat_s, self.workdir = storage, heartbeat_s, workdir
    self.study_id = storage.get_study_id_from_name(study.study_name)
    p = search.pbt
    self.size, self.interval, self.generations = (
      int(p.population),
      int(p.interval),
      int(p.generations),
    )
    self.metric = search.objective.metric
    self.run_config = study_lib.trial_config(config, search, {})
    self.run_config.train.steps = self.interval * self.generations
    self.slot = None  # a one-member Population, built at the first claim
    self.writers: dict[int, writer.MetricWriter] = {}

  # -------------------------------------------------------------------------------- the loop
  def loop(self, deadline: float | None) -> None:
    written = waiting = -1
    while True:
      optuna.storages.fail_stale_trials(self.study)
      trials = self.study.get_trials(deepcopy=False)
      book, hparams, source = self.replay(trials)
      gen = book["generation"]
      if gen != written:
        self.write_book(book)
        self.prune(gen)
        written = gen
      if gen >= self.generations:
        log.info("PBT worker %s: all %d generations are in", WORKER, self.generations)
        return
      if deadline is not None and time.monotonic() > deadline:
        log.info(
          "PBT worker %s: search.budget.minutes is spent; generation %d is not all in "
          "(rerun to go on)",
          WORKER,
          gen,
        )
        return
      with _flock(self.pdir / "queue.lock"):  # tidy numbering; correctness is claim()'s
        self.queue(self.study.get_trials(deepcopy=False), gen, book, hparams)
      claimed = self.claim(gen)
      if claimed is None:
        if waiting != gen:
          log.info(
            "PBT worker %s: generation %d has no member left to claim; waiting for the "
            "other workers' members (a dead worker's are re-queued after 2 x "
            "--heartbeat_s)",
            WORKER,
            gen,
          )
          waiting = gen
        time.sleep(POLL_S)
        continue
      self.train(*claimed, gen, source)

  def replay(self, trials) -> tuple[dict, list[dict], list[int]]:
    """The lineage as far as whole generations are in, from the seed and the study's scores.

    Returns the book (as pbt.run writes it), each member's values for the first generation not
    all in, and the member whose previous-generation state each member starts that one from.
    """
    scores = {}
    for t in sorted(trials, key=lambda t: t.number, reverse=True):  # the first one wins
      if t.state == State.COMPLETE and "generation" in t.user_attrs:
        scores[(t.user_attrs["member"], t.user_attrs["generation"])] = t.value
    rng = np.random.default_rng(int(self.search.seed))
    hparams = pbt.initial_hparams(self.search, rng)
    book = {
      "generation": 0,
      "rng": None,
      "members": [
        {"member": i, "history": [{"generation": 0, "parent": None, "hparams": h}]}
        for i, h in enumerate(hparams)
      ],
    }
    source = list(range(self.size))
    for gen in range(self.generations):
      got = [scores.get((i, gen)) for i in range(self.size)]
      if None in got:
        break
      for m, score in zip(book["members"], got, strict=True):
        m["history"][-1]["score"] = score
      source = list(range(self.size))
      if gen + 1 < self.generations:
        moves = pbt.exploit_explore(self.search, hparams, got, rng)
        hparams = list(hparams)
        for i, j, new in moves:  # member i starts from the state j has at this point
          source[i], hparams[i] = source[j], new
        pbt.advance(book, gen + 1, moves, hparams)
      book["generation"], book["rng"] = gen + 1, rng.bit_generator.state
    return book, hparams, source

  def queue(self, trials, gen: int, book: dict, hparams: list[dict]) -> None:
    """A WAITING trial for every member of generation `gen` that has none live (the first time,
    or after a failure that no retry re-queued). Two workers may queue the same member at the
    same moment: `claim` lets the first of them train and drops the other."""
    rows = self._slots(trials, gen)
    for i in range(self.size):
      mine = rows.get(i, [])
      if any(t.state in LIVE for t in mine):
        continue
      failed = [t.number for t in mine if "duplicate_of" not in t.user_attrs]
      if len(failed) >= MAX_TRIES:
        raise JaxtuneError(
          f"PBT member {i} at generation {gen} failed {len(failed)} times "
          f"(trials {failed}): see the workers' logs for the error"
        )
      parent = book["members"][i]["history"][-1]["parent"]
      self.study.enqueue_trial(
        hparams[i], user_attrs=pbt.member_attrs(self.search, self.pdir, i, gen, parent, hparams[i])
      )

  def claim(self, gen: int):
    """(trial, trial id) of a member of generation `gen` this worker now holds, or None."""
    waiting = [
      t
      for t in self.study.get_trials(deepcopy=False, states=(State.WAITING,))
      if t.user_attrs.get("generation") == gen
    ]
    for t in sorted(waiting, key=lambda t: t.number):
      tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, t.number)
      try:
        if not self.storage.set_trial_state_values(tid, State.RUNNING):
          continue  # another worker claimed it first
      except optuna.exceptions.UpdateFinishedTrialError:
        continue
      self.storage.record_heartbeat(tid)  # from now on, a silent claim expires
      rows = self._slots(self.study.get_trials(deepcopy=False), gen)[t.user_attrs["member"]]
      first = min(u.number for u in rows if u.state in LIVE)
      if first != t.number:  # a duplicate queued in a race: the lowest live trial trains
        self.storage.set_trial_user_attr(tid, "duplicate_of", first)
        self.storage.set_trial_state_values(tid, State.FAIL)
        continue
      log.info(
        "PBT worker %s: member %d generation %d claimed (trial %d)",
        WORKER,
        t.user_attrs["member"],
        gen,
        t.number,
      )
      return t, tid
    return None

  @staticmethod
  def _slots(trials, gen: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for t in trials:
      if t.user_attrs.get("generation") == gen:
        out.setdefault(t.user_attrs["member"], []).append(t)
    return out

  # ----------------------------------------------------------------------------- one member
  def train(self, frozen: optuna.trial.FrozenTrial, tid: int, gen: int, source: list[int]) -> None:
    i, end = frozen.user_attrs["member"], self.interval * (gen + 1)
    beat = _Heartbeat(self.storage, tid, self.heartbeat_s)
    try:
      trial = optuna.trial.Trial(self.study, tid)
      values = space.suggest(trial, self.search)  # the queued values, now the trial's params
      trial.set_user_attr("worker", WORKER)
      scores = self.train_member(i, gen, values, source[i], tid)
    except _LostClaim:
      beat.stop()
      lost = True
    except BaseException:
      beat.stop()
      if self.storage.get_trial(tid).state == State.RUNNING:
        self.storage.set_trial_state_values(tid, State.FAIL)
      raise
    else:
      beat.stop()
      lost = self.storage.get_trial(tid).state != State.RUNNING
    if lost:
      log.warning(
        "PBT worker %s: member %d generation %d was taken as dead (no heartbeat for "
        "2 x --heartbeat_s) and given to another worker; its result here is dropped",
        WORKER,
        i,
        gen,
      )
      return
    trial.report(scores[self.metric], end)
    self.study.tell(trial, scores[self.metric])
    log.info(
      "PBT worker %s: member %d generation %d trained, steps %d..%d, %s=%.6g",
      WORKER,
      i,
      gen,
      end - self.interval,
      end,
      self.metric,
      scores[self.metric],
    )

  def train_member(self, i: int, gen: int, values: dict, src: int, tid: int) -> dict:
    """Member i's interval of generation `gen` from its checkpoint (or from member `src`'s state
    at the end of the previous generation); its validation scalars."""
    start, end = self.interval * gen, self.interval * (gen + 1)
    path = self._path(i, gen)
    saved = self._read(path)
    if saved is not None and start < saved["step"] <= end:
      state, step, loss_sum = saved["state"], saved["step"], saved["loss_sum"]
      log.info(
        "PBT worker %s: member %d generation %d resumes from step %d (its checkpoint)",
        WORKER,
        i,
        gen,
        step,
      )
    elif gen == 0:
      state, step, loss_sum = self._initial(i), start, 0.0
    else:
      prev = self._read(self._path(src, gen - 1))
      if prev is None or prev["step"] != start:
        raise OutputError(
          f"{self._path(src, gen - 1)}: member {src}'s state at step {start} is "
          "missing; every worker needs the same --workdir (a shared filesystem)"
        )
      state, step, loss_sum = prev["state"], start, 0.0
    slot = self._slot()
    # The slot is a one-member Population run one after another (vmapped=False): its member
    # is the plain state in `states[0]`, trained by the same step as the one-process PBT's.
    slot.states[0] = jax.tree.map(jax.device_put, state, self.shardings)
    slot.set_hparams(0, values)
    every = max(1, int(self.run_config.checkpoint.every_steps))
    while step < end:
      n = min(end - step, every - step % every)
      loss_sum += slot.train(step, n)[0] * n
      step += n
      if step < end:
        if self.storage.get_trial(tid).state != State.RUNNING:
          raise _LostClaim
        self._write(path, slot.states[0], step, loss_sum)
        log.info(
          "PBT worker %s: member %d generation %d checkpointed at step %d", WORKER, i, gen, step
        )
    scores = slot.evaluate()[0]
    if self.metric not in scores:
      raise ConfigError(
        f"search.objective.metric={self.metric!r} is not among the validation "
        f"metrics {sorted(scores)}; set it to one of them in the search file"
      )
    self._write(path, slot.states[0], end, loss_sum)
    self._writer(i).write(end, {"train/loss": loss_sum / self.interval, **scores})
    return scores

  def _slot(self) -> population.Population:
    if self.slot is None:
      first = pbt.initial_hparams(self.search, np.random.default_rng(int(self.search.seed)))[0]
      self.slot = population.Population(
        self.run_config, [first], self.run_config.train.steps, self.pdir, vmapped=False
      )
      self.template = jax.device_get(self.slot.states[0])
      self.shardings = jax.tree.map(lambda x: x.sharding, self.slot.states[0])
    return self.slot

  def _initial(self, i: int) -> dict:
    """Member i's state at step 0: the shared initial weights and member i's own dropout stream,
    as `population.Population` starts member i."""
    self._slot()
    key = jax.random.fold_in(jax.random.key(int(self.run_config.seed)), i)
    return {**self.template, "rng": np.asarray(jax.random.key_data(key))}

  # -------------------------------------------------------------------------------- files
  def _path(self, i: int, gen: int) -> Path:
    return self.pdir / f"member_{i:02d}" / f"gen_{gen:03d}.msgpack"

  def _read(self, path: Path) -> dict | None:
    if not path.exists():
      return None
    self._slot()
    raw = serialization.msgpack_restore(path.read_bytes())
    return {
      "state": serialization.from_state_dict(self.template, raw["state"]),
      "step": int(raw["step"]),
      "loss_sum": float(raw["loss_sum"]),
    }

  def _write(self, path: Path, state, step: int, loss_sum: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = serialization.msgpack_serialize(
      {
        "state": serialization.to_state_dict(jax.device_get(state)),
        "step": step,
        "loss_sum": loss_sum,
      }
    )
    tmp = path.with_name(f"{path.name}.{WORKER.replace(':', '_')}.tmp")  # one per writer
    tmp.write_bytes(blob)
    tmp.replace(path)

  def prune(self, done: int) -> None:
    """States no queued or future member-generation can start from: those older than the last
    complete generation (the last one stays: the final population)."""
    for gen in range(max(0, done - 1)):
      for i in range(self.size):
        self._path(i, gen).unlink(missing_ok=True)

  def write_book(self, book: dict) -> None:
    """pbt/lineage.json, as the one-process PBT writes it; never replaced by a shorter one (a
    worker with an older view of the study)."""
    path = self.pdir / "lineage.json"
    try:
      if json.loads(path.read_text())["generation"] > book["generation"]:
        return
    except (OSError, ValueError, KeyError):
      pass
    tmp = path.with_name(f"lineage.{WORKER.replace(':', '_')}.tmp")
    tmp.write_text(json.dumps(book, indent=1, default=float))
    tmp.replace(path)

  def _writer(self, i: int) -> writer.MetricWriter:
    if i not in self.writers:
      d = self.pdir / f"member_{i:02d}"
      c = trackers.for_trial(
        self.run_config, self.workdir, self.study.study_name, f"member-{i:02d}"
      )
      self.writers[i] = writer.MetricWriter(
        d,
        tensorboard="tensorboard" in trackers.parse(self.run_config.report_to),
        trackers=trackers.from_config(c, d),
      )
    return self.writers[i]

  def close(self) -> None:
    for w in self.writers.values():
      w.close()
