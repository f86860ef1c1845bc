"""MinHash signatures and LSH banding in numpy, with candidate pairs verified by exact Jaccard.

A text becomes a set of hashed character n-grams of its lower-cased words. MinHash with
`num_perm` universal hashes h(x) = (a*x + b) >> 32 (uint64 arithmetic) estimates the Jaccard
similarity of two sets; LSH splits the signature into bands of `rows` values and makes every
pair that agrees on a whole band a candidate. The band shape is chosen so that a pair exactly at
the threshold becomes a candidate with probability >= 0.99; each candidate's true Jaccard is
then computed from the n-gram sets, so every reported pair and figure is exact (a pair above
the threshold can be missed by LSH with probability < 1%, falling fast above it).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from jaxtune.data.quality import text as qtext

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_CHUNK = 1 << 18  # shingles hashed at once: num_perm x _CHUNK uint64 stays near 256 MB at 128


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: spreads the bits of a polynomial n-gram hash."""
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def shingles(text: str, ngram: int) -> np.ndarray:
  """Sorted unique uint64 hashes of the character n-grams of the text's lower-cased words."""
  canon = " ".join(qtext.words(text)) or text.strip().lower()
  b = np.frombuffer(canon.encode("utf-8"), np.uint8).astype(np.uint64)
  if len(b) == 0:
    return np.zeros(0, np.uint64)
  if len(b) < ngram:
    b = np.concatenate([b, np.zeros(ngram - len(b), np.uint64)])
  powers = np.uint64(1099511628211) ** np.arange(ngram, dtype=np.uint64)  # FNV prime powers
  with np.errstate(over="ignore"):
    h = (sliding_window_view(b, ngram) * powers).sum(axis=1, dtype=np.uint64)
  return np.unique(_mix(h))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  if len(a) == 0 and len(b) == 0:
    return 1.0
  inter = len(np.intersect1d(a, b, assume_unique=True))
  return inter / (len(a) + len(b) - inter)


def band_shape(threshold: float, num_perm: int) -> tuple[int, int]:
  """(bands, rows): the most rows per band that still catch a pair at `threshold` 99% of the time."""
  for rows in range(num_perm, 0, -1):
    bands = num_perm // rows
    if 1 - (1 - threshold**rows) ** bands >= 0.99:
      return bands, rows
  return num_perm, 1


class Index:
  """Shingle sets and MinHash signatures of a list of texts."""

  def __init__(self, texts: list[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 0):
    self.num_perm, self.ngram = num_perm, ngram
    self.sets = [shingles(t, ngram) for t in texts]
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    self.signatures = self._signatures(a, b)

  def _signatures(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, num_perm] uint32 minimum hash per text; an empty set gets the maximum (matches none)."""
    n = len(self.sets)
    sig = np.full((n, self.num_perm), np.iinfo(np.uint32).max, np.uint32)
    sizes = np.array([len(s) for s in self.sets])
    nonempty = np.nonzero(sizes)[0]
    start = 0
    while start < len(nonempty):
      # A chunk of whole texts whose shingles fit _CHUNK (at least one text).
      cum = np.cumsum(sizes[nonempty[start:]])
      stop = start + max(1, int(np.searchsorted(cum, _CHUNK, side="right")))
      docs = nonempty[start:stop]
      x = np.concatenate([self.sets[i] for i in docs])
      with np.errstate(over="ignore"):
        h = ((a[:, None] * x[None, :] + b[:, None]) >> np.uint64(32)).astype(np.uint32)
      offsets = np.concatenate([[0], np.cumsum(sizes[docs])[:-1]])
      sig[docs] = np.minimum.reduceat(h, offsets, axis=1).T
      start = stop
    return sig

  def candidates(self, threshold: float) -> set[tuple[int, int]]:
    """Pairs (i < j) that agree on at least one LSH band."""
    bands, rows = band_shape(threshold, self.num_perm)
    live = np.nonzero([len(s) > 0 for s in self.sets])[0]
    pairs: set[tuple[int, int]] = set()
    weights = np.random.default_rng(1).integers(1, 2**63, rows, dtype=np.uint64)
    for band in range(bands):
      part = self.signatures[live, band * rows : (band + 1) * rows].astype(np.uint64)
      with np.errstate(over="ignore"):
        keys = _mix((part * weights).sum(axis=1, dtype=np.uint64) + np.uint64(band))
      order = np.argsort(keys, kind="stable")
      sorted_keys = keys[order]
      bounds = np.nonzero(np.diff(sorted_keys))[0] + 1
      for group in np.split(order, bounds):
        if len(group) > 1:
          members = sorted(live[group].tolist())
          pairs.update((members[x], members[y]) for x in range(len(members))
                       for y in range(x + 1, len(members)))
    return pairs

  def similar_pairs(self, threshold: float, keep=None) -> list[tuple[int, int, float]]:
    """Verified pairs (i, j, jaccard) with i < j and exact Jaccard >= threshold, sorted.

    `keep(i, j)` filters candidates before the (costlier) exact check.
    """
    out = []
    for i, j in sorted(self.candidates(threshold)):
      if keep is not None and not keep(i, j):
        continue
      sim = jaccard(self.sets[i], self.sets[j])
      if sim >= threshold:
        out.append((i, j, sim))
    return out
