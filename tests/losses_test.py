"""The chunked causal-LM loss equals the full-logits loss, in value and gradients."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import lora, losses, step
from jaxtune.models import decoder, gpt2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import tiny  # noqa: E402

VOCAB = 37


def tiny_model(kind):
  rngs = nnx.Rngs(0)
  if kind == "gpt2":
    cfg = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                          n_inner=32, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    return gpt2.GPT2(cfg, task="causal_lm", rngs=rngs)
  cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                              intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                              head_dim=8, tie_embeddings=kind == "tied")
  return decoder.build(cfg, task="causal_lm", rngs=rngs)


def tiny_batch(B=4, T=12, packed=False, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
  loss_mask = (rng.random((B, T)) > 0.3).astype(np.int32)
  b = {"input_ids": ids, "attention_mask": np.ones((B, T), np.int32), "loss_mask": loss_mask}
  if packed:
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2:] = 2
    seg[0, -3:] = 0  # padding
    b["segment_ids"] = seg
    b["attention_mask"] = (seg > 0).astype(np.int32)
  return jax.tree.map(jnp.asarray, b)


def loss_and_grads(graphdef, params, batch, chunk):
  def f(p):
    model = nnx.merge(graphdef, p)
    s, w = step.causal_lm_terms(model, batch, None, chunk)
    return s / w, (s, w)

  return jax.jit(jax.value_and_grad(f, has_aux=True))(params)


@pytest.mark.parametrize("kind", ["untied", "tied", "gpt2"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("chunk", [5, 16, 10_000])
def test_chunked_loss_and_grads_match_full_logits(kind, packed, chunk):
  model = tiny_model(kind)
  graphdef, params = nnx.split(model)
  assert step.lm_head(model) is not None
  batch = tiny_batch(packed=packed)
  (ref, (ref_s, ref_w)), ref_g = loss_and_grads(graphdef, params, batch, 0)
  (got, (got_s, got_w)), got_g = loss_and_grads(graphdef, params, batch, chunk)
  np.testing.assert_allclose(got_w, ref_w)
  np.testing.assert_allclose(got_s, ref_s, rtol=1e-5)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  flat_ref, flat_got = jax.tree.leaves(ref_g), jax.tree.leaves(got_g)
  assert len(flat_ref) == len(flat_got)
  for r, g in zip(flat_ref, flat_got):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_chunked_loss_direct_matches_plain():
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.normal(size=(3, 7, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, VOCAB)), jnp.float32)
  batch = tiny_batch(B=3, T=7, packed=True)
  head = lambda w, x: x @ w
  plain = lambda h, w: losses.causal_lm_loss(h @ w, batch)[0]
  chunked = lambda h, w: losses.chunked_causal_lm_loss(h, head, w, batch, chunk=4)[0]
  np.testing.assert_allclose(chunked(h, w), plain(h, w), rtol=1e-5)
  for r, g in zip(jax.grad(plain, (0, 1))(h, w), jax.grad(chunked, (0, 1))(h, w)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  # Forward only (evaluation): no gradient work, same value.
  np.testing.assert_allclose(jax.jit(chunked)(h, w), plain(h, w), rtol=1e-5)


def test_bf16_compute_close_to_plain():
  cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                              intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                              head_dim=8)
  model = decoder.build(cfg, task="causal_lm", compute_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  batch = tiny_batch()
  (ref, _), ref_g = loss_and_grads(graphdef, params, batch, 0)
  (got, _), got_g = loss_and_grads(graphdef, params, batch, 8)
  np.testing.assert_allclose(got, ref, rtol=1e-2)
  for r, g in zip(jax.tree.leaves(ref_g), jax.tree.leaves(got_g)):
    assert g.dtype == r.dtype
    np.testing.assert_allclose(g, r, rtol=5e-2, atol=5e-3)


def test_lora_head_keeps_plain_path():
  model = lora.apply(tiny_model("untied"), {"rank": 2, "targets": "lm_head"})
  assert step.lm_head(model) is None


def run_train_step(micro_batches, chunk):
  model = tiny_model("untied")
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  optim_cfg = tiny.get_config().optim
  tx = optax.sgd(0.1)
  cfg = step.StepConfig(task="causal_lm", micro_batches=micro_batches, skip_nonfinite=False,
                        optim_cfg=optim_cfg, lm_loss_chunk=chunk)
  state = step.init_state(params, tx, 0, optim_cfg)
  batch = tiny_batch(packed=True, seed=3)
  return jax.jit(lambda s, b: step.train_step(graphdef, tx, cfg, s, b))(state, batch)


def test_train_step_chunked_equals_plain_and_micro_batches_exact():
  ref_state, ref_m = run_train_step(1, 0)
  for micro, chunk in [(1, 7), (2, 7), (4, 16), (2, -1)]:
    state, m = run_train_step(micro, chunk)
    np.testing.assert_allclose(m["train/loss"], ref_m["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(m["train/grad_norm"], ref_m["train/grad_norm"], rtol=1e-5)
    for r, g in zip(jax.tree.leaves(ref_state["params"]), jax.tree.leaves(state["params"])):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_eval_step_chunked_equals_plain():
  model = tiny_model("tied")
  graphdef, params = nnx.split(model)
  batch = dict(tiny_batch(packed=True), valid=jnp.asarray([1, 1, 0, 1], jnp.int32))
  ref = step.eval_step(graphdef, "causal_lm", params, None, batch, lm_loss_chunk=0)
  got = jax.jit(lambda p, b: step.eval_step(graphdef, "causal_lm", p, None, b))(params, batch)
  np.testing.assert_allclose(got["weight"], ref["weight"])
  np.testing.assert_allclose(got["loss_sum"], ref["loss_sum"], rtol=1e-5)


def test_auto_chunk_follows_the_backend():
  # Tests run on the CPU, where the loss chunk is sized for the last-level cache.
  assert jax.default_backend() == "cpu" and step.auto_lm_loss_chunk() == 128
  assert step.auto_lm_loss_chunk(128256) == 128
  # Accelerators: 1 GiB of float32 logits per chunk, a power of two, never under 256.
  assert step.auto_lm_loss_chunk(128256, backend="gpu") == 2048
  assert step.auto_lm_loss_chunk(32000, backend="tpu") == 8192
  assert step.auto_lm_loss_chunk(262144, backend="gpu") == 1024
  assert step.auto_lm_loss_chunk(4_000_000, backend="gpu") == 256
  assert step.auto_lm_loss_chunk(None, backend="gpu") == 256
  assert step.StepConfig(task="causal_lm", micro_batches=1, skip_nonfinite=False,
                         optim_cfg=None).lm_loss_chunk == -1
