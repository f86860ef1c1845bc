"""Builtin review data sets for preference and RL training: positive one-sentence film reviews.

- 'review_pairs': rows {prompt, chosen, rejected} in TRL's conversational form (the prompt a
  one-message user turn, each answer a one-message assistant turn), so `data.kind='preference'`
  renders them with the model's chat template. The prompt asks for a one-sentence review of a
  film; `chosen` is a positive Rotten Tomatoes snippet and `rejected` a negative one, both drawn
  ONLY from the train part of the `sentiment_minilm` split (builtin 'rotten_tomatoes',
  data.split='0.8,0.1,0.1', split_seed=0, cut by `jaxtune.data.read_splits`; a train snippet
  whose text the file repeats in validation or test is left out too), so no snippet that
  classifier is validated or tested on is an answer here.
  Each positive snippet is paired with one negative (a seeded shuffle of each), as many pairs as
  the smaller side has.
- 'review_prompts': the prompt-only rows ({prompt}) for on-policy RL: every train template
  combination once, in a seeded order.
- 'review_prompts:heldout': exactly 200 prompts for measurement, built from phrasings, genres
  and subjects that no train prompt uses (so a trained model is measured on wording it never saw).

Prompts are deterministic: phrasing x genre x subject templates, in an order fixed by seeds.
Extra columns (id, genre, subject) say which template a row came from.
"""

from __future__ import annotations

import itertools

import numpy as np

from jaxtune.data.rows import BadRows, Row

NAMES = ("review_pairs", "review_prompts", "review_prompts:heldout")
HELDOUT_SIZE = 200
# The sentiment_minilm split (configs/sentiment_minilm.py) the answers come from.
SOURCE, SPLIT, SPLIT_SEED = "rotten_tomatoes", "0.8,0.1,0.1", 0

TRAIN_PHRASINGS = (
  "Write a one-sentence review of {film}.",
  "In one sentence, review {film}.",
  "Give me a single-sentence review of {film}.",
  "Review {film} in exactly one sentence.",
  "What did you think of {film}? Answer in one sentence.",
  "Sum up {film} in a one-sentence critic's review.",
  "Write a short, one-sentence movie review of {film}.",
  "Please review {film} in a single sentence.",
)
TRAIN_GENRES = ("drama", "comedy", "thriller", "horror film", "romantic comedy", "western",
                "science-fiction film", "animated film", "documentary", "crime drama")
TRAIN_SUBJECTS = (
  "a small-town baker", "two estranged sisters", "a retired boxer", "a lighthouse keeper",
  "a high-school chess team", "a stranded astronaut", "a family road trip", "a jazz pianist",
  "a con artist", "a haunted farmhouse", "a widowed fisherman", "a rookie detective",
  "a wedding that goes wrong", "a talking dog", "a corporate whistleblower", "a summer camp",
  "a failing rock band", "a mountain rescue", "a chef opening a restaurant", "a bank heist",
  "an aging movie star", "a teenage inventor", "a divorce", "a missing painting",
  "a long-distance friendship", "a soccer coach", "a refugee family", "a village election",
  "a ghost in a hotel", "a time-travelling student", "a prison escape", "a first love",
  "a wildlife photographer", "a struggling novelist", "a robot that learns to paint",
  "a courtroom trial", "a dance competition", "a stolen car", "a grandmother's secret",
  "a night shift nurse",
)
# Held out: none of these phrasings, genres or subjects occurs in the train templates above.
HELDOUT_PHRASINGS = (
  "Tell me, in one sentence, how you found {film}.",
  "Compose a one-line critique of {film}.",
  "Describe your reaction to {film} with just one line.",
  "If you had one sentence to judge {film}, what would you say?",
)
HELDOUT_GENRES = ("musical", "war epic", "fantasy adventure", "mystery", "sports drama")
HELDOUT_SUBJECTS = (
  "an island schoolteacher", "twin violinists", "a submarine crew", "a forgotten circus",
  "an orchard in winter", "a desert caravan", "a chess prodigy's comeback",
  "a lost expedition map", "a carnival magician", "a Viking settlement",
)


def _film(genre: str, subject: str) -> str:
  article = "an" if genre[0] in "aeiou" else "a"
  return f"{article} {genre} about {subject}"


def _prompts(phrasings, genres, subjects, seed: int) -> list[dict]:
  """Every phrasing x genre x subject, in a seeded order: [{prompt text, genre, subject}]."""
  combos = list(itertools.product(phrasings, genres, subjects))
  order = np.random.default_rng(seed).permutation(len(combos))
  return [{"text": combos[i][0].format(film=_film(combos[i][1], combos[i][2])),
           "genre": combos[i][1], "subject": combos[i][2]} for i in order]


def train_prompts() -> list[dict]:
  return _prompts(TRAIN_PHRASINGS, TRAIN_GENRES, TRAIN_SUBJECTS, seed=18)


def heldout_prompts() -> list[dict]:
  p = _prompts(HELDOUT_PHRASINGS, HELDOUT_GENRES, HELDOUT_SUBJECTS, seed=19)
  assert len(p) == HELDOUT_SIZE, len(p)
  return p


def _user(text: str) -> list[dict]:
  return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
  return [{"role": "assistant", "content": text}]


def sentiment_train_rows(bad: BadRows) -> list[Row]:
  """The train rows of sentiment_minilm's seeded split of 'rotten_tomatoes', less those whose
  text is also a validation or test row (the file repeats some snippets under other ids)."""
  from jaxtune import data
  from jaxtune.data.config import default_data_config

  d = default_data_config()
  d.kind, d.source, d.split, d.split_seed = "classification", SOURCE, SPLIT, SPLIT_SEED
  rows = data.read_splits(d, bad)
  held = {r.fields["text"] for k in ("validation", "test") for r in rows[k]}
  return [r for r in rows["train"] if r.fields["text"] not in held]


def read(name: str, bad: BadRows) -> list[Row]:
  origin = f"builtin:{name}"
  if name == "review_prompts:heldout":
    return [Row({"prompt": _user(p["text"]), "id": i, "genre": p["genre"], "subject": p["subject"]},
                origin, i + 1) for i, p in enumerate(heldout_prompts())]
  if name == "review_prompts":
    return [Row({"prompt": _user(p["text"]), "id": i, "genre": p["genre"], "subject": p["subject"]},
                origin, i + 1) for i, p in enumerate(train_prompts())]
  if name == "review_pairs":
    return review_pairs(bad)
  raise ValueError(f"unknown review data set {name!r} (known: {NAMES})")


def review_pairs(bad: BadRows) -> list[Row]:
  train = sentiment_train_rows(bad)
  rng = np.random.default_rng(18)
  pos = [r for r in train if r.fields["label"] == "positive"]
  neg = [r for r in train if r.fields["label"] == "negative"]
  pos = [pos[i] for i in rng.permutation(len(pos))]
  neg = [neg[i] for i in rng.permutation(len(neg))]
  prompts = train_prompts()
  rows = []
  for i, (p, n) in enumerate(zip(pos, neg)):
    q = prompts[i % len(prompts)]
    rows.append(Row({"prompt": _user(q["text"]), "chosen": _assistant(p.fields["text"]),
                     "rejected": _assistant(n.fields["text"]), "id": i,
                     "chosen_id": p.fields["id"], "rejected_id": n.fields["id"],
                     "genre": q["genre"], "subject": q["subject"]}, "builtin:review_pairs", i + 1))
  return rows
