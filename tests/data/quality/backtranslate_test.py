"""LM back-translation: a tiny random Llama with the real SmolLM2 tokenizer and chat template."""

import json

import pytest

from jaxtune.data import assets
from jaxtune.data.quality import augment, backtranslate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
  try:
    gguf = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  out = tmp_path_factory.mktemp("tiny_chat")
  cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(out)
  (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
  return str(out), str(gguf)


def test_round_trip_is_deterministic_and_pluggable(tiny_chat_model):
  source, tokenizer = tiny_chat_model
  tr = backtranslate.LMTranslator(source, "French", max_new_tokens=6, tokenizer=tokenizer)
  texts = ["the film was a delight", "a dull, lifeless plot"]
  first = tr(texts)
  assert len(first) == 2 and all(isinstance(t, str) and t for t in first)
  assert tr(texts) == first  # greedy decoding: the same paraphrases every time
  assert tr([]) == []
  # One question per text, answered by the model (a random one may answer with nothing, and
  # an empty answer keeps the source text).
  there = tr.ask(texts, "French")
  assert len(there) == 2 and all(isinstance(t, str) for t in there)
  assert first == [b or t for b, t in zip(tr.ask([p or t for p, t in zip(there, texts)], "English"), texts)]
  # As the augmentation step uses it.
  import numpy as np

  aug = augment.Augmenter(("backtranslate",), translator=tr)
  made = aug(texts, np.random.default_rng(0))
  assert [op for _, op, _ in made] == ["backtranslate"] * len(made)


def test_named_in_the_config():
  fn = augment.load_translator("jaxtune.data.quality.backtranslate:smollm2_french")
  assert fn is backtranslate.smollm2_french
