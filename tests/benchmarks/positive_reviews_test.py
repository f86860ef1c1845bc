"""benchmarks/positive_reviews.py: distinct-2, degenerate repetition, the completions'
log-probabilities behind the KL, and the held-out prompts."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import decoder
from tests.benchmarks.sentiment_disputed_test import _load

script = _load("positive_reviews")


def test_distinct_2_counts_unique_word_bigrams_over_all_texts():
  assert script.distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)  # (a b) twice
  assert script.distinct_n(["Great film", "great FILM"]) == 0.5  # lower-cased words
  assert script.distinct_n(["one", ""]) == 0.0


def test_degenerate_is_a_token_3gram_three_times():
  assert script.degenerate([1, 2, 3] * 3)
  assert not script.degenerate([1, 2, 3] * 2 + [1, 2])
  assert script.degenerate([5, 1, 2, 3, 1, 2, 3, 9, 1, 2, 3])
  assert not script.degenerate([])


def test_completion_logps_sum_the_sampled_tokens_log_probabilities():
  cfg = decoder.DecoderConfig(
    model_type="llama",
    vocab_size=29,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
  )
  model = decoder.build(cfg, task="causal_lm", rngs=nnx.Rngs(0))
  prompts, completions = [[3, 4, 5], [7, 8]], [[9, 10], [11, 12, 13, 14]]
  got = script.completion_logps(model, prompts, completions, batch_size=3)
  for p, c, g in zip(prompts, completions, got, strict=True):
    ids = np.array([p + c], np.int32)
    logp = jax.nn.log_softmax(np.asarray(model(ids))[0].astype(np.float32), axis=-1)
    want = sum(logp[len(p) + i - 1, t] for i, t in enumerate(c))
    assert g == pytest.approx(float(want), abs=1e-4)


def test_heldout_prompts_are_the_200_builtin_ones():
  try:
    prompts = script.prompt_texts("review_prompts:heldout")
  except FileNotFoundError as e:  # the offline assets are not fetched
    pytest.skip(str(e))
  assert len(prompts) == 200 == len(set(prompts)) and all(isinstance(p, str) and p for p in prompts)
