"""Batching: deterministic resumable batches, and length buckets that never cut real tokens."""

import jax
import numpy as np
import pytest

from jaxtune import evaluate, sharding
from jaxtune.data import pipeline


def ragged(n: int, width: int, seed: int = 0) -> pipeline.Dataset:
  """Right-padded rows of random lengths 1..width; ids > 0 on real tokens."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, width + 1, n)
  mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(1, 100, (n, width)).astype(np.int32) * mask
  return pipeline.Dataset({"input_ids": ids, "attention_mask": mask,
                           "labels": (lengths % 2).astype(np.int32),
                           "example_id": np.arange(n, dtype=np.int32)})


def test_bucket_lengths():
  assert pipeline.bucket_lengths(64, 4) == (16, 32, 48, 64)
  assert pipeline.bucket_lengths(64, 1) == (64,)
  assert pipeline.bucket_lengths(20, 3) == (8, 16, 20)


def test_row_lengths_right_padding():
  ds = ragged(50, 24)
  np.testing.assert_array_equal(ds.row_lengths(), ds.arrays["attention_mask"].sum(1))


@pytest.mark.parametrize("buckets", [0, 3])
def test_every_row_once_per_epoch_and_resumable(buckets):
  ds = ragged(200, 32)
  b = pipeline.Batcher(ds, 16, seed=3, length_buckets=buckets)
  epoch = np.concatenate([b.indices(s) for s in range(b.steps_per_epoch)])
  assert len(set(epoch.tolist())) == len(epoch) == b.steps_per_epoch * 16
  # A fresh batcher (a resumed run) gives the same batch for the same step.
  fresh = pipeline.Batcher(ds, 16, seed=3, length_buckets=buckets)
  for s in (0, 5, b.steps_per_epoch + 2):
    for k, v in b.host_batch(s).items():
      np.testing.assert_array_equal(v, fresh.host_batch(s)[k])
  assert not np.array_equal(b.indices(0), b.indices(b.steps_per_epoch))  # epochs reshuffle


def test_buckets_trim_padding_only():
  ds = ragged(512, 64)
  b = pipeline.Batcher(ds, 16, seed=0, length_buckets=4)
  widths, padded, plain = set(), 0, 0
  for s in range(b.steps_per_epoch):
    batch = b.host_batch(s)
    width = batch["input_ids"].shape[1]
    widths.add(width)
    assert width in (16, 32, 48, 64)
    full = ds.take(b.indices(s)).arrays
    # Nothing real is cut: the trimmed columns are all padding, the kept ones unchanged.
    assert full["attention_mask"][:, width:].sum() == 0
    np.testing.assert_array_equal(full["input_ids"][:, :width], batch["input_ids"])
    np.testing.assert_array_equal(full["labels"], batch["labels"])
    padded += batch["input_ids"].size
    plain += full["input_ids"].size
  assert len(widths) > 1
  assert padded < 0.75 * plain  # sorting within groups makes most batches narrow


def test_bucketed_evaluation_matches_and_keeps_order():
  ds = ragged(300, 40, seed=1)

  def eval_fn(params, frozen, batch):
    # A "model" whose prediction depends on every real token: trimming must not change it.
    score = (batch["input_ids"] * batch["attention_mask"]).sum(1)
    logits = jax.numpy.stack([score % 7, 3 - score % 5], axis=1).astype(np.float32)
    return {"loss_sum": score.sum().astype(np.float32) * 0 + batch["valid"].sum(),
            "weight": batch["valid"].sum().astype(np.float32),
            "predictions": logits.argmax(1), "logits": logits}

  mesh = sharding.make_mesh(data=1, fsdp=1, tensor=1)
  run = lambda n: evaluate.evaluate(eval_fn, None, None, ds, task="seq_cls", mesh=mesh,
                                    batch_size=32, length_buckets=n)
  (m0, d0), (m4, d4) = run(0), run(4)
  assert m0 == m4
  for k in ("predictions", "labels", "example_id"):
    np.testing.assert_array_equal(d0[k], d4[k])
  np.testing.assert_array_equal(d4["example_id"], np.arange(300))
