"""data.clean/dedup/balance/augment in `jaxtune.data.build`: train only, seeded, dropped rows listed."""

import json

import numpy as np
import pytest

from jaxtune import data
from jaxtune.data import config as data_config


def _config(planted, make_cfg, tok_dir, **quality):
  c = make_cfg(**{k: v for k, v in planted.data_config().items()})
  c.data.tokenizer = tok_dir
  c.data.on_bad_row = "skip"
  c.data.seq_len = 256
  for k, v in quality.items():
    c.data[k] = v
  return c


def _dropped(workdir):
  return [json.loads(x) for x in (workdir / "dropped_rows.jsonl").read_text().splitlines()]


def test_off_is_unchanged(planted, make_cfg, causal_tok_dir, tmp_path):
  c = _config(planted, make_cfg, causal_tok_dir)
  splits = data.build(c, tmp_path)
  assert "quality" not in splits.stats and not (tmp_path / "dropped_rows.jsonl").exists()
  # Every row the task accepts: duplicates, leaks and the markup-only row included.
  assert len(splits["train"]) == 72


def test_clean_and_dedup_drop_exactly_the_planted_rows(planted, make_cfg, causal_tok_dir, tmp_path):
  c = _config(planted, make_cfg, causal_tok_dir, clean=True, dedup="near")
  before = data.build(_config(planted, make_cfg, causal_tok_dir), tmp_path / "off")
  splits = data.build(c, tmp_path)
  p = planted.rows["train"]
  by_step = {}
  for r in _dropped(tmp_path):
    by_step.setdefault(r["step"], []).append(r["row"])
    assert r["split"] == "train" and r["reason"]
  assert by_step == {"clean": p["invalid"][-1:], "exact_duplicate": p["exact"],
                     "near_duplicate": p["near"], "leak": planted.leaked_train_rows}
  assert len(splits["train"]) == 72 - 1 - 3 - 2 - 3
  assert splits.stats["quality"]["dropped_by_step"]["leak"] == 3
  # Validation and test keep every row; ' Pos' in train is now the class 'pos'.
  assert before.label_names == ("Pos", "neg", "pos") and splits.label_names == ("neg", "pos")
  for name in ("validation", "test"):
    assert splits.examples[name] == before.examples[name]
  texts = [e["text"] for e in splits.examples["train"]]
  assert not any("Ã" in t or "<b>" in t for t in texts)


def test_exact_dedup_keeps_near_copies(planted, make_cfg, causal_tok_dir, tmp_path):
  splits = data.build(_config(planted, make_cfg, causal_tok_dir, dedup="exact"), tmp_path)
  steps = sorted({r["step"] for r in _dropped(tmp_path)})
  assert steps == ["exact_duplicate", "leak"]
  assert len(splits["train"]) == 72 - 3 - 2  # two exact leaks; the near leak stays


@pytest.mark.parametrize("mode", ["oversample", "undersample"])
def test_balance_resamples_train(planted, make_cfg, causal_tok_dir, tmp_path, mode):
  c = _config(planted, make_cfg, causal_tok_dir, clean=True, balance=mode)
  splits = data.build(c, tmp_path)
  counts = np.bincount(splits["train"].arrays["labels"])
  n = planted.train_labels
  assert counts.tolist() == [max(n.values())] * 2 if mode == "oversample" else [min(n.values())] * 2
  assert splits.stats["validation"]["label_counts"] == {"neg": 0, "pos": 17}
  again = data.build(c, tmp_path / "again")
  assert again["train"].fingerprint() == splits["train"].fingerprint()
  c.seed += 1
  other = data.build(c, tmp_path / "other")
  assert other["train"].fingerprint() != splits["train"].fingerprint()
  if mode == "undersample":
    assert len(_dropped(tmp_path)) == 1 + max(n.values()) - min(n.values())  # + the markup row


def test_balance_class_weights(planted, make_cfg, causal_tok_dir, tmp_path):
  splits = data.build(_config(planted, make_cfg, causal_tok_dir, clean=True, balance="class_weights"), tmp_path)
  n = planted.train_labels
  total = sum(n.values())
  assert splits.class_weights == pytest.approx((total / (2 * n["neg"]), total / (2 * n["pos"])))


def test_augment_adds_seeded_copies(planted, make_cfg, causal_tok_dir, tmp_path):
  c = _config(planted, make_cfg, causal_tok_dir, augment="swap,delete", augment_rate=0.2, augment_copies=2)
  splits = data.build(c, tmp_path)
  q = splits.stats["quality"]
  assert len(splits["train"]) == 72 + q["augmented_rows"] and q["augmented_rows"] > 100
  assert set(q["augmented_by_op"]) == {"swap", "delete"}
  assert data.build(c, tmp_path / "again")["train"].fingerprint() == splits["train"].fingerprint()
  assert len(splits["validation"]) == 17


@pytest.mark.parametrize("key,value,message", [
  ("dedup", "fuzzy", "data.dedup='fuzzy'"),
  ("balance", "smote", "data.balance='smote'"),
  ("augment", "synonym,shout", "data.augment='synonym,shout'"),
  ("augment", "backtranslate", "data.augment_translator"),
  ("augment_rate", 0.0, "data.augment_rate=0.0"),
])
def test_config_errors_name_the_key(planted, make_cfg, causal_tok_dir, key, value, message):
  c = _config(planted, make_cfg, causal_tok_dir, augment="swap")
  c.data[key] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
    data_config.check(c.data)


def test_class_weights_conflict(planted, make_cfg, causal_tok_dir):
  c = _config(planted, make_cfg, causal_tok_dir, balance="class_weights", class_weights="1,2")
  with pytest.raises(ValueError, match="data.balance='class_weights'.*class_weights='1,2'"):
    data_config.check(c.data)


def test_other_kinds_are_rejected(make_cfg):
  c = make_cfg(kind="synthetic", dedup="near")
  with pytest.raises(ValueError, match="data.dedup='near': data quality transforms support kind='classification'"):
    data_config.check(c.data)
