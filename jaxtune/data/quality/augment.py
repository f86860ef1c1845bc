"""Text augmentation for training rows: EDA-style word operations and pluggable back-translation.

Word operations (Wei & Zou, 2019, "EDA"), each changing about `rate` of a text's words (at
least one): 'synonym' replaces words with a WordNet synonym, 'insert' puts a synonym of a word
at a random position, 'swap' exchanges two words, 'delete' drops each word with probability
`rate` (never all). Each augmented copy of a row comes from one operation drawn at random, so
copies stay close to real text. Everything is drawn from the numpy Generator passed in, so a
seed fixes the output.

'backtranslate' rewrites texts through any callable list[str] -> list[str] that paraphrases
(translate to a pivot language and back, with whatever model jaxtune or anything else loads);
a run config names it as 'module:function' in `data.augment_translator`.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable

import numpy as np

OPS = ("synonym", "insert", "swap", "delete", "backtranslate")
WORD_OPS = OPS[:4]
# Function words are left alone: replacing "the" says nothing new and synonyms of "a" are noise.
_STOP = frozenset(
  "a an the and or but if of at by for with about against between into through during before "
  "after above below to from up down in out on off over under again further then once here there "
  "when where why how all any both each few more most other some such no nor not only own same so "
  "than too very s t can will just don should now i me my we our you your he him his she her it "
  "its they them their what which who whom this that these those am is are was were be been being "
  "have has had having do does did doing would could ought 's 'nt n't".split()
)

Translator = Callable[[list[str]], list[str]]


@functools.cache
def wordnet():
  """NLTK's WordNet reader over the files `jaxtune.data.assets fetch` installs."""
  import nltk
  from nltk.corpus.reader.wordnet import WordNetCorpusReader

  from jaxtune.data import assets

  root = assets.wordnet_dir()  # raises, saying how to fetch it, when missing
  if str(root.parents[1]) not in nltk.data.path:
    nltk.data.path.insert(0, str(root.parents[1]))  # NLTK only reads corpora under its paths
  with warnings.catch_warnings():  # "multilingual functions are not available": not needed here
    warnings.simplefilter("ignore", UserWarning)
    return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


@functools.cache
def synonyms(word: str) -> tuple[str, ...]:
  """WordNet lemmas sharing a synset with `word` (not the word itself), sorted for determinism."""
  lower = word.lower()
  found = {l.name().replace("_", " ") for s in wordnet().synsets(lower) for l in s.lemmas()}
  return tuple(sorted(w for w in found if w.lower() != lower))


def load_translator(spec: str) -> Translator:
  """'package.module:function' -> the function; errors name the config key."""
  module, _, name = spec.partition(":")
  if not module or not name:
    raise ValueError(f"config: data.augment_translator={spec!r}: expected 'module:function'")
  try:
    fn = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"config: data.augment_translator={spec!r}: {e}") from e
  if not callable(fn):
    raise ValueError(f"config: data.augment_translator={spec!r} is not callable")
  return fn


def _count(n_words: int, rate: float) -> int:
  return max(1, int(round(rate * n_words)))


def _candidates(words: list[str]) -> list[int]:
  return [i for i, w in enumerate(words) if w.isalpha() and w.lower() not in _STOP and synonyms(w)]


def _match_case(new: str, old: str) -> str:
  return new.capitalize() if old[:1].isupper() and old[1:].islower() else new


def synonym_replace(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
  words = list(words)
  spots = _candidates(words)
  for i in rng.permutation(spots)[: _count(len(words), rate)]:
    options = synonyms(words[i])
    words[i] = _match_case(options[rng.integers(len(options))], words[i])
  return words


def random_insert(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
  words = list(words)
  pool = [words[i] for i in _candidates(words)]  # words, not positions: inserts shift positions
  if not pool:
    return words
  for _ in range(_count(len(words), rate)):
    options = synonyms(pool[rng.integers(len(pool))])
    words.insert(int(rng.integers(len(words) + 1)), options[rng.integers(len(options))])
  return words


def random_swap(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
  words = list(words)
  if len(words) < 2:
    return words
  for _ in range(_count(len(words), rate)):
    i, j = rng.choice(len(words), 2, replace=False)
    words[i], words[j] = words[j], words[i]
  return words


def random_delete(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
  if len(words) < 2:
    return list(words)
  keep = rng.random(len(words)) >= rate
  if not keep.any():
    keep[rng.integers(len(words))] = True
  return [w for w, k in zip(words, keep) if k]


_WORD_FNS = {"synonym": synonym_replace, "insert": random_insert, "swap": random_swap,
             "delete": random_delete}


class Augmenter:
  """Makes `copies` augmented versions of texts with the chosen operations.

  ops: names from OPS; rate: share of words each word operation changes; translator: the
  callable 'backtranslate' uses (required when it is among the ops).
  """

  def __init__(self, ops: tuple[str, ...], rate: float = 0.1, *, translator: Translator | None = None):
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
      raise ValueError(f"augmentation ops {list(ops)}: expected some of {OPS}")
    if "backtranslate" in ops and translator is None:
      raise ValueError("augmentation op 'backtranslate' needs a translator (data.augment_translator)")
    if not 0 < rate <= 1:
      raise ValueError(f"augmentation rate {rate}: expected 0 < rate <= 1")
    self.ops, self.rate, self.translator = tuple(ops), rate, translator

  def __call__(self, texts: list[str], rng: np.random.Generator, copies: int = 1) -> list[tuple[int, str, str]]:
    """(source index, op, new text) for `copies` augmentations of each text, in source order.

    A copy equal to its source (no synonym found, one-word text) is left out: it adds nothing.
    """
    planned = [(i, self.ops[rng.integers(len(self.ops))]) for i in range(len(texts)) for _ in range(copies)]
    out: dict[int, str] = {}
    for k, (i, op) in enumerate(planned):
      if op != "backtranslate":
        out[k] = " ".join(_WORD_FNS[op](texts[i].split(), self.rate, rng))
    back = [k for k, (_, op) in enumerate(planned) if op == "backtranslate"]
    if back:
      result = list(self.translator([texts[planned[k][0]] for k in back]))
      if len(result) != len(back):
        raise ValueError(f"back-translation returned {len(result)} texts for {len(back)}")
      out.update(zip(back, result))
    return [(i, op, out[k]) for k, (i, op) in enumerate(planned)
            if isinstance(out[k], str) and out[k].strip() and out[k] != texts[i]]
