"""A run's records as `jaxtune report` reads them, and what is missing from them.

A workdir holds config.json and run.json from the start, metrics.jsonl (and text.jsonl) as the
run goes, and results.json and errors.jsonl only at the end (`jaxtune.writer`, `jaxtune.train`).
`load` reads whatever is there: a run in progress, or one that crashed, has no results yet, and
each absent record becomes a sentence in `Run.missing` instead of a guess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from etils import epath

from jaxtune import objectives
from jaxtune.config import NotARunError

ERRORS_SHOWN = 20  # errors.jsonl is written most confident mistake first


@dataclasses.dataclass
class Run:
  path: epath.Path
  name: str
  config: dict
  info: dict  # run.json ({} when absent)
  rows: list[dict]  # metrics.jsonl, the last line of each (step, key) kept
  results: dict | None
  errors: list[dict]  # the first ERRORS_SHOWN lines of errors.jsonl
  errors_total: int
  samples: list[dict]  # text.jsonl
  evals: dict[str, dict]  # eval_NAME.json files of `jaxtune eval`
  status: str
  missing: list[str]

  @property
  def task(self) -> str:
    return self.config.get("model", {}).get("task", "?")

  @property
  def extra(self) -> dict:
    return self.info.get("extra") or {}

  @property
  def label_names(self) -> list[str]:
    names = self.extra.get("label_names")
    if names:
      return list(names)
    return [n for n in self.config.get("data", {}).get("label_names", "").split(",") if n]

  @property
  def last_step(self) -> int | None:
    return max((r["step"] for r in self.rows), default=None)

  @property
  def total_steps(self) -> int | None:
    return self.extra.get("total_steps") or self.config.get("train", {}).get("steps")

  def keys(self) -> list[str]:
    """The metric keys logged, in the order first seen."""
    return list(dict.fromkeys(k for r in self.rows for k in r if k != "step"))

  def series(self, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in self.rows
            if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]


def _read_json(path: epath.Path, missing: list[str], what: str):
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, OSError) as e:
    missing.append(f"{path.name} is unreadable ({e}): {what} not shown")
    return None


def _read_jsonl(path: epath.Path, missing: list[str], limit: int | None = None):
  """(the first `limit` objects, how many lines hold one); a line cut short by a crash or a
  hand edit is skipped and counted in `missing`."""
  rows, count, bad = [], 0, 0
  with path.open() as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError:
        bad += 1
        continue
      if not isinstance(row, dict):
        bad += 1
        continue
      count += 1
      if limit is None or len(rows) < limit:
        rows.append(row)
  if bad:
    missing.append(f"{path.name}: {bad} unreadable line(s) skipped (a run killed mid-write "
                   "leaves at most one)")
  return rows, count


def _metrics(path: epath.Path, missing: list[str]) -> list[dict]:
  """metrics.jsonl merged per step: train and eval lines of one step become one row, and of
  repeated (step, key) pairs, as a workdir resumed by an older jaxtune may hold, the last wins."""
  if not path.exists():
    return []
  by_step: dict[int, dict] = {}
  for row in _read_jsonl(path, missing)[0]:
    if isinstance(row.get("step"), int):
      by_step.setdefault(row["step"], {"step": row["step"]}).update(row)
  return [by_step[s] for s in sorted(by_step)]


def check_workdir(path, flag: str) -> epath.Path:
  """`path` as the workdir of a `jaxtune train` run, or NotARunError naming it and `flag`."""
  text = str(path or "").strip()
  if not text:
    raise NotARunError(f"{flag} is empty: give the workdir of a `jaxtune train` run")
  w = epath.Path(text)
  if not w.exists():
    raise NotARunError(f"{flag}={path}: no such directory; give the workdir of a `jaxtune train` run")
  if not w.is_dir():
    raise NotARunError(f"{flag}={path}: a file, not a run's workdir; give the directory that "
                       "`jaxtune train --workdir` wrote")
  if not (w / "config.json").exists():
    if (w / "trials").is_dir():
      raise NotARunError(f"{flag}={path}: a `jaxtune tune` study, not a run; report a trial "
                         f"(--workdir={w / 'trials' / '0'}) and --compare the others")
    raise NotARunError(f"{flag}={path}: not a `jaxtune train` run (it has no config.json); give "
                       "the directory that `jaxtune train --workdir` wrote")
  return w


def load(path, flag: str = "--workdir", name: str = "") -> Run:
  from jaxtune import workdir_lock

  w = check_workdir(path, flag)
  missing: list[str] = []
  try:
    config = json.loads((w / "config.json").read_text())
  except ValueError as e:
    raise NotARunError(f"{w / 'config.json'}: unreadable JSON ({e}); the run's config is "
                       "damaged") from e
  info = _read_json(w / "run.json", missing, "the environment and data statistics") or {}
  if not (w / "run.json").exists():
    missing.append("no run.json: the environment, data statistics and recipe are unknown")
  rows = _metrics(w / "metrics.jsonl", missing)
  if not rows:
    missing.append("no metrics.jsonl lines yet: no curves (the run has not logged a step)")
  results = _read_json(w / "results.json", missing, "the final results")
  errors, errors_total = [], 0
  if (w / "errors.jsonl").exists():
    errors, errors_total = _read_jsonl(w / "errors.jsonl", missing, ERRORS_SHOWN)
  samples = _read_jsonl(w / "text.jsonl", missing)[0] if (w / "text.jsonl").exists() else []
  evals = {}
  for p in sorted(w.glob("eval_*.json")):
    found = _read_json(p, missing, "that evaluation")
    if isinstance(found, dict):
      evals[p.stem[len("eval_"):]] = found
  run = Run(path=w, name=name or w.name, config=config, info=info, rows=rows, results=results,
            errors=errors, errors_total=errors_total, samples=samples, evals=evals, status="",
            missing=missing)
  last, total = run.last_step, run.total_steps
  at = f"at step {last} of {total}" if last is not None else "before its first logged step"
  holder = workdir_lock.holder(w)
  if results is not None:
    run.status = "finished"
  elif holder is not None:
    run.status = f"in progress ({at}; trained by {workdir_lock.describe(holder)})"
    missing.append(f"no results.json yet: the run is still training ({at})")
  else:
    run.status = f"stopped {at} (crashed, killed or preempted)"
    missing.append(f"no results.json: the run stopped {at} without finishing (crashed, "
                   "killed or preempted); `jaxtune train` with the same --workdir resumes it")
  # A classifier writes its misclassified test examples (`jaxtune.final`).
  labels = getattr(objectives.REGISTRY.get(run.task), "labels", False)
  if labels and results is not None and not (w / "errors.jsonl").exists():
    missing.append("no errors.jsonl: no test split, so no misclassified examples to show")
  return run


def names(paths: list) -> list[str]:
  """Short distinct names for runs: the folder's name, with more of its path only where two
  share it (trials/0 of two studies)."""
  parts = [epath.Path(str(p).rstrip("/")).parts for p in paths]
  depth = [1] * len(parts)
  while True:
    out = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
    clash = [i for i, n in enumerate(out) if out.count(n) > 1 and depth[i] < len(parts[i])]
    if not clash:
      return out
    for i in clash:
      depth[i] += 1


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
  """A config (ConfigDict or nested dict) as {dotted key: JSON value}, so that tuples and
  lists, or a ConfigDict and its JSON, compare equal."""
  from jaxtune import resume

  return resume.flat(resume.plain(config), prefix)


def recipe_base(run: Run) -> tuple[str, dict | None, list[str]]:
  """(what the run's config is compared with, its flat values, notes): the recipe run.json
  records, loaded again; else jaxtune's defaults, saying why."""
  from jaxtune import config as jt_config

  notes = []
  rec = run.extra.get("recipe")
  if isinstance(rec, dict) and rec.get("file"):
    file = epath.Path(rec["file"])
    shown = rec.get("given") or rec["file"]
    if file.exists():
      try:
        from jaxtune import recipes

        base = recipes.load(str(file), rec.get("variant") or "")
        if rec.get("sha256") and hashlib.sha256(file.read_bytes()).hexdigest() != rec["sha256"]:
          notes.append(f"{file} has changed since the run started: the differences are from "
                       "its current text")
        return f"the recipe {shown}", flat(base), notes
      except Exception as e:  # noqa: BLE001 - a recipe that no longer loads is reported, not fatal
        notes.append(f"the recipe {shown} no longer loads ({type(e).__name__}: {e})")
    else:
      notes.append(f"the recipe {shown} ({file}) no longer exists")
  else:
    notes.append("run.json does not record the recipe (a run started by an older jaxtune, a "
                 "population-based training member, or train_and_evaluate called from Python)")
  return "jaxtune's defaults", flat(jt_config.default()), notes


ABSENT = "(absent)"


def differences(base: dict, other: dict) -> list[tuple[str, Any, Any]]:
  """(key, base value, other value) of each key whose values differ."""
  return [(k, base.get(k, ABSENT), other.get(k, ABSENT)) for k in sorted(set(base) | set(other))
          if base.get(k, ABSENT) != other.get(k, ABSENT)]
