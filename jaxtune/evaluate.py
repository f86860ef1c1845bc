"""Evaluation over a whole split: batched jitted forward passes, metrics on the host.

Used by the driver during and after training, and by `jaxtune eval` on any data file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
from etils import epath

from jaxtune import objectives
from jaxtune.data import pipeline


def evaluate(eval_fn, params, frozen, ds: pipeline.Dataset, *, task: str, mesh, batch_size: int,
             label_names=(), length_buckets: int = 0) -> tuple[dict, dict]:
  """(metrics, details); details hold per-example predictions for classification, in `ds` order.

  `length_buckets` > 0 evaluates rows sorted by length in batches trimmed to bucket lengths
  (one compilation per bucket); the details are put back in the data set's order.
  """
  order, batches = device_batches(ds, mesh, batch_size, length_buckets)
  sums = Sums()
  for b, dev in batches:
    sums.add(jax.device_get(eval_fn(params, frozen, dev)), b)
  return sums.result(task, label_names, order)


def device_batches(ds: pipeline.Dataset, mesh, batch_size: int, length_buckets: int = 0):
  """(order, iterator of (host batch, device batch)): `order` is the length sort (or None) that
  `Sums.result` undoes."""
  order, buckets = None, ()
  if length_buckets:
    order = pipeline.length_order(ds)
    buckets = pipeline.bucket_lengths(ds.arrays["input_ids"].shape[1], length_buckets)
    ds = ds.take(order)
  data_ways = math.prod(mesh.shape[a] for a in ("data", "fsdp"))

  def batches():
    shard = None
    for b in pipeline.eval_batches(ds, batch_size, buckets):
      if shard is None and batch_size % (data_ways * jax.process_count()) == 0:
        shard = pipeline.batch_shardings(mesh, b)
      if shard:
        # Each process contributes its own rows of the (identical, deterministic) global batch.
        n, i = jax.process_count(), jax.process_index()
        per = batch_size // n
        yield b, pipeline.to_device({k: v[i * per:(i + 1) * per] for k, v in b.items()}, shard)
      else:
        yield b, jax.device_put(b)

  return order, batches()


class Sums:
  """One model's evaluation outputs, batch by batch (host arrays), then its metrics. A vmapped
  population keeps one per member over the same batches."""

  def __init__(self):
    self.loss_sum = self.weight = 0.0
    self.preds, self.labels, self.ids, self.probs = [], [], [], []
    self.extras: dict[str, list[float]] = {}  # name -> [sum, weight] (Objective.eval_sums)

  def add(self, out: dict, b: dict) -> None:
    self.loss_sum += float(out["loss_sum"])
    self.weight += float(out["weight"])
    for name, (s, w) in out.get("extras", {}).items():
      acc = self.extras.setdefault(name, [0.0, 0.0])
      acc[0] += float(s)
      acc[1] += float(w)
    if "predictions" in out:
      valid = b["valid"]
      self.preds.append(out["predictions"][valid])
      self.labels.append(b["labels"][valid])
      self.probs.append(jax.nn.softmax(out["logits"][valid], axis=-1))
      if "example_id" in b:
        self.ids.append(b["example_id"][valid])

  def extra_means(self) -> dict[str, float]:
    """Each extra's sum over its weight across the split."""
    return {name: s / max(w, 1e-12) for name, (s, w) in self.extras.items()}

  def result(self, task: str, label_names=(), order=None) -> tuple[dict, dict]:
    """(metrics, details) by the objective of `task`; `order` (a length sort) is undone."""
    return objectives.for_task(task).metrics(self, label_names, order)


def write_errors(path: str | Path, details: dict, examples: list[dict] | None, label_names) -> int:
  """Misclassified examples, one JSON object per line, most confident mistakes first."""
  if not details:
    return 0
  wrong = np.nonzero(details["predictions"] != details["labels"])[0]
  conf = details["probs"][wrong, details["predictions"][wrong]]
  rows = []
  for i, c in sorted(zip(wrong, conf), key=lambda t: -t[1]):
    row = {
      "label": label_names[int(details["labels"][i])],
      "predicted": label_names[int(details["predictions"][i])],
      "confidence": round(float(c), 4),
    }
    if details["example_id"] is not None and examples:
      row.update(examples[int(details["example_id"][i])])
    rows.append(row)
  with epath.Path(path).open("w", encoding="utf-8") as f:  # also gs:// workdirs
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
  return len(rows)
