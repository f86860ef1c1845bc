"""Search spaces: distributions over dotted config keys, loaded from configs/search/<space>.py.

A search file's `get_config()` returns a ConfigDict with:
  space      {'optim.learning_rate': loguniform(1e-5, 1e-3), 'optim.weight_decay': ...}, keys
             are dotted paths into the run config; values come from the helpers below.
  objective  {'metric': 'eval/accuracy', 'direction': 'maximize'}
  algorithm  'grid' | 'random' | 'tpe' | 'gp' | 'pbt'; pruner 'median' | 'halving' | 'none'
  fixed      dotted overrides applied to every trial ({'optim.warmup_steps': 2})
  budget     {'trials': N, 'minutes': M (0 = no limit)}; trial {'steps': S, 'eval_every': E}
  baseline   run the recipe's own values as the first trial (they must lie inside the space;
             `baseline()` says which do not)
  grid_points  points per continuous key for the grid algorithm; pbt {...} (see pbt.py).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import ml_collections
import numpy as np
import optuna

from jaxtune import recipes
from jaxtune.errors import ConfigError

KINDS = ("choice", "uniform", "loguniform", "int")
ALGORITHMS = ("grid", "random", "tpe", "gp", "pbt")
PRUNERS = ("none", "median", "halving")


def choice(*values) -> tuple:
  return ("choice", *values)


def uniform(low: float, high: float) -> tuple:
  return ("uniform", float(low), float(high))


def loguniform(low: float, high: float) -> tuple:
  return ("loguniform", float(low), float(high))


def intrange(low: int, high: int) -> tuple:
  """Integers from low to high, both included."""
  return ("int", int(low), int(high))


def default() -> ml_collections.ConfigDict:
  """A search config with every field at its default; search files fill `space` and more."""
  c = ml_collections.ConfigDict()
  c.space = ml_collections.ConfigDict(allow_dotted_keys=True)
  # Dotted overrides every trial gets (e.g. a warmup that fits the per-trial step budget).
  c.fixed = ml_collections.ConfigDict(allow_dotted_keys=True)
  c.objective = ml_collections.ConfigDict({"metric": "eval/loss", "direction": "minimize"})
  c.algorithm = "tpe"
  c.pruner = "median"
  c.seed = 0
  c.budget = ml_collections.ConfigDict({"trials": 8, "minutes": 0.0})
  c.trial = ml_collections.ConfigDict({"steps": 100, "eval_every": 25})
  c.grid_points = 3
  # Run the recipe's own values of the searched keys first: the leaderboard then shows the
  # search against the defaults at the same budget.
  c.baseline = True
  c.pbt = ml_collections.ConfigDict({
    "population": 4, "interval": 25, "generations": 4,
    "quantile": 0.25,  # bottom quantile exploits the top quantile
    "perturb": (0.8, 1.25),  # explore: multiply by one of these factors ...
    "resample_prob": 0.25,  # ... or, with this probability, draw afresh from the space
  })
  return c


def space_items(search: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
  """(key, distribution) pairs, checked: a bad one names its key."""
  items = list(search.space.items())
  if not items:
    raise ConfigError("search: `space` is empty; name at least one config key to search")
  for key, dist in items:
    if not isinstance(dist, tuple) or not dist or dist[0] not in KINDS:
      raise ConfigError(f"search.space[{key!r}]={dist!r} is not one of choice/uniform/"
                        "loguniform/intrange(...)")
    kind, *args = dist
    if kind == "choice" and not args:
      raise ConfigError(f"search.space[{key!r}]: choice() needs at least one value")
    if kind != "choice" and (len(args) != 2 or not args[0] < args[1]):
      raise ConfigError(f"search.space[{key!r}]={dist!r}: needs low < high")
    if kind == "loguniform" and args[0] <= 0:
      raise ConfigError(f"search.space[{key!r}]={dist!r}: loguniform needs low > 0")
  return items


def check(search: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Every searched key exists in the run config; algorithm, pruner and objective are known."""
  for key, _ in space_items(search):
    lookup(config, key)
  for key in search.fixed:
    lookup(config, key)
  if search.algorithm not in ALGORITHMS:
    raise ConfigError(f"search.algorithm={search.algorithm!r} is not one of {ALGORITHMS}")
  if search.pruner not in PRUNERS:
    raise ConfigError(f"search.pruner={search.pruner!r} is not one of {PRUNERS}")
  if search.objective.direction not in ("minimize", "maximize"):
    raise ConfigError(f"search.objective.direction={search.objective.direction!r} must be "
                      "'minimize' or 'maximize'")
  if not search.objective.metric.startswith("eval/"):
    raise ConfigError(f"search.objective.metric={search.objective.metric!r} must be a validation "
                      "metric ('eval/...')")


def lookup(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      near = difflib.get_close_matches(part, list(node.keys()), n=2) if hasattr(node, "keys") else []
      hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
      raise ConfigError(f"search key {key!r}: the run config has no field {part!r} there{hint}")
    node = node[part]
  return node


def apply(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted keys set, keeping each field's type."""
  out = ml_collections.ConfigDict(config.to_dict(), type_safe=True)
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = type(old)(value) if isinstance(old, bool | int | float | str) else value
  return out


def distributions(search) -> dict[str, optuna.distributions.BaseDistribution]:
  out = {}
  for key, (kind, *args) in space_items(search):
    if kind == "choice":
      out[key] = optuna.distributions.CategoricalDistribution(args)
    elif kind == "int":
      out[key] = optuna.distributions.IntDistribution(args[0], args[1])
    else:
      out[key] = optuna.distributions.FloatDistribution(args[0], args[1], log=kind == "loguniform")
  return out


def suggest(trial: optuna.Trial, search) -> dict:
  """The trial's values for every key (Optuna's sampler decides them)."""
  out = {}
  for key, (kind, *args) in space_items(search):
    if kind == "choice":
      out[key] = trial.suggest_categorical(key, args)
    elif kind == "int":
      out[key] = trial.suggest_int(key, args[0], args[1])
    else:
      out[key] = trial.suggest_float(key, args[0], args[1], log=kind == "loguniform")
  return out


def contains(dist: tuple, value) -> bool:
  kind, *args = dist
  if kind == "choice":
    return value in args
  if isinstance(value, bool) or not isinstance(value, int | float):
    return False
  if kind == "int" and value != int(value):
    return False
  return args[0] <= value <= args[1]


def _describe(dist: tuple) -> str:
  kind, *args = dist
  name = {"int": "intrange"}.get(kind, kind)
  return f"{name}({', '.join(repr(a) for a in args)})"


def baseline(search, config) -> tuple[dict | None, str]:
  """The recipe's own values of the searched keys, as the first trial's params.

  Returns (values, "") when every value lies inside its distribution, else (None, why) naming
  each key whose value does not, with its value and range, and what to do.
  """
  values = {}
  for key, dist in space_items(search):
    value = lookup(config, key)
    values[key] = int(value) if dist[0] == "int" and isinstance(value, float) else value
  outside = [f"{k}={values[k]!r} is outside {_describe(d)}" for k, d in space_items(search)
             if not contains(d, values[k])]
  if outside:
    return None, ("no baseline trial with the recipe's values: " + "; ".join(outside)
                  + ". Widen search.space to include the recipe's values, or set "
                  "search.baseline=False")
  return values, ""


def grid(search) -> dict[str, list]:
  """Grid values per key: every choice, every integer (at most grid_points, evenly spread),
  and grid_points evenly (log-)spaced points of a continuous range."""
  n = int(search.grid_points)
  if n < 1:
    raise ConfigError(f"search.grid_points={n} must be >= 1")
  out = {}
  for key, (kind, *args) in space_items(search):
    if kind == "choice":
      out[key] = list(args)
    elif kind == "int":
      lo, hi = args
      out[key] = sorted({int(round(v)) for v in np.linspace(lo, hi, min(n, hi - lo + 1))})
    elif kind == "uniform":
      out[key] = [float(v) for v in np.linspace(args[0], args[1], n)]
    else:
      out[key] = [float(v) for v in np.geomspace(args[0], args[1], n)]
  return out


def grid_size(search) -> int:
  return math.prod(len(v) for v in grid(search).values())


def sample(search, rng: np.random.Generator) -> dict:
  """Values drawn at random from the space (PBT's initial population and its resampling)."""
  out = {}
  for key, (kind, *args) in space_items(search):
    if kind == "choice":
      out[key] = args[int(rng.integers(len(args)))]
    elif kind == "int":
      out[key] = int(rng.integers(args[0], args[1] + 1))
    elif kind == "uniform":
      out[key] = float(rng.uniform(args[0], args[1]))
    else:
      out[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
  return out


def perturb(search, values: dict, rng: np.random.Generator, factors, resample_prob: float) -> dict:
  """PBT's explore: each value resampled (with resample_prob) or nudged, kept inside its range.

  Continuous and integer values are multiplied by a random factor; a choice moves to a
  neighbouring option.
  """
  fresh = sample(search, rng)
  out = {}
  for key, (kind, *args) in space_items(search):
    v = values[key]
    if rng.random() < resample_prob:
      out[key] = fresh[key]
    elif kind == "choice":
      i = args.index(v) + int(rng.choice([-1, 1]))
      out[key] = args[min(max(i, 0), len(args) - 1)]
    else:
      v = v * float(factors[int(rng.integers(len(factors)))])
      v = min(max(v, args[0]), args[1])
      out[key] = int(round(v)) if kind == "int" else float(v)
  return out


def load(path: str) -> ml_collections.ConfigDict:
  """A search file (`configs/search/<space>.py[:arg]`) merged over the defaults."""
  file, _, arg = path.partition(":")
  if not Path(file).is_file():
    raise ConfigError(f"--search={path!r}: no such python file")
  return recipes.load(file, arg)
