"""The Llama-style decoder on its own: parameter layout, packing, padding, remat, dropout, heads.

Parity with transformers lives in tests/hf/llama_test.py; these tests need no checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.hf.convert import param_paths
from jaxtune.models import decoder, layers

CFG = decoder.DecoderConfig(
  model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
  num_heads=4, num_kv_heads=2, head_dim=8, pad_token_id=0,
)


def _model(cfg=CFG, task="causal_lm", param_dtype=jnp.float32, compute_dtype=None):
  """A model whose parameters depend only on their paths, so configs differing in a switch
  (sliding window, dtype) share weights; filled from numpy, as eager init is slow on CPU."""
  if task == "seq_cls" and not cfg.num_labels:
    cfg = dataclasses.replace(cfg, num_labels=3)
  abstract = nnx.eval_shape(lambda: decoder.build(
    cfg, task=task, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=nnx.Rngs(0)))
  for path, var in param_paths(nnx.state(abstract, nnx.Param)).items():
    rng = np.random.default_rng(sum(map(ord, path)))
    # Norms and biases random too (HF-style 1 / 0 init would hide a misplaced one).
    std = 0.1 if path.endswith(("scale", "bias")) else 0.2
    base = 1.0 if path.endswith("scale") and not cfg.norm_plus_one else 0.0
    var.value = jnp.asarray(base + std * rng.standard_normal(var.shape), var.dtype)
  return abstract


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(graphdef, method, state, args, kwargs):
  return getattr(nnx.merge(graphdef, state), method)(*args, **kwargs)


def run(model, *args, method="__call__", **kwargs):
  """model.method(*args, **kwargs), jitted (eager dispatch is slow on shared CPUs)."""
  graphdef, state = nnx.split(model)
  return _apply(graphdef, method, state, args, kwargs)


def _ids(shape, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 1, CFG.vocab_size)


def test_parameter_names_and_axes():
  cfg = dataclasses.replace(CFG, attention_bias=True, mlp_bias=True, qk_norm=True)
  params = param_paths(nnx.state(_model(cfg), nnx.Param))
  axes = {k: v.get_metadata()["out_sharding"] for k, v in params.items()}
  assert axes["embed_tokens/embedding"] == ("vocab", "embed")
  assert axes["layers/1/self_attn/q_proj/kernel"] == ("embed", "heads")
  assert axes["layers/1/self_attn/k_proj/kernel"] == ("embed", "kv_heads")
  assert axes["layers/1/self_attn/v_proj/bias"] == ("kv_heads",)
  assert axes["layers/1/self_attn/o_proj/kernel"] == ("heads", "embed")
  assert axes["layers/0/self_attn/q_norm/scale"] == ("norm",)
  assert axes["layers/0/mlp/gate_proj/kernel"] == ("embed", "mlp")
  assert axes["layers/0/mlp/down_proj/kernel"] == ("mlp", "embed")
  assert axes["layers/0/post_attention_layernorm/scale"] == ("norm",)
  assert axes["norm/scale"] == ("norm",)
  assert axes["lm_head/kernel"] == ("embed", "vocab")
  assert params["layers/0/self_attn/k_proj/kernel"].shape == (32, 16)
  assert all(None not in a for a in axes.values())

  tied = param_paths(nnx.state(_model(dataclasses.replace(CFG, tie_embeddings=True)), nnx.Param))
  assert "lm_head/kernel" not in tied
  cls = param_paths(nnx.state(_model(task="seq_cls"), nnx.Param))
  assert cls["score/kernel"].get_metadata()["out_sharding"] == ("embed", "labels")
  assert "lm_head/kernel" not in cls and "score/bias" not in cls


def test_packed_sequences_match_separate_runs():
  model = _model()
  a, b = _ids((1, 5), 1), _ids((1, 6), 2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)  # one pad at the end
  segments = jnp.array([[1] * 5 + [2] * 6 + [0]])
  positions = jnp.array([list(range(5)) + list(range(6)) + [0]])
  mask = (segments > 0).astype(jnp.int32)
  alone = jnp.concatenate([run(model, a), run(model, b)], axis=1)[0]
  got = run(model, packed, mask, positions=positions, segment_ids=segments)[0, :11]
  np.testing.assert_allclose(got, alone, atol=1e-5)
  # Positions derived from the segment ids when the packer gives none.
  got = run(model, packed, mask, segment_ids=segments)[0, :11]
  np.testing.assert_allclose(got, alone, atol=1e-5)


def test_left_padding_uses_mask_positions():
  model = _model()
  ids = _ids((1, 6))
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids], axis=1)
  mask = jnp.array([[0, 0, 0] + [1] * 6])
  np.testing.assert_allclose(run(model, padded, mask)[:, 3:], run(model, ids), atol=1e-5)
  np.testing.assert_array_equal(
    decoder.default_positions(padded, mask, None), [[0, 0, 0, 0, 1, 2, 3, 4, 5]]
  )


@functools.partial(jax.jit, static_argnums=0)
def _hidden_head_and_call(graphdef, state, ids):
  model = nnx.merge(graphdef, state)
  h = model.hidden_states(ids)
  return h, model.logits_from_hidden(h), model(ids)


def test_hidden_states_then_head_equals_call():
  for tied in (False, True):
    model = _model(dataclasses.replace(CFG, tie_embeddings=tied))
    h, from_hidden, logits = _hidden_head_and_call(*nnx.split(model), _ids((2, 7)))
    assert h.shape == (2, 7, CFG.hidden_size)
    np.testing.assert_allclose(from_hidden, logits, atol=1e-5)


def test_sliding_window():
  model = _model()
  ids = _ids((2, 9))
  full = run(model, ids)
  out = run(_model(dataclasses.replace(CFG, sliding_window=4)), ids)
  np.testing.assert_allclose(out[:, :4], full[:, :4], atol=1e-5)  # window not yet binding
  assert float(jnp.max(jnp.abs(out[:, 4:] - full[:, 4:]))) > 1e-4


def _loss_and_grads(model, ids):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest):
    return jnp.mean(nnx.merge(graphdef, params, rest)(ids) ** 2)

  return jax.jit(jax.value_and_grad(loss))(params, rest)


@functools.cache
def _reference_grads():
  return _loss_and_grads(_model(), _ids((2, 6)))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(remat):
  ids = _ids((2, 6))
  want_loss, want = _reference_grads()
  model = _model()
  model.remat = remat
  graphdef, state = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state))
  # One rematerialised block per layer (the primitive prints as remat2 or checkpoint).
  assert len(re.findall(r"\b(?:remat2|checkpoint)\[", jaxpr)) == CFG.num_layers
  loss, got = _loss_and_grads(model, ids)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got, want)


def _unstacked_grads(model, grads):
  """Gradients of a stacked model's params laid out like the unstacked model's."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  holder = nnx.merge(graphdef, grads, rest)
  layers.unstack_layers(holder)
  return nnx.state(holder, nnx.Param)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_stacked_layers_give_same_loss_and_gradients(remat):
  ids = _ids((2, 6))
  model = _model(dataclasses.replace(CFG, num_layers=3))
  model.remat = remat
  want_loss, want = _loss_and_grads(model, ids)
  layers.stack_layers(model)
  q = model.layers.self_attn.q_proj.kernel
  assert q.shape == (3, 32, 32) and q.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
  graphdef, state = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state))
  # One scan over the stack, its body holding the single layer (rematerialised once, if asked).
  assert len(re.findall(r"\bscan\[", jaxpr)) == 1
  assert len(re.findall(r"\b(?:remat2|checkpoint)\[", jaxpr)) == (remat != "none")
  loss, got = _loss_and_grads(model, ids)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  got = _unstacked_grads(model, got)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got, want)


def test_stack_then_unstack_restores_the_model():
  model, want = _model(), _model()
  layers.stack_layers(model)
  assert layers.num_layers(model.layers) == CFG.num_layers
  with pytest.raises(ValueError, match="unstack_layers"):
    layers.layer_list(model.layers)
  layers.unstack_layers(model)
  got, ref = nnx.state(model, nnx.Param), nnx.state(want, nnx.Param)
  assert param_paths(got).keys() == param_paths(ref).keys()
  for path, var in param_paths(got).items():
    np.testing.assert_array_equal(var.get_value(), param_paths(ref)[path].get_value())
    assert var.get_metadata()["out_sharding"] == param_paths(ref)[path].get_metadata()["out_sharding"]


def test_stacked_layers_draw_the_same_dropout_masks():
  model = _model(dataclasses.replace(CFG, attention_dropout=0.5))
  model.train()
  ids, rng = _ids((2, 6)), jax.random.key(5)
  loop = run(model, ids, dropout_rng=rng)
  layers.stack_layers(model)
  np.testing.assert_allclose(run(model, ids, dropout_rng=rng), loop, atol=1e-5)
  assert float(jnp.max(jnp.abs(run(model, ids, dropout_rng=jax.random.key(6)) - loop))) > 1e-3


def test_stacking_lora_needs_every_layer_adapted_alike():
  from jaxtune import lora

  cfg = lora.default_config()
  cfg.rank, cfg.targets = 2, r"layers/0/self_attn/q_proj"
  model = lora.apply(_model(), cfg)
  with pytest.raises(ValueError, match="scan_layers: layer 1 of CausalLM differs"):
    layers.stack_layers(model)
  cfg.targets = r"q_proj"  # every layer adapted alike: stackable, and the same numbers
  model = lora.apply(_model(), cfg)
  want = run(model, _ids((1, 4)))
  layers.stack_layers(model)
  assert model.layers.self_attn.q_proj.lora_a.shape[0] == CFG.num_layers
  np.testing.assert_allclose(run(model, _ids((1, 4))), want, atol=1e-5)


def test_bad_remat_and_token_types_raise():
  model = _model()
  ids = _ids((1, 4))
  with pytest.raises(ValueError, match="token_type_ids"):
    run(model, ids, token_type_ids=jnp.zeros_like(ids))
  model.remat = "some"
  with pytest.raises(ValueError, match="remat"):
    run(model, ids)


def test_attention_dropout_only_in_train_mode():
  model = _model(dataclasses.replace(CFG, attention_dropout=0.5))
  ids = _ids((2, 6))
  rng = jax.random.key(3)
  eval_out = run(model, ids)
  np.testing.assert_array_equal(run(model, ids, dropout_rng=rng), eval_out)  # eval: no dropout
  model.train()
  with pytest.raises(ValueError, match="dropout rng"):
    run(model, ids)
  a, b = run(model, ids, dropout_rng=rng), run(model, ids, dropout_rng=rng)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - eval_out))) > 1e-3
  model.eval()
  np.testing.assert_array_equal(run(model, ids), eval_out)


def test_seq_cls_scores_last_real_token():
  model = _model(task="seq_cls")
  ids = _ids((3, 6))
  mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [0] * 2 + [1] * 4])
  ids = jnp.where(mask == 1, ids, 0)
  np.testing.assert_array_equal(model.pooled_index(ids, mask), [5, 3, 5])
  logits = run(model, ids, mask)
  assert logits.shape == (3, 3)
  h = run(model, ids, mask, method="hidden_states")
  np.testing.assert_allclose(logits[1], model.score(h[1, 3]), atol=1e-5)
  # Without a pad id (HF would refuse a batch), the attention mask says which tokens are real.
  no_pad = _model(dataclasses.replace(CFG, pad_token_id=None, num_labels=3), task="seq_cls")
  np.testing.assert_array_equal(no_pad.pooled_index(ids, mask), [5, 3, 5])
  np.testing.assert_array_equal(no_pad.pooled_index(ids, None), [5, 5, 5])
  with pytest.raises(ValueError, match="packed"):
    run(model, ids, mask, segment_ids=mask)


def test_bf16_compute_with_f32_params():
  cfg = dataclasses.replace(CFG, model_type="gemma", norm_plus_one=True, scale_embeddings=True,
                            activation="gelu_pytorch_tanh", tie_embeddings=True, qk_norm=True)
  ids = _ids((2, 6))
  ref = run(_model(cfg), ids)
  model = _model(cfg, param_dtype=jnp.float32, compute_dtype=jnp.bfloat16)
  assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
  h, _, out = _hidden_head_and_call(*nnx.split(model), ids)
  assert out.dtype == jnp.bfloat16 and h.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))


def test_config_is_hashable_and_validated():
  hash(dataclasses.replace(CFG, rope_scaling=(("factor", 2.0), ("rope_type", "linear"))))
  with pytest.raises(ValueError, match="num_kv_heads"):
    dataclasses.replace(CFG, num_kv_heads=3)
  with pytest.raises(ValueError, match="task"):
    decoder.build(CFG, task="token_cls", rngs=nnx.Rngs(0))


# Gemma 3 style: local (window 3) and global layers interleaved, each kind with its rope base.
GEMMA3 = dataclasses.replace(
  CFG, model_type="gemma3_text", num_layers=3, qk_norm=True, norm_plus_one=True,
  scale_embeddings=True, sandwich_norms=True, activation="gelu_pytorch_tanh", sliding_window=3,
  layer_types=("sliding_attention", "full_attention", "sliding_attention"), rope_theta=1e4,
  rope_local_theta=50.0, query_pre_attn_scalar=12.0,
)


def test_mixed_layer_kinds_matter():
  ids = _ids((2, 9))
  out = run(_model(GEMMA3), ids)
  for other in (dict(layer_types=("full_attention",) * 3),  # no window anywhere
                dict(rope_local_theta=None)):  # local layers on the global rope base
    changed = run(_model(dataclasses.replace(GEMMA3, **other)), ids)
    np.testing.assert_allclose(changed[:, 0], out[:, 0], atol=1e-5)  # one token: no rope, no window
    assert float(jnp.max(jnp.abs(changed[:, 4:] - out[:, 4:]))) > 1e-3, other


def test_mixed_layers_packed_sequences_match_separate_runs():
  """Segments longer than the window: the local layers' window stays inside each document."""
  model = _model(GEMMA3)
  a, b = _ids((1, 5), 1), _ids((1, 6), 2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 6 + [0]])
  alone = jnp.concatenate([run(model, a), run(model, b)], axis=1)[0]
  got = run(model, packed, (segments > 0).astype(jnp.int32), segment_ids=segments)[0, :11]
  np.testing.assert_allclose(got, alone, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_stacked_mixed_layers_give_same_loss_and_gradients(remat):
  """Local and global layers scan as one stack: the kind is a scanned input, not structure."""
  ids = _ids((2, 7))
  model = _model(GEMMA3)
  model.remat = remat
  want_loss, want = _loss_and_grads(model, ids)
  layers.stack_layers(model)
  graphdef, state = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state))
  assert len(re.findall(r"\bscan\[", jaxpr)) == 1
  loss, got = _loss_and_grads(model, ids)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  got = _unstacked_grads(model, got)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got, want)


def test_final_logit_softcap_keeps_the_full_logits_loss():
  """The chunked loss multiplies by the bare head; a capped head must not take that path."""
  from jaxtune import losses, step

  model = _model(dataclasses.replace(GEMMA3, final_logit_softcap=0.5))
  ids = _ids((2, 7))
  logits = run(model, ids)
  assert float(jnp.max(jnp.abs(logits))) <= 0.5
  assert step.lm_head(model) is None and step.lm_head(_model(GEMMA3)) is not None
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "loss_mask": jnp.ones_like(ids)}
  got = step.causal_lm_terms(model, batch, None, chunk=4)
  want = losses.causal_lm_loss(logits, batch)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
