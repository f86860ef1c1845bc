"""Classification data end to end through `data.build`: labels, weights, truncation, bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxtune import data
from jaxtune.data.readers import DataError
from jaxtune.errors import ConfigError


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _build(tmp_path, make_cfg, tok, train, val=None, test=None, **kw):
  """Build from explicit train/validation(/test) files, so each split's rows are known."""
  kw.setdefault("split", "1,0")
  cfg = make_cfg(kind="classification", tokenizer=tok, source=_jsonl(tmp_path / "train.jsonl", train),
                 validation_source=_jsonl(tmp_path / "val.jsonl", val or train[:2]),
                 test_source=_jsonl(tmp_path / "test.jsonl", test) if test else "", **kw)
  return data.build(cfg, tmp_path / "work")


def test_label_names_and_ids_map_to_the_same_ids(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "aa", "label": "neg"}, {"text": "bb", "label": 1}, {"text": "cc", "label": "1"},
           {"text": "dd", "label": "pos"}, {"text": "ee", "label": 0.0}]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, label_names="neg,pos")
  assert s.num_labels == 2 and s.label_names == ("neg", "pos")
  np.testing.assert_array_equal(s["train"].arrays["labels"], [0, 1, 1, 1, 0])
  ex = s.examples["train"]
  assert [e["label"] for e in ex] == ["neg", "pos", "pos", "pos", "neg"]
  assert ex[3]["text"] == "dd" and ex[3]["row"] == 4 and ex[3]["file"].endswith("train.jsonl")
  np.testing.assert_array_equal(s["train"].arrays["example_id"], np.arange(5))


def test_label_names_inferred_sorted_from_train(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "x", "label": "c"}, {"text": "y", "label": "a"}, {"text": "z", "label": "b"}]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train)
  assert s.label_names == ("a", "b", "c")
  np.testing.assert_array_equal(s["train"].arrays["labels"], [2, 0, 1])
  # Integer labels sort as numbers, not strings ("10" after "2").
  train = [{"text": "x", "label": 10}, {"text": "y", "label": 2}, {"text": "z", "label": 2}]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train)
  assert s.label_names == ("2", "10")
  np.testing.assert_array_equal(s["train"].arrays["labels"], [1, 0, 0])


def test_class_weights_balanced_and_explicit(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": t, "label": lab} for t, lab in [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y")]]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, class_weights="balanced")
  np.testing.assert_allclose(s.class_weights, [4 / (2 * 3), 4 / (2 * 1)])
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, class_weights="1,3.5")
  assert s.class_weights == (1.0, 3.5)
  assert _build(tmp_path, make_cfg, pair_tok_dir, train).class_weights is None
  with pytest.raises(ValueError, match=r"data.class_weights='1,2,3'.*3 weights for 2 labels"):
    _build(tmp_path, make_cfg, pair_tok_dir, train, class_weights="1,2,3")
  with pytest.raises(DataError, match=r"balanced.*no training examples of label\(s\) \['z'\]"):
    _build(tmp_path, make_cfg, pair_tok_dir, train, class_weights="balanced", label_names="x,y,z")


def test_truncation_is_counted_and_rows_are_short_when_data_is(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "short", "label": "a"}, {"text": "b" * 40, "label": "b"}, {"text": "c" * 9, "label": "a"}]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, [train[0]], seq_len=16)
  ids = s["train"].arrays["input_ids"]
  assert ids.shape == (3, 16)
  assert s.stats["train"]["truncated"] == 1 and s.stats["truncated"] == 1
  assert s["train"].arrays["attention_mask"][1].sum() == 16  # cut, [SEP] kept last
  # Short data: the longest example (9 + [CLS] [SEP] = 11 tokens) rounded up to 16, not 512.
  train[2]["label"] = "b"
  s = _build(tmp_path, make_cfg, pair_tok_dir, [train[0], train[2]], seq_len=512)
  assert s["train"].arrays["input_ids"].shape == (2, 16)
  assert s.stats["truncated"] == 0
  mask = s["train"].arrays["attention_mask"]
  np.testing.assert_array_equal(mask.sum(1), [7, 11])


def test_text_pairs_get_token_type_ids(tmp_path, make_cfg, pair_tok_dir):
  train = [{"premise": "ab", "hypothesis": "cde", "label": "yes"}, {"premise": "f", "hypothesis": "g", "label": "no"}]
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, text_column="premise", text_pair_column="hypothesis")
  a = s["train"].arrays
  # [CLS] a b [SEP] c d e [SEP]: the second segment and its [SEP] have type 1.
  np.testing.assert_array_equal(a["token_type_ids"][0, :8], [0, 0, 0, 0, 1, 1, 1, 1])
  assert a["attention_mask"][0].sum() == 8
  assert s.examples["train"][0]["text_pair"] == "cde"


@pytest.mark.parametrize("row, reason", [
  ({"txt": "no text column", "label": "a"}, "missing column 'text'"),
  ({"text": "   ", "label": "a"}, "empty text in column 'text'"),
  ({"text": "no label"}, "missing label in column 'label'"),
  ({"text": "unknown", "label": "zzz"}, "unknown label 'zzz'"),
  ({"text": 5, "label": "a"}, "column 'text' is not text: got int 5"),
  ({"text": None, "label": "a"}, "column 'text' is null, expected text"),
  ({"text": ["a", "b"], "label": "a"}, "column 'text' is not text: got list"),
  ({"text": {"x": 1}, "label": "a"}, "column 'text' is not text: got dict"),
])
def test_bad_rows_error_or_skip(tmp_path, make_cfg, pair_tok_dir, row, reason):
  train = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}, row, {"text": "z", "label": "a"}]
  with pytest.raises(DataError, match=rf"train\.jsonl, row 3: {reason}"):
    _build(tmp_path, make_cfg, pair_tok_dir, train, label_names="a,b")
  s = _build(tmp_path, make_cfg, pair_tok_dir, train, label_names="a,b", on_bad_row="skip")
  assert len(s["train"]) == 3 and s.stats["skipped"] == 1 and s.stats["train"]["skipped"] == 1
  skipped = [json.loads(x) for x in (tmp_path / "work" / "skipped_rows.jsonl").read_text().splitlines()]
  assert len(skipped) == 1 and skipped[0]["row"] == 3 and reason in skipped[0]["reason"]
  assert skipped[0]["file"].endswith("train.jsonl")


def test_unknown_label_in_validation_with_inferred_names(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]
  val = [{"text": "x", "label": "a"}, {"text": "q", "label": "c"}]
  with pytest.raises(DataError, match=r"val\.jsonl, row 2: unknown label 'c' \(known: a, b"):
    _build(tmp_path, make_cfg, pair_tok_dir, train, val)


def test_carved_split_is_seeded_and_max_rows_subsets(tmp_path, make_cfg, pair_tok_dir):
  rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(50)]
  src = _jsonl(tmp_path / "all.jsonl", rows)

  def build(**kw):
    s = data.build(make_cfg(kind="classification", tokenizer=pair_tok_dir, source=src, **kw), tmp_path / "w")
    return {k: [e["row"] for e in v] for k, v in s.examples.items()}

  a, b = build(), build()
  assert a == b
  assert [len(a[k]) for k in ("train", "validation", "test")] == [40, 5, 5]
  assert sorted(sum(a.values(), [])) == list(range(1, 51))  # a partition of the file
  assert build(split_seed=1) != a
  small = build(max_rows=4)
  assert [len(small[k]) for k in ("train", "validation", "test")] == [4, 4, 4]
  assert set(small["train"]) <= set(a["train"]) and small == build(max_rows=4)
  no_test = build(split="0.9,0.1")
  assert "test" not in no_test and len(no_test["validation"]) == 5


def test_max_train_rows_subsets_train_only_the_same_rows_for_every_run_seed(tmp_path, make_cfg, pair_tok_dir):
  rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(50)]
  src = _jsonl(tmp_path / "all.jsonl", rows)

  def build(seed=0, **kw):
    cfg = make_cfg(kind="classification", tokenizer=pair_tok_dir, source=src, **kw)
    cfg.seed = seed
    s = data.build(cfg, tmp_path / "w")
    return {k: [e["row"] for e in v] for k, v in s.examples.items()}

  full = build()
  sub = build(max_train_rows=12)
  assert len(sub["train"]) == 12 and set(sub["train"]) < set(full["train"])
  # Validation and test stay whole; the run seed does not move the subset, split_seed does.
  assert sub["validation"] == full["validation"] and sub["test"] == full["test"]
  assert build(seed=3, max_train_rows=12) == sub
  assert build(split_seed=1, max_train_rows=12)["train"] != sub["train"]
  # Drawn before the quality steps: dedup drops from the same 12 rows, it does not refill them.
  assert set(build(max_train_rows=12, dedup="exact")["train"]) <= set(sub["train"])
  assert build(max_train_rows=100) == full
  with pytest.raises(ConfigError, match=r"data\.max_train_rows=-1"):
    build(max_train_rows=-1)


def test_max_kept_train_rows_draws_after_the_quality_steps(tmp_path, make_cfg, pair_tok_dir):
  # Rows 0-9 are copies of one text: dedup keeps one, and the 12 rows come from the rest.
  rows = [{"text": "same" if i < 10 else f"t{i}", "label": "ab"[i % 2]} for i in range(60)]
  src = _jsonl(tmp_path / "all.jsonl", rows)

  def build(seed=0, **kw):
    cfg = make_cfg(kind="classification", tokenizer=pair_tok_dir, source=src, **kw)
    cfg.seed = seed
    s = data.build(cfg, tmp_path / "w")
    return {k: [e["row"] for e in v] for k, v in s.examples.items()}, s.stats

  full, _ = build()
  kept, stats = build(max_kept_train_rows=12, dedup="exact")
  assert len(kept["train"]) == 12 and sum(r <= 10 for r in kept["train"]) <= 1  # copies: rows 1-10
  assert kept["validation"] == full["validation"] and kept["test"] == full["test"]
  assert stats["quality"]["train_rows_drawn"] == 12
  assert build(seed=5, max_kept_train_rows=12, dedup="exact")[0] == kept  # run seed: same rows
  # Nothing dropped: the very draw max_train_rows makes, so the two compare row for row.
  assert build(max_kept_train_rows=12)[0] == build(max_train_rows=12)[0]
  with pytest.raises(ConfigError, match=r"data\.max_kept_train_rows=-1"):
    build(max_kept_train_rows=-1)


def test_minilm_tokenizer_without_builtin_padding(tmp_path, make_cfg):
  from jaxtune.data import assets

  try:
    tok = str(assets.minilm_dir())
    assets.rotten_tomatoes_txt()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  s = data.build(make_cfg(kind="classification", source="rotten_tomatoes", tokenizer=tok,
                          max_rows=64, seq_len=128), tmp_path)
  a = s["train"].arrays
  assert s.label_names == ("negative", "positive") and s.num_labels == 2
  assert set(a) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_id"}
  # tokenizer.json pads to 128 by default; here rows are as long as the longest example.
  assert a["input_ids"].shape[1] < 128 and a["input_ids"].shape[1] % 8 == 0
  lengths = a["attention_mask"].sum(1)
  assert lengths.max() > a["input_ids"].shape[1] - 8
  assert (a["input_ids"][:, 0] == 101).all()  # [CLS]
  ex = s.examples["train"][0]
  decoded = s.tokenizer.decode(a["input_ids"][0, 1 : lengths[0] - 1])
  assert decoded.replace(" ", "") == ex["text"].lower().replace(" ", "")[: len(decoded.replace(" ", ""))]


def test_build_eval_scores_a_whole_file_with_the_run_labels(tmp_path, make_cfg, pair_tok_dir):
  rows = [{"text": "x", "label": "b"}, {"text": "yy", "label": 0}, {"text": "", "label": "a"}]
  cfg = make_cfg(kind="classification", tokenizer=pair_tok_dir, source="unused.jsonl",
                 label_names="b,a", class_weights="balanced", on_bad_row="skip", max_rows=1)
  s = data.build_eval(cfg, _jsonl(tmp_path / "score.jsonl", rows), tmp_path)
  assert list(s.splits) == ["eval"] and s.label_names == ("b", "a") and s.class_weights is None
  np.testing.assert_array_equal(s["eval"].arrays["labels"], [0, 0])  # 'b' is 0 in the run's order
  assert [e["row"] for e in s.examples["eval"]] == [1, 2]
  assert (tmp_path / "skipped_rows_eval.jsonl").read_text().count("\n") == 1
  assert not (tmp_path / "skipped_rows.jsonl").exists()


def _build_fixed(tmp_path, make_cfg, tok, train, num_labels, **kw):
  cfg = make_cfg(kind="classification", tokenizer=tok, split="1,0",
                 source=_jsonl(tmp_path / "train.jsonl", train),
                 validation_source=_jsonl(tmp_path / "val.jsonl", train[:2]), **kw)
  cfg.model.task, cfg.model.num_labels = "seq_cls", num_labels
  return data.build(cfg, tmp_path / "work")


def test_label_id_past_num_labels_names_its_row(tmp_path, make_cfg, pair_tok_dir):
  # A 3-class file on a 2-label model: before, the labels became 3 classes for a 2-way head.
  train = [{"text": "x", "label": 0}, {"text": "y", "label": 1}, {"text": "z", "label": 2},
           {"text": "w", "label": 1}]
  with pytest.raises(DataError, match=r"train\.jsonl, row 3: unknown label 2 .*model\.num_labels=2"):
    _build_fixed(tmp_path, make_cfg, pair_tok_dir, train, 2)
  s = _build_fixed(tmp_path, make_cfg, pair_tok_dir, train, 2, on_bad_row="skip")
  assert s.num_labels == 2 and s.label_names == ("0", "1") and s.stats["skipped"] == 1
  np.testing.assert_array_equal(s["train"].arrays["labels"], [0, 1, 1])


def test_named_labels_must_number_num_labels(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}, {"text": "z", "label": "c"}]
  with pytest.raises(DataError, match=r"train\.jsonl: the train split has 3 labels \(a, b, c\) but model\.num_labels=2"):
    _build_fixed(tmp_path, make_cfg, pair_tok_dir, train, 2)


def test_integer_labels_absent_from_train_still_get_their_class(tmp_path, make_cfg, pair_tok_dir):
  train = [{"text": "x", "label": 0}, {"text": "y", "label": 1}]
  s = _build_fixed(tmp_path, make_cfg, pair_tok_dir, train, 3)
  assert s.num_labels == 3 and s.label_names == ("0", "1", "2")



def test_decoder_classifier_pools_where_the_data_pads(causal_tok_dir):
  """The model's pad id becomes the one rows are padded with (the tokenizer's pad, else EOS):
  none in the config (HF would refuse batches of the export), or another id (a pad scored)."""
  import types

  from jaxtune import config as run_config
  from jaxtune.data import classification, load_tokenizer
  from jaxtune.models import decoder

  def model(pad_id):
    return types.SimpleNamespace(config=decoder.DecoderConfig(
      vocab_size=300, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
      num_kv_heads=1, head_dim=4, model_type="llama", pad_token_id=pad_id, num_labels=2))

  c = run_config.default()
  c.model.source, c.model.task = causal_tok_dir, "seq_cls"
  pad = classification.pad_token_id(load_tokenizer(causal_tok_dir))
  for before in (None, pad + 1, pad):
    m = model(before)
    classification.pool_where_data_pads(m, c)
    assert m.config.pad_token_id == pad
  c.model.source = "preset:tiny-llama"  # synthetic rows, no tokenizer: left alone
  m = model(None)
  classification.pool_where_data_pads(m, c)
  assert m.config.pad_token_id is None
