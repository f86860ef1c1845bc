"""Per-row confidence: data.weight_column weights the train loss, data.min_confidence drops rows.

The weighting is exact across micro-batches (weighted sums over the sum of weights of the whole
batch), a weight of 1 everywhere is today's loss bit for bit, and a missing or non-numeric value
is an error naming the key, the column and the rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import data, losses, step
from jaxtune.data.readers import DataError
from jaxtune.errors import ConfigError
from jaxtune.models import bert

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
import tiny  # noqa: E402

TRAIN = [{"text": "good day", "label": "pos", "confidence": 1.0},
         {"text": "bad day", "label": "neg", "confidence": "0.5"},  # CSV cells are strings
         {"text": "fine day", "label": "pos", "confidence": 0.25},
         {"text": "awful day", "label": "neg", "confidence": 0}]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _build(tmp_path, make_cfg, tok, train, **kw):
  tmp_path.mkdir(parents=True, exist_ok=True)
  cfg = make_cfg(kind="classification", tokenizer=tok, split="1,0",
                 source=_jsonl(tmp_path / "train.jsonl", train),
                 validation_source=_jsonl(tmp_path / "val.jsonl", TRAIN[:2]), **kw)
  return data.build(cfg, tmp_path / "work")


def test_weight_column_becomes_a_train_only_weight(tmp_path, make_cfg, pair_tok_dir):
  splits = _build(tmp_path, make_cfg, pair_tok_dir, TRAIN, weight_column="confidence")
  np.testing.assert_array_equal(splits["train"].arrays["weight"], [1.0, 0.5, 0.25, 0.0])
  assert "weight" not in splits["validation"].arrays  # scores stay unweighted
  assert splits.stats["train"]["weight_mean"] == 0.4375
  off = _build(tmp_path / "off", make_cfg, pair_tok_dir, TRAIN)
  assert "weight" not in off["train"].arrays


@pytest.mark.parametrize("value, message", [
  (None, r"data.weight_column='confidence': 2 rows have no value in column 'confidence' "
         r"\(.*train.jsonl rows 2, 4\); fill them, or set data.missing_confidence"),
  ("high", r"2 rows hold a value that is not a number >= 0 in column 'confidence' "
           r"\(.*train.jsonl rows 2, 4: 'high', 'high'\)"),
  (-1, r"not a number >= 0 .*rows 2, 4: -1, -1"),
  (True, r"not a number >= 0"),
])
def test_missing_or_bad_weights_name_key_column_and_rows(tmp_path, make_cfg, pair_tok_dir, value, message):
  rows = [dict(r) for r in TRAIN]
  for i in (1, 3):
    rows[i]["confidence"] = value
  with pytest.raises(DataError, match=message):
    _build(tmp_path, make_cfg, pair_tok_dir, rows, weight_column="confidence")


def test_missing_weights_take_missing_confidence_when_set(tmp_path, make_cfg, pair_tok_dir):
  rows = [dict(r) for r in TRAIN]
  rows[1]["confidence"] = ""
  del rows[2]["confidence"]
  splits = _build(tmp_path, make_cfg, pair_tok_dir, rows, weight_column="confidence",
                  missing_confidence="0.75")
  np.testing.assert_array_equal(splits["train"].arrays["weight"], [1.0, 0.75, 0.75, 0.0])
  with pytest.raises(DataError, match=r"data.weight_column='conf': no row has a column 'conf' "
                                      r"\(columns: confidence, label, text\)"):
    _build(tmp_path / "b", make_cfg, pair_tok_dir, TRAIN, weight_column="conf")


def test_min_confidence_drops_train_rows_under_it(tmp_path, make_cfg, pair_tok_dir):
  splits = _build(tmp_path, make_cfg, pair_tok_dir, TRAIN, min_confidence=0.5)
  assert [e["text"] for e in splits.examples["train"]] == ["good day", "bad day"]
  assert len(splits["validation"]) == 2
  dropped = [json.loads(x) for x in (tmp_path / "work" / "dropped_rows.jsonl").read_text().splitlines()]
  assert [(r["row"], r["step"], r["reason"]) for r in dropped] == [
    (3, "min_confidence", "confidence 0.25 < data.min_confidence=0.5"),
    (4, "min_confidence", "confidence 0 < data.min_confidence=0.5")]


def test_min_confidence_holds_with_every_later_step(tmp_path, make_cfg, pair_tok_dir):
  # clean used to restart from the rows as read, bringing back what min_confidence dropped.
  # (dedup is left out: validation holds copies of the kept rows, which it would drop as leaks)
  splits = _build(tmp_path, make_cfg, pair_tok_dir, TRAIN, min_confidence=0.5, clean=True,
                  balance="oversample")
  assert sorted(e["text"] for e in splits.examples["train"]) == ["bad day", "good day"]
  quality = splits.stats["quality"]
  assert quality["dropped_by_step"] == {"min_confidence": 2}
  assert quality["train_rows_after"] == len(splits["train"]) == 2


@pytest.mark.parametrize("key, value, message", [
  ("min_confidence", -0.1, "data.min_confidence=-0.1: expected a threshold >= 0"),
  ("missing_confidence", "lots", "data.missing_confidence='lots': expected ''"),
])
def test_bad_confidence_keys_are_config_errors(tmp_path, make_cfg, pair_tok_dir, key, value, message):
  with pytest.raises(ConfigError, match=message):
    _build(tmp_path, make_cfg, pair_tok_dir, TRAIN, **{key: value})


def _seq_cls_step(micro_batches):
  cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.5)
  graphdef, params = nnx.split(bert.Bert(cfg, task="seq_cls", rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  tx = optax.sgd(0.1)
  optim_cfg = tiny.get_config().optim
  scfg = step.StepConfig(task="seq_cls", micro_batches=micro_batches, skip_nonfinite=False,
                         optim_cfg=optim_cfg)
  state = step.init_state(params, tx, 0, optim_cfg)
  fn = jax.jit(lambda s, b: step.train_step(graphdef, tx, scfg, s, b))
  return graphdef, state, fn


def _batch(weight=None):
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 50, (8, 6)).astype(np.int32)
  b = {"input_ids": ids, "attention_mask": np.ones_like(ids),
       "labels": rng.integers(0, 3, 8).astype(np.int32)}
  if weight is not None:
    b["weight"] = np.asarray(weight, np.float32)
  return b


def test_weights_of_one_reproduce_the_unweighted_step_exactly():
  _, state, fn = _seq_cls_step(2)
  plain_state, plain = fn(jax.tree.map(np.array, state), _batch())
  ones_state, ones = fn(jax.tree.map(np.array, state), _batch(np.ones(8)))
  assert float(plain["train/loss"]) == float(ones["train/loss"])
  for x, y in zip(jax.tree.leaves(plain_state["params"]), jax.tree.leaves(ones_state["params"])):
    np.testing.assert_array_equal(x, y)


def test_weighted_loss_is_exact_across_micro_batches():
  w = np.array([1.0, 0.5, 0.0, 0.33, 1.0, 0.7, 0.2, 0.9], np.float32)
  graphdef, state, fn1 = _seq_cls_step(1)
  model = nnx.merge(graphdef, state["params"])
  b = _batch(w)
  logits = np.asarray(model(b["input_ids"], attention_mask=b["attention_mask"]), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -logp[np.arange(8), b["labels"]]
  expected = float((w * nll).sum() / w.sum())
  unweighted = float(nll.mean())
  results = {}
  for m in (1, 2, 4):
    _, st, fn = _seq_cls_step(m)
    new_state, metrics = fn(jax.tree.map(np.array, st), _batch(w))
    results[m] = (float(metrics["train/loss"]), new_state["params"])
  assert results[1][0] == pytest.approx(expected, rel=1e-5)
  assert abs(expected - unweighted) > 1e-3  # the weights matter in this batch
  for m in (2, 4):
    assert results[m][0] == pytest.approx(expected, rel=1e-5)
    for x, y in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[m][1])):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # The loss module on its own: weighted sum and weight sum.
  s, tot = losses.classification_loss(logits.astype(np.float32), {"labels": b["labels"], "weight": w})
  assert float(s) / float(tot) == pytest.approx(expected, rel=1e-5)
