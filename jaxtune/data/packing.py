"""Variable-length token documents -> fixed-length rows: one per row (`pad`) or several (`pack`).

Both layouts carry the same arrays, so the model and loss need no special case:
- input_ids, loss_mask (1 = this token is a training target), attention_mask (1 = real token);
- segment_ids: 1..k for the k documents of a row, 0 for padding. The models attend only
  within a segment, and `losses.target_mask` drops the target that crosses a boundary, so
  packed documents never see each other;
- positions: restarting at 0 for each document, as if it were alone in its row (0 on padding);
- example_id: [N] (the row's document) when padded; [N, T] per token (-1 on padding) when
  packed, since a packed row holds several documents.

Packing is best-fit decreasing (longest documents first, each into the fullest row it still
fits): deterministic, and within a few percent of the optimal row count on text data.
Documents longer than the row are truncated and counted.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np


@dataclasses.dataclass
class Document:
  input_ids: np.ndarray  # [L] int32
  loss_mask: np.ndarray  # [L] int32
  example_id: int


def _truncate(docs: list[Document], length: int) -> tuple[list[Document], int]:
  out, cut = [], 0
  for doc in docs:
    if len(doc.input_ids) > length:
      cut += 1
      doc = Document(doc.input_ids[:length], doc.loss_mask[:length], doc.example_id)
    out.append(doc)
  return out, cut


def _empty(rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
  z = lambda: np.zeros((rows, length), np.int32)
  return {"input_ids": np.full((rows, length), pad_id, np.int32), "attention_mask": z(),
          "loss_mask": z(), "positions": z(), "segment_ids": z()}


def pad(docs: list[Document], length: int, pad_id: int) -> tuple[dict[str, np.ndarray], int]:
  """One document per row, right-padded to `length`; (arrays, number truncated)."""
  docs, cut = _truncate(docs, length)
  a = _empty(len(docs), length, pad_id)
  for i, doc in enumerate(docs):
    n = len(doc.input_ids)
    a["input_ids"][i, :n] = doc.input_ids
    a["loss_mask"][i, :n] = doc.loss_mask
    a["attention_mask"][i, :n] = 1
    a["segment_ids"][i, :n] = 1
    a["positions"][i, :n] = np.arange(n)
  a["example_id"] = np.asarray([d.example_id for d in docs], np.int32)
  return a, cut


def assign(lengths: list[int], capacity: int) -> list[list[int]]:
  """Best-fit decreasing: the document indices of each row (every length <= capacity)."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  rows: list[list[int]] = []
  free: list[tuple[int, int]] = []  # (space left, row), sorted: bisect finds the tightest fit
  for i in order:
    size = lengths[i]
    j = bisect.bisect_left(free, (size, -1))
    if j == len(free):
      r, space = len(rows), capacity
      rows.append([])
    else:
      space, r = free.pop(j)
    rows[r].append(i)
    if space - size > 0:
      bisect.insort(free, (space - size, r))
  return rows


def pack(docs: list[Document], length: int, pad_id: int) -> tuple[dict[str, np.ndarray], int]:
  """Several documents per row of `length` tokens; (arrays, number truncated)."""
  docs, cut = _truncate(docs, length)
  rows = assign([len(d.input_ids) for d in docs], length)
  a = _empty(len(rows), length, pad_id)
  a["example_id"] = np.full((len(rows), length), -1, np.int32)
  for r, members in enumerate(rows):
    at = 0
    for seg, i in enumerate(sorted(members), 1):
      doc = docs[i]
      n = len(doc.input_ids)
      a["input_ids"][r, at : at + n] = doc.input_ids
      a["loss_mask"][r, at : at + n] = doc.loss_mask
      a["segment_ids"][r, at : at + n] = seg
      a["positions"][r, at : at + n] = np.arange(n)
      a["example_id"][r, at : at + n] = doc.example_id
      at += n
    a["attention_mask"][r, :at] = 1
  return a, cut
