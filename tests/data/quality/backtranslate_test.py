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
  # A random model answers in no language: the English check is off to see the plumbing.
  tr = backtranslate.LMTranslator(source, "French", max_new_tokens=6, tokenizer=tokenizer,
                                  check_english=False)
  texts = ["the film was a delight", "a dull, lifeless plot"]
  first = tr(texts)
  assert len(first) == 2 and all(isinstance(t, str) and t for t in first)
  assert tr(texts) == first  # greedy decoding: the same paraphrases every time
  assert tr([]) == []
  # One question per text, answered by the model (a random one may answer with nothing, and
  # an empty answer keeps the source text).
  there = tr.ask(texts, "English", "French")
  assert len(there) == 2 and all(isinstance(t, str) for t in there)
  back = tr.ask([p or t for p, t in zip(there, texts)], "French", "English")
  assert first == [b or t for b, t in zip(back, texts)]
  # With the check on, answers that are not English are dropped: the source texts come back.
  assert not any(backtranslate.is_english(b) for b in back if b)
  guarded = backtranslate.LMTranslator(source, "French", max_new_tokens=6, tokenizer=tokenizer)
  guarded._loaded = tr._loaded  # the same model, not loaded twice
  assert guarded(texts) == texts
  # As the augmentation step uses it.
  import numpy as np

  aug = augment.Augmenter(("backtranslate",), translator=tr)
  made = aug(texts, np.random.default_rng(0))
  assert [op for _, op, _ in made] == ["backtranslate"] * len(made)


def test_named_in_the_config():
  fn = augment.load_translator("jaxtune.data.quality.backtranslate:smollm2_french")
  assert fn is backtranslate.smollm2_french


def test_questions_name_both_languages_show_examples_and_begin_the_answer(tiny_chat_model):
  source, tokenizer = tiny_chat_model
  tr = backtranslate.LMTranslator(source, "French", tokenizer=tokenizer)
  _, tok, _ = tr._load()
  there = tok.decode(tr.prompt(tok, "a dull plot", "English", "French"))
  back = tok.decode(tr.prompt(tok, "une intrigue ennuyeuse", "French", "English"))
  # The way back is asked from French, with French -> English examples, and the answer begun
  # with "English:", so the model continues a translation rather than copying or chatting.
  assert "You translate French into English." in back and back.endswith("assistant\nEnglish:")
  en, fr = backtranslate.EXAMPLES["French"][0]
  assert back.index(f"French: {fr}") < back.index(f"English: {en}") < back.index(
    "French: une intrigue ennuyeuse")
  assert "You translate English into French." in there and there.endswith("assistant\nFrench:")
  assert there.index(f"English: {en}") < there.index(f"French: {fr}") < there.index(
    "English: a dull plot")


@pytest.mark.parametrize("text, english", [
  ("The film was a delight from start to finish.", True),
  ("It was a dull plot and the acting was wooden.", True),
  ("Le film était un plaisir du début à la fin.", False),
  ("Une intrigue ennuyeuse et sans vie.", False),
  ("", False),
])
def test_english_check(text, english):
  assert backtranslate.is_english(text) is english


def test_answer_keeps_its_first_line_without_quotes():
  assert backtranslate._first_line('\n "The film was good."\n\nThis translation keeps...') == (
    "The film was good.")


@pytest.mark.slow
def test_real_round_trip_comes_back_in_english():
  """SmolLM2-135M-Instruct on real Rotten Tomatoes snippets: through French and back, each
  answer in English by langdetect (an independent detector; the translator's own check is off,
  so this is the model's answer). The old bare prompt brought French back."""
  from langdetect import DetectorFactory, detect_langs

  try:
    gguf, snippets = assets.smollm2_gguf(), assets.rotten_tomatoes_txt()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  lines = [x.split("\t")[2] for x in snippets.read_text(encoding="utf-8").splitlines()]
  texts = [lines[4], lines[6], lines[6004], lines[6005]]
  tr = backtranslate.LMTranslator(str(gguf), "French", max_new_tokens=40, check_english=False)
  there = tr.ask(texts, "English", "French")
  back = tr.ask(there, "French", "English")
  DetectorFactory.seed = 0
  there_langs = [detect_langs(t)[0].lang for t in there]
  back_langs = [detect_langs(b)[0].lang for b in back]
  assert there_langs.count("fr") >= 3, list(zip(there_langs, there))  # it went through French
  assert back_langs == ["en"] * 4, list(zip(back_langs, back))  # and came back in English
  assert all(b != t for b, t in zip(back, texts))  # paraphrases, not copies
