"""The tokenizer a run's data is encoded with (one loader for the pipeline and the data tools)."""

from __future__ import annotations

from jaxtune.errors import ConfigError


def load_tokenizer(source: str):
  """An HF fast tokenizer with the file's built-in padding and truncation turned off.

  MiniLM's tokenizer.json pads to 128 and truncates; here lengths are decided by data.seq_len.
  """
  if not source or source.startswith("preset:"):
    raise ConfigError(
      f"config: data.tokenizer is empty and model.source={source!r} has no tokenizer; "
      "set data.tokenizer to an HF directory, .gguf file or hub id"
    )
  from jaxtune import hf

  tok = hf.load_tokenizer(source)
  backend = getattr(tok, "backend_tokenizer", None)
  if backend is not None:
    backend.no_padding()
    backend.no_truncation()
  return tok
