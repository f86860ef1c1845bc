"""Augmentation: seeded word operations, WordNet synonyms, a pluggable (here fake) back-translator."""

import numpy as np
import pytest

from jaxtune.data.quality import augment

TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank"


def test_word_ops_change_what_they_say():
  rng = np.random.default_rng(0)
  words = TEXT.split()
  swapped = augment.random_swap(words, 0.1, rng)
  assert sorted(swapped) == sorted(words) and swapped != words
  deleted = augment.random_delete(words, 0.3, rng)
  assert 0 < len(deleted) < len(words) and all(w in words for w in deleted)
  assert augment.random_delete(["one"], 0.9, rng) == ["one"]


def test_augmenter_is_seeded_and_skips_no_ops():
  aug = augment.Augmenter(("swap", "delete"), 0.2)
  a = aug([TEXT, "word"], np.random.default_rng(1), copies=3)
  b = aug([TEXT, "word"], np.random.default_rng(1), copies=3)
  assert a == b and len(a) == 3 and all(i == 0 for i, _, _ in a)  # 'word' cannot change
  assert a != aug([TEXT, "word"], np.random.default_rng(2), copies=3)


def test_backtranslation_through_a_pluggable_translator():
  calls = []

  def fake_translator(texts):
    calls.append(list(texts))
    return [t.replace("quick", "fast") for t in texts]

  aug = augment.Augmenter(("backtranslate",), translator=fake_translator)
  out = aug([TEXT, "a slow cat"], np.random.default_rng(0))
  assert calls == [[TEXT, "a slow cat"]]  # one batched call
  assert out == [(0, "backtranslate", TEXT.replace("quick", "fast"))]  # unchanged copies dropped
  with pytest.raises(ValueError, match="needs a translator"):
    augment.Augmenter(("backtranslate",))


def test_translator_spec():
  fn = augment.load_translator("tests.data.quality.augment_test:upper_translator")
  assert fn(["ab"]) == ["AB"]
  with pytest.raises(ValueError, match="data.augment_translator='nope'"):
    augment.load_translator("nope")


def upper_translator(texts):
  return [t.upper() for t in texts]


@pytest.fixture(scope="module")
def wordnet():
  try:
    return augment.wordnet()
  except FileNotFoundError as e:
    pytest.skip(str(e))


def test_wordnet_synonyms(wordnet):
  assert "film" in augment.synonyms("movie")
  assert "fast" in augment.synonyms("quick")
  rng = np.random.default_rng(0)
  out = augment.synonym_replace(TEXT.split(), 0.2, rng)
  changed = [(a, b) for a, b in zip(TEXT.split(), out) if a != b]
  assert len(changed) == 3 and all(b in augment.synonyms(a) for a, b in changed)
  inserted = augment.random_insert(TEXT.split(), 0.1, rng)
  assert len(inserted) == len(TEXT.split()) + 1


def test_insert_many_into_a_text_with_few_synonyms(wordnet):
  # Inserting shifts positions; the words to draw synonyms of must not shift with them.
  words = "the of and movie to a in".split()
  for seed in range(20):
    out = augment.random_insert(words, 1.0, np.random.default_rng(seed))
    assert len(out) == 2 * len(words)
