"""The builtin tweets: every row read, a fixed split whose validation/test rows are trustworthy."""

from __future__ import annotations

import collections

import pytest

from jaxtune import data
from jaxtune.data import assets, builtin, tweets
from jaxtune.data.quality import dedup
from jaxtune.data.quality import text as qtext
from jaxtune.data.readers import BadRows


@pytest.fixture(scope="module")
def splits():
  try:
    assets.tweets_csv()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  return {name: builtin.read(name, BadRows()) for name in tweets.NAMES}


def _counts(rows):
  return dict(collections.Counter(r.fields["sentiment"] for r in rows))


def test_every_row_is_read_as_scraped(splits):
  rows = splits["tweets:all"]
  assert len(rows) == 38_158
  assert _counts(rows) == {"negative": 16_186, "neutral": 15_018, "positive": 6_954}
  assert rows[0].row == 2 and rows[0].fields["confidence"] == 0.7547
  assert rows[0].fields["text"].endswith("cars_\ufffd_.no thank you")  # lossy bytes kept visible
  assert sum(r.fields["confidence"] is None for r in rows) == 5_460


def test_split_sizes_and_classes_are_fixed(splits):
  assert _counts(splits["tweets:validation"]) == {"negative": 1473, "neutral": 736, "positive": 291}
  assert _counts(splits["tweets:test"]) == {"negative": 1501, "neutral": 710, "positive": 289}
  assert _counts(splits["tweets"]) == {"negative": 13_212, "neutral": 13_572, "positive": 6_374}
  rows = [r.row for name in ("tweets", "tweets:validation", "tweets:test") for r in splits[name]]
  assert sorted(rows) == [r.row for r in splits["tweets:all"]]  # a partition of the file


def test_held_out_rows_are_agreed_unique_and_not_in_train(splits):
  held = splits["tweets:validation"] + splits["tweets:test"]
  assert all(r.fields["confidence"] == 1.0 for r in held)
  train_keys = [tweets.compare_key(r.fields["text"]) for r in splits["tweets"]]
  held_keys = [tweets.compare_key(r.fields["text"]) for r in held]
  near = dedup.NearParams(threshold=tweets.NEAR)
  assert dedup.duplicates(held_keys, near) == []
  assert dedup.leaks(train_keys, held_keys, near) == []
  # Nor as `jaxtune data audit` compares rows (its cleaned text, default near threshold 0.8).
  clean = lambda rows: [qtext.normalize(r.fields["text"]) for r in rows]
  assert dedup.leaks(clean(splits["tweets"]), clean(held)) == []
  # What the split is protecting against does exist in train: copies and retweets.
  assert len(dedup.duplicates(train_keys, dedup.NearParams(threshold=0))) > 800


def test_compare_key_sees_through_retweets_urls_case_and_mojibake():
  a = tweets.compare_key("RT @someone: Driverless cars are GREAT!!! http://t.co/abc")
  assert a == tweets.compare_key("driverless cars are great &amp; \ufffd_ https://t.co/x") != ""
  assert tweets.compare_key("caf\u00c3\u00a9 time") == "café time"


def test_a_run_on_tweets_gets_the_builtin_validation_and_test(splits, make_cfg):
  d = data._with_builtin_defaults(make_cfg(kind="classification", source="tweets").data)
  assert d.label_column == "sentiment" and d.label_names == "negative,neutral,positive"
  rows = data.read_splits(d, BadRows())
  assert {k: len(v) for k, v in rows.items()} == {"train": 33_158, "validation": 2500, "test": 2500}


def test_split_is_cached_on_disk_and_keyed_by_the_code(splits, tmp_path, monkeypatch):
  """Every run on the tweets paid ~20 s of CPU for the comparisons; the split is now read back
  from assets.cache_dir(), and a change to the code that compares rows names a new file."""
  from jaxtune.data.quality import minhash

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  computed = []
  real = tweets._split()  # this process's (functools-cached) split

  def compute():
    computed.append(1)
    return real

  monkeypatch.setattr(tweets, "_compute_split", compute)
  assert tweets._split.__wrapped__() == real and len(computed) == 1
  path = tweets._split_cache()
  assert path.is_file() and path.parent == tmp_path / "jaxtune" / "tweets"
  assert tweets._split.__wrapped__() == real and len(computed) == 1  # read back, not recomputed
  path.write_text("{truncated")
  assert tweets._split.__wrapped__() == real and len(computed) == 2  # a bad file is recomputed
  other = tmp_path / "minhash_changed.py"
  other.write_text(open(minhash.__file__).read() + "\n# changed\n")
  monkeypatch.setattr(minhash, "__file__", str(other))
  assert tweets._split_cache() != path
