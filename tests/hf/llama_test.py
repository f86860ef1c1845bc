"""Parity of jaxtune's Llama-style decoders with transformers, loading and saving HF checkpoints.

Tiny random HF models (torch, float32, eager attention) are written with save_pretrained into
a temporary directory; jaxtune loads them and must give the same logits on a padded batch, and
its saved directory must load back into transformers with no missing or unexpected keys.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxtune import hf, sharding  # noqa: E402
from jaxtune.hf import convert, llama  # noqa: E402

VOCAB = 130  # not divisible by the tensor axis (4): the vocab dim must replicate
PAD = 0
BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, max_position_embeddings=64)
SPECS = {
  "llama": ("llama", {}),
  "llama3": ("llama", dict(
    attention_bias=True, mlp_bias=True, max_position_embeddings=2048,
    # original_max_position_embeddings=600 puts the 4 rope frequencies of head_dim 8 in all
    # three llama3 bands (kept, interpolated, divided by factor).
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=600),
  )),
  "mistral": ("mistral", dict(sliding_window=3)),
  "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
  "qwen3": ("qwen3", dict(head_dim=16)),
  "gemma": ("gemma", dict(head_dim=16, hidden_act="gelu_pytorch_tanh")),
}
LABELS = ("neg", "neu", "pos")


def _hf_model(model_type: str, task: str, overrides: dict, seed: int = 0):
  cfg = transformers.AutoConfig.for_model(model_type, **{**BASE, **overrides})
  if task == "seq_cls":
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {n: i for i, n in enumerate(LABELS)}
    auto = transformers.AutoModelForSequenceClassification
  else:
    auto = transformers.AutoModelForCausalLM
  torch.manual_seed(seed)
  model = auto.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    # HF initialises norms to 1 (or 0) and biases to 0; perturb every tensor so each is tested.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Written lazily: {(name, task): (directory, torch model)}."""
  cache = {}

  def get(name: str, task: str = "causal_lm"):
    if (name, task) not in cache:
      model_type, overrides = SPECS[name]
      model = _hf_model(model_type, task, overrides)
      path = tmp_path_factory.mktemp(f"{name}_{task}")
      model.save_pretrained(path)
      cache[name, task] = (path, model)
    return cache[name, task]

  return get


def _batch(seed: int = 0, B: int = 3, T: int = 8):
  """Full, right-padded and left-padded rows; real tokens never equal the pad id."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, -3:] = 0
  mask[2, :2] = 0
  ids[mask == 0] = PAD
  return ids, mask


def _positions(mask):
  return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def _torch_logits(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                position_ids=torch.from_numpy(_positions(mask)).long())
  return out.logits.numpy()


def _jax_logits(model, ids, mask):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
  return np.asarray(fn(state, jnp.asarray(ids), jnp.asarray(mask)).astype(jnp.float32))


def _max_diff(a, b, mask=None):
  if mask is not None:
    a, b = a[mask.astype(bool)], b[mask.astype(bool)]
  return float(np.max(np.abs(a - b)))


CAUSAL = ["llama", "llama3", "mistral", "qwen2", "qwen3", "gemma"]
CASES = [(n, "causal_lm") for n in CAUSAL] + [("llama", "seq_cls"), ("qwen3", "seq_cls")]


@pytest.mark.parametrize("name,task", CASES)
def test_parity_and_roundtrip(checkpoints, tmp_path, name, task):
  path, ref = checkpoints(name, task)
  ids, mask = _batch()
  want = _torch_logits(ref, ids, mask)
  model = hf.load(path, task=task)
  assert model.task == task and model.config.model_type == SPECS[name][0]
  got = _jax_logits(model, ids, mask)
  assert got.shape == want.shape
  # Causal LM: padded positions are garbage on both sides; seq cls pools a real token.
  diff = _max_diff(got, want, mask if task == "causal_lm" else None)
  print(f"{name} {task}: max |jax - torch| = {diff:.2e}")
  assert diff < 1e-5

  out = hf.save(model, tmp_path / "out")
  auto = (transformers.AutoModelForSequenceClassification if task == "seq_cls"
          else transformers.AutoModelForCausalLM)
  back, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
  assert type(back).__name__ == type(ref).__name__
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info.get(kind), (kind, info[kind])
  np.testing.assert_allclose(_torch_logits(back.eval(), ids, mask), want, atol=1e-6, rtol=0)
  if task == "seq_cls":
    assert back.config.id2label == dict(enumerate(LABELS))


def test_config_fields(checkpoints):
  cfgs = {n: hf.load(checkpoints(n)[0]).config for n in ("llama3", "mistral", "qwen2", "qwen3", "gemma")}
  assert cfgs["llama3"].rope_scaling_dict["rope_type"] == "llama3"
  assert cfgs["llama3"].attention_bias and cfgs["llama3"].mlp_bias
  assert cfgs["mistral"].sliding_window == 3
  assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].attention_bias and cfgs["qwen2"].tie_embeddings
  assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 16
  assert cfgs["gemma"].norm_plus_one and cfgs["gemma"].scale_embeddings
  assert cfgs["gemma"].activation == "gelu_pytorch_tanh" and cfgs["gemma"].tie_embeddings
  hash(cfgs["llama3"])  # static under jit


def test_old_style_rope_config():
  """Older checkpoints: top-level rope_theta and rope_scaling with 'type' or 'rope_type'."""
  base = dict(BASE, model_type="llama", num_hidden_layers=1)
  new = llama.FAMILY.config_from_hf(
    dict(base, rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=1000.0)),
    task="causal_lm", num_labels=None, where="new")
  for scaling in (dict(type="linear", factor=2.0), dict(rope_type="linear", factor=2.0)):
    old = llama.FAMILY.config_from_hf(
      dict(base, rope_theta=1000.0, rope_scaling=scaling), task="causal_lm", num_labels=None,
      where="old")
    assert old == new


def test_seq_cls_num_labels(checkpoints):
  path, _ = checkpoints("qwen3", "seq_cls")
  assert hf.load(path, task="seq_cls").config.id2label == LABELS
  with pytest.raises(hf.CheckpointError, match=r"score\.weight.*\(3, 32\).*\(5, 32\)"):
    hf.load(path, task="seq_cls", num_labels=5)  # HF would need ignore_mismatched_sizes
  lm_path, _ = checkpoints("qwen3")
  model = hf.load(lm_path, task="seq_cls", num_labels=5)  # a new head, initialised
  assert model.config.id2label == tuple(f"LABEL_{i}" for i in range(5))
  assert model.score.kernel.shape == (32, 5)
  with pytest.raises(hf.UnsupportedConfigError, match="num_labels"):
    hf.load(lm_path, task="seq_cls")


def test_sharded_load(checkpoints):
  path, ref = checkpoints("llama")
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = hf.load(path, mesh=mesh)
  specs = {k: v.value.sharding.spec for k, v in convert.param_paths(nnx.state(model, nnx.Param)).items()}
  assert specs["layers/0/self_attn/q_proj/kernel"] == P("fsdp", "tensor")  # [32, 32]
  assert specs["layers/0/self_attn/k_proj/kernel"] == P("fsdp", "tensor")  # [32, 16]
  assert specs["layers/0/self_attn/o_proj/kernel"] == P("tensor", "fsdp")
  assert specs["layers/1/mlp/gate_proj/kernel"] == P("fsdp", "tensor")
  assert specs["layers/1/mlp/down_proj/kernel"] == P("tensor", "fsdp")
  assert specs["layers/0/input_layernorm/scale"] == P(None)
  assert specs["norm/scale"] == P(None)
  assert specs["embed_tokens/embedding"] == P(None, "fsdp")  # vocab 130 % 4 != 0: replicated
  assert specs["lm_head/kernel"] == P("fsdp", None)
  ids, mask = _batch(B=4)
  want = _torch_logits(ref, ids, mask)
  graphdef, state = nnx.split(model)
  batch = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
  with sharding.use_mesh(mesh):
    fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    got = fn(state, jax.device_put(ids, batch), jax.device_put(mask, batch))
  assert _max_diff(np.asarray(got), want, mask) < 1e-5


@pytest.mark.parametrize("name", ["llama3", "gemma"])
def test_bf16_compute_with_f32_params(checkpoints, name):
  path, ref = checkpoints(name)
  ids, mask = _batch()
  want = _torch_logits(ref, ids, mask)
  model = hf.load(path, compute_dtype="bfloat16")
  assert model.embed_tokens.embedding.value.dtype == jnp.float32
  graphdef, state = nnx.split(model)
  raw = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))(state, ids, mask)
  assert raw.dtype == jnp.bfloat16
  diff = _max_diff(np.asarray(raw.astype(jnp.float32)), want, mask)
  scale = float(np.max(np.abs(want)))
  print(f"{name} bf16: max diff {diff:.3f} (logit scale {scale:.2f})")
  assert diff < 0.05 * scale


@pytest.mark.parametrize("stored", ["both", "head_only", "different"])
def test_tied_checkpoint_storing_lm_head(checkpoints, edited_copy, stored):
  """Tied checkpoints that also store `lm_head.weight` (some Llama/Qwen/Gemma; every torch .bin).

  transformers ties an equal pair, ties to the head when it alone is stored, and unties a
  differing pair; jaxtune loads the first two as transformers does and refuses the third.
  """
  path, saved = checkpoints("qwen2")  # tie_word_embeddings=True
  emb = saved.model.embed_tokens.weight.detach().numpy()

  def edit(tensors):
    assert "lm_head.weight" not in tensors
    if stored == "head_only":
      tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    else:
      tensors["lm_head.weight"] = emb + (1.0 if stored == "different" else 0.0)

  ckpt = edited_copy(path, edit)
  ref = transformers.AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="eager").eval()
  head = ref.lm_head.weight.detach().numpy()
  if stored == "different":
    assert not np.array_equal(head, ref.model.embed_tokens.weight.detach().numpy())  # untied
    with pytest.raises(hf.CheckpointError,
                       match=r"'lm_head\.weight'.*'model\.embed_tokens\.weight'.*differ"):
      hf.load(ckpt)
    return
  np.testing.assert_array_equal(head, emb)
  model = hf.load(ckpt)
  assert model.lm_head is None
  np.testing.assert_array_equal(np.asarray(model.embed_tokens.embedding[...]), emb)
  ids, mask = _batch()
  assert _max_diff(_jax_logits(model, ids, mask), _torch_logits(ref, ids, mask), mask) < 1e-5
