"""Real weights: all-mpnet-base-v2 sentence embeddings from jaxtune equal sentence-transformers'.

The model is fetched on request only (`python -m jaxtune.data.assets fetch mpnet`, 400 MB), so
this test skips where it was not. jaxtune's side is what a mean-pooled classifier reads
(`bert.mean_pool` over `encode`), L2-normalised as the pipeline's Normalize module does; the
reference is `SentenceTransformer(dir).encode`, tokenizer included.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import hf
from jaxtune.data import assets
from jaxtune.models import bert

pytestmark = pytest.mark.slow

SENTENCES = [
  "A man is eating food.",
  "A man is eating a piece of bread.",
  "The new movie is awesome and everyone in the theatre loved it, clapping at the end.",
  "Stock markets fell sharply on Tuesday after the central bank raised interest rates.",
  "Hi",
]


@pytest.fixture(scope="module")
def model_dir():
  path = assets.mpnet_dir()
  if not (path / "model.safetensors").exists():
    pytest.skip(f"all-mpnet-base-v2 is not fetched ({assets.MPNET_FETCH})")
  return path


def test_mean_pooled_embeddings_match_sentence_transformers(model_dir):
  st = pytest.importorskip("sentence_transformers")
  tok = hf.load_tokenizer(model_dir)
  enc = tok(SENTENCES, padding="longest", truncation=True, max_length=384, return_tensors="np")
  assert enc["attention_mask"].min() == 0  # padded rows: the mean must skip the pad tokens
  model = hf.load(model_dir, task="encoder")
  assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 768

  @nnx.jit
  def embed(m, ids, mask):
    return bert.mean_pool(m.encode(ids, mask), mask)

  got = np.asarray(embed(model, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])))
  got = got / np.linalg.norm(got, axis=-1, keepdims=True)
  want = st.SentenceTransformer(str(model_dir), device="cpu").encode(SENTENCES)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  cos = got @ got.T
  assert cos[0, 1] > 0.5 and cos[0, 1] > max(cos[0, 2], cos[0, 3])  # two men eating
