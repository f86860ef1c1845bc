"""Deterministic, resumable batching of a tokenized data set held in host memory.

A batch is a pure function of (seed, step): the epoch's permutation comes from the seed and the
epoch number, so a resumed run recomputes exactly the batches it would have seen, with no
iterator state to save. Each process builds only its own rows of the global batch.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxtune import sharding

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


class Batcher:
  """Global batches for training steps: shuffled each epoch, last partial batch dropped."""

  def __init__(self, data: Dataset, global_batch: int, seed: int, *, shuffle: bool = True):
    if len(data) < global_batch:
      raise ValueError(
        f"train.batch_size={global_batch} is larger than the training set ({len(data)} examples)"
      )
    self.data = data
    self.global_batch = global_batch
    self.seed = seed
    self.shuffle = shuffle
    self.steps_per_epoch = len(data) // global_batch

  def position(self, step: int) -> dict:
    return {"epoch": step // self.steps_per_epoch, "batch_in_epoch": step % self.steps_per_epoch}

  def indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    order = np.arange(len(self.data))
    if self.shuffle:
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
    return order[i * self.global_batch : (i + 1) * self.global_batch]

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch for `step`."""
    idx = self.indices(step)
    n = jax.process_count()
    per = self.global_batch // n
    idx = idx[jax.process_index() * per : (jax.process_index() + 1) * per]
    return self.data.take(idx).arrays


def batch_shardings(mesh: Mesh, batch: dict[str, np.ndarray]) -> dict[str, NamedSharding]:
  """Leading (batch) dimension over data and fsdp, the rest replicated."""
  return {
    k: sharding.named_sharding(mesh, ("batch",) + (None,) * (v.ndim - 1), (v.shape[0] * jax.process_count(),) + v.shape[1:])
    for k, v in batch.items()
  }


def to_device(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
  """Assemble global arrays from every process's local rows."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def eval_batches(data: Dataset, batch_size: int):
  """Fixed-size batches covering every example once; the last is padded and flagged by `valid`."""
  n = len(data)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    part = data.take(np.minimum(idx, n - 1)).arrays
    part["valid"] = valid
    yield part
