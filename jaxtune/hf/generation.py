"""generation_config.json for causal-LM exports: the tokens jaxtune stops and pads with.

transformers' `generate` reads its stop and pad ids from generation_config.json, not from the
tokenizer: an export without one runs past a chat turn's end (`<|im_end|>`) until max_new_tokens.
`generation_config` merges the base model's own file (kept whole: its sampling defaults too) with
the tokenizer's and model config's BOS/EOS/pad and the end-of-turn tokens of the chat template,
the same set `jaxtune generate` stops on (`stop_ids`).
"""

from __future__ import annotations

import json
from pathlib import Path

# End-of-turn tokens of the common chat templates (ChatML, Llama 3, Gemma, Phi-3, GPT-2/Qwen
# text end, SentencePiece EOS). A template that uses one of them ends its turns with it.
CHAT_STOPS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>",
              "<|endoftext|>", "<|end_of_text|>", "</s>")


def chat_stop_ids(tokenizer) -> list[int]:
  """Ids of the end-of-turn special tokens the tokenizer's chat template writes, in vocab order."""
  template = getattr(tokenizer, "chat_template", None)
  if tokenizer is None or not isinstance(template, str):
    return []
  vocab = tokenizer.get_vocab()
  return sorted(vocab[t] for t in CHAT_STOPS if t in template and t in vocab)


def _ids(value) -> list[int]:
  if value is None:
    return []
  return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def generation_config(tokenizer, model_config, base: dict | None = None) -> dict:
  """generation_config.json contents: `base` (the source's own, or None) with every stop id.

  eos_token_id lists the base's, the tokenizer's, the model config's, then the chat template's
  end-of-turn tokens (one int when there is one); pad_token_id is the one jaxtune pads with
  (the tokenizer's pad, else the first EOS).
  """
  out = dict(base or {})
  eos: list[int] = []
  for value in (out.get("eos_token_id"), getattr(tokenizer, "eos_token_id", None),
                getattr(model_config, "eos_token_id", None), chat_stop_ids(tokenizer)):
    eos += [i for i in _ids(value) if i not in eos]
  bos = getattr(tokenizer, "bos_token_id", None)
  bos = bos if bos is not None else out.get("bos_token_id", getattr(model_config, "bos_token_id", None))
  pad = getattr(tokenizer, "pad_token_id", None)
  if pad is None:
    pad = out.get("pad_token_id")
  if pad is None:
    pad = getattr(model_config, "pad_token_id", None)
  if pad is None and eos:
    pad = eos[0]
  for key, value in (("bos_token_id", bos), ("pad_token_id", pad),
                     ("eos_token_id", eos[0] if len(eos) == 1 else eos or None)):
    if value is not None:
      out[key] = value
  out.pop("transformers_version", None)  # the base's; this file is ours
  return out


def read_base(source_dir: str | Path | None) -> dict | None:
  """The base model's generation_config.json (an HF directory or hub snapshot), or None."""
  if source_dir is None:
    return None
  path = Path(source_dir) / "generation_config.json"
  try:
    return json.loads(path.read_text()) if path.is_file() else None
  except ValueError:
    return None  # a broken file in the base: the ids above still make a working config
