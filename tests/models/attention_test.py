"""The attention switch: 'auto' picks plain XLA on CPU, cuDNN is refused off GPU, bad names named."""

import jax
import jax.numpy as jnp
import pytest

from jaxtune import config as jt_config
from jaxtune.models import layers, presets


def test_auto_is_xla_on_cpu():
  assert jax.default_backend() == "cpu"
  assert layers.resolve_attention("auto", jnp.bfloat16, dropout=None, softcap=None) == "xla"
  assert layers.resolve_attention("xla", jnp.bfloat16, dropout=None, softcap=None) == "xla"


def test_cudnn_refused_off_gpu_and_unknown_names():
  with pytest.raises(ValueError, match="model.attention='cudnn' needs a GPU"):
    layers.resolve_attention("cudnn", jnp.bfloat16, dropout=None, softcap=None)
  with pytest.raises(ValueError, match="model.attention='flash'"):
    layers.resolve_attention("flash", jnp.bfloat16, dropout=None, softcap=None)
  c = jt_config.default()
  c.model.attention = "flash"
  with pytest.raises(ValueError, match="model.attention"):
    jt_config.validate(c)


def test_set_attention_reaches_every_layer():
  model = presets.init("tiny-llama", task="causal_lm")
  layers.set_attention(model, "xla")
  impls = [m.attention_impl for _, m in model.iter_modules() if hasattr(m, "attention_impl")]
  assert len(impls) == len(model.layers) > 0 and set(impls) == {"xla"}
  with pytest.raises(ValueError):
    layers.set_attention(model, "splash")


def test_a_score_bias_keeps_xla_on_gpu(monkeypatch):
  # MPNet's relative-position bias trains; cuDNN's bias gradient is not wired in, so 'auto'
  # stays on XLA and an explicit 'cudnn' is refused, naming why.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert layers.resolve_attention("auto", jnp.bfloat16, dropout=None, softcap=None) == "cudnn"
  assert layers.resolve_attention("auto", jnp.bfloat16, dropout=None, softcap=None,
                                  bias=True) == "xla"
  with pytest.raises(ValueError, match="relative-position bias"):
    layers.resolve_attention("cudnn", jnp.bfloat16, dropout=None, softcap=None, bias=True)
