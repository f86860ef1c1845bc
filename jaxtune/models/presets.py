"""Named architectures for random-weight models: the tiny test model and real checkpoint shapes.

Presets are HF config dicts, so they go through the same strict family converters as real
checkpoints; `init` builds the model directly in its target sharding (never unsharded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune import sharding
from jaxtune.errors import ConfigError

_LLAMA3_ROPE = {
  "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}


def _llama(**kw) -> dict:
  base = {
    "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5,
    "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
    "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
  }
  base.update(kw)
  return base


def _gemma3(**kw) -> dict:
  """Gemma 3 text: every `pattern`-th layer global, the others local (sliding window)."""
  pattern = kw.pop("pattern", 6)
  base = {
    "model_type": "gemma3_text", "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
    "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
  }
  base.update(kw)
  base["layer_types"] = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                         for i in range(base["num_hidden_layers"])]
  return base


PRESETS: dict[str, dict] = {
  # Byte-level vocabulary (jaxtune.data.synthetic): trains in seconds on a CPU.
  "tiny-llama": _llama(vocab_size=257, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512),
  # Local layers with a window shorter than the rows, a global one between them.
  "tiny-gemma3": _gemma3(vocab_size=257, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, query_pre_attn_scalar=16, sliding_window=16, pattern=2,
                         max_position_embeddings=512),
  # The shapes of real checkpoints, for benchmarks.
  "llama-125m": _llama(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                       num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12),
  "llama3-1b": _llama(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=64, tie_word_embeddings=True, rope_parameters=_LLAMA3_ROPE),
  "llama3-3b": _llama(vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                      num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                      head_dim=128, tie_word_embeddings=True, rope_parameters=_LLAMA3_ROPE),
  "llama3-8b": _llama(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, rope_parameters=_LLAMA3_ROPE),
  # google/gemma-3-270m's config.json.
  "gemma3-270m": _gemma3(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                         num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                         head_dim=256, sliding_window=512, max_position_embeddings=32768),
}


def model_config(name: str, *, task: str = "causal_lm", num_labels: int | None = None,
                 pooling: str = "cls", config_overrides: dict | None = None):
  """(family, model config) of preset `name`: checks the name and the overrides (through the
  family's strict converter) without building anything."""
  from jaxtune.hf.convert import with_pooling
  from jaxtune.hf.families import family_for_model_type

  if name not in PRESETS:
    raise ConfigError(f"model.source=preset:{name} is unknown; presets: {sorted(PRESETS)}")
  hf = {**PRESETS[name], **(config_overrides or {})}
  if task == "seq_cls" and num_labels:
    hf["num_labels"] = num_labels
  where = f"preset {name}" + (" with model.config_overrides" if config_overrides else "")
  family = family_for_model_type(hf["model_type"], where)
  cfg = family.config_from_hf(hf, task=task, num_labels=num_labels, where=where)
  return family, with_pooling(family, cfg, task=task, pooling=pooling, where=where)


def init(
  name: str, *, task: str = "causal_lm", num_labels: int | None = None,
  param_dtype="float32", compute_dtype=None, mesh=None, seed: int = 0, pooling: str = "cls",
  config_overrides: dict | None = None,
) -> nnx.Module:
  """A randomly initialised model of preset `name`, placed on `mesh` as it is created.

  `config_overrides` replaces the preset's HF config attributes, as for an HF checkpoint."""
  family, cfg = model_config(name, task=task, num_labels=num_labels, pooling=pooling,
                             config_overrides=config_overrides)
  pd, cd = jnp.dtype(param_dtype), jnp.dtype(compute_dtype) if compute_dtype else None

  def build():
    return family.build(cfg, task=task, param_dtype=pd, compute_dtype=cd, rngs=nnx.Rngs(seed))

  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  if mesh is None:
    state = jax.jit(lambda: nnx.split(build())[1])()
  else:
    shardings = sharding.state_shardings(abstract, mesh)
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
  return nnx.merge(graphdef, state)
