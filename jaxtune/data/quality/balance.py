"""Class balance of a training split by resampling rows: oversample or undersample.

(The third remedy, class weights in the loss, is `data.class_weights='balanced'`, which
`data.balance='class_weights'` turns on.) Resampling returns row indices in ascending order, a
copy next to its original, so the result reads like the data; the training batcher shuffles.
"""

from __future__ import annotations

import collections

import numpy as np

MODES = ("oversample", "undersample")


def resample(labels: list, mode: str, rng: np.random.Generator) -> np.ndarray:
  """Indices into `labels` giving every label the count of the largest (oversample) or the
  smallest (undersample) class. Oversampling keeps every row and adds random copies;
  undersampling keeps a random subset of each class."""
  if mode not in MODES:
    raise ValueError(f"balance mode {mode!r}: expected one of {MODES}")
  by_label: dict = collections.defaultdict(list)
  for i, label in enumerate(labels):
    by_label[label].append(i)
  if not by_label:
    return np.zeros(0, np.int64)
  sizes = [len(v) for v in by_label.values()]
  target = max(sizes) if mode == "oversample" else min(sizes)
  picked = []
  for label in sorted(by_label, key=str):  # a fixed order, so the draws do not depend on row order
    idx = np.asarray(by_label[label])
    if mode == "oversample":
      picked += [idx, rng.choice(idx, target - len(idx), replace=True)]
    else:
      picked.append(rng.choice(idx, target, replace=False))
  return np.sort(np.concatenate(picked))
