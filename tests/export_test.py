"""A classifier's export answers as `jaxtune.predict.classify` does, long texts included.

A tiny BERT (random weights, the real MiniLM tokenizer) trained with data.seq_len = 16 is
exported by the run (`export.enabled`); transformers' text-classification pipeline and
AutoTokenizer with `truncation=True`, and sentence-transformers for a mean-pooling classifier,
must cut texts longer than 16 tokens where jaxtune does and give the same labels and scores.
"""

import json

import numpy as np
import pytest

from jaxtune import predict, train
from jaxtune.data import classification
from jaxtune.data import load_tokenizer as jaxtune_tokenizer
from tests.finetune_test import (
  FILLER,
  NEGATIVE,
  POSITIVE,
  classification_config,
  sentiment_rows,
  tiny_bert,
  write_jsonl,
)

__all__ = ["tiny_bert"]  # a fixture, used by name

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # two short training runs
SEQ_LEN = 16


def texts_long_and_short() -> list[str]:
  """Short texts, and texts of 20-40 tokens whose sentiment word comes after token 16."""
  rng = np.random.default_rng(3)
  short = [r["text"] for r in sentiment_rows(6, 9)]
  long = []
  for i in range(8):
    words = list(rng.choice(FILLER, size=18 + 2 * i))
    word = (POSITIVE if i % 2 else NEGATIVE)[i % 6]
    long.append(" ".join([*words[:4], rng.choice(POSITIVE + NEGATIVE), *words[4:], word]))
  return short + long


def _run(tiny_bert, tmp_path, pooling: str):
  data = write_jsonl(tmp_path / "reviews.jsonl", sentiment_rows(200, 0))
  config = classification_config(tiny_bert, data)
  config.model.pooling = pooling
  config.data.seq_len = SEQ_LEN
  config.train.steps = 40  # enough to learn the words, so truncation changes answers
  config.train.eval_every = 0
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, workdir)
  return workdir


def test_pipeline_and_tokenizer_truncate_like_classify(tiny_bert, tmp_path):
  workdir = _run(tiny_bert, tmp_path, "cls")
  export = workdir / "export"
  texts = texts_long_and_short()
  tc = json.loads((export / "tokenizer_config.json").read_text())
  assert tc["model_max_length"] == SEQ_LEN and "max_length" not in tc, tc
  assert tc["truncation_side"] == "right" and tc["truncation_strategy"] == "longest_first"

  # The tokens: AutoTokenizer(truncation=True) gives exactly jaxtune's ids, special tokens included.
  ours, cut = classification.encode(jaxtune_tokenizer(str(tiny_bert)), texts, None, SEQ_LEN)
  assert cut == 8  # every long text is cut
  tok = transformers.AutoTokenizer.from_pretrained(export)
  assert tok(texts, truncation=True)["input_ids"] == ours["input_ids"]
  assert max(len(x) for x in ours["input_ids"]) == SEQ_LEN

  # The answers: the pipeline's labels and scores are predict.classify's.
  want = predict.classify(workdir, texts)
  pipe = transformers.pipeline("text-classification", model=str(export), device="cpu")
  got = pipe(texts, truncation=True)
  assert [g["label"] for g in got] == [label for label, _ in want]
  np.testing.assert_allclose([g["score"] for g in got], [p for _, p in want], atol=2e-5)
  # Not vacuous: uncut, the long texts would score otherwise (transformers truncates only when
  # asked; without truncation=True it warns that they exceed model_max_length).
  uncut = [g["score"] for g in pipe(texts[6:])]
  assert not np.allclose(uncut, [p for _, p in want[6:]], atol=1e-3)


def test_sentence_transformers_export_truncates_like_classify(tiny_bert, tmp_path):
  """model.pooling='mean' exports a sentence-transformers pipeline: it truncates by itself."""
  st = pytest.importorskip("sentence_transformers")
  workdir = _run(tiny_bert, tmp_path, "mean")
  export = workdir / "export"
  assert json.loads((export / "sentence_bert_config.json").read_text())["max_seq_length"] == SEQ_LEN
  texts = texts_long_and_short()
  want = predict.classify(workdir, texts)
  logits = st.SentenceTransformer(str(export), device="cpu").encode(texts, convert_to_numpy=True)
  probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()
  names = json.loads((export / "config.json").read_text())["id2label"]
  assert [names[str(i)] for i in probs.argmax(-1)] == [label for label, _ in want]
  np.testing.assert_allclose(probs.max(-1), [p for _, p in want], atol=2e-5)
