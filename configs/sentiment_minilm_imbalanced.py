"""sentiment_minilm:quick on an artificially imbalanced train subset: 450 positive, 50 negative.

For measuring data.balance (oversample, undersample, class_weights) against doing nothing.
Validation and test are the quick variant's own balanced 500-row subsets, so scores compare
with it. The subset is drawn once (seeded, from the quick variant's train split) and written to
<jaxtune cache>/sentiment_imbalanced/ as jsonl.

  jaxtune train --config=configs/sentiment_minilm_imbalanced.py --workdir=DIR \\
    [--config.data.balance=oversample|undersample|class_weights]
"""

import json
from pathlib import Path

import numpy as np

from jaxtune import config as jt_config
from jaxtune import recipes
from jaxtune.data import assets

POSITIVE, NEGATIVE = 450, 50


def write_subset(c) -> Path:
  """The jsonl files (train imbalanced, validation/test as in the quick variant); cached."""
  from jaxtune import data
  from jaxtune.data import readers

  out = assets.cache_dir() / "sentiment_imbalanced"
  if (out / "test.jsonl").exists():
    return out
  d = data._with_builtin_defaults(c.data)
  rows = data.read_splits(d, readers.BadRows("error"))  # quick: validation/test of 500 rows
  d_full = d.copy_and_resolve_references()
  d_full.max_rows = 0
  train = data.read_splits(d_full, readers.BadRows("error"))["train"]
  rng = np.random.default_rng(0)
  picked = []
  for label, n in (("positive", POSITIVE), ("negative", NEGATIVE)):
    idx = [i for i, r in enumerate(train) if r.fields["label"] == label]
    picked += rng.choice(idx, n, replace=False).tolist()
  rows["train"] = [train[i] for i in sorted(picked)]
  tmp = out.with_name(out.name + ".partial")
  tmp.mkdir(parents=True, exist_ok=True)
  for name, split in rows.items():
    with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as f:
      for r in split:
        f.write(json.dumps({"text": r.fields["text"], "label": r.fields["label"], "id": r.fields["id"]}) + "\n")
  tmp.rename(out)
  return out


def get_config(arg=None):
  jt_config.known_variants("configs/sentiment_minilm_imbalanced.py", arg)
  c = recipes.beside(__file__, "sentiment_minilm", "quick")
  out = write_subset(c)
  c.data.source = str(out / "train.jsonl")
  c.data.validation_source = str(out / "validation.jsonl")
  c.data.test_source = str(out / "test.jsonl")
  c.data.max_rows = 0
  c.data.label_names = "negative,positive"
  return c
