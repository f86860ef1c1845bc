"""final.best_results: the end-of-run evaluation of the best checkpoint."""

from __future__ import annotations

import json

import ml_collections
from etils import epath

from jaxtune import final


class _Ckpt:
  def __init__(self, best):
    self.best = best

  def wait(self):
    pass

  def best_step(self):
    return self.best

  def close(self):
    pass


def test_best_is_last_step_reuses_its_validation_pass(tmp_path):
  """A whole validation pass costs as much as many training steps on a CPU: when the best
  checkpoint is the last step, the driver's final validation metrics are not recomputed."""
  calls = []

  def run_eval(params, split):
    calls.append(split)
    return {"accuracy": 0.5, "split": split}, None

  config = ml_collections.ConfigDict({"export": {"enabled": False}, "checkpoint": {"best_metric": "x"}})
  state = {"params": {"w": 1.0}}
  last = {"accuracy": 0.75}
  args = (config, epath.Path(tmp_path), None, _Ckpt(7), None, state, 7, {"validation": 1, "test": 1},
          run_eval, None)
  res = final.best_results(*args, last_val=last)
  assert calls == ["test"] and res["val"] == last and res["best_step"] == 7
  assert json.loads((tmp_path / "results.json").read_text())["val"] == last
  calls.clear()
  res = final.best_results(*args)  # no last-step metrics given: validation is evaluated
  assert calls == ["validation", "test"] and res["val"]["split"] == "validation"
