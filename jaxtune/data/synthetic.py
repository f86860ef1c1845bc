"""Generated text for the tiny recipe: learnable, deterministic, no downloads.

Sentences from a small grammar, byte-tokenized (ids 0-255, 256 = end of text), packed into
fixed-length rows. A tiny model learns the grammar within a few hundred steps, so a falling
loss curve is a real signal that training works.
"""

from __future__ import annotations

import numpy as np

from jaxtune.data.pipeline import Dataset

EOT = 256
VOCAB_SIZE = 257

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
_VERBS = ["sees", "likes", "follows", "calls", "finds", "helps"]
_OBJECTS = ["the ball", "a red car", "the river", "her brother", "a green tree", "the moon"]
_ENDS = [".", " today.", " again.", " every day.", " at night."]


def sentences(n: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  pick = lambda xs: xs[rng.integers(len(xs))]
  return [f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}{pick(_ENDS)}" for _ in range(n)]


def text_dataset(num_rows: int, seq_len: int, seed: int) -> Dataset:
  """`num_rows` rows of `seq_len` byte tokens, sentences separated by EOT, loss on every token."""
  stream: list[int] = []
  need = num_rows * seq_len
  while len(stream) < need:
    for s in sentences(256, seed + len(stream)):
      stream.extend(s.encode())
      stream.append(EOT)
  ids = np.asarray(stream[:need], np.int32).reshape(num_rows, seq_len)
  ones = np.ones_like(ids)
  return Dataset({
    "input_ids": ids,
    "attention_mask": ones,
    "loss_mask": ones,
    "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), ids.shape).copy(),
    "segment_ids": ones,
  })
