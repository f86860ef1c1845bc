"""Label errors: planted flips in real tweets are found; embeddings match torch and are cached."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune import data
from jaxtune.data import assets, builtin
from jaxtune.data.quality import label_errors
from jaxtune.data.readers import BadRows

pytest.importorskip("cleanlab")
NAMES = ("negative", "neutral", "positive")


def _planted(n=1200, share=0.1):
  """Agreed tweets (confidence 1.0: the labels to trust) with `share` of labels flipped."""
  try:
    assets.tweets_csv()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  rows = builtin.read("tweets:validation", BadRows()) + builtin.read("tweets:test", BadRows())
  rng = np.random.default_rng(0)
  rows = [rows[i] for i in np.sort(rng.choice(len(rows), n, replace=False))]
  truth = np.array([NAMES.index(r.fields["sentiment"]) for r in rows])
  flip = rng.random(n) < share
  given = np.where(flip, (truth + rng.integers(1, 3, n)) % 3, truth)
  return [r.fields["text"] for r in rows], truth, given, flip


def test_planted_label_flips_are_found():
  # Precomputed cheap features (word TF-IDF) keep this fast; the real-encoder figures are in
  # docs/guides/data_quality.md (same method, MiniLM embeddings).
  from sklearn.feature_extraction.text import TfidfVectorizer

  texts, truth, given, flip = _planted()
  features = TfidfVectorizer(min_df=2, sublinear_tf=True).fit_transform(texts).toarray()
  result = label_errors.find(features.astype(np.float32), given, 3)
  found = np.array([i.index for i in result.issues])
  recall = flip[found].sum() / flip.sum()
  precision = flip[found].mean()
  # Chance would flag flipped rows at the planted rate (0.1): the detector must do far better.
  assert recall >= 0.6 and precision >= 0.2, (recall, precision, len(found))
  for issue in result.issues:  # the suggestion is never the given label
    assert issue.suggested != issue.given and issue.p_suggested > issue.p_given
  # Most suggestions for found flips are the true label.
  hits = [i for i in result.issues if flip[i.index]]
  assert np.mean([i.suggested == truth[i.index] for i in hits]) >= 0.6
  noise = result.noise_matrix
  np.testing.assert_allclose(noise.sum(axis=0), 1.0, atol=1e-6)  # P(given | true) per column
  s = result.summary(NAMES)
  assert s["flagged"] == len(found) and sum(s["flagged_by_given_label"].values()) == len(found)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
  """A tiny random BERT in HF format with the real MiniLM tokenizer (its vocab)."""
  torch = pytest.importorskip("torch")
  from transformers import AutoTokenizer, BertConfig, BertModel

  try:
    src = assets.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  path = tmp_path_factory.mktemp("tiny_bert")
  torch.manual_seed(0)
  cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=64)
  BertModel(cfg).save_pretrained(str(path))
  AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(path))
  return str(path)


def test_embeddings_match_torch_and_are_cached(tiny_encoder, tmp_path, monkeypatch):
  import torch
  from transformers import AutoTokenizer, BertModel

  texts = ["a fine day", "the worst film of the year, by far", "ok", "rain again today ..."]
  cache = tmp_path / "out" / "label_error_embeddings.npz"
  ours = label_errors.embed(texts, tiny_encoder, seq_len=16, batch_size=3, cache=cache)
  tok = AutoTokenizer.from_pretrained(tiny_encoder)
  enc = tok(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
  with torch.no_grad():
    h = BertModel.from_pretrained(tiny_encoder).eval()(**enc).last_hidden_state
  m = enc["attention_mask"][..., None].float()
  ref = ((h * m).sum(1) / m.sum(1)).numpy()
  np.testing.assert_allclose(ours, ref, atol=2e-5)
  assert cache.is_file()

  def boom(*a):
    raise AssertionError("recomputed instead of reading the cache")

  monkeypatch.setattr(label_errors, "_encode", boom)
  np.testing.assert_array_equal(label_errors.embed(texts, tiny_encoder, seq_len=16, cache=cache), ours)
  with pytest.raises(AssertionError, match="recomputed"):  # other texts: not the cached ones
    label_errors.embed(texts[:2], tiny_encoder, seq_len=16, cache=cache)


def test_run_drops_or_relabels_flagged_train_rows(tiny_encoder, tmp_path, make_cfg, monkeypatch):
  """data.label_errors on a run's train split: flagged rows go (drop) or change label (relabel);
  validation is untouched; the embeddings are cached in the workdir."""
  rows = [{"text": f"text {i}", "label": ("a", "b")[i % 2]} for i in range(100)]
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
  # Features that make rows 3 and 8 look like the other class: the planted label errors.
  flipped = {3, 8, 51}

  def features(texts, *a, **k):
    y = np.array([(int(t.split()[1]) % 2) ^ (int(t.split()[1]) in flipped) for t in texts], np.float32)
    return np.stack([y * 4 - 2, np.zeros(len(texts))], 1).astype(np.float32)

  monkeypatch.setattr(label_errors, "_encode", lambda texts, *a: features(texts))
  for mode in ("drop", "relabel"):
    cfg = make_cfg(kind="classification", tokenizer=tiny_encoder, split="1,0",
                   source=str(tmp_path / "train.jsonl"), validation_source=str(tmp_path / "val.jsonl"),
                   label_errors=mode, label_error_encoder=tiny_encoder)
    work = tmp_path / mode
    splits = data.build(cfg, work)
    dropped = [json.loads(x) for x in (work / "dropped_rows.jsonl").read_text().splitlines()]
    assert sorted(r["row"] - 1 for r in dropped) == sorted(flipped)
    train = {e["row"] - 1: e["label"] for e in splits.examples["train"]}
    if mode == "drop":
      assert sorted(set(range(100)) - set(train)) == sorted(flipped)
    else:
      assert len(train) == 100 and all(train[i] == ("b", "a")[i % 2] for i in flipped)
    assert len(splits["validation"]) == 6
    assert splits.stats["quality"]["label_errors"]["flagged"] == 3
    assert (work / "label_error_embeddings.npz").is_file()
