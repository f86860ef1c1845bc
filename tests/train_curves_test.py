"""Train vs validation curves: a tiny BERT memorises rows with random labels, so its train sample
reaches accuracy 1.0 while validation stays near chance; TensorBoard and the report show both."""

import json

import numpy as np
import pytest

from jaxtune import report, train, train_curves
from jaxtune.data import pipeline
from tests.finetune_test import (
  FILLER,
  NEGATIVE,
  POSITIVE,
  classification_config,
  tiny_bert,
  write_jsonl,
)
from tests.report.page_test import elements, series

__all__ = ["tiny_bert"]  # the module fixture, shared with finetune_test


def test_sample_size_and_rows_are_fixed_by_the_seed():
  assert train_curves.sample_rows(-1, 5000, 300) == 300  # default: as many as validation has
  assert train_curves.sample_rows(-1, 50000, 4000) == 1000  # at most 1000
  assert train_curves.sample_rows(-1, 40, 300) == 40  # never more than train has
  assert train_curves.sample_rows(0, 5000, 300) == 0
  assert train_curves.sample_rows(64, 5000, 300) == 64
  ds = pipeline.Dataset({"example_id": np.arange(500)})
  a, b = (train_curves.sample(ds, 50, seed=3).arrays["example_id"] for _ in range(2))
  assert np.array_equal(a, b) and len(set(a)) == 50 and list(a) == sorted(a)
  assert not np.array_equal(a, train_curves.sample(ds, 50, seed=4).arrays["example_id"])


def random_label_rows(n: int, seed: int) -> list[dict]:
  """Distinct word salads with coin-flip labels: memorisable, never generalisable."""
  rng = np.random.default_rng(seed)
  vocab = FILLER + POSITIVE + NEGATIVE
  return [{"text": " ".join(rng.choice(vocab, size=6)), "label": ["negative", "positive"][int(rng.integers(2))]}
          for _ in range(n)]


def test_memorised_rows_show_a_gap_in_tensorboard_and_the_report(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "noise.jsonl", random_label_rows(200, 0))
  c = classification_config(tiny_bert, data)
  c.data.split = "0.3,0.4,0.3"  # 60 train rows to memorise, 80 validation rows
  c.train.steps, c.train.eval_every, c.train.batch_size = 90, 30, 20
  c.train.train_metric_rows = 40
  c.train.early_stopping_patience = 0
  c.export.enabled = False
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)

  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "train/accuracy" in r]
  assert [r["step"] for r in evals] == [30, 60, 90]
  last = evals[-1]
  assert last["train/accuracy"] == 1.0, evals
  assert last["eval/accuracy"] < 0.8, evals
  assert last["overfit/accuracy_gap"] == pytest.approx(1.0 - last["eval/accuracy"])
  assert last["overfit/f1_macro_gap"] == pytest.approx(last["train/f1_macro"] - last["eval/f1_macro"])

  # TensorBoard: the same tags in the runs train/ and validation/, so they overlay.
  from tensorboard.backend.event_processing import event_accumulator

  curves = {}
  for run in ("train", "validation"):
    acc = event_accumulator.EventAccumulator(str(workdir / "tb" / run))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"fit/accuracy", "fit/f1_macro"}
    curves[run] = {e.step: e.value for e in acc.Scalars("fit/accuracy")}
  assert curves["train"] == {r["step"]: pytest.approx(r["train/accuracy"]) for r in evals}
  assert curves["validation"] == {r["step"]: pytest.approx(r["eval/accuracy"]) for r in evals}

  # The report: both curves in one chart, and the gap at the last evaluation in words.
  page = report.write(workdir)[0].read_text()
  titles = [t["text"] for t in elements(page, "text", "title")]
  assert "accuracy: train vs validation" in titles
  assert "Overfitting gap (train minus validation)" in titles
  shown = series(page)
  assert shown["train/accuracy"] == shown["eval/accuracy"] == 3
  assert shown["overfit/accuracy_gap"] == 3
  (gap,) = [e["text"] for e in elements(page, "ul", "gap")]
  assert (f"accuracy at step 90: train sample 1.0000, validation {last['eval/accuracy']:.4f}, "
          f"gap {1.0 - last['eval/accuracy']:+.4f}") in gap
