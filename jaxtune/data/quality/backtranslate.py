"""Back-translation through a chat causal LM that jaxtune loads: text -> pivot language -> back.

A translator for `data.augment=...,backtranslate` (see augment.py): name it in the config as
`data.augment_translator='jaxtune.data.quality.backtranslate:smollm2_french'` (the offline
SmolLM2-135M-Instruct, small and weak at translation, but it shows the plumbing), or build one
from any chat model (HF directory, hub id, .gguf) with `LMTranslator(source, pivot)` in a module
of your own and name that. Decoding is greedy through `jaxtune.generate` (KV cache, batched), so
the same texts always give the same paraphrases.
"""

from __future__ import annotations

import functools

PROMPT = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"


class LMTranslator:
  """`translator(texts) -> texts`: each text asked into `pivot`, and the answer back into English.

  The model loads on first use. An empty answer keeps the source text (the augmentation then
  skips it as a copy that adds nothing).
  """

  def __init__(self, source: str, pivot: str = "French", *, max_new_tokens: int = 96,
               batch_size: int = 16, tokenizer: str = ""):
    self.source, self.pivot, self.tokenizer_source = source, pivot, tokenizer
    self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
    self._loaded = None

  def _load(self):
    if self._loaded is None:
      from jaxtune import generate

      model, tok = generate.load_source(model=self.source, tokenizer=self.tokenizer_source)
      gen = generate.Generator(model, pad_id=generate.pad_id(tok))
      self._loaded = (gen, tok, generate.stop_ids(tok, model.config, []))
    return self._loaded

  def ask(self, texts: list[str], language: str) -> list[str]:
    from jaxtune import generate

    gen, tok, stops = self._load()
    prompts = [generate.encode(tok, PROMPT.format(language=language, text=t), chat=True)
               for t in texts]
    res = gen(prompts, max_new_tokens=self.max_new_tokens, stop_ids=stops,
              batch_size=min(self.batch_size, len(prompts)))
    return [tok.decode(t, skip_special_tokens=True).strip() for t in res.tokens]

  def __call__(self, texts: list[str]) -> list[str]:
    if not texts:
      return []
    there = self.ask(texts, self.pivot)
    back = self.ask([p or t for p, t in zip(there, texts)], "English")
    return [b or t for b, t in zip(back, texts)]


@functools.cache
def _smollm2() -> LMTranslator:
  from jaxtune.data import assets

  return LMTranslator(str(assets.smollm2_gguf()), "French")


def smollm2_french(texts: list[str]) -> list[str]:
  """English -> French -> English with the offline SmolLM2-135M-Instruct."""
  return _smollm2()(texts)
