from jaxtune.data.quality import dedup
from tests.data.quality.conftest import base_sentences


def test_keep_first_exact_and_near():
  a, b = base_sentences(2, seed=4)
  texts = [a, b, "  " + a, a + " again", a + " again and", b]
  found = dedup.duplicates(texts)
  assert [(m.index, m.of, m.kind) for m in found] == [
    (2, 0, "exact"), (3, 0, "near"), (4, 0, "near"), (5, 1, "exact")]


def test_near_chain_keeps_rows_far_from_every_kept_row():
  # x ~ y and y ~ z but x !~ z: dropping y (near x) keeps z, which no kept row resembles.
  words = base_sentences(1, seed=2)[0].split()
  x = " ".join(words)
  y = " ".join(words[:-1] + ["zzqx"])
  z = " ".join(words[:-2] + ["wwqy", "zzqx"])
  from jaxtune.data.quality import minhash

  sets = [minhash.shingles(t, 5) for t in (x, y, z)]
  sim = {(i, j): minhash.jaccard(sets[i], sets[j]) for i, j in [(0, 1), (1, 2), (0, 2)]}
  t = (max(sim[0, 2], 0.0) + min(sim[0, 1], sim[1, 2])) / 2
  assert sim[0, 2] < t <= min(sim[0, 1], sim[1, 2])
  found = dedup.duplicates([x, y, z], dedup.NearParams(threshold=t))
  assert [(m.index, m.of) for m in found] == [(1, 0)]


def test_leaks_both_kinds():
  train = base_sentences(5, seed=3)
  other = [train[1], "something else entirely here", train[3] + " too"]
  found = dedup.leaks(train, other)
  assert [(m.index, m.of, m.kind) for m in found] == [(0, 1, "exact"), (2, 3, "near")]
  assert [(m.index, m.of) for m in dedup.leaks(train, other, dedup.NearParams(threshold=0))] == [(0, 1)]
