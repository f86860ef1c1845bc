"""Reward functions for online RL (GRPO's `grpo.reward`): `load(spec)` -> reward(prompts, completions).

A spec names one of:
- 'module:function': a Python callable `function(prompts, completions) -> list[float]`, imported
  from an importable module (on sys.path: the working directory when jaxtune runs as
  `python -m jaxtune.main`, else PYTHONPATH);
- 'classifier:RUN_DIR:LABEL': the probability of LABEL (one of the run's label names) that a
  finished jaxtune classification run gives each completion, the completion text alone scored
  as the run scored its data (its best checkpoint, its tokenizer, cut to its data.seq_len);
- 'reward_model:RUN_DIR': the scalar score of a finished reward-model run
  (model.task='reward') for each prompt + completion, encoded as its preference data was.

The runs are restored once (`jaxtune.predict.restore`, through `jaxtune.finished_run`) and
their forward pass compiled once, so a reward called at every step costs one batched forward
pass per call. Every reward's output is checked: one finite float per completion, else a
ConfigError naming the spec.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

from jaxtune.errors import ConfigError, JaxtuneError

Reward = Callable[[Sequence[str], Sequence[str]], list[float]]
KEY = "grpo.reward"  # the config key errors name
BATCH_SIZE = 32  # completions per forward pass of a run's model


def load(spec: str, *, batch_size: int = BATCH_SIZE) -> Reward:
  """The reward named by `spec` (see the module docstring), wrapped in the output check."""
  kind, _, rest = spec.partition(":")
  if kind == "classifier":
    fn = _classifier(spec, rest, batch_size)
  elif kind == "reward_model":
    fn = _reward_model(spec, rest, batch_size)
  else:
    fn = _callable(spec)
  return _checked(spec, fn)


def _fail(spec: str, why: str) -> ConfigError:
  return ConfigError(f"config: {KEY}={spec!r}: {why}")


def _callable(spec: str) -> Callable:
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise _fail(
      spec, "expected 'module:function', 'classifier:RUN_DIR:LABEL' or 'reward_model:RUN_DIR'"
    )
  try:
    mod = importlib.import_module(module)
  except ImportError as e:
    raise _fail(spec, f"cannot import module {module!r} ({e}); put it on PYTHONPATH") from None
  fn = mod
  for part in name.split("."):
    if not hasattr(fn, part):
      raise _fail(spec, f"module {module!r} has no {name!r}")
    fn = getattr(fn, part)
  if not callable(fn):
    raise _fail(
      spec,
      f"{module}.{name} is a {type(fn).__name__}, not a function taking (prompts, completions)",
    )
  return fn


def _restore(spec: str, run_dir: str, *, labels: bool, label: str = ""):
  from jaxtune import finished_run, predict

  if not run_dir:
    raise _fail(spec, "no run directory after the kind (e.g. 'classifier:runs/sentiment:positive')")
  try:
    names = finished_run.label_names(run_dir)
    if label and names and label not in names:  # before the weights are read
      raise ConfigError(f"the run's labels are {', '.join(names)}; {label!r} is none of them")
    return predict.restore(run_dir, labels=labels)
  except JaxtuneError as e:  # not a run, no checkpoint, not the right task: the spec is at fault
    raise _fail(spec, str(e)) from None


def _classifier(spec: str, rest: str, batch_size: int) -> Callable:
  from jaxtune.objectives import classification

  run_dir, sep, label = rest.rpartition(":")  # a label has no ':'; a path (gs://...) may
  if not sep or not label:
    raise _fail(
      spec, "expected 'classifier:RUN_DIR:LABEL' (the label whose probability is the reward)"
    )
  _, restored = _restore(spec, run_dir, labels=True, label=label)
  names = restored.label_names or tuple(str(i) for i in range(restored.num_labels))
  if label not in names:
    raise _fail(spec, f"the run's labels are {', '.join(names)}; {label!r} is none of them")
  column = names.index(label)
  probs = classification.scorer(restored, batch_size)

  def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    return probs(completions)[:, column].tolist()

  return reward


def _reward_model(spec: str, run_dir: str, batch_size: int) -> Callable:
  objective, restored = _restore(spec, run_dir, labels=False)
  score = objective.scorer(restored, batch_size)

  def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    return score(prompts, completions).tolist()

  return reward


def _checked(spec: str, fn: Callable) -> Reward:
  def reward(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    if len(prompts) != len(completions):
      raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    out = fn(list(prompts), list(completions))
    try:
      out = list(out)
    except TypeError:
      raise _fail(
        spec, f"returned a {type(out).__name__}, not a list of floats (one per completion)"
      ) from None
    if len(out) != len(completions):
      raise _fail(
        spec,
        f"returned {len(out)} rewards for {len(completions)} completions; give "
        "one float per completion",
      )
    floats = []
    for i, r in enumerate(out):
      try:  # numpy / JAX scalars too; not bools or strings
        if isinstance(r, (bool, str, bytes)):
          raise TypeError
        floats.append(float(r))
      except (TypeError, ValueError):
        raise _fail(spec, f"reward {i} is {r!r} ({type(r).__name__}), not a float") from None
      if not math.isfinite(floats[-1]):
        raise _fail(
          spec,
          f"reward {i} is {floats[-1]} for completion {completions[i][:60]!r}; "
          "rewards must be finite",
        )
    return floats

  return reward
