"""Exact and near duplicates within a split, and leaks between splits; the first copy is kept.

Exact: equal `text.dedup_key` (same characters up to NFKC and spacing). Near: exact Jaccard of
character n-gram sets >= threshold, found through MinHash LSH (`minhash`). A row is a near
duplicate when it is near an earlier row that is itself kept, so "keep the first" drops exactly
the rows listed here and no kept pair of rows stays above the threshold (up to LSH's < 1% miss).
"""

from __future__ import annotations

import dataclasses

from jaxtune.data.quality import minhash
from jaxtune.data.quality import text as qtext


@dataclasses.dataclass(frozen=True)
class Match:
  index: int  # the duplicate (or, for leaks, the row of the other split)
  of: int  # the row it repeats (the kept first copy; for leaks, the train row)
  kind: str  # 'exact' | 'near'
  jaccard: float


@dataclasses.dataclass(frozen=True)
class NearParams:
  threshold: float = 0.8  # 0 or >= 1: exact duplicates only
  num_perm: int = 128
  ngram: int = 5
  seed: int = 0

  @property
  def enabled(self) -> bool:
    return 0 < self.threshold < 1


def duplicates(texts: list[str], near: NearParams = NearParams()) -> list[Match]:
  """Every row that repeats an earlier kept row, in row order."""
  first: dict[str, int] = {}
  out: dict[int, Match] = {}
  for i, t in enumerate(texts):
    key = qtext.dedup_key(t)
    if key in first:
      out[i] = Match(i, first[key], "exact", 1.0)
    else:
      first[key] = i
  if near.enabled:
    unique = sorted(first.values())
    index = _index([texts[i] for i in unique], near)
    later: dict[int, list[tuple[int, float]]] = {}
    for a, b, sim in index.similar_pairs(near.threshold):
      later.setdefault(unique[b], []).append((unique[a], sim))
    for j in unique:  # row order: whether an earlier row is kept is already settled
      kept = [(i, s) for i, s in later.get(j, []) if i not in out]
      if kept:
        i, sim = min(kept)
        out[j] = Match(j, i, "near", sim)
  return [out[i] for i in sorted(out)]


def leaks(train: list[str], other: list[str], near: NearParams = NearParams()) -> list[Match]:
  """Every (other row, train row) pair that is equal or near, sorted by other row then train row."""
  keys: dict[str, list[int]] = {}
  for i, t in enumerate(train):
    keys.setdefault(qtext.dedup_key(t), []).append(i)
  found: dict[tuple[int, int], Match] = {}
  for j, t in enumerate(other):
    for i in keys.get(qtext.dedup_key(t), ()):
      found[j, i] = Match(j, i, "exact", 1.0)
  if near.enabled and train and other:
    n = len(train)
    index = _index(train + other, near)
    for a, b, sim in index.similar_pairs(near.threshold, keep=lambda a, b: a < n <= b):
      found.setdefault((b - n, a), Match(b - n, a, "near", sim))
  return [found[k] for k in sorted(found)]


def _index(texts: list[str], near: NearParams) -> minhash.Index:
  return minhash.Index(texts, num_perm=near.num_perm, ngram=near.ngram, seed=near.seed)
