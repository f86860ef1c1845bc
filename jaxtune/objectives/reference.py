"""The reference model of preference and RL objectives: the base with its LoRA adapters off.

PROVISIONAL (branch i18-grpo): engineer i18-dpo writes this module on branch i18-dpo with the
same name and signature; at merge theirs is kept. Here each adapter's update is dropped (as if
lora_b were zero) on a shallow copy of the model, so no weight is copied.
"""

from __future__ import annotations

from flax import nnx

from jaxtune import lora


def adapters_off(model: nnx.Module) -> nnx.Module:
  """A model over the same arrays as `model` that computes its base: every `LoRALinear` adds
  nothing (its scale is 0, so y = x @ kernel + bias). `model` itself is untouched. Works inside
  jit on traced arrays (split / merge makes new module objects, not new weights)."""
  graphdef, state = nnx.split(model)
  base = nnx.merge(graphdef, state)
  for _, m in nnx.iter_modules(base):
    if isinstance(m, lora.LoRALinear):
      m.scale = 0.0
  return base
