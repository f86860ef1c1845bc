"""jaxtune.predict.classify on a tiny BERT sentiment run (real MiniLM tokenizer, random weights)."""

import json

import pytest

from jaxtune import predict, train
from jaxtune.cli import eval as eval_cli
from tests.finetune_test import classification_config, sentiment_rows, tiny_bert, write_jsonl

__all__ = ["tiny_bert"]  # a fixture, used by name


def test_classify_agrees_with_the_runs_labels_and_eval(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(400, 0))
  workdir = tmp_path / "run"
  config = classification_config(tiny_bert, data)
  config.train.eval_every = 30
  config.export.enabled = False
  train.train_and_evaluate(config, workdir)

  fresh = sentiment_rows(40, 5)
  texts = [r["text"] for r in fresh]
  out = predict.classify(workdir, texts, batch_size=16)  # 40 = 16 + 16 + 8: a padded last batch
  assert len(out) == len(texts)
  assert {label for label, _ in out} <= {"negative", "positive"}
  assert all(0.5 <= p <= 1.0 for _, p in out)
  wrong = [i for i, ((label, _), r) in enumerate(zip(out, fresh, strict=True)) if label != r["label"]]
  assert len(wrong) / len(fresh) < 0.15
  # The same weights and tokenization as `jaxtune eval`: the same mistakes on the same rows.
  scored = eval_cli.evaluate_file(workdir, str(write_jsonl(tmp_path / "fresh.jsonl", fresh)))
  assert scored["accuracy"] == pytest.approx(1 - len(wrong) / len(fresh))
  errors = (workdir / "eval_fresh_errors.jsonl")
  eval_wrong = [json.loads(x)["text"] for x in errors.read_text().splitlines()] if errors.exists() else []
  assert sorted(eval_wrong) == sorted(texts[i] for i in wrong)
  # The order of texts and the batch size do not change a text's answer.
  one = predict.classify(workdir, texts[::-1][:3], batch_size=2)
  assert [label for label, _ in one] == [label for label, _ in out[::-1][:3]]
  assert [p for _, p in one] == pytest.approx([p for _, p in out[::-1][:3]], abs=1e-5)


def test_classify_refuses_a_language_model_run(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model": {"task": "causal_lm"}}))
  (tmp_path / "run.json").write_text("{}")
  with pytest.raises(ValueError, match=r"config\.json.*causal_lm"):
    predict.classify(tmp_path, ["hello"])
