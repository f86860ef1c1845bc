"""Classify raw texts with a finished run's model: `classify(workdir, texts)`.

The run's own record decides everything: its config.json (model, tokenizer, seq_len, mesh), its
label order from run.json, and its best checkpoint (else the latest), with averaged weights when
the run kept them, the same weights `jaxtune eval` scores and results.json reports
(`jaxtune.finished_run`). What a prediction is belongs to the run's objective
(`Objective.predict`); a classifier's is its most likely label.
"""

from __future__ import annotations

from collections.abc import Sequence

from etils import epath

from jaxtune import config as jt_config
from jaxtune import finished_run, objectives
from jaxtune.errors import ConfigError


def restore(workdir: str | epath.PathLike, *, step: int = -1, labels: bool = True):
  """(objective, `jaxtune.finished_run.Restored`) of a finished classifier run (`labels`) or
  of a run whose objective scores texts with one output (a reward model, `labels=False`)."""
  workdir = epath.Path(workdir)
  config = jt_config.read_run_config(workdir)
  objective = objectives.get(config)
  if labels and not objective.labels:
    raise ConfigError(f"{workdir / 'config.json'}: model.task={config.model.task!r}; "
                      "classify needs a classification (seq_cls) run")
  if not labels and not hasattr(objective, "scorer"):
    raise ConfigError(f"{workdir / 'config.json'}: model.task={config.model.task!r}; "
                      "scores come from a reward-model run (model.task='reward')")
  label_names = finished_run.label_names(workdir)
  num_labels = config.model.num_labels or len(label_names)
  if not num_labels:
    raise ConfigError(f"{workdir / 'run.json'}: no label_names and config model.num_labels is 0; "
                      "the run never read its data (resume it with `jaxtune train`)")
  restored = finished_run.restore(workdir, config, step=step, num_labels=num_labels,
                                  label_names=label_names)
  return objective, restored


def classify(workdir: str | epath.PathLike, texts: Sequence[str], *, step: int = -1,
             batch_size: int = 32) -> list[tuple[str, float]]:
  """(label, probability) of the most likely class for each text, in order.

  Args:
    workdir: a finished (or interrupted) classification run's workdir.
    texts: raw strings; longer ones are truncated to the run's data.seq_len.
    step: checkpoint step to use (-1: the best, else the latest).
    batch_size: texts per forward pass (the last batch is padded, so one compilation).
  """
  objective, restored = restore(workdir, step=step)
  return objective.predict(restored, texts, batch_size=batch_size)
