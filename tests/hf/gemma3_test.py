"""Gemma 3 text models (`Gemma3ForCausalLM`, `gemma3_text`) against transformers.

Tiny random HF models (torch, float32, eager attention) with a sliding window of 4, sequences
longer than it, local and global layers interleaved with different rope bases, QK-norm, the
four norms per block and a `query_pre_attn_scalar` unlike head_dim. jaxtune loads them and must
give the same logits, write them back so transformers loads them without a warning, stack the
layers for a scan, shard them on the fake 8-device mesh, and carry LoRA adapters PEFT reads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxtune import hf, lora, sharding  # noqa: E402
from jaxtune.hf import convert, llama  # noqa: E402
from jaxtune.models import layers  # noqa: E402

VOCAB, PAD, T = 130, 0, 12
TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
BASE = dict(
  vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=PAD,
  max_position_embeddings=64, sliding_window=4, layer_types=TYPES, query_pre_attn_scalar=12,
  # Different bases per layer kind (and a linear scaling on the global ones) so a layer that
  # took the other kind's rope would change the logits.
  rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                   "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}},
)
SPECS = {
  "gemma3": {},
  # Gemma 3 sets no softcap; a Gemma 2 style final cap small enough that tanh bites.
  "gemma3_caps": dict(final_logit_softcapping=3.0),
}
LABELS = ("neg", "neu", "pos")


def _hf_model(name: str, task: str):
  cfg = transformers.Gemma3TextConfig(**{**BASE, **SPECS[name]})
  auto = transformers.AutoModelForCausalLM
  if task == "seq_cls":
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {n: i for i, n in enumerate(LABELS)}
    auto = transformers.AutoModelForSequenceClassification
  torch.manual_seed(0)
  model = auto.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():  # norms start at 0 ((1 + w) scale): perturb every tensor
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  cache = {}

  def get(name: str = "gemma3", task: str = "causal_lm"):
    if (name, task) not in cache:
      model = _hf_model(name, task)
      path = tmp_path_factory.mktemp(f"{name}_{task}")
      model.save_pretrained(path)
      cache[name, task] = (path, model)
    return cache[name, task]

  return get


def _batch(B: int = 3):
  """Full, right-padded and left-padded rows of T=12 tokens (three times the window)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, VOCAB, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, -3:] = 0
  mask[2, :2] = 0
  ids[mask == 0] = PAD
  return ids, mask


def _torch_logits(model, ids, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                position_ids=torch.from_numpy(positions).long())
  return out.logits.numpy()


def _jax_logits(model, ids, mask):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
  return np.asarray(fn(state, jnp.asarray(ids), jnp.asarray(mask)))


def _diff(a, b, mask=None):
  if mask is not None:
    a, b = a[mask.astype(bool)], b[mask.astype(bool)]
  return float(np.max(np.abs(a - b)))


@contextlib.contextmanager
def _no_transformers_warnings():
  """Fails if transformers logs a warning (missing/unexpected keys, config fixes) or warns."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  root = logging.getLogger("transformers")
  root.addHandler(handler)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      yield
  finally:
    root.removeHandler(handler)
  msgs = [r.getMessage() for r in records] + [
    str(w.message) for w in caught if "transformers" in w.filename or "peft" in w.filename]
  assert not msgs, msgs


@pytest.mark.parametrize("name,task", [("gemma3", "causal_lm"), ("gemma3_caps", "causal_lm"),
                                       ("gemma3", "seq_cls")])
def test_parity_and_roundtrip(checkpoints, tmp_path, name, task):
  path, ref = checkpoints(name, task)
  ids, mask = _batch()
  want = _torch_logits(ref, ids, mask)
  model = hf.load(path, task=task)
  assert model.config.model_type == "gemma3_text" and model.task == task
  got = _jax_logits(model, ids, mask)
  diff = _diff(got, want, mask if task == "causal_lm" else None)
  print(f"{name} {task}: max |jax - torch| = {diff:.2e}")
  assert diff < 1e-5

  out = hf.save(model, tmp_path / "out")
  auto = (transformers.AutoModelForSequenceClassification if task == "seq_cls"
          else transformers.AutoModelForCausalLM)
  with _no_transformers_warnings():
    back, info = auto.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
  assert type(back).__name__ == type(ref).__name__
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info.get(kind), (kind, info[kind])
  assert back.config.layer_types == TYPES and back.config.sliding_window == 4
  assert back.config.rope_parameters == ref.config.rope_parameters
  np.testing.assert_allclose(_torch_logits(back.eval(), ids, mask), want, atol=1e-6, rtol=0)


def test_config_fields(checkpoints):
  cfg = hf.load(checkpoints()[0]).config
  assert cfg.layer_types == tuple(TYPES) and cfg.layer_kinds == (1, 0, 1, 1)
  assert cfg.sliding_window == 4 and cfg.query_pre_attn_scalar == 12.0
  assert cfg.rope_theta == 1e4 and cfg.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
  assert cfg.rope_local_theta == 50.0
  assert cfg.qk_norm and cfg.sandwich_norms and cfg.norm_plus_one and cfg.scale_embeddings
  assert cfg.tie_embeddings and cfg.activation == "gelu_pytorch_tanh"
  assert cfg.final_logit_softcap is None
  hash(cfg)


def test_older_config_style_reads_as_transformers_does():
  """transformers 4 configs: rope_theta / rope_local_base_freq / rope_scaling and a
  sliding_window_pattern instead of layer_types and per-type rope_parameters."""
  old = dict(model_type="gemma3_text", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
             num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
             sliding_window=4, sliding_window_pattern=3, rope_theta=1e5, rope_local_base_freq=20.0,
             rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=16,
             cache_implementation="hybrid")
  ours = llama.FAMILY.config_from_hf(dict(old), task="causal_lm", num_labels=None, where="old")
  theirs = transformers.Gemma3TextConfig(**{k: v for k, v in old.items() if k != "model_type"})
  assert list(ours.layer_types) == theirs.layer_types
  assert ours.layer_kinds == (1, 1, 0, 1, 1, 0, 1)
  new = llama.FAMILY.config_from_hf(theirs.to_dict(), task="causal_lm", num_labels=None, where="new")
  assert new == ours
  assert ours.rope_theta == 1e5 and ours.rope_local_theta == 20.0
  assert ours.rope_scaling_dict == {"rope_type": "linear", "factor": 8.0}


@pytest.mark.parametrize("edit,match", [
  (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
  (dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                         "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
   "sliding-window layers"),
  (dict(layer_types=["sliding_attention", "chunked_attention"]), "chunked_attention"),
  (dict(sliding_window=None), "sliding_window"),
  (dict(final_logit_softcapping=-1.0), "final_logit_softcapping"),
  # transformers' Gemma 3 attention never applies this cap: refused rather than guessed.
  (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping"),
])
def test_unsupported_configs_are_refused_by_name(edit, match):
  cfg = dict(BASE, model_type="gemma3_text", num_hidden_layers=2, layer_types=TYPES[:2])
  cfg.update(edit)
  with pytest.raises(hf.UnsupportedConfigError, match=match):
    llama.FAMILY.config_from_hf(cfg, task="causal_lm", num_labels=None, where="config.json")


def test_scanned_layers_match_transformers(checkpoints):
  """Local and global layers share one structure: a stack scans them with the kind as data."""
  path, ref = checkpoints()
  ids, mask = _batch()
  model = hf.load(path)
  layers.stack_layers(model)
  assert model.layers.pre_feedforward_layernorm.scale.shape == (4, 32)
  graphdef, state = nnx.split(model)
  jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids, mask))(state))
  assert len(re.findall(r"\bscan\[", jaxpr)) == 1
  assert _diff(_jax_logits(model, ids, mask), _torch_logits(ref, ids, mask), mask) < 1e-5


def test_sharded_load(checkpoints):
  path, ref = checkpoints()
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = hf.load(path, mesh=mesh)
  specs = {k: v.value.sharding.spec for k, v in convert.param_paths(nnx.state(model, nnx.Param)).items()}
  assert specs["layers/0/self_attn/q_proj/kernel"] == P("fsdp", "tensor")  # [32, 64]
  assert specs["layers/0/self_attn/o_proj/kernel"] == P("tensor", "fsdp")
  assert specs["layers/1/mlp/down_proj/kernel"] == P("tensor", "fsdp")
  for norm in ("self_attn/q_norm", "self_attn/k_norm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm"):
    assert specs[f"layers/2/{norm}/scale"] == P(None)
  ids, mask = _batch(B=4)
  graphdef, state = nnx.split(model)
  batch = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
  with sharding.use_mesh(mesh):
    fn = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    got = fn(state, jax.device_put(ids, batch), jax.device_put(mask, batch))
  assert _diff(np.asarray(got), _torch_logits(ref, ids, mask), mask) < 1e-5


def test_lora_adapter_loads_in_peft(checkpoints, tmp_path):
  path, _ = checkpoints()
  ids, mask = _batch()
  spec = lora.default_config()
  spec.rank, spec.alpha = 4, 8.0
  model = lora.apply(hf.load(path), spec)
  adapted = sorted({p.rsplit("/", 1)[-1] for p, _ in lora.lora_modules(model)})
  assert adapted == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
  rng = np.random.default_rng(1)
  for _, m in lora.lora_modules(model):  # a trained-looking lora_b, so the adapters matter
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(0.3 * rng.standard_normal(b.shape), b.dtype))
  got = _jax_logits(model, ids, mask)
  out = lora.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(path))
  base = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    peft_model = peft.PeftModel.from_pretrained(base, out).eval()
  bad = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
  assert not bad, bad
  want = _torch_logits(peft_model, ids, mask)
  assert _diff(got, want, mask) < 1e-5
  merged = hf.save(model, tmp_path / "merged")  # LoRA merged into the kernels
  back = transformers.AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager")
  assert _diff(_torch_logits(back.eval(), ids, mask), want, mask) < 1e-5


def test_train_scanned_on_mesh_then_export_loads_in_transformers(tmp_path):
  """`preset:tiny-gemma3` (windows of 16 in rows of 64) trains with scanned layers on a
  (2, 2, 2) mesh; the run's export loads in transformers without a warning, same logits."""
  import json
  import sys
  from pathlib import Path

  from jaxtune import train

  sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
  import tiny

  cfg = tiny.get_config()
  cfg.model.source = "preset:tiny-gemma3"
  cfg.model.scan_layers = True
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  cfg.train.steps, cfg.train.eval_every, cfg.train.log_every = 20, 20, 5
  cfg.checkpoint.every_steps = 20
  cfg.train.progress = False
  cfg.export.enabled = True
  out = train.train_and_evaluate(cfg, tmp_path)
  assert out["compilations"] == 1
  losses = [json.loads(x)["train/loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in x]
  assert losses[-1] < losses[0] - 0.5, losses
  assert out["state"]["params"]["layers"]["self_attn"]["q_norm"]["scale"].shape == (3, 16)

  ids = np.random.default_rng(0).integers(1, 257, (2, 64)).astype(np.int32)
  mask = np.ones_like(ids)
  with _no_transformers_warnings():
    back = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path / "export", attn_implementation="eager", dtype=torch.float32).eval()
  assert type(back).__name__ == "Gemma3ForCausalLM" and back.config.layer_types[1] == "full_attention"
  got = _jax_logits(hf.load(tmp_path / "export"), ids, mask)
  assert _diff(got, _torch_logits(back, ids, mask)) < 1e-4


def test_gemma3_270m_preset_has_the_real_shapes():
  """The preset's config builds in transformers (meta device: shapes only) with the same
  parameter shapes as jaxtune's model of it: 268,098,176 parameters, as google/gemma-3-270m."""
  from jaxtune.models import presets

  cfg_dict = {k: v for k, v in presets.PRESETS["gemma3-270m"].items() if k != "model_type"}
  with torch.device("meta"):
    ref = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**cfg_dict))
  family, cfg = presets.model_config("gemma3-270m")
  abstract = nnx.eval_shape(lambda: family.build(cfg, task="causal_lm", param_dtype=jnp.float32,
                                                 compute_dtype=None, rngs=nnx.Rngs(0)))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert ours == sum(p.numel() for p in ref.parameters()) == 268_098_176
  assert cfg.layer_kinds.count(0) == 3 and cfg.sliding_window == 512
