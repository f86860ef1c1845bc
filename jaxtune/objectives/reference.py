"""The reference model of preference and RL objectives, without a second copy of the weights.

With LoRA the reference is the frozen base: `adapters_off(model)` is the same model with every
adapter matrix (`lora.LoRAParam`) replaced by zeros, so each adapted layer adds exactly 0 and
computes what the base computes, over the very arrays the policy uses (inside a jitted step no
weight is copied). Full fine-tuning has no frozen base in memory; there the preference objective
uses reference log-probabilities computed once before training (`jaxtune.objectives.preference`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune import lora


def adapters_off(model: nnx.Module) -> nnx.Module:
  """`model` with its LoRA adapters switched off: a new module over the same base arrays whose
  adapters are zeros (exactly the base's outputs). `model` itself is left as it was."""
  graphdef, adapters, rest = nnx.split(model, lora.LoRAParam, ...)
  return nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, adapters), rest)
