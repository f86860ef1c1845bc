"""Planted label errors: flip a known share of a real data set's labels, count what is found.

  python benchmarks/label_errors_planted.py [--data=rotten_tomatoes|tweets] [--rows=2000]
      [--share=0.1] [--features=minilm|tfidf] [--cache=FILE.npz]

rotten_tomatoes: a seeded sample of the snippets; tweets: of the agreed held-out rows
(confidence 1.0). Flips go to a random other class. Prints recall (flipped rows flagged /
flipped rows), precision (flipped among flagged) and the out-of-fold accuracy of the model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxtune.data import builtin
from jaxtune.data.quality import label_errors
from jaxtune.data.readers import BadRows


def rows_and_labels(name: str):
  if name == "rotten_tomatoes":
    rows = builtin.read("rotten_tomatoes", BadRows())
    return [r.fields["text"] for r in rows], np.array([r.fields["label"] == "positive" for r in rows], np.int64), 2
  names = ("negative", "neutral", "positive")
  rows = builtin.read("tweets:validation", BadRows()) + builtin.read("tweets:test", BadRows())
  return [r.fields["text"] for r in rows], np.array([names.index(r.fields["sentiment"]) for r in rows]), 3


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data", default="rotten_tomatoes")
  p.add_argument("--rows", type=int, default=2000)
  p.add_argument("--share", type=float, default=0.1)
  p.add_argument("--features", default="minilm")
  p.add_argument("--cache", default="")
  a = p.parse_args()
  texts, truth, k = rows_and_labels(a.data)
  rng = np.random.default_rng(0)
  pick = np.sort(rng.choice(len(texts), min(a.rows, len(texts)), replace=False))
  texts, truth = [texts[i] for i in pick], truth[pick]
  flip = rng.random(len(texts)) < a.share
  given = np.where(flip, (truth + rng.integers(1, k, len(texts))) % k, truth)
  t = time.time()
  if a.features == "minilm":
    x = label_errors.embed(texts, cache=a.cache or None)
  else:
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(min_df=2, sublinear_tf=True).fit_transform(texts).toarray().astype(np.float32)
  t1 = time.time()
  r = label_errors.find(x, given, k)
  found = np.array([i.index for i in r.issues], np.int64)
  tp = int(flip[found].sum())
  print(f"{a.data} {a.features} rows={len(texts)} flipped={int(flip.sum())} flagged={len(found)} "
        f"recall={tp / flip.sum():.3f} precision={tp / max(1, len(found)):.3f} "
        f"oof_accuracy={r.oof_accuracy:.3f} features_s={t1 - t:.0f} find_s={time.time() - t1:.0f}")


if __name__ == "__main__":
  main()
