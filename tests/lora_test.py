"""LoRA: exactness at init, parity with PEFT, merged export, trainable/frozen split, dropout.

Tiny random HF models (torch, float32) are written with save_pretrained into a temporary
directory and loaded with `jaxtune.hf.load`. Adapters get random `lora_b` (and heads random
weights) so every check sees a real LoRA contribution; `peft.PeftModel.from_pretrained` on the
torch base model must then give the same logits as jaxtune.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxtune import hf, lora, sharding  # noqa: E402
from jaxtune.hf import convert  # noqa: E402
from jaxtune.hf.safetensors_io import SafetensorsSource  # noqa: E402
from jaxtune.models import layers  # noqa: E402

VOCAB, PAD = 130, 0
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD,
             max_position_embeddings=64)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=PAD,
            bos_token_id=1, eos_token_id=2)
LABELS = ("neg", "neu", "pos")
ALL_PROJ = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def _hf_model(model_type: str, task: str, overrides: dict):
  cfg = transformers.AutoConfig.for_model(model_type, **overrides)
  auto = transformers.AutoModelForCausalLM
  if task == "seq_cls":
    cfg.id2label = dict(enumerate(LABELS))
    cfg.label2id = {n: i for i, n in enumerate(LABELS)}
    auto = transformers.AutoModelForSequenceClassification
  torch.manual_seed(0)
  model = auto.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
  with torch.no_grad():
    for p in model.parameters():  # HF inits norms to 1 and biases to 0: perturb all of them
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """Written lazily: {(model_type, task): directory}."""
  cache = {}

  def get(model_type: str = "llama", task: str = "causal_lm"):
    if (model_type, task) not in cache:
      path = tmp_path_factory.mktemp(f"{model_type}_{task}")
      _hf_model(model_type, task, LLAMA if model_type == "llama" else GPT2).save_pretrained(path)
      cache[model_type, task] = path
    return cache[model_type, task]

  return get


def _batch(B: int = 3, T: int = 8):
  """Full, right-padded and left-padded rows; real tokens never equal the pad id."""
  rng = np.random.default_rng(0)
  ids = rng.integers(3, VOCAB, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  mask[1, -3:] = 0
  mask[2, :2] = 0
  ids[mask == 0] = PAD
  return ids, mask


def _torch_logits(model, ids, mask):
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(),
                attention_mask=torch.from_numpy(mask).long(),
                position_ids=torch.from_numpy(positions).long())
  return out.logits.numpy()


def _logits(model, ids, mask):
  return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))


def _real(x, mask, task):
  # Causal LM: padded positions are garbage on both sides; seq cls pools a real token.
  return x[mask.astype(bool)] if task == "causal_lm" else x


def _randomize(model, seed: int = 1, std: float = 0.3):
  """Give every adapter a random lora_b (as if trained), so it changes the output."""
  rng = np.random.default_rng(seed)
  for _, m in lora.lora_modules(model):
    b = m.lora_b.get_value()
    m.lora_b.set_value(jnp.asarray(std * rng.standard_normal(b.shape), b.dtype))


def _peft_logits(base_dir, adapter_dir, task, ids, mask):
  kw = dict(attn_implementation="eager", dtype=torch.float32)
  if task == "seq_cls":  # as a user loads the base for a 3-label adapter
    auto = transformers.AutoModelForSequenceClassification
    base = auto.from_pretrained(base_dir, num_labels=3, **kw)
  else:
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, **kw)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
  bad = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
  assert not bad, bad
  return _torch_logits(model, ids, mask), model


def _cfg(**kw):
  c = lora.default_config()
  c.rank = 4
  c.alpha = 8.0
  c.update(kw)
  return c


# ------------------------------------------------------------------------------------ tests


def test_zero_b_is_exactly_the_base_model(checkpoint):
  ids, mask = _batch()
  model = hf.load(checkpoint())
  want = _logits(model, ids, mask)
  lora.apply(model, _cfg())
  assert len(lora.lora_modules(model)) == 2 * 7
  for _, m in lora.lora_modules(model):
    assert not np.any(np.asarray(m.lora_b.get_value()))
    assert np.any(np.asarray(m.lora_a.get_value()))
  np.testing.assert_array_equal(_logits(model, ids, mask), want)
  _randomize(model)
  assert np.max(np.abs(_logits(model, ids, mask) - want)) > 1e-2


def test_params_paths_and_axes(checkpoint):
  model = lora.apply(hf.load(checkpoint()), _cfg(rank=3))
  flat = convert.param_paths(nnx.state(model, lora.LoRAParam))
  q = "layers/0/self_attn/q_proj"
  assert f"{q}/lora_a" in flat and f"{q}/lora_b" in flat and len(flat) == 2 * 2 * 7
  assert flat[f"{q}/lora_a"].get_value().shape == (32, 3)
  assert flat[f"{q}/lora_b"].get_value().shape == (3, 32)
  assert flat[f"{q}/lora_a"].get_metadata()["out_sharding"] == ("embed", "lora_rank")
  assert flat[f"{q}/lora_b"].get_metadata()["out_sharding"] == ("lora_rank", "heads")
  down = flat["layers/1/mlp/down_proj/lora_a"].get_metadata()["out_sharding"]
  assert down == ("mlp", "lora_rank")
  base = convert.param_paths(nnx.state(model, nnx.Not(lora.LoRAParam)))
  assert f"{q}/kernel" in base and "lm_head/kernel" in base
  # PEFT's kaiming-uniform bound for lora_A [r, in] is 1 / sqrt(in).
  a = np.asarray(flat[f"{q}/lora_a"].get_value())
  assert np.max(np.abs(a)) <= 32**-0.5 and np.std(a) > 0.05


def test_adapters_follow_the_kernel_sharding(checkpoint):
  mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
  model = lora.apply(hf.load(checkpoint(), mesh=mesh), _cfg(rank=4))
  proj = model.layers[0].self_attn.q_proj
  assert proj.lora_a.get_value().sharding.spec == P("fsdp", None)
  assert proj.lora_b.get_value().sharding.spec == P(None, "tensor")
  assert model.layers[0].mlp.down_proj.lora_a.get_value().sharding.spec == P("tensor", None)


@pytest.mark.parametrize("targets", [ALL_PROJ, r"layers/0/self_attn/(q_proj|v_proj)$"])
def test_peft_parity_causal_lm(checkpoint, tmp_path, targets):
  ids, mask = _batch()
  model = lora.apply(hf.load(checkpoint()), _cfg(targets=targets, alpha=12.0))
  _randomize(model)
  got = _logits(model, ids, mask)
  out = lora.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(checkpoint()))
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
  assert config["r"] == 4 and config["lora_alpha"] == 12.0 and config["modules_to_save"] is None
  if targets == ALL_PROJ:
    assert config["target_modules"] == sorted(
      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
  else:  # short names would also adapt layer 1 in PEFT: full module paths instead
    assert config["target_modules"] == ["model.layers.0.self_attn.q_proj",
                                        "model.layers.0.self_attn.v_proj"]
  src = SafetensorsSource.from_dir(out)
  assert src.shape("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight") == (4, 32)
  assert src.shape("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight") == (16, 4)
  want, _ = _peft_logits(checkpoint(), out, "causal_lm", ids, mask)
  np.testing.assert_allclose(_real(got, mask, "causal_lm"), _real(want, mask, "causal_lm"),
                             atol=1e-5, rtol=0)


def test_adapter_for_a_base_peft_cannot_load_by_name(checkpoint, tmp_path):
  """A GGUF base: adapter_config.json names no base (null, never the .gguf path), and
  PeftModel attaches the adapter to a base loaded by hand with the same result."""
  ids, mask = _batch()
  model = lora.apply(hf.load(checkpoint()), _cfg(targets=ALL_PROJ))
  _randomize(model)
  out = lora.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=None)
  assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None
  want, _ = _peft_logits(checkpoint(), out, "causal_lm", ids, mask)
  np.testing.assert_allclose(_real(_logits(model, ids, mask), mask, "causal_lm"),
                             _real(want, mask, "causal_lm"), atol=1e-5, rtol=0)


def test_merged_export_loads_in_transformers(checkpoint, tmp_path):
  ids, mask = _batch()
  model = lora.apply(hf.load(checkpoint()), _cfg(targets=ALL_PROJ))
  _randomize(model)
  got = _logits(model, ids, mask)
  out = hf.save(model, tmp_path / "merged")
  assert lora.has_lora(model)  # save merged a copy, not the model
  back, info = transformers.AutoModelForCausalLM.from_pretrained(
    out, output_loading_info=True, attn_implementation="eager")
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info.get(kind), (kind, info[kind])
  want = _torch_logits(back.eval(), ids, mask)
  np.testing.assert_allclose(_real(got, mask, "causal_lm"), _real(want, mask, "causal_lm"),
                             atol=1e-5, rtol=0)
  merged = lora.merge(model)
  assert not lora.has_lora(merged) and not hasattr(merged, "lora_spec")
  assert type(merged.layers[0].self_attn.q_proj) is layers.Linear
  np.testing.assert_allclose(_logits(merged, ids, mask), got, atol=1e-5, rtol=0)


def test_split_trainable_and_combine(checkpoint):
  ids, mask = _batch()
  model = lora.apply(hf.load(checkpoint(task="seq_cls"), task="seq_cls"), _cfg())
  _randomize(model)
  want = _logits(model, ids, mask)
  graphdef, trainable, frozen = lora.split_trainable(model, _cfg())
  paths = set(convert.param_paths(trainable))
  assert paths == {p for p in paths if p.endswith(("/lora_a", "/lora_b"))} | {"score/kernel"}
  assert len(paths) == 2 * 2 * 7 + 1
  frozen_paths = set(convert.param_paths(frozen))
  assert {"layers/0/self_attn/q_proj/kernel", "embed_tokens/embedding"} <= frozen_paths
  assert not frozen_paths & paths
  # Both as nnx States and as the pure dicts the driver keeps.
  for parts in ((trainable, frozen), (nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen))):
    np.testing.assert_array_equal(_logits(lora.combine(graphdef, *parts), ids, mask), want)
  # No train_also: only adapters. LoRA off: every param, nothing frozen.
  _, t, _ = lora.split_trainable(model, _cfg(train_also=""))
  assert all(p.endswith(("/lora_a", "/lora_b")) for p in convert.param_paths(t))
  with pytest.raises(ValueError, match="lora.apply"):
    lora.split_trainable(hf.load(checkpoint()), _cfg())


def test_sgd_changes_only_lora_params(checkpoint):
  ids, mask = _batch()
  model = lora.apply(hf.load(checkpoint()), _cfg())
  before = {p: np.asarray(v.get_value()) for p, v in convert.param_paths(nnx.state(model)).items()}
  graphdef, trainable, frozen = lora.split_trainable(model, _cfg())
  params, frozen = nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)
  tx = optax.sgd(0.5)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, frozen):
    def loss_fn(p):
      logits = lora.combine(graphdef, p, frozen)(jnp.asarray(ids), jnp.asarray(mask))
      logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
      nll = -jnp.take_along_axis(logp, jnp.asarray(ids)[:, 1:, None], axis=-1)[..., 0]
      return jnp.sum(nll * mask[:, 1:]) / mask[:, 1:].sum()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(3):
    params, opt_state, loss = step(params, opt_state, frozen)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  trained = nnx.state(lora.combine(graphdef, params, frozen))
  after = {p: np.asarray(v.get_value()) for p, v in convert.param_paths(trained).items()}
  assert after.keys() == before.keys()
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  lora_paths = {p for p in before if p.endswith(("/lora_a", "/lora_b"))}
  assert changed and changed <= lora_paths
  assert all(p in changed for p in lora_paths if p.endswith("/lora_b"))  # B leaves zero at once


def test_dropout_only_in_train_mode():
  base = layers.Linear(16, 8, axes=("embed", "mlp"), use_bias=True, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 16))
  base_y = base(x)
  spec = lora.resolve(_cfg(rank=4, dropout=0.5))
  m = lora.LoRALinear(base, spec, jax.random.key(2))
  np.testing.assert_array_equal(m(x), base_y)  # B = 0
  np.testing.assert_array_equal(m(x, lora_rng=jax.random.key(3)), base_y)  # eval: no dropout
  m.train()
  # Dropout sits on the LoRA path only: with B = 0 the output is still exactly the base's.
  np.testing.assert_array_equal(m(x, lora_rng=jax.random.key(3)), base_y)
  m.lora_b.set_value(jax.random.normal(jax.random.key(4), (4, 8)))
  m.eval()
  eval_y = m(x)
  np.testing.assert_array_equal(m(x, lora_rng=jax.random.key(3)), eval_y)
  m.train()
  y3, y3b, y5 = (m(x, lora_rng=jax.random.key(k)) for k in (3, 3, 5))
  np.testing.assert_array_equal(y3, y3b)
  assert not np.allclose(y3, eval_y) and not np.allclose(y3, y5)
  # PEFT's order: scale * B(A(dropout(x))), dropout being inverted (kept inputs / (1 - p)).
  drop = layers.Dropout(0.5)
  drop.deterministic = False
  h = drop(x, jax.random.key(3))
  assert 0.3 < float(jnp.mean(h == 0)) < 0.7
  want = base_y + m.scale * (h @ m.lora_a.get_value() @ m.lora_b.get_value())
  np.testing.assert_allclose(y3, want, atol=1e-5, rtol=0)
  assert m.scale == 8.0 / 4
  with pytest.raises(ValueError, match="lora_rng"):
    m(x)
  # A plain Linear takes the key and ignores it, so model code can always pass one.
  np.testing.assert_array_equal(base(x, lora_rng=jax.random.key(3)), base_y)


def test_model_train_eval_switch_lora_dropout(checkpoint):
  model = lora.apply(hf.load(checkpoint()), _cfg(dropout=0.1))
  mods = [m for _, m in lora.lora_modules(model)]
  model.train()
  assert all(not m.lora_dropout.deterministic for m in mods)
  model.eval()
  assert all(m.lora_dropout.deterministic for m in mods)


def test_config_errors(checkpoint):
  model = hf.load(checkpoint())
  with pytest.raises(ValueError, match=r"lora\.targets.*matches no linear layer"):
    lora.apply(model, _cfg(targets=r"no_such_module$"))
  with pytest.raises(ValueError, match=r"lora\.targets.*not a valid regex"):
    lora.apply(model, _cfg(targets="(q_proj"))
  with pytest.raises(ValueError, match=r"lora\.rank"):
    lora.apply(model, _cfg(rank=-1))
  with pytest.raises(ValueError, match=r"lora\.dropout"):
    lora.apply(model, _cfg(dropout=1.0))
  with pytest.raises(ValueError, match=r"lora\.nope"):
    lora.apply(model, {"rank": 2, "nope": 1})
  assert lora.apply(model, _cfg(rank=0)) is model and not lora.has_lora(model)
  lora.apply(model, _cfg())
  with pytest.raises(ValueError, match="already has LoRA"):
    lora.apply(model, _cfg())
  with pytest.raises(ValueError, match="base_model_name_or_path"):
    hf.save(model, "/nonexistent", adapter_only=True)


def test_default_targets_cover_every_family():
  import re

  rx = re.compile(lora.DEFAULT_TARGETS)
  yes = ["layers/0/self_attn/q_proj", "layers/3/mlp/down_proj", "layers/0/attn/c_attn",
         "layers/0/attn/c_proj", "layers/0/mlp/c_fc", "layers/0/mlp/c_proj",
         "layers/0/attention/self/query", "layers/0/attention/self/value",
         "layers/0/attention/output/dense", "layers/0/intermediate/dense", "layers/0/output/dense",
         "layers/0/attention/attn/q", "layers/0/attention/attn/o"]
  no = ["lm_head", "score", "classifier", "pooler/dense", "cls/predictions/transform/dense",
        "embed_tokens", "classifier/dense", "classifier/out_proj", "lm_head/dense"]
  assert all(rx.search(p) for p in yes) and not any(rx.search(p) for p in no)


@pytest.mark.parametrize("base_task,train_also", [
  ("seq_cls", lora.DEFAULT_TRAIN_ALSO),  # the head trained through train_also
  ("causal_lm", ""),  # a classifier on an LM checkpoint: the head is new, frozen, still saved
])
def test_seq_cls_head_saved_for_peft(checkpoint, tmp_path, base_task, train_also):
  ids, mask = _batch()
  path = checkpoint(task=base_task)
  model = lora.apply(hf.load(path, task="seq_cls", num_labels=3), _cfg(train_also=train_also))
  _, trainable, _ = lora.split_trainable(model, _cfg(train_also=train_also))
  assert ("score/kernel" in convert.param_paths(trainable)) == bool(train_also)
  _randomize(model)
  score = model.score.kernel
  if train_also:  # as if trained: the head now differs from the base checkpoint's
    score.set_value(score.get_value() + 0.5)
  got = _logits(model, ids, mask)
  out = hf.save(model, tmp_path / "adapter", adapter_only=True, base_model_name_or_path=str(path))
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
  assert SafetensorsSource.from_dir(out).shape("base_model.model.score.weight") == (3, 32)
  want, peft_model = _peft_logits(path, out, "seq_cls", ids, mask)
  np.testing.assert_array_equal(
    peft_model.base_model.model.score.modules_to_save["default"].weight.detach().numpy(),
    np.asarray(score.get_value()).T)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_gpt2_peft_parity(checkpoint, tmp_path):
  """GPT-2's Conv1D layers (fan_in_fan_out) and head-major c_attn columns."""
  ids, mask = _batch()
  mask[:] = 1  # GPT-2 positions are plain 0..T-1 here
  ids[ids == PAD] = 5
  path = checkpoint("gpt2")
  model = lora.apply(hf.load(path), _cfg())
  assert len(lora.lora_modules(model)) == 2 * 4
  _randomize(model)
  got = _logits(model, ids, mask)
  out = lora.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(path))
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["fan_in_fan_out"] and config["target_modules"] == ["c_attn", "c_fc", "c_proj"]
  want, _ = _peft_logits(path, out, "causal_lm", ids, mask)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# --------------------------------------------------------------- LoRA dropout inside models


def _tiny(family: str, task: str):
  """A tiny random model; its own dropout is off, so only LoRA dropout is random."""
  from jaxtune.models import bert, decoder, gpt2, mpnet

  n = 3 if task == "seq_cls" else 0
  rngs = nnx.Rngs(0)
  if family == "llama":
    cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                                intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                head_dim=8, pad_token_id=PAD, num_labels=n)
    return decoder.build(cfg, task=task, rngs=rngs)
  if family == "gpt2":
    cfg = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                          n_inner=32, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                          pad_token_id=PAD, num_labels=n)
    return gpt2.GPT2(cfg, task=task, rngs=rngs)
  kind = {"bert": (bert.BertConfig, bert.Bert), "mpnet": (mpnet.MPNetConfig, mpnet.MPNet)}
  config_cls, model_cls = kind[family]
  cfg = config_cls(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, num_labels=n)
  return model_cls(cfg, task=task, rngs=rngs)


@pytest.mark.parametrize("family,task", [
  ("llama", "causal_lm"), ("llama", "seq_cls"), ("gpt2", "seq_cls"), ("bert", "seq_cls"),
  ("bert", "masked_lm"), ("mpnet", "seq_cls"), ("mpnet", "masked_lm"),
])
def test_lora_dropout_in_models(family, task, monkeypatch):
  """Every adapted linear (heads included) gets its own key from the model's dropout_rng."""
  # Each LoRA layer's key, as the traced program sees it (returned beside the output).
  call = lora.LoRALinear.__call__
  seen = []

  def record(self, x, *, lora_rng=None):
    seen.append(None if lora_rng is None else jax.random.key_data(lora_rng))
    return call(self, x, lora_rng=lora_rng)

  monkeypatch.setattr(lora.LoRALinear, "__call__", record)

  @functools.partial(jax.jit, static_argnums=(0, 5))  # its own cache: traces see the patch
  def forward(graphdef, state, ids, mask, key, with_keys):
    seen.clear()
    out = nnx.merge(graphdef, state)(ids, mask, dropout_rng=key)
    # Inside remat the keys are the remat trace's own values: only return them without it.
    return out, (list(seen) if with_keys else [])

  def run(key):
    graphdef, state = nnx.split(model)
    out, keys = forward(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), key,
                        model.remat == "none")
    return np.asarray(out), keys

  ids, mask = _batch(T=6)
  model = nnx.jit(lambda: _tiny(family, task))()  # eager init is slow on shared CPUs
  model = lora.apply(model, _cfg(targets=r".", dropout=0.5, train_also=""))
  _randomize(model)
  k1, k2 = jax.random.key(1), jax.random.key(2)
  eval_out, _ = run(None)
  np.testing.assert_array_equal(run(k1)[0], eval_out)  # eval: deterministic
  model.train()
  (a, keys), (a2, _), (b, _) = run(k1), run(k1), run(k2)
  np.testing.assert_array_equal(a, a2)
  assert np.max(np.abs(a - b)) > 1e-3 and np.max(np.abs(a - eval_out)) > 1e-3
  distinct = {tuple(np.asarray(k).ravel()) for k in keys}
  assert len(keys) == len(distinct) == len(lora.lora_modules(model))
  model.remat = "full"  # keys travel into rematerialised layers as array arguments
  np.testing.assert_allclose(run(k1)[0], a, atol=1e-6, rtol=0)
  model.remat = "none"
  with pytest.raises(ValueError, match="lora_rng"):
    run(None)
  model.eval()
  np.testing.assert_array_equal(run(k2)[0], eval_out)


def test_lora_keys_leave_dropout_keys_unchanged():
  key = jax.random.key(0)
  plain, mixed = layers.RngSplitter(key), layers.RngSplitter(key)
  want = [plain(), plain()]
  got = [mixed(), mixed.lora(), mixed(), mixed.lora()]
  data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel())
  assert [data(k) for k in (got[0], got[2])] == [data(k) for k in want]
  assert len({data(k) for k in got}) == 4
  none = layers.RngSplitter(None)
  assert none() is None and none.lora() is None
