"""Population-based training: train a population for an interval, then the bottom quantile
exploits (takes a top-quantile member's weights, optimizer state and hyperparameters) and
explores (perturbs those hyperparameters or resamples them from the space).

Every member at every generation is recorded as a finished Optuna trial (its hyperparameters,
its validation objective, and user attrs `member`, `generation`, `parent`), so the leaderboard
and plots read PBT like any other search; the full lineage is in `<workdir>/pbt/lineage.json`.
After each generation the population and its bookkeeping are saved, so a killed run resumes
at the last finished generation. Members train as one vmapped program when they fit on the
devices (`--population=auto`, the default), else one after another.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import optuna

from jaxtune import trackers, writer
from jaxtune.errors import ConfigError
from jaxtune.tune import population, space
from jaxtune.tune import study as study_lib

log = logging.getLogger(__name__)


def run(config, search, workdir: str | Path, storage: str = "", study_name: str = "",
        vmapped: bool | None = None) -> optuna.Study:
  check(search, config)
  p = search.pbt
  workdir = Path(workdir)
  pdir = workdir / "pbt"
  pdir.mkdir(parents=True, exist_ok=True)
  study_lib.share_compilations(workdir)
  study = study_lib.open_study(search, workdir, storage, study_name)
  if study.user_attrs.get("pbt") == "shared":
    raise ConfigError(f"study {study.study_name!r} holds a population shared by workers "
                      "(jaxtune.tune.pbt_workers): add --pbt_shared to join it, or give this run "
                      "its own --workdir or --study_name")
  total = int(p.interval * p.generations)
  rng = np.random.default_rng(int(search.seed))
  hparams = initial_hparams(search, rng)
  book_path, state_path = pdir / "lineage.json", pdir / "population.msgpack"
  resumed = book_path.exists() and state_path.exists()
  book = json.loads(book_path.read_text()) if resumed else {
    "generation": 0, "rng": None, "members": [
      {"member": i, "history": [{"generation": 0, "parent": None, "hparams": h}]}
      for i, h in enumerate(hparams)]}
  if book["generation"] >= p.generations:
    log.info("PBT: all %d generations are done", p.generations)
    return study
  run_config = study_lib.trial_config(config, search, {})
  run_config.train.steps = total
  pop = population.Population(run_config, hparams, total, pdir, vmapped=vmapped)
  log.info("PBT: %d members as %s", pop.size,
           "one vmapped program" if pop.vmapped else "separate runs, one after another")
  if resumed:
    pop.load(state_path)
    for i, m in enumerate(book["members"]):
      pop.set_hparams(i, m["history"][-1]["hparams"])
    rng.bit_generator.state = book["rng"]
    log.info("PBT: resumed after generation %d", book["generation"])
  with trackers.end_on_error(), trackers.study_run(config, workdir, study.study_name) as summary:
    _generations(search, study, pop, book, rng, pdir, run_config, workdir)
    study_lib.log_best(study, search, summary)
  return study


def _generations(search, study, pop, book, rng, pdir: Path, run_config, workdir: Path) -> None:
  """Trains, evaluates and records every generation left; exploit and explore between them."""
  p = search.pbt
  metric = search.objective.metric
  book_path, state_path = pdir / "lineage.json", pdir / "population.msgpack"
  # Each member is a run of its own in MLflow / W&B (children of the study's run).
  writers = [writer.MetricWriter(
    pdir / f"member_{i:02d}", tensorboard="tensorboard" in trackers.parse(run_config.report_to),
    trackers=trackers.from_config(trackers.for_trial(run_config, workdir, study.study_name,
                                                     f"member-{i:02d}"), pdir / f"member_{i:02d}"))
    for i in range(pop.size)]
  dists = space.distributions(search)

  for gen in range(book["generation"], p.generations):
    start = gen * p.interval
    losses = pop.train(start, p.interval)
    scores = pop.evaluate()
    if metric not in scores[0]:
      raise ConfigError(f"search.objective.metric={metric!r} is not among the validation "
                        f"metrics {sorted(scores[0])}; set it to one of them in the search file")
    end = start + p.interval
    for i in range(pop.size):
      writers[i].write(end, {"train/loss": losses[i], **scores[i]})
      hist = book["members"][i]["history"][-1]
      hist["score"] = scores[i][metric]
      study.add_trial(optuna.create_trial(
        params=pop.hparams[i], distributions=dists, value=scores[i][metric],
        intermediate_values={end: scores[i][metric]},
        user_attrs=member_attrs(search, pdir, i, gen, hist["parent"], pop.hparams[i])))
    log.info("PBT generation %d done at step %d: %s", gen, end,
             ", ".join(f"member {i} {metric}={scores[i][metric]:.4g}" for i in range(pop.size)))
    if gen + 1 < p.generations:
      moves = exploit_explore(search, pop.hparams, [s[metric] for s in scores], rng)
      for i, j, new in moves:
        pop.copy_member(i, j)
        pop.set_hparams(i, new)
        log.info("PBT generation %d: member %d (%s=%.4g) <- member %d (%s=%.4g), %s", gen + 1,
                 i, metric, scores[i][metric], j, metric, scores[j][metric], new)
      advance(book, gen + 1, moves, pop.hparams)
    book["generation"] = gen + 1
    book["rng"] = rng.bit_generator.state
    pop.save(state_path)
    tmp = book_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book, indent=1, default=float))
    tmp.replace(book_path)
  for w in writers:
    w.close()


# ------------------------------------------------------------- shared with pbt_workers.py
def check(search, config) -> None:
  space.check(search, config)
  p = search.pbt
  if p.population < 2 or p.interval < 1 or p.generations < 1 or not 0 < p.quantile <= 0.5:
    raise ConfigError(f"search.pbt={p.to_dict()}: needs population >= 2, interval >= 1, "
                      "generations >= 1 and 0 < quantile <= 0.5")


def initial_hparams(search, rng: np.random.Generator) -> list[dict]:
  """Generation 0: every member's values drawn from the space (the first draws of `rng`)."""
  return [space.sample(search, rng) for _ in range(search.pbt.population)]


def exploit_explore(search, hparams: list[dict], scores: list[float],
                    rng: np.random.Generator) -> list[tuple[int, int, dict]]:
  """Between generations: each bottom-quantile member i takes a random top-quantile member j
  (exploit) and perturbs j's values (explore). Returns (i, j, i's new values) in the order
  they apply: a later move copies from the members as the earlier moves left them.

  A pure function of its inputs and `rng`, so every worker of a shared population computes
  the same moves from the same scores (jaxtune.tune.pbt_workers).
  """
  p = search.pbt
  maximize = search.objective.direction == "maximize"
  n_top = max(1, int(round(p.quantile * len(hparams))))
  order = sorted(range(len(hparams)), key=lambda i: scores[i], reverse=maximize)
  top, bottom = order[:n_top], order[-n_top:]
  cur = [dict(h) for h in hparams]
  moves = []
  for i in bottom:
    j = int(rng.choice(top))
    new = space.perturb(search, cur[j], rng, p.perturb, p.resample_prob)
    cur[i] = new
    moves.append((i, j, new))
  return moves


def advance(book: dict, gen: int, moves: list[tuple[int, int, dict]], hparams: list[dict]) -> None:
  """The lineage's entries for generation `gen`: the moved members with their parent, the
  others continuing themselves (`hparams`: every member's values after the moves)."""
  moved = {i: j for i, j, _ in moves}
  for i, m in enumerate(book["members"]):
    m["history"].append({"generation": gen, "parent": moved.get(i, i), "hparams": hparams[i]})


def member_attrs(search, pdir: Path, member: int, gen: int, parent: int | None,
                 hparams: dict) -> dict:
  """The user attrs of member `member`'s trial at generation `gen` (the leaderboard's columns,
  and what best_config.py rebuilds the run from)."""
  end = int(search.pbt.interval) * (gen + 1)
  return {"member": member, "generation": gen, "parent": parent, "steps": end,
          "workdir": str(pdir / f"member_{member:02d}"),
          "overrides": json.dumps({**study_lib.trial_overrides(search, hparams),
                                   "train.steps": end})}
