"""Host-to-device prefetch: build and transfer the next batches while the current step runs.

The driver's batch for step s is a pure function of s (`Batcher.host_batch(s)` then
`pipeline.to_device`), so a background thread can compute steps s+1..s+depth ahead without
changing what any step sees: a resumed run asks for the same steps and gets the same arrays.
The accelerator then never waits for host-side batching or the host-to-device copy, which
otherwise sit between two steps because the loop dispatches each step only after its batch is
on the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from jaxtune.data import pipeline

T = TypeVar("T")


class Prefetcher(Generic[T]):
  """`fetch(s)` for s = start, start+1, ... < stop, computed up to `depth` steps ahead.

  Read with `get(s)` in increasing order of s (each step once). `depth=0` fetches in the
  caller's thread, when asked. An exception inside `fetch` is re-raised by the `get` of its step.
  Use as a context manager (or call `close`) so the thread stops when the loop ends early.
  """

  def __init__(self, fetch: Callable[[int], T], start: int, stop: int, depth: int = 2):
    if depth < 0:
      raise ValueError(f"prefetch: depth must be >= 0, got {depth}")
    self._fetch, self._next, self._stop = fetch, start, stop
    self._thread = None
    if depth and start < stop:
      self._queue: queue.Queue = queue.Queue(maxsize=depth)
      self._closing = threading.Event()
      self._thread = threading.Thread(target=self._work, args=(start,), daemon=True,
                                      name="jaxtune-prefetch")
      self._thread.start()

  def _work(self, s: int) -> None:
    while s < self._stop and not self._closing.is_set():
      try:
        item = (s, self._fetch(s), None)
      except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
        item = (s, None, e)
      while not self._closing.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return
      s += 1

  def get(self, s: int) -> T:
    if s != self._next or s >= self._stop:
      raise ValueError(f"prefetch: asked for step {s}, expected step {self._next} (< {self._stop})")
    self._next += 1
    if self._thread is None:
      return self._fetch(s)
    got, value, error = self._queue.get()
    if error is not None:
      raise error
    assert got == s, (got, s)  # the worker produces steps in order
    return value

  def close(self) -> None:
    if self._thread is None:
      return
    self._closing.set()
    self._thread.join()
    self._thread = None

  def __enter__(self) -> Prefetcher[T]:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class StaticBatches:
  """Train batches that are a pure function of the step (`pipeline.Batcher.host_batch`), built
  and copied to the device on a thread ahead of the running step (`jaxtune.data.prefetch`):
  a resumed run asks for the same steps and gets the same arrays."""

  DEPTH = 2  # batches built ahead of the running step

  def __init__(self, batcher, mesh):
    self.batcher = batcher
    self.shardings = pipeline.batch_shardings(mesh, batcher.host_batch(0))
    self._prefetch = None

  def stream(self, start: int, stop: int, writer=None) -> StaticBatches:
    """Steps start..stop-1, read in order with `get`; use as a context manager."""
    self._prefetch = Prefetcher(
      lambda i: pipeline.to_device(self.batcher.host_batch(i), self.shardings), start, stop,
      depth=self.DEPTH)
    return self

  def get(self, s: int, state: dict) -> dict:
    """Step `s`'s device batch (`state`, the train state before the step, is not needed)."""
    return self._prefetch.get(s)

  def evaluate(self, params, ds):
    """None: the driver evaluates with the objective's `eval_sums` (`jaxtune.evaluate`)."""
    return None

  def __enter__(self) -> StaticBatches:
    return self

  def __exit__(self, *exc) -> None:
    if self._prefetch is not None:
      self._prefetch.close()
