"""The seeded train / validation / test carve of one list of rows.

Its own module, importing nothing of jaxtune.data, so that a builtin data set defined by another
one's split (`reviews`: answers from sentiment_minilm's train split of 'rotten_tomatoes') cuts it
exactly as a run does without an import circle through the readers.
"""

from __future__ import annotations

import numpy as np

from jaxtune.errors import DataError


def carve(main: list, fractions: dict[str, float], seed: int, *, own=(), source: str = "",
          split: str = "") -> dict[str, list]:
  """{'train', 'validation', 'test'} rows of `main` by a seeded shuffle; splits named in `own`
  come from their own sources and are not carved. Each split keeps `main`'s order."""
  order = np.random.default_rng(seed).permutation(len(main))
  rows, at = {}, 0
  for name in ("validation", "test"):
    if name not in own and fractions[name] > 0:
      n = max(1, round(fractions[name] * len(main)))
      rows[name] = [main[i] for i in sorted(order[at : at + n])]
      at += n
  if at >= len(main):
    raise DataError(
      f"{source}: {len(main)} usable rows are too few for data.split={split!r}: nothing left to train on"
    )
  return {"train": [main[i] for i in sorted(order[at:])], **rows}
