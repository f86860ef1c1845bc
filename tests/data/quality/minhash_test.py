import numpy as np
import pytest

from jaxtune.data.quality import minhash
from tests.data.quality.conftest import base_sentences


def test_shingles_ignore_case_and_punctuation():
  a = minhash.shingles("The  movie, was GOOD!", 5)
  assert np.array_equal(a, minhash.shingles("the movie was good", 5))
  assert len(minhash.shingles("hi", 5)) == 1 and len(minhash.shingles("", 5)) == 0


def test_signature_estimates_jaccard():
  texts = ["the cat sat on the mat with a hat and a bat today", "the cat sat on the mat with a hat and a rat today"]
  index = minhash.Index(texts, num_perm=256)
  exact = minhash.jaccard(*index.sets)
  estimate = float(np.mean(index.signatures[0] == index.signatures[1]))
  assert 0.5 < exact < 0.9 and abs(estimate - exact) < 0.1


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_band_shape_catches_threshold_pairs(threshold):
  bands, rows = minhash.band_shape(threshold, 128)
  assert bands * rows <= 128 and 1 - (1 - threshold**rows) ** bands >= 0.99


def test_similar_pairs_are_exact_and_complete():
  base = base_sentences(200, seed=1)
  texts = base + [base[3] + " again", base[50].upper(), base[7][:-5]]
  index = minhash.Index(texts, seed=0)
  pairs = index.similar_pairs(0.8)
  assert [(i, j) for i, j, _ in pairs] == [(3, 200), (7, 202), (50, 201)]
  for i, j, sim in pairs:
    assert sim == minhash.jaccard(index.sets[i], index.sets[j])
  assert pairs[2][2] == 1.0 and all(sim >= 0.8 for _, _, sim in pairs)
  # The same pairs whatever the MinHash seed: candidates are verified exactly.
  assert minhash.Index(texts, seed=5).similar_pairs(0.8) == pairs
