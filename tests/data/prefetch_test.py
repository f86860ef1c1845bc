"""Prefetch: the same batches, in the same order, with and without the background thread."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from jaxtune import sharding
from jaxtune.data import pipeline, prefetch
from tests.data.pipeline_test import ragged


@pytest.mark.parametrize("buckets", [0, 3])
def test_batches_identical_with_and_without_prefetch(buckets):
  mesh = sharding.make_mesh(data=-1)
  ds = ragged(96, 24)

  def driver_batches(depth: int, start: int, stop: int) -> list[dict]:
    batcher = pipeline.Batcher(ds, 16, seed=5, length_buckets=buckets)
    sh = pipeline.batch_shardings(mesh, batcher.host_batch(0))
    fetch = lambda s: pipeline.to_device(batcher.host_batch(s), sh)  # noqa: E731 - as train.py
    with prefetch.Prefetcher(fetch, start, stop, depth=depth) as p:
      return [p.get(s) for s in range(start, stop)]

  plain = driver_batches(0, 0, 14)  # more than two epochs of 6 steps
  ahead = driver_batches(3, 0, 14)
  resumed = driver_batches(2, 9, 14)  # a run resumed at step 9
  for want, got in zip(plain, ahead, strict=True):
    assert want.keys() == got.keys()
    for k in want:
      assert got[k].sharding == want[k].sharding
      np.testing.assert_array_equal(jax.device_get(got[k]), jax.device_get(want[k]))
  for want, got in zip(plain[9:], resumed, strict=True):
    for k in want:
      np.testing.assert_array_equal(jax.device_get(got[k]), jax.device_get(want[k]))


def test_runs_ahead_but_no_further_than_depth():
  calls = []
  p = prefetch.Prefetcher(lambda s: calls.append(s) or s * 10, 0, 100, depth=2)
  time.sleep(0.3)
  # Two queued, one more computed and waiting for room.
  assert calls == [0, 1, 2]
  assert [p.get(s) for s in range(3)] == [0, 10, 20]
  p.close()
  assert not any(t.name == "jaxtune-prefetch" and t.is_alive() for t in threading.enumerate())


def test_steps_must_be_read_in_order():
  with prefetch.Prefetcher(lambda s: s, 4, 8, depth=1) as p:
    assert p.get(4) == 4
    with pytest.raises(ValueError, match="asked for step 6, expected step 5"):
      p.get(6)
  with pytest.raises(ValueError, match="depth must be >= 0"):
    prefetch.Prefetcher(lambda s: s, 0, 1, depth=-1)


def test_error_in_fetch_raised_at_its_step():
  def fetch(s):
    if s == 2:
      raise KeyError("row 2")
    return s

  with prefetch.Prefetcher(fetch, 0, 5, depth=2) as p:
    assert p.get(0) == 0 and p.get(1) == 1
    with pytest.raises(KeyError, match="row 2"):
      p.get(2)


def test_close_stops_a_blocked_worker_early():
  p = prefetch.Prefetcher(lambda s: s, 0, 10**9, depth=1)
  assert p.get(0) == 0
  t = time.perf_counter()
  p.close()
  assert time.perf_counter() - t < 2
