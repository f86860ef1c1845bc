"""Which Family handles an HF `model_type`, and which one a built jaxtune model belongs to."""

from __future__ import annotations

import importlib

from jaxtune.hf.errors import UnsupportedConfigError

# model_type -> module in jaxtune.hf exporting FAMILY (imported lazily).
_MODULES = {
  "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama",
  "gemma2": "llama",
  "gemma3_text": "llama",
  "gpt2": "gpt2",
  "bert": "bert",
  "mpnet": "mpnet",
}


def family_for_model_type(model_type: str | None, where: str):
  if model_type not in _MODULES:
    raise UnsupportedConfigError(
      f"{where}: model_type={model_type!r} is not supported; supported: {sorted(_MODULES)}"
    )
  return importlib.import_module(f"jaxtune.hf.{_MODULES[model_type]}").FAMILY


def family_for_module(model):
  cfg = getattr(model, "config", None)
  model_type = getattr(cfg, "model_type", None)
  if model_type is None:
    raise ValueError(f"{type(model).__name__} has no .config.model_type: not a jaxtune HF model")
  return family_for_model_type(model_type, type(model).__name__)
