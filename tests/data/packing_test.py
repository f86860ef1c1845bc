"""Packing: documents share rows without seeing each other, and no token is lost."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune import losses
from jaxtune.data import packing
from jaxtune.data.packing import Document


def _docs(lengths, seed=0, vocab=250):
  rng = np.random.default_rng(seed)
  return [Document(rng.integers(1, vocab, n).astype(np.int32), rng.integers(0, 2, n).astype(np.int32), i)
          for i, n in enumerate(lengths)]


def _unpack(a):
  """{example_id: (input_ids, loss_mask, positions)} read back from packed rows."""
  out = {}
  for r in range(a["input_ids"].shape[0]):
    for seg in np.unique(a["segment_ids"][r]):
      if seg == 0:
        continue
      m = a["segment_ids"][r] == seg
      ids = set(a["example_id"][r, m].tolist())
      assert len(ids) == 1, "one document per segment"
      eid = ids.pop()
      assert eid not in out, "each document once"
      out[eid] = (a["input_ids"][r, m], a["loss_mask"][r, m], a["positions"][r, m])
  return out


def test_assign_fills_rows_without_overflow():
  lengths = [5, 9, 3, 7, 2, 8, 1, 6, 4, 10, 10, 3]
  rows = packing.assign(lengths, 10)
  assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
  assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
  assert len(rows) == 7  # 68 tokens: 7 rows is the fewest possible


def test_pack_keeps_documents_apart_and_loses_no_tokens():
  docs = _docs([5, 17, 3, 30, 12, 1, 8, 32, 2, 9, 14, 6])
  a, cut = packing.pack(docs, 32, pad_id=0)
  assert cut == 0
  assert len(a["input_ids"]) < len(docs)  # packed, not one per row
  back = _unpack(a)
  assert sorted(back) == list(range(len(docs)))
  for d in docs:
    ids, mask, pos = back[d.example_id]
    np.testing.assert_array_equal(ids, d.input_ids)
    np.testing.assert_array_equal(mask, d.loss_mask)
    np.testing.assert_array_equal(pos, np.arange(len(d.input_ids)))  # restarts per document
  seg = a["segment_ids"]
  for r in range(len(seg)):
    used = seg[r][seg[r] > 0]
    k = used.max()
    np.testing.assert_array_equal(np.unique(used), np.arange(1, k + 1))  # 1..k, contiguous blocks
    assert (np.diff(used) >= 0).all()
    n = len(used)
    assert (seg[r, n:] == 0).all() and (a["attention_mask"][r] == (seg[r] > 0)).all()
    assert (a["loss_mask"][r, n:] == 0).all() and (a["example_id"][r, n:] == -1).all()
  assert a["attention_mask"].sum() == sum(len(d.input_ids) for d in docs)


def test_loss_never_crosses_a_document_boundary():
  docs = [Document(np.arange(1, 5, dtype=np.int32), np.ones(4, np.int32), 0),
          Document(np.arange(5, 8, dtype=np.int32), np.ones(3, np.int32), 1)]
  a, _ = packing.pack(docs, 8, pad_id=0)
  assert a["input_ids"].shape == (1, 8)
  mask = np.asarray(losses.target_mask({k: jnp.asarray(v) for k, v in a.items()}))
  # Targets are tokens 1..T-1: doc0's tokens 1-3, not doc1's first token, doc1's tokens 1-2.
  starts = np.flatnonzero((a["positions"][0] == 0) & (a["segment_ids"][0] > 0))
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 0, 1, 1, 0])
  assert set(starts.tolist()) == {0, 4}


def test_long_documents_are_truncated_and_counted():
  docs = _docs([40, 3, 12])
  a, cut = packing.pack(docs, 16, pad_id=0)
  assert cut == 1
  back = _unpack(a)
  np.testing.assert_array_equal(back[0][0], docs[0].input_ids[:16])
  p, cut = packing.pad(docs, 16, pad_id=0)
  assert cut == 1 and p["input_ids"].shape == (3, 16)
  np.testing.assert_array_equal(p["example_id"], [0, 1, 2])
  np.testing.assert_array_equal(p["segment_ids"][1], [1, 1, 1] + [0] * 13)


def test_packed_row_gives_each_document_the_logits_it_has_alone():
  from flax import nnx

  presets = pytest.importorskip("jaxtune.models.presets")
  model = presets.init("tiny-llama")
  docs = _docs([7, 5, 11], seed=3)
  packed, _ = packing.pack(docs, 24, pad_id=0)
  alone, _ = packing.pad(docs, 24, pad_id=0)
  assert packed["input_ids"].shape[0] == 1
  # One batch: the packed row, then each document alone in its own padded row.
  keys = ("input_ids", "attention_mask", "positions", "segment_ids")
  batch = {k: jnp.asarray(np.concatenate([packed[k], alone[k]])) for k in keys}
  logits = nnx.jit(lambda m, b: m(b["input_ids"], b["attention_mask"], positions=b["positions"],
                                  segment_ids=b["segment_ids"]))(model, batch)
  logits = np.asarray(logits)
  for i, d in enumerate(docs):
    where = packed["example_id"][0] == d.example_id
    np.testing.assert_allclose(logits[0, where], logits[1 + i, : len(d.input_ids)], atol=1e-4, rtol=1e-4)
