"""Review data sets (answers only from sentiment_minilm's train split, held-out prompts unseen)
and data.kind='preference' through data.build / build_eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune import data
from jaxtune.data import assets, builtin, preference, reviews
from jaxtune.data.readers import BadRows
from jaxtune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def pairs():
  try:
    assets.rotten_tomatoes_txt()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return builtin.read("review_pairs", BadRows())


def test_review_pairs_answers_come_only_from_the_sentiment_train_split(pairs, make_cfg):
  cfg = make_cfg(kind="classification", source="rotten_tomatoes", split="0.8,0.1,0.1", split_seed=0)
  split = data.read_splits(cfg.data, BadRows())
  train = {r.fields["id"]: r.fields for r in split["train"]}
  held = {r.fields["text"] for k in ("validation", "test") for r in split[k]}
  kept = {i: f for i, f in train.items() if f["text"] not in held}
  assert len(train) - 30 < len(kept) < len(train)  # the file repeats a few snippets across splits
  n_pos = sum(f["label"] == "positive" for f in kept.values())
  assert len(pairs) == min(n_pos, len(kept) - n_pos)
  chosen = [p.fields["chosen_id"] for p in pairs]
  rejected = [p.fields["rejected_id"] for p in pairs]
  assert len(set(chosen)) == len(chosen) and len(set(rejected)) == len(rejected)
  for p in pairs:
    f = p.fields
    assert train[f["chosen_id"]]["label"] == "positive" and train[f["rejected_id"]]["label"] == "negative"
    assert f["chosen"] == [{"role": "assistant", "content": train[f["chosen_id"]]["text"]}]
    assert f["rejected"][0]["content"] == train[f["rejected_id"]]["text"]
    assert f["chosen"][0]["content"] not in held and f["rejected"][0]["content"] not in held
    assert f["prompt"][0]["role"] == "user" and "sentence" in f["prompt"][0]["content"]
  assert [p.fields for p in builtin.read("review_pairs", BadRows())[:50]] == [p.fields for p in pairs[:50]]


def test_heldout_prompts_are_200_and_share_no_wording_with_train_prompts():
  held = builtin.read("review_prompts:heldout", BadRows())
  train = builtin.read("review_prompts", BadRows())
  texts = [r.fields["prompt"][0]["content"] for r in held]
  train_texts = [r.fields["prompt"][0]["content"] for r in train]
  assert len(texts) == 200 == len(set(texts))
  assert len(train_texts) == len(set(train_texts)) >= 3000
  assert texts == [r.fields["prompt"][0]["content"] for r in builtin.read("review_prompts:heldout", BadRows())]
  for r in held:
    assert r.fields["subject"] not in " ".join(train_texts) and r.fields["genre"] not in " ".join(train_texts)
  # No train phrasing's fixed words (the text around {film}) appear in a held-out prompt.
  for phrasing in reviews.TRAIN_PHRASINGS:
    for part in phrasing.split("{film}"):
      if len(part.strip()) > 3:
        assert not any(part.strip() in t for t in texts), part


def test_kind_preference_builds_chosen_and_rejected_arrays(tmp_path, make_cfg, causal_tok_dir):
  rows = [{"q": f"Review film {i}:", "good": f" great {i}", "bad": " dull" * (1 + i % 3)} for i in range(10)]
  src = tmp_path / "pairs.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  cfg = make_cfg(kind="preference", tokenizer=causal_tok_dir, source=str(src), split="0.8,0.2",
                 prompt_column="q", chosen_column="good", rejected_column="bad")
  splits = data.build(cfg, tmp_path / "work")
  assert len(splits["train"]) == 8 and len(splits["validation"]) == 2
  a = splits["train"].arrays
  assert set(a) == {"example_id", *preference.KEYS}
  assert a["chosen_input_ids"].shape[1] == splits["validation"].arrays["rejected_input_ids"].shape[1]
  i = int(np.flatnonzero(a["example_id"] == 0)[0])
  ex = splits.examples["train"][i]
  tok = splits.tokenizer
  assert tok.decode(a["chosen_input_ids"][i][a["chosen_loss_mask"][i] == 1]) == ex["good"] + "</s>"
  assert splits.stats["kind"] == "preference" and splits.stats["train"]["examples"] == 8

  ev = data.build_eval(cfg, str(src), tmp_path / "work")
  assert len(ev["eval"]) == 10

  (tmp_path / "bad.jsonl").write_text(json.dumps({"q": "x", "good": "y"}) + "\n")
  cfg.data.source, cfg.data.split = str(tmp_path / "bad.jsonl"), "1,0"
  cfg.data.validation_source = str(src)
  with pytest.raises(DataError, match=r"row 1: missing column 'bad'"):
    data.build(cfg, tmp_path / "work")
  cfg.data.rejected_column = "q"
  with pytest.raises(ConfigError, match=r"data.chosen_column=.*must differ"):
    data.build(cfg, tmp_path / "work")


def test_review_pairs_imply_kind_preference(pairs, make_cfg):
  cfg = make_cfg(kind="classification", source="review_pairs")
  with pytest.raises(ConfigError, match=r"builtin 'review_pairs' is 'preference' data"):
    data.build(cfg, "/nonexistent")
