"""Does back-translation come back in English? The old bare prompt against the current one.

SmolLM2-135M-Instruct (the offline GGUF) takes 12 Rotten Tomatoes snippets (6 positive, 6
negative) to French and back, greedily, through `jaxtune.generate`, once with the bare prompt
jaxtune used before ("Translate the following text into {language}. Reply with the translation
only.") and once with `LMTranslator`'s questions (both languages named, two example turns, the
answer begun with the target's label), its English check off so the model's own answers are
counted. langdetect (seeded) names the language of each answer on the way back.

  python benchmarks/backtranslate_language.py
"""

from __future__ import annotations

from langdetect import DetectorFactory, detect_langs

from jaxtune import generate
from jaxtune.data import assets
from jaxtune.data.quality import backtranslate

OLD_PROMPT = "Translate the following text into {language}. Reply with the translation only.\n\n{text}"


def main() -> None:
  lines = [x.split("\t")[2] for x in assets.rotten_tomatoes_txt().read_text(encoding="utf-8").splitlines()]
  texts = lines[3:9] + lines[6000:6006]
  tr = backtranslate.LMTranslator(str(assets.smollm2_gguf()), "French", check_english=False)
  gen, tok, stops = tr._load()

  def old_ask(ts: list[str], language: str) -> list[str]:
    prompts = [generate.encode(tok, OLD_PROMPT.format(language=language, text=t), chat=True) for t in ts]
    res = gen(prompts, max_new_tokens=tr.max_new_tokens, stop_ids=stops,
              batch_size=min(tr.batch_size, len(prompts)))
    return [tok.decode(t, skip_special_tokens=True).strip() for t in res.tokens]

  there = old_ask(texts, "French")
  old = old_ask([p or t for p, t in zip(there, texts)], "English")
  there = tr.ask(texts, "English", "French")
  new = tr.ask([p or t for p, t in zip(there, texts)], "French", "English")
  DetectorFactory.seed = 0
  for name, back in (("old prompt", old), ("LMTranslator", new)):
    langs = [detect_langs(b)[0].lang if b.strip() else "-" for b in back]
    print(f"{name}: {langs.count('en')} of {len(texts)} back in English; languages {langs}")
    for t, b in zip(texts, back):
      print(f"  {t[:60]!r} -> {b[:80]!r}")


if __name__ == "__main__":
  main()
