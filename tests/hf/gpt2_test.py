"""GPT-2 against HF transformers: float32 parity on padded batches, export round trip, mesh load.

Tiny random HF models are written with save_pretrained into a temporary directory (no downloads);
torch float32 is the reference.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtune import hf, sharding
from jaxtune.hf import UnsupportedConfigError
from jaxtune.hf.gpt2 import qkv_from_head_major, qkv_to_head_major

V, PAD = 96, 1
LENGTHS = (10, 7, 3, 9)
ATOL = 1e-5


def _hf_config(**kw):
  base = dict(
    vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD,
    bos_token_id=0, eos_token_id=0,
  )
  return transformers.GPT2Config(**{**base, **kw})


def _randomize(model, seed):
  # Random LayerNorm scales and biases too, so a swapped scale/bias or a missed bias shows.
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.3)
  return model.eval()


def _batch(left=False):
  rng = np.random.default_rng(0)
  T = max(LENGTHS)
  ids = np.full((len(LENGTHS), T), PAD, np.int64)
  mask = np.zeros_like(ids)
  for b, n in enumerate(LENGTHS):
    sl = slice(T - n, T) if left else slice(0, n)
    ids[b, sl] = rng.integers(2, V, n)  # never the pad id inside a sequence
    mask[b, sl] = 1
  return ids, mask


def _torch(model, ids, mask):
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = _randomize(transformers.GPT2LMHeadModel(_hf_config()), 1)
  d = tmp_path_factory.mktemp("gpt2_lm")
  model.save_pretrained(d)
  return d, model


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = _hf_config(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
  model = _randomize(transformers.GPT2ForSequenceClassification(cfg), 2)
  d = tmp_path_factory.mktemp("gpt2_cls")
  model.save_pretrained(d)
  return d, model


@nnx.jit
def _forward(model, ids, mask):
  return model(ids, mask)


def _valid(x, mask):
  return x[mask.astype(bool)]


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_causal_lm_matches_torch(lm_dir, left):
  d, ref = lm_dir
  ids, mask = _batch(left)
  model = hf.load(d, task="causal_lm")
  got = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  want = _torch(ref, ids, mask)
  assert got.shape == (len(LENGTHS), ids.shape[1], V)
  # Padding queries see no key under left padding; only real tokens are compared.
  np.testing.assert_allclose(_valid(got, mask), _valid(want, mask), atol=ATOL, rtol=0)
  if not left:
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_positions_and_token_types_match_torch(lm_dir):
  d, ref = lm_dir
  ids, mask = _batch(left=True)
  positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)  # what HF generate derives
  types = (np.arange(ids.shape[1]) % 2)[None].repeat(len(ids), 0)
  model = hf.load(d, task="causal_lm")
  got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types),
                         positions=jnp.asarray(positions)))
  with torch.no_grad():
    want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask),
               token_type_ids=torch.tensor(types), position_ids=torch.tensor(positions)).logits.numpy()
  np.testing.assert_allclose(_valid(got, mask), _valid(want, mask), atol=ATOL, rtol=0)


def test_seq_cls_matches_torch(cls_dir):
  d, ref = cls_dir
  ids, mask = _batch()
  model = hf.load(d, task="seq_cls")
  assert model.config.id2label == ("neg", "neu", "pos")
  got = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  want = _torch(ref, ids, mask)
  assert got.shape == (len(LENGTHS), 3)
  np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("task", ["causal_lm", "seq_cls"])
def test_save_round_trip(lm_dir, cls_dir, tmp_path, task):
  d, ref = lm_dir if task == "causal_lm" else cls_dir
  auto = transformers.AutoModelForCausalLM if task == "causal_lm" else (
    transformers.AutoModelForSequenceClassification)
  model = hf.load(d, task=task)
  out = hf.save(model, tmp_path / "out")
  back, info = auto.from_pretrained(out, output_loading_info=True)
  assert type(back) is type(ref)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  ids, mask = _batch()
  np.testing.assert_allclose(_torch(back.eval(), ids, mask), _torch(ref, ids, mask), atol=ATOL, rtol=0)
  again = hf.load(out, task=task)
  assert again.config == model.config


def test_lm_checkpoint_as_classifier_initialises_score(lm_dir, caplog):
  d, _ = lm_dir
  with caplog.at_level(logging.WARNING):
    model = hf.load(d, task="seq_cls", num_labels=5)
  assert "score.weight absent" in caplog.text
  assert model.score.kernel[...].shape == (32, 5)
  assert model.config.id2label == tuple(f"LABEL_{i}" for i in range(5))


def test_bare_keys_load(lm_dir, tmp_path):
  # GPT2Model.save_pretrained writes keys without the `transformer.` prefix (as openai's gpt2).
  d, ref = lm_dir
  ref.transformer.save_pretrained(tmp_path)
  ids, mask = _batch()
  got = np.asarray(_forward(hf.load(tmp_path, task="causal_lm"), jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _torch(ref, ids, mask), atol=ATOL, rtol=0)


def test_mesh_load_shards_and_matches(lm_dir):
  d, ref = lm_dir
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = hf.load(d, task="causal_lm", mesh=mesh)
  specs = {
    "wte/embedding": P("tensor", "fsdp"),
    "wpe/embedding": P(None, "fsdp"),
    "layers/0/attn/c_attn/kernel": P("fsdp", "tensor"),
    "layers/0/attn/c_attn/bias": P("tensor"),
    "layers/0/attn/c_proj/kernel": P("tensor", "fsdp"),
    "layers/1/mlp/c_fc/kernel": P("fsdp", "tensor"),
    "layers/1/mlp/c_proj/kernel": P("tensor", "fsdp"),
    "layers/1/ln_2/scale": P(None),
    "ln_f/bias": P(None),
  }
  flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  for path, spec in specs.items():
    assert flat[path][...].sharding.spec == spec, path
  ids, mask = _batch()
  with sharding.use_mesh(mesh):
    got = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _torch(ref, ids, mask), atol=ATOL, rtol=0)


def test_head_major_permutation_round_trips():
  x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 60)  # D=2, N=4, H=5
  y = qkv_to_head_major(x, 4)
  np.testing.assert_array_equal(qkv_from_head_major(y, 4), x)
  # Head 1's q block follows head 0's v block.
  np.testing.assert_array_equal(y[:, 15:20], x[:, 5:10])


@pytest.mark.parametrize("attr,value", [
  ("add_cross_attention", True),
  ("tie_word_embeddings", False),
  ("activation_function", "swiglu_magic"),
  ("made_up_attribute", 3),
])
def test_unsupported_config_is_named(lm_dir, tmp_path, attr, value):
  d, _ = lm_dir
  cfg = json.loads((d / "config.json").read_text())
  cfg[attr] = value
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  (tmp_path / "model.safetensors").symlink_to(d / "model.safetensors")
  with pytest.raises(UnsupportedConfigError, match=attr):
    hf.load(tmp_path, task="causal_lm")


def test_scale_attn_by_inverse_layer_idx_matches_torch(tmp_path):
  torch.manual_seed(0)
  ref = _randomize(transformers.GPT2LMHeadModel(_hf_config(scale_attn_by_inverse_layer_idx=True)), 3)
  ref.save_pretrained(tmp_path)
  ids, mask = _batch()
  got = np.asarray(_forward(hf.load(tmp_path), jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _torch(ref, ids, mask), atol=ATOL, rtol=0)


def test_seq_cls_needs_num_labels(lm_dir):
  d, _ = lm_dir
  cfg = json.loads((d / "config.json").read_text())
  if cfg.get("id2label"):
    pytest.skip("this transformers version writes a default id2label")
  with pytest.raises(UnsupportedConfigError, match="num_labels"):
    hf.load(d, task="seq_cls")


def test_jit_once_under_mesh_gives_bf16_compute(lm_dir):
  # bfloat16 compute with float32 master weights stays close to the float32 reference.
  d, ref = lm_dir
  model = hf.load(d, compute_dtype="bfloat16")
  ids, mask = _batch()
  got = np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(mask)).astype(jnp.float32))
  want = _torch(ref, ids, mask)
  assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
  rel = np.abs(_valid(got, mask) - _valid(want, mask)).max() / np.abs(want).max()
  assert rel < 0.05


@pytest.mark.parametrize("same", [True, False], ids=["equal", "different"])
def test_stored_lm_head(lm_dir, edited_copy, same):
  """A stored `lm_head.weight` (torch .bin files always have one) is skipped when it equals wte;
  transformers would untie a different one, so that is refused."""
  d, ref = lm_dir
  ckpt = edited_copy(d, lambda t: t.update(
    {"lm_head.weight": t["transformer.wte.weight"] + (0.0 if same else 1.0)}))
  if not same:
    with pytest.raises(hf.CheckpointError, match=r"'lm_head\.weight'.*'transformer\.wte\.weight'"):
      hf.load(ckpt)
    return
  ids, mask = _batch()
  got = np.asarray(_forward(hf.load(ckpt), jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(got, _torch(ref, ids, mask), atol=ATOL, rtol=0)
  assert hf.load(ckpt, task="seq_cls", num_labels=2).score.kernel.shape == (32, 2)  # head dropped
