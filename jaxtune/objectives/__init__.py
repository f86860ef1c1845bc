"""Training objectives: one module per objective (issue 18)."""

# `get(config)` returns the objective of a run (`config.model.task`), `for_task(name)` the one of
# a task name; the driver, evaluation, the search, export, prediction and the model card ask it
# (`jaxtune.objectives.base.Objective`) instead of comparing the task string. Adding an objective
# is a module here with an `Objective` subclass and one line in `REGISTRY`.

from __future__ import annotations

from jaxtune.objectives import causal_lm, classification, grpo, preference, reward_model
from jaxtune.objectives.base import Objective

REGISTRY: dict[str, Objective] = {
  o.name: o
  for o in (causal_lm.OBJECTIVE, classification.OBJECTIVE, preference.OBJECTIVE, reward_model.OBJECTIVE,
            grpo.OBJECTIVE)
}
TASKS = tuple(REGISTRY)  # the values model.task may take


def for_task(task: str) -> Objective:
  """The objective of `task`; a ConfigError naming model.task when there is none."""
  if task not in REGISTRY:
    from jaxtune.errors import ConfigError

    raise ConfigError(f"config: model.task={task!r}: expected one of {TASKS}")
  return REGISTRY[task]


def get(config) -> Objective:
  """The objective of the run `config` (its model.task)."""
  return for_task(config.model.task)
