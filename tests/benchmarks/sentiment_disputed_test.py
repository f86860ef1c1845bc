"""benchmarks/sentiment_disputed.py: disputed rows per split, and a run's accuracy on each group."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.benchmarks.train_throughput_test import ROOT


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


script = _load("sentiment_disputed")


@pytest.fixture(scope="module")
def test_rows():
  try:
    return script.recipe_rows()["test"]
  except FileNotFoundError as e:  # the offline assets are not fetched
    pytest.skip(str(e))


def test_accuracy_on_disputed_and_undisputed_rows(test_rows, tmp_path, capsys):
  test = test_rows
  disputed = [r for r in test if script.disputed(r)]
  agreed = [r for r in test if not script.disputed(r)]
  assert disputed and agreed
  # The raters' sign against the label, by hand: a disputed row's score has the other sign.
  r = disputed[0]
  assert (r.fields["score"] > 0) != (r.fields["label"] == "positive")
  wrong = disputed[:3] + agreed[:1]
  run = tmp_path / "run"
  run.mkdir()
  (run / "errors.jsonl").write_text("".join(json.dumps({"file": r.file, "row": r.row}) + "\n" for r in wrong))
  script.main([str(run)])
  out = capsys.readouterr().out
  assert f"test        1060 rows, {len(disputed):4d} disputed" in out
  n = len(test)
  assert f"test accuracy {1 - 4 / n:.4f}" in out
  assert f"undisputed {1 - 1 / len(agreed):.4f} (1 wrong of {len(agreed)})" in out
  assert f"disputed {1 - 3 / len(disputed):.4f} (3 wrong of {len(disputed)})" in out


def test_a_run_on_other_rows_is_refused(test_rows, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "errors.jsonl").write_text(json.dumps({"file": "elsewhere.jsonl", "row": 3}) + "\n")
  with pytest.raises(SystemExit, match="another split"):
    script.main([str(run)])
