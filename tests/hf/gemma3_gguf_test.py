"""Real weights: Gemma 3 270M (GGUF Q4_K_M) in jaxtune equals transformers' own GGUF load of it.

The file is fetched on request only (`python -m jaxtune.data.assets fetch gemma3`, 253 MB), so
this test skips where it was not. Both sides dequantize the same Q4_K/Q5_0/Q6_K/Q8_0 blocks to
float32 (jaxtune with the gguf package, transformers with its own copy of it); what differs is
everything after: the config each derives from the metadata (layer pattern, local rope base,
query scale, norms stored as 1 + w) and the network itself.
"""

import os

import numpy as np
import pytest

from jaxtune import generate, hf
from jaxtune.data import assets

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

# "The capital of France is" with <bos>, as transformers' GGUF tokenizer encodes it (jaxtune
# hands this file's SentencePiece vocabulary to that converter, so ids are compared to these).
PROMPT = [2, 818, 5279, 529, 7001, 563]


@pytest.fixture(scope="module")
def path():
  p = assets.gemma3_gguf()
  if not p.exists():
    pytest.skip(f"Gemma 3 270M GGUF is not fetched ({assets.GEMMA3_FETCH})")
  return str(p)


def test_logits_and_greedy_generation_match_transformers(path):
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  ours = hf.load(path)
  tok = hf.load_tokenizer(path)
  assert tok("The capital of France is")["input_ids"] == PROMPT
  assert ours.config.layer_types.count("full_attention") == 3  # 18 layers, every 6th global

  ids = np.array([PROMPT])
  with torch.no_grad():
    want = theirs(torch.tensor(ids)).logits.numpy()
  got = np.asarray(ours(ids))
  # Logits reach ~22: 1e-4 relative to that is float32 accumulation over 18 layers.
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)

  n = 10
  with torch.no_grad():
    out = theirs.generate(torch.tensor(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
  want_tokens = out[0, len(PROMPT):].tolist()
  res = generate.Generator(ours, pad_id=generate.pad_id(tok))([PROMPT], max_new_tokens=n)
  assert res.tokens[0] == want_tokens
  assert "France" in tok.decode(res.tokens[0])  # (" the capital of the country of France. It is")
