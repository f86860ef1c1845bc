"""Watching a run against overfitting: early stopping and the overfitting alarm.

Both are small host-side state machines fed once per evaluation, so they are easy to test and
to restore after a resume (their state is a plain dict saved in the checkpoint's meta).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
  """Stop when `metric` has not improved by more than `min_delta` for `patience` evaluations."""

  mode: str  # 'min' | 'max'
  patience: int  # 0: never stop
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  bad_evals: int = 0

  def update(self, step: int, value: float | None) -> bool:
    """Record one evaluation; True when training should stop."""
    if value is None or not math.isfinite(value):
      self.bad_evals += 1
    elif self.best is None or self._improves(value):
      self.best, self.best_step, self.bad_evals = value, step, 0
    else:
      self.bad_evals += 1
    return self.patience > 0 and self.bad_evals >= self.patience

  def _improves(self, value: float) -> bool:
    if self.mode == "min":
      return value < self.best - self.min_delta
    return value > self.best + self.min_delta

  def state(self) -> dict:
    return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

  def load(self, state: dict) -> None:
    self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]


@dataclasses.dataclass
class OverfitAlarm:
  """Raised when train loss fell and eval loss rose at each of the last `k` evaluations."""

  k: int = 3  # 0: off
  history: list = dataclasses.field(default_factory=list)  # [(train_loss, eval_loss)]

  def update(self, train_loss: float, eval_loss: float) -> bool:
    self.history.append((float(train_loss), float(eval_loss)))
    self.history = self.history[-(self.k + 1):]
    if self.k <= 0 or len(self.history) < self.k + 1:
      return False
    pairs = list(zip(self.history, self.history[1:]))
    return all(b[0] < a[0] and b[1] > a[1] for a, b in pairs)

  def message(self, step: int) -> str:
    (t0, e0), (t1, e1) = self.history[0], self.history[-1]
    return (
      f"overfitting alarm at step {step}: over the last {self.k} evaluations train loss fell "
      f"{t0:.4f} -> {t1:.4f} while eval loss rose {e0:.4f} -> {e1:.4f}. Consider early stopping "
      "(train.early_stopping_patience), more dropout (model.config_overrides), weight decay, "
      "fewer epochs, or data augmentation."
    )

  def state(self) -> dict:
    return {"history": self.history}

  def load(self, state: dict) -> None:
    self.history = [tuple(x) for x in state["history"]]
