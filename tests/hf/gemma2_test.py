"""Gemma 2 (`Gemma2ForCausalLM`, `gemma2`) against transformers.

Gemma 2 is Gemma 3's block without QK-norm and with one rope for every layer, plus tanh caps on
the attention scores and on the final logits. Tiny random HF models (torch, float32, eager
attention: the only one transformers applies the attention cap in) with a window of 4 in rows of
12, caps small enough that tanh bites, and a `query_pre_attn_scalar` unlike head_dim; jaxtune
must give the same logits, scanned too, and write them back so transformers loads them without
a warning.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxtune import hf  # noqa: E402
from jaxtune.hf import llama  # noqa: E402
from jaxtune.models import layers  # noqa: E402
from tests.hf.gemma3_test import (  # noqa: E402
  LABELS,
  PAD,
  TYPES,
  VOCAB,
  _batch,
  _diff,
  _jax_logits,
  _no_transformers_warnings,
  _torch_logits,
)

BASE = dict(
  vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=PAD,
  max_position_embeddings=64, sliding_window=4, layer_types=TYPES, query_pre_attn_scalar=12,
  rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
  attn_logit_softcapping=0.5, final_logit_softcapping=2.0,
)


def _hf_model(task: str, **edit):
  cfg = transformers.Gemma2Config(**{**BASE, **edit})
  auto = transformers.AutoModelForCausalLM
  if task == "seq_cls":
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {n: i for i, n in enumerate(LABELS)}
    auto = transformers.AutoModelForSequenceClassification
  torch.manual_seed(0)
  model = auto.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():  # norms start at 0 ((1 + w) scale): perturb every tensor
      p.add_(0.3 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("task", ["causal_lm", "seq_cls"])
def test_parity_and_roundtrip(tmp_path, task):
  ref = _hf_model(task)
  ref.save_pretrained(tmp_path / "in")
  ids, mask = _batch()
  want = _torch_logits(ref, ids, mask)
  model = hf.load(tmp_path / "in", task=task)
  cfg = model.config
  assert (cfg.model_type, cfg.attn_logit_softcap, cfg.final_logit_softcap) == ("gemma2", 0.5, 2.0)
  assert cfg.sandwich_norms and not cfg.qk_norm and cfg.rope_local_theta is None
  got = _jax_logits(model, ids, mask)
  causal = mask if task == "causal_lm" else None
  assert _diff(got, want, causal) < 1e-5
  if task == "causal_lm":  # the caps change these logits, so the parity above covers them
    for edit in (dict(attn_logit_softcapping=None), dict(final_logit_softcapping=None)):
      assert _diff(_torch_logits(_hf_model(task, **edit), ids, mask), want, causal) > 1e-2, edit
    layers.stack_layers(model)  # one scanned stack of local and global layers
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids, mask))(state))
    assert len(re.findall(r"\bscan\[", jaxpr)) == 1
    assert _diff(_jax_logits(model, ids, mask), want, causal) < 1e-5

  out = hf.save(model, tmp_path / "out")
  auto = (transformers.AutoModelForSequenceClassification if task == "seq_cls"
          else transformers.AutoModelForCausalLM)
  with _no_transformers_warnings():
    back, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
  assert type(back).__name__ == type(ref).__name__
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info.get(kind), (kind, info[kind])
  assert back.config.layer_types == TYPES and back.config.rope_parameters == ref.config.rope_parameters
  np.testing.assert_allclose(_torch_logits(back.eval(), ids, mask), want, atol=1e-6, rtol=0)


def test_defaults_read_as_transformers_does():
  """A config.json without layer_types or caps means Gemma2Config's: every 2nd layer global,
  attention capped at 50, logits at 30; an explicit null turns a cap off."""
  short = dict(model_type="gemma2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=5, num_attention_heads=4)
  ours = llama.FAMILY.config_from_hf(dict(short), task="causal_lm", num_labels=None, where="c")
  theirs = transformers.Gemma2Config(**{k: v for k, v in short.items() if k != "model_type"})
  assert list(ours.layer_types) == theirs.layer_types and ours.layer_kinds == (1, 0, 1, 0, 1)
  assert (ours.attn_logit_softcap, ours.final_logit_softcap) == (50.0, 30.0)
  assert (ours.head_dim, ours.query_pre_attn_scalar, ours.sliding_window) == (256, 256.0, 4096)
  off = llama.FAMILY.config_from_hf({**short, "attn_logit_softcapping": None}, task="causal_lm",
                                    num_labels=None, where="c")
  assert off.attn_logit_softcap is None
  with pytest.raises(hf.UnsupportedConfigError, match="final_logit_softcapping"):
    llama.FAMILY.config_from_hf({**short, "final_logit_softcapping": -1}, task="causal_lm",
                                num_labels=None, where="c")
