"""Sentence-transformers directories: read their pooling and classifier head, write classifiers.

A BERT or MPNet classifier trained with `pooling='mean'` classifies the masked mean of the last
hidden states, which no transformers class computes (BertForSequenceClassification reads the
pooler on [CLS], MPNetForSequenceClassification its own head on <s>). It is exported as the
sentence-transformers pipeline that computes exactly that:

  modules.json                 0 Transformer (this directory, a BertModel or MPNetModel)
                                 -> 1 Pooling -> 2 Dense
  config.json, model.safetensors, tokenizer files   the encoder, bare base-model keys, id2label
  1_Pooling/config.json        mean over the attended tokens, nothing else
  2_Dense/config.json          in = hidden size, out = number of labels, identity activation
  2_Dense/model.safetensors    the classifier as `linear.weight` [L, D] and `linear.bias` [L]

so `SentenceTransformer(dir).encode(texts)` returns the logits. `read` finds the pooling a
directory declares and, for such a classifier, serves its head under the names the key maps
use (`classifier.weight`, `classifier.bias`), so `hf.load` reads it back. A Dense module is
taken for such a head when it has one output per label of the classifier being loaded; other modules
after the pooling (an embedding model's projection and normalisation, as in LaBSE) are left out
with a warning, and the classifier gets a fresh head on the encoder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from jaxtune.hf.errors import CheckpointError, read_json
from jaxtune.hf.safetensors_io import (
  SafetensorsSource,
  TensorSource,
  write_safetensors,
  write_sharded,
)

log = logging.getLogger(__name__)

MODULES = "modules.json"
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_DENSE = "sentence_transformers.models.Dense"
_IDENTITY = "torch.nn.modules.linear.Identity"
# 1_Pooling/config.json flags, and the jaxtune pooling each one alone means.
_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls_token",
          "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
          "pooling_mode_weightedmean_tokens": "weighted_mean", "pooling_mode_lasttoken": "last"}
_HEAD = {"classifier.weight": "linear.weight", "classifier.bias": "linear.bias"}


@dataclasses.dataclass(frozen=True)
class Pipeline:
  pooling: str  # 'mean', or the name of a mode jaxtune does not implement ('max', ...)
  pooling_file: Path
  head: TensorSource | None  # a Dense classifier after the pooling (jaxtune's export), or None


def read(path: Path, num_labels: int) -> Pipeline | None:
  """The pipeline `path/modules.json` declares, or None when it has none (a plain HF directory).

  `num_labels` is the classifier's label count: a Dense module with that many outputs is its head.
  """
  modules_file = path / MODULES
  if not modules_file.exists():
    return None
  modules = _json(modules_file)
  if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
    raise CheckpointError(f"{modules_file}: expected a list of modules")
  types = [m.get("type") for m in modules]
  if not types or types[0] != _TRANSFORMER or _POOLING not in types:
    raise CheckpointError(
      f"{modules_file}: expected a Transformer module first and a Pooling module; got {types}")
  pool_at = types.index(_POOLING)
  pooling_file = path / modules[pool_at].get("path", "") / "config.json"
  flags = _json(pooling_file)
  on = [_MODES.get(k, k) for k, v in flags.items() if k.startswith("pooling_mode") and v]
  if len(on) != 1:
    raise CheckpointError(f"{pooling_file}: expected exactly one pooling mode switched on, got {on}")
  head = None
  after = modules[pool_at + 1:]
  dense = {i: _json(path / m.get("path", "") / "config.json")
           for i, m in enumerate(after) if m.get("type") == _DENSE}
  # A Dense with one output per label is what jaxtune exports as the head, and is taken for it
  # whatever else is wrong with it (said below), so a damaged export fails instead of loading
  # with a fresh head.
  heads = [i for i, cfg in dense.items() if cfg.get("out_features") == num_labels]
  if heads:
    dense_dir = path / after[heads[0]].get("path", "")
    if len(after) != 1:
      raise CheckpointError(
        f"{modules_file}: a classifier head ({dense_dir.name}) must follow the Pooling module "
        f"directly; got {types}")
    cfg = dense[heads[0]]
    act = cfg.get("activation_function")
    if act != _IDENTITY or not cfg.get("bias", True):
      raise CheckpointError(
        f"{dense_dir / 'config.json'}: a classifier head is a Dense module with a bias and "
        f"activation {_IDENTITY}; got activation {act!r}, bias {cfg.get('bias')!r}")
    head = _Renamed(SafetensorsSource.from_dir(dense_dir), _HEAD, where=str(dense_dir))
  elif dense:
    # An embedding model's projection (LaBSE: Dense with Tanh, then Normalize) shapes vectors
    # for similarity search; a classifier reads the pooled encoder output, so they stay unused.
    log.warning("%s: %s after the pooling are not a classifier head and are not loaded; the "
                "classifier reads the encoder with a fresh head", modules_file,
                [m.get("path") or m.get("type") for m in after])
  return Pipeline(on[0], pooling_file, head)


def write(out: Path, tensors, *, prefix: str, hidden_size: int, num_labels: int,
          max_seq_length: int, **shard_kwargs) -> None:
  """Write the pipeline files around `tensors` (HF names of a BERT or MPNet seq_cls model, as
  exported, the encoder's keys under `prefix`, e.g. 'bert.').

  The encoder tensors go to `out/model.safetensors` with bare keys (BertModel, MPNetModel), the
  classifier to `2_Dense`; config.json and the tokenizer are the caller's.
  """
  head: dict[str, np.ndarray] = {}

  def encoder():
    for name, arr in tensors:
      if name in _HEAD:
        head[_HEAD[name]] = arr
      else:
        yield name.removeprefix(prefix), arr

  write_sharded(out, encoder(), **shard_kwargs)
  if set(head) != set(_HEAD.values()):
    raise ValueError(f"sentence-transformers export: the model has no classifier (got {sorted(head)})")
  (out / "2_Dense").mkdir(exist_ok=True)
  write_safetensors(out / "2_Dense" / "model.safetensors", head)
  _write_json(out / "2_Dense" / "config.json", {
    "in_features": hidden_size, "out_features": num_labels, "bias": True,
    "activation_function": _IDENTITY})
  (out / "1_Pooling").mkdir(exist_ok=True)
  flags = {k: k == "pooling_mode_mean_tokens" for k in _MODES}
  _write_json(out / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden_size, **flags})
  _write_json(out / MODULES, [
    {"idx": 0, "name": "0", "path": "", "type": _TRANSFORMER},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING},
    {"idx": 2, "name": "2", "path": "2_Dense", "type": _DENSE},
  ])
  _write_json(out / "sentence_bert_config.json",
              {"max_seq_length": max_seq_length, "do_lower_case": False})


class _Renamed(TensorSource):
  """`source`'s tensors under other names ({new: old})."""

  def __init__(self, source: TensorSource, names: dict[str, str], *, where: str):
    missing = sorted(old for old in names.values() if old not in source.names())
    if missing:
      raise CheckpointError(f"{where}: missing tensor(s) {missing}")
    self._source, self._old = source, names

  def names(self) -> set[str]:
    return set(self._old)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._source.shape(self._old[name])

  def get(self, name: str) -> np.ndarray:
    return self._source.get(self._old[name])

  def file_of(self, name: str) -> str:
    return f"{self._source.file_of(self._old[name])} ({self._old[name]})"


class Merged(TensorSource):
  """Several sources as one; a name in two of them is an error naming both files."""

  def __init__(self, *sources: TensorSource):
    self._where: dict[str, TensorSource] = {}
    for s in sources:
      for name in s.names():
        if name in self._where:
          raise CheckpointError(
            f"tensor {name!r} appears in both {self._where[name].file_of(name)} and {s.file_of(name)}")
        self._where[name] = s

  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)

  def file_of(self, name: str) -> str:
    return self._where[name].file_of(name)


def _json(path: Path):
  return read_json(path, missing=f"not found (a module that {MODULES} names)")


def _write_json(path: Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2) + "\n")
