"""Back-translation through a chat causal LM that jaxtune loads: text -> pivot language -> back.

A translator for `data.augment=...,backtranslate` (see augment.py): name it in the config as
`data.augment_translator='jaxtune.data.quality.backtranslate:smollm2_french'` (the offline
SmolLM2-135M-Instruct, small and weak at translation, but it shows the plumbing), or build one
from any chat model (HF directory, hub id, .gguf) with `LMTranslator(source, pivot)` in a module
of your own and name that. Decoding is greedy through `jaxtune.generate` (KV cache, batched), so
the same texts always give the same paraphrases.

Small chat models answer a bare "Translate ... into English" about a French text by copying the
French back, or by chatting about it. So each question names both languages, shows the model
two translated examples as earlier turns of the conversation (few-shot), and starts its answer
with the target language's label ("English:"), which the model then completes; only the first
line of the answer is kept (it tends to go on explaining). And an answer that does not come back
in English (langdetect, seeded, as `jaxtune data audit` checks languages) is dropped: the source
text is kept, which the augmentation skips as a copy, rather than French rows entering an
English training set.
"""

from __future__ import annotations

import functools

# (English, pivot) pairs shown to the model as earlier turns, per pivot language. Other pivots
# get no examples (the question still names both languages).
EXAMPLES = {
  "French": (
    ("The cat is sleeping on the sofa.", "Le chat dort sur le canapé."),
    ("I don't like this restaurant, the food is cold.",
     "Je n'aime pas ce restaurant, la nourriture est froide."),
  ),
}
SYSTEM = "You translate {source} into {target}."


class LMTranslator:
  """`translator(texts) -> texts`: each text asked into `pivot`, and the answer back into English.

  The model loads on first use. An empty answer, or a way back that is not English, keeps the
  source text (the augmentation then skips it as a copy that adds nothing).
  """

  def __init__(self, source: str, pivot: str = "French", *, max_new_tokens: int = 96,
               batch_size: int = 16, tokenizer: str = "", check_english: bool = True):
    self.source, self.pivot, self.tokenizer_source = source, pivot, tokenizer
    self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
    self.check_english = check_english
    self._loaded = None

  def _load(self):
    if self._loaded is None:
      from jaxtune import finished_run, generate

      model, tok = finished_run.load_source(model=self.source, tokenizer=self.tokenizer_source)
      gen = generate.Generator(model, pad_id=generate.pad_id(tok))
      self._loaded = (gen, tok, generate.stop_ids(tok, model.config, []))
    return self._loaded

  def prompt(self, tok, text: str, source: str, target: str) -> list[int]:
    """Token ids of the question: system line, example turns, the text, "{target}:" begun."""
    from jaxtune.data import templates

    pivot = self.pivot if "English" in (source, target) else source
    messages = [{"role": "system", "content": SYSTEM.format(source=source, target=target)}]
    for en, other in EXAMPLES.get(pivot, ()):
      src, tgt = (en, other) if source == "English" else (other, en)
      messages += [{"role": "user", "content": f"{source}: {src}"},
                   {"role": "assistant", "content": f"{target}: {tgt}"}]
    messages.append({"role": "user", "content": f"{source}: {text}"})
    rendered = templates.render(tok, messages, add_generation_prompt=True) + f"{target}:"
    return list(tok(rendered, add_special_tokens=False)["input_ids"])

  def ask(self, texts: list[str], source: str, target: str) -> list[str]:
    """Each text translated from `source` into `target` (the first line of the answer)."""
    gen, tok, stops = self._load()
    prompts = [self.prompt(tok, t, source, target) for t in texts]
    res = gen(prompts, max_new_tokens=self.max_new_tokens, stop_ids=stops,
              batch_size=min(self.batch_size, len(prompts)))
    return [_first_line(tok.decode(t, skip_special_tokens=True)) for t in res.tokens]

  def __call__(self, texts: list[str]) -> list[str]:
    if not texts:
      return []
    there = self.ask(texts, "English", self.pivot)
    back = self.ask([p or t for p, t in zip(there, texts)], self.pivot, "English")
    if self.check_english:
      back = [b if is_english(b) else "" for b in back]
    return [b or t for b, t in zip(back, texts)]


def _first_line(answer: str) -> str:
  """The answer's first non-empty line, without the quotes small models like to add."""
  line = next((x.strip() for x in answer.strip().splitlines() if x.strip()), "")
  if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":
    line = line[1:-1].strip()
  return line


def is_english(text: str) -> bool:
  """Whether `text` reads as English: common English function words, else langdetect's top
  guess (seeded). Short texts are judged too: langdetect may misread a few words with no
  function word ("A dull, lifeless plot."), which drops one paraphrase, a small cost beside
  French rows entering an English training set."""
  from langdetect import detect_langs
  from langdetect.lang_detect_exception import LangDetectException

  from jaxtune.data.quality import text as text_lib

  text_lib.LanguageCheck("en")  # seeds langdetect
  if text_lib.common_english(text):
    return True
  try:
    return detect_langs(text)[0].lang == "en"
  except LangDetectException:  # no letters at all
    return False


@functools.cache
def _smollm2() -> LMTranslator:
  from jaxtune.data import assets

  return LMTranslator(str(assets.smollm2_gguf()), "French")


def smollm2_french(texts: list[str]) -> list[str]:
  """English -> French -> English with the offline SmolLM2-135M-Instruct."""
  return _smollm2()(texts)
