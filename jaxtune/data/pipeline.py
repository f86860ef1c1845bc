"""Deterministic, resumable batching of a tokenized data set held in host memory.

A batch is a pure function of (seed, step): the epoch's permutation comes from the seed and the
epoch number, so a resumed run recomputes exactly the batches it would have seen, with no
iterator state to save. Each process builds only its own rows of the global batch.

Length buckets (`train.length_buckets`): rows are padded to the data set's longest example, but
short-text tasks (sentiment snippets average 27 of 64 tokens) then spend most of each step on
padding. With buckets, each epoch's shuffled rows are cut into groups of 32 batches, sorted by
length inside a group, batched, and the batches shuffled again; every batch is trimmed to the
smallest bucket length that holds its longest row. There is one compilation per bucket used,
and batches stay a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxtune import sharding
from jaxtune.errors import ConfigError

# Per-token arrays are [N, T]; per-example arrays (labels, weights) are [N].
TOKEN_KEYS = ("input_ids", "attention_mask", "loss_mask", "positions", "segment_ids", "token_type_ids")


@dataclasses.dataclass
class Dataset:
  """Fixed-length examples as numpy arrays, all with the same leading dimension."""

  arrays: dict[str, np.ndarray]

  def __post_init__(self):
    sizes = {k: len(v) for k, v in self.arrays.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"dataset arrays differ in length: {sizes}")

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def take(self, idx: np.ndarray) -> Dataset:
    return Dataset({k: v[idx] for k, v in self.arrays.items()})

  def fingerprint(self) -> str:
    h = hashlib.sha256()
    for k in sorted(self.arrays):
      h.update(k.encode())
      h.update(np.ascontiguousarray(self.arrays[k]).tobytes())
    return h.hexdigest()[:16]

  def num_tokens(self) -> int:
    m = self.arrays.get("attention_mask")
    return int(m.sum()) if m is not None else int(self.arrays["input_ids"].size)

  def row_lengths(self) -> np.ndarray:
    """Tokens up to and including each row's last real one (right padding; else the width)."""
    ids = self.arrays["input_ids"]
    m = self.arrays.get("attention_mask")
    if m is None:
      return np.full(len(ids), ids.shape[1], np.int64)
    last = ids.shape[1] - np.argmax(m[:, ::-1] != 0, axis=1)
    return np.where(m.any(axis=1), last, 1)


@dataclasses.dataclass
class Splits:
  """Named splits plus what the model and loss need to know about the labels."""

  splits: dict[str, Dataset]
  num_labels: int | None = None
  label_names: tuple[str, ...] = ()
  class_weights: tuple[float, ...] | None = None
  # split -> the original rows (text, label, origin), indexed by the `example_id` array.
  examples: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
  stats: dict = dataclasses.field(default_factory=dict)  # rows read, skipped, truncated, ...
  tokenizer: object = None

  def __getitem__(self, name: str) -> Dataset:
    if name not in self.splits:
      raise KeyError(f"no {name!r} split; have {sorted(self.splits)}")
    return self.splits[name]

  def __contains__(self, name: str) -> bool:
    return name in self.splits


def bucket_lengths(width: int, n: int) -> tuple[int, ...]:
  """`n` trim lengths up to `width`, evenly spaced and rounded up to multiples of 8."""
  if n <= 1:
    return (width,)
  cuts = {min(width, -(-round(width * (i + 1) / n) // 8) * 8) for i in range(n)}
  return tuple(sorted(cuts | {width}))


def trim(batch: dict[str, np.ndarray], longest: int, buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Per-token arrays cut to the smallest bucket that holds `longest` tokens."""
  length = next(b for b in buckets if b >= longest)
  return {k: v[:, :length] if k in TOKEN_KEYS else v for k, v in batch.items()}


class Batcher:
  """Global batches for training steps: shuffled each epoch, last partial batch dropped."""

  GROUP = 32  # batches sorted together by length when bucketing

  def __init__(self, data: Dataset, global_batch: int, seed: int, *, shuffle: bool = True,
               length_buckets: int = 0):
    if len(data) < global_batch:
      raise ConfigError(
        f"train.batch_size={global_batch} is larger than the training set ({len(data)} examples): "
        "lower train.batch_size or give more training data"
      )
    self.data = data
    self.global_batch = global_batch
    self.seed = seed
    self.shuffle = shuffle
    self.steps_per_epoch = len(data) // global_batch
    self.buckets = bucket_lengths(data.arrays["input_ids"].shape[1], length_buckets) if length_buckets else ()
    self.lengths = data.row_lengths() if self.buckets else None
    self._epoch_batches: tuple[int, np.ndarray] | None = None

  def position(self, step: int) -> dict:
    return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch}

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if self.buckets:
      return self._bucketed(epoch)[i]
    order = np.arange(len(self.data))
    if self.shuffle:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
    return order[i * self.global_batch : (i + 1) * self.global_batch]

  def _bucketed(self, epoch: int) -> np.ndarray:
    """[steps_per_epoch, global_batch] row indices of one epoch, batches of similar length."""
    if self._epoch_batches is not None and self._epoch_batches[0] == epoch:
      return self._epoch_batches[1]
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.data)) if self.shuffle else np.arange(len(self.data))
    order = order[: self.steps_per_epoch * self.global_batch]
    group = self.GROUP * self.global_batch
    for start in range(0, len(order), group):
      chunk = order[start : start + group]
      order[start : start + group] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
    batches = order.reshape(self.steps_per_epoch, self.global_batch)
    if self.shuffle:
      batches = batches[rng.permutation(self.steps_per_epoch)]
    self._epoch_batches = (epoch, batches)
    return batches

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step`."""
    idx = self.indices(step)
    n = jax.process_count()
    per = self.global_batch // n
    mine = idx[jax.process_index() * per : (jax.process_index() + 1) * per]
    batch = self.data.take(mine).arrays
    if self.buckets:
      # The global batch's longest row picks the length, so every process trims alike.
      batch = trim(batch, int(self.lengths[idx].max()), self.buckets)
    return batch


def batch_shardings(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, NamedSharding]:
  """Leading (batch) dimension over data and fsdp, the rest replicated."""
  return {
    k: sharding.named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1), (v.shape[0] * jax.process_count(),) + v.shape[1:])
    for k, v in batch.items()
  }


def to_device(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
  """Assemble global arrays from every process's local rows."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def eval_batches(data: Dataset, batch_size: int, buckets: tuple[int, ...] = ()):
  """Fixed-size batches covering every example once; the last is padded and flagged by `valid`.

  With `buckets`, each batch is trimmed to the bucket of its longest row (sort `data` by length
  first, see `length_order`, for the trimming to pay).
  """
  n = len(data)
  lengths = data.row_lengths() if buckets else None
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.minimum(idx, n - 1)
    part = data.take(idx).arrays
    if buckets:
      part = trim(part, int(lengths[idx].max()), buckets)
    part["valid"] = valid
    yield part


def length_order(data: Dataset) -> np.ndarray:
  """Row indices from shortest to longest (stable), for bucketed evaluation."""
  return np.argsort(data.row_lengths(), kind="stable")
