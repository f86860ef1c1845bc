"""Train vs validation metric curves for classification runs: overfitting made visible.

A falling train loss says little about overfitting: a classifier that memorises its rows scores
1.0 on them while validation stays put. So at each evaluation the driver also scores a fixed,
seeded sample of train rows (`train.train_metric_rows`; -1: as many as the validation split
has, at most 1000) with the same evaluation code and the same eval-mode weights (no dropout),
and the two are written side by side:

  metrics.jsonl  `train/accuracy`, `train/f1_macro` (the sample) beside `eval/accuracy` and
                 `eval/f1_macro`, and `overfit/accuracy_gap`, `overfit/f1_macro_gap` (train
                 minus validation); the run report draws them (`jaxtune.report.html`)
  tb/train/      TensorBoard runs holding the same tags, `fit/accuracy` and `fit/f1_macro`, for
  tb/validation/ the train sample and the validation split: TensorBoard overlays a tag's runs in
                 one chart, so each metric shows its train and validation curves together

The sample is drawn once per run from `seed`, so every evaluation (and a resumed run) scores the
same rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxtune import objectives
from jaxtune.data import pipeline

METRICS = ("accuracy", "f1_macro")
MAX_AUTO_ROWS = 1000  # train.train_metric_rows=-1: min(len(validation), this)
SAMPLE_SEED_OFFSET = 7919  # apart from the other streams drawn from config.seed
TB_RUNS = ("train", "validation")


def sample_rows(requested: int, n_train: int, n_validation: int) -> int:
  """How many train rows to score: `requested` (-1: min(validation, MAX_AUTO_ROWS), 0: none),
  never more than the train split has."""
  n = min(n_validation, MAX_AUTO_ROWS) if requested < 0 else requested
  return max(0, min(n, n_train))


def sample(ds: pipeline.Dataset, rows: int, seed: int) -> pipeline.Dataset:
  """`rows` train rows drawn without replacement from `seed`, in their split order."""
  rng = np.random.default_rng([seed, SAMPLE_SEED_OFFSET])
  return ds.take(np.sort(rng.choice(len(ds), size=rows, replace=False)))


class TrainCurves:
  """Call it at each evaluation with the validation result and a scorer of a data set; it
  returns the scalars to log beside the validation ones (none when off)."""

  def __init__(self, config, splits, mw, start_step: int = 0):
    n = 0
    if objectives.get(config).labels and "validation" in splits:
      n = sample_rows(config.train.train_metric_rows, len(splits["train"]),
                      len(splits["validation"]))
    self.rows = sample(splits["train"], n, config.seed) if n else None
    self._tb = {}
    if self.rows is not None and mw is not None and mw.has_tensorboard:
      from tensorboardX import SummaryWriter
      from tensorboardX.proto.event_pb2 import Event, SessionLog

      for run in TB_RUNS:
        self._tb[run] = SummaryWriter(logdir=os.path.join(mw.workdir, "tb", run), flush_secs=10)
        if start_step:  # a resume: TensorBoard drops the crashed run's later points (writer.py)
          self._tb[run].file_writer.add_event(Event(
            step=start_step + 1, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)))

  def __call__(self, step: int, validation: dict, score: Callable[[Any, pipeline.Dataset], tuple],
               params, *, last: bool = False) -> dict[str, float]:
    """Scores the train sample with `score(params, rows)` (the driver's evaluation, eval-mode
    `params`); `last` closes the TensorBoard writers after writing."""
    if self.rows is None:
      return {}
    train, _ = score(params, self.rows)
    out = {}
    for m in METRICS:
      out[f"train/{m}"] = float(train[m])
      out[f"overfit/{m}_gap"] = float(train[m]) - float(validation[m])
    for run, res in zip(TB_RUNS, (train, validation)):
      if run in self._tb:
        for m in METRICS:
          self._tb[run].add_scalar(f"fit/{m}", float(res[m]), int(step))
        self._tb[run].flush()  # two small writes per evaluation: on disk even if the run dies
        if last:
          self._tb[run].close()
    if last:
      self._tb = {}
    return out
