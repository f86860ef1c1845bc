"""A quantized frozen base (model.quantize, QLoRA): accuracy, storage, gradients, runs, export.

A tiny random Llama (transformers, float32, widths that BLOCK=64 divides so scales are blocked)
is written to a temporary directory and loaded with `jaxtune.hf.load`, as a user's model is.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("qwix")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxtune import config as jt_config  # noqa: E402
from jaxtune import generate, hf, lora, quantize, train  # noqa: E402
from jaxtune.errors import ConfigError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import tiny  # noqa: E402

VOCAB = 130
LLAMA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
             max_position_embeddings=64)
# Relative RMS error of the logits against the float32 model (measured: int8 1.1%, nf4 16%);
# 4-bit NormalFloat loses about a tenth of each weight's precision, int8 well under 1%.
TOLERANCE = {"int8": 0.02, "nf4": 0.2}
LORA = ml_collections.ConfigDict({"rank": 4, "alpha": 8.0})


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  cfg = transformers.AutoConfig.for_model("llama", **LLAMA)
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("llama")
  transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
  return path


def _ids():
  ids = np.random.default_rng(0).integers(3, VOCAB, (2, 16)).astype(np.int32)
  return jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)


def _rel_err(out, ref) -> float:
  return float(np.sqrt(np.mean((np.asarray(out) - ref) ** 2) / np.mean(ref**2)))


@pytest.mark.parametrize("qtype", quantize.QTYPES)
def test_quantized_logits_within_tolerance_and_codes_stored(llama_dir, qtype):
  ref = np.asarray(hf.load(llama_dir)(*_ids()))
  model = hf.load(llama_dir, quantize=qtype)
  err = _rel_err(model(*_ids()), ref)
  assert err < TOLERANCE[qtype], err
  assert err > 1e-4  # the weights really went through the codes
  # Every linear kernel and the embedding table are held as codes, 8- or 4-bit.
  code = jnp.dtype(jnp.int8 if qtype == "int8" else jnp.uint4)
  q_proj = model.layers[0].self_attn.q_proj
  assert q_proj.kernel[...].dtype == code and isinstance(q_proj.kernel, quantize.QuantizedBase)
  assert q_proj.kernel_scale[...].shape == (1, 64)  # one scale per block of 64 inputs, per column
  assert model.layers[1].mlp.down_proj.kernel_scale[...].shape == (2, 64)
  assert model.embed_tokens.embedding[...].dtype == code
  assert not any(v.dtype == code for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # Storage: codes at their width plus float32 scales (1/64 of the weights) and the norms.
  full = quantize.param_bytes(hf.load(llama_dir))
  ratio = quantize.param_bytes(model) / full
  assert ratio < {"int8": 0.3, "nf4": 0.17}[qtype], ratio


def test_gradients_reach_only_the_adapters(llama_dir):
  model = lora.apply(hf.load(llama_dir, quantize="nf4"), LORA)
  model.train()
  graphdef, trainable, frozen = lora.split_trainable(model, LORA)
  names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
  assert names and all(n.endswith(("lora_a", "lora_b")) for n in names)
  frozen_types = {type(v).__name__ for _, v in nnx.to_flat_state(frozen)}
  assert "QuantizedBase" in frozen_types
  ids, mask = _ids()

  def loss(params):
    logits = lora.combine(graphdef, params, frozen)(ids, mask)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

  grads = jax.grad(loss)(trainable)
  b = grads["layers"][0]["self_attn"]["q_proj"]["lora_b"][...]
  assert float(jnp.abs(b).max()) > 0  # lora_b starts at zero, its gradient does not


def test_bad_configs_are_one_line_errors():
  c = tiny.get_config()
  c.model.quantize = "nf4"
  with pytest.raises(ConfigError, match="full fine-tuning of a quantized base is not supported"):
    jt_config.validate(c)
  c.lora.rank = 4
  c.model.quantize = "int4"
  with pytest.raises(ConfigError, match=r"model.quantize='int4'.*int8, nf4"):
    jt_config.validate(c)
  c.model.quantize = "nf4"
  jt_config.validate(c)
  # A model whose every weight is trained fully (lora.train_also) has nothing to quantize.
  with pytest.raises(ConfigError, match="no linear or embedding weight"):
    quantize.plan(nnx.eval_shape(lambda: _tiny_preset()), keep_float=".")


def _tiny_preset():
  from jaxtune.models import presets

  return presets.init("tiny-llama", task="causal_lm", num_labels=None, param_dtype="float32",
                      compute_dtype=None, mesh=None, seed=0)


def test_merged_export_dequantizes_and_transformers_reads_it(llama_dir, tmp_path):
  model = lora.apply(hf.load(llama_dir, quantize="int8"), LORA)
  rng = np.random.default_rng(1)
  for _, m in lora.lora_modules(model):  # as if trained
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(0.3 * rng.standard_normal(b.shape), b.dtype))
  model.eval()
  ours = np.asarray(model(*_ids()))
  hf.save(model, tmp_path / "out", None)
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  ids, mask = _ids()
  with torch.no_grad():
    theirs = torch_model(input_ids=torch.from_numpy(np.asarray(ids)).long()).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
  assert quantize.is_quantized(model)  # merge worked on a copy


def test_generation_on_a_quantized_base_matches_its_dequantized_copy(llama_dir):
  model = lora.apply(hf.load(llama_dir, quantize="nf4"), LORA)
  model.eval()
  prompts = [[5, 9, 17, 3], [40, 41]]
  got = generate.Generator(model, pad_id=0)(prompts, max_new_tokens=6, stop_ids=[])
  plain = lora.merge(model)
  assert not quantize.is_quantized(plain)
  want = generate.Generator(plain, pad_id=0)(prompts, max_new_tokens=6, stop_ids=[])
  assert got.tokens == want.tokens


def _run_config(steps: int):
  c = tiny.get_config()
  c.train.progress = False
  c.mesh.data = 1
  c.model.quantize = "nf4"
  c.lora.rank, c.lora.alpha = 4, 8.0
  c.optim.learning_rate, c.optim.warmup_steps = 2e-2, 2
  c.train.steps, c.train.eval_every, c.train.log_every = steps, 0, 2
  c.checkpoint.every_steps, c.checkpoint.async_save = 4, False
  c.report_to = ""
  return c


def test_quantized_run_learns_checkpoints_adapters_and_resumes_exactly(tmp_path):
  straight = train.train_and_evaluate(_run_config(8), tmp_path / "straight")
  rows = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses[-1] < losses[0]
  params = straight["state"]["params"]
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  assert leaves and all(str(p[-1].key) in ("lora_a", "lora_b") for p, _ in leaves)
  # As if killed after the step-4 checkpoint: the rerun rebuilds and re-quantizes the base,
  # restores the adapters and optimizer, and ends bitwise where the straight run did.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
  resumed = train.train_and_evaluate(_run_config(8), tmp_path / "resumed")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, resumed["state"]["params"])



def test_tied_quantized_head_is_dequantized_in_blocks_with_unchanged_loss_and_grads(
    tmp_path, monkeypatch):
  """The chunked loss dequantizes a quantized tied head `HEAD_ROWS` rows at a time: loss and
  adapter gradients equal the full-logits loss's, and the compiled step's temporaries stay under
  the float32 [V, D] table (8 MiB here; dequantizing it whole, as `step.lm_head` did, needed
  13.7 MB of them, against 7.4 MB now at chunk 16). nf4 only: int8 takes the same path."""
  from jaxtune import step

  V, D = 32768, 64
  cfg = transformers.AutoConfig.for_model(
    "llama", **{**LLAMA, "vocab_size": V, "hidden_size": D, "tie_word_embeddings": True})
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(tmp_path)
  monkeypatch.setattr(quantize, "HEAD_ROWS", 4096)  # 8 blocks of the table
  ids = jnp.asarray(np.random.default_rng(0).integers(3, V, (2, 32)), jnp.int32)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
           "loss_mask": jnp.asarray(np.random.default_rng(1).random(ids.shape) < 0.8, jnp.int32)}
  model = lora.apply(hf.load(tmp_path, quantize="nf4"), LORA)
  for _, m in lora.lora_modules(model):  # nonzero adapters, so every gradient is nonzero
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(0.1 * np.random.default_rng(2).standard_normal(b.shape), b.dtype))
  model.eval()
  graphdef, trainable, frozen = lora.split_trainable(model, LORA)
  assert step.lm_head(model)[0].func is quantize._tied_logits

  def loss(params, frozen, chunk):  # frozen as an argument: XLA would fold constants
    total, weight = step.causal_lm_terms(lora.combine(graphdef, params, frozen), batch, None, chunk)
    return total / weight

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=2)
  chunked = grad.lower(trainable, frozen, 8).compile()
  temp = chunked.memory_analysis().temp_size_in_bytes
  assert temp < V * D * 4, temp
  (got, got_g), (want, want_g) = chunked(trainable, frozen), grad(trainable, frozen, 0)  # 0: full logits
  np.testing.assert_allclose(got, want, rtol=1e-5)
  flat_got, flat_want = jax.tree.leaves(got_g), jax.tree.leaves(want_g)
  assert len(flat_got) == len(flat_want) > 0
  for a, b in zip(flat_got, flat_want, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_backward_pass_keeps_codes_not_dequantized_kernels(llama_dir):
  """The residuals the backward pass keeps (the leaves of `jax.vjp`'s function) hold no float
  copy of a quantized weight, per layer [in, out] or stacked [L, in, out] by the scan: the matmul
  dequantizes again for dx (`qmatmul.dot`); the codes kept are the frozen inputs themselves,
  not copies. Loss and adapter gradients equal the dequantized float model's. (Scanned layers
  only: unrolled ones take the same `Linear` path and run 2x slower here, op by op.)"""
  from jaxtune.models import layers

  model = lora.apply(hf.load(llama_dir, quantize="nf4"), LORA)
  for _, m in lora.lora_modules(model):  # nonzero adapters, so every gradient is nonzero
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(0.1 * np.random.default_rng(2).standard_normal(b.shape), b.dtype))
  layers.stack_layers(model)
  model.eval()
  ids, mask = _ids()

  def loss_and_grads(model):
    graphdef, trainable, frozen = lora.split_trainable(model, LORA)

    def loss(params):
      logits = lora.combine(graphdef, params, frozen)(ids, mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    value, vjp = jax.vjp(loss, trainable)
    return value, vjp(jnp.ones_like(value))[0], jax.tree.leaves(vjp), frozen

  value, grads, residuals, frozen = loss_and_grads(model)
  codes = [x for x in jax.tree.leaves(frozen) if x.dtype == jnp.uint4]
  # Every kernel, lm_head and the embedding table, as stored and per layer ([L, in, out] stacked).
  weight_shapes = {x.shape for x in codes} | {x.shape[1:] for x in codes if x.ndim == 3}
  assert len(codes) == 9 and len(weight_shapes) == 10  # 7 stacked kernels, lm_head, table
  floats = [x.shape for x in residuals if jnp.issubdtype(x.dtype, jnp.floating)]
  assert not [s for s in floats if s in weight_shapes or s[::-1] in weight_shapes], floats
  kept = [x for x in residuals if x.dtype == jnp.uint4]
  assert kept and all(any(x is c for c in codes) for x in kept)

  want_value, want_grads, _, _ = loss_and_grads(quantize.dequantize_model(model))
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  flat, want = jax.tree.leaves(grads), jax.tree.leaves(want_grads)
  assert len(flat) == len(want) == 14 and all(float(jnp.abs(g).max()) > 0 for g in flat)
  for a, b in zip(flat, want, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("qtype", ["nf4", "int8"])
@pytest.mark.parametrize("axis", [0, 1])
def test_big_weights_encode_in_slices_to_the_same_codes(monkeypatch, qtype, axis):
  # 200 rows of 128 slice as 64 + 64 + 64 + 8 with ENCODE_CHUNK 8192: a remainder slice too.
  value = jax.random.normal(jax.random.key(0), (200, 128) if axis == 1 else (128, 200))
  whole = quantize.encode(value, qtype, axis)
  monkeypatch.setattr(quantize, "ENCODE_CHUNK", 8192)
  sliced = quantize.encode(value, qtype, axis)
  for a, b in zip(whole, sliced, strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32)))
