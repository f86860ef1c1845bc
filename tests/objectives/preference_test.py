"""model.task='preference': the loss through train_step against dpo_losses on separately computed
log-probabilities (LoRA with the adapters-off reference, full fine-tuning with stored reference
log-probabilities), micro-batch exactness, an end-to-end `jaxtune train` with resume, the search's
key checks and one-line user errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import config as jt_config
from jaxtune import lora, step, train
from jaxtune.models import decoder
from jaxtune.objectives import dpo_losses, preference
from jaxtune.tune import space
from tests.cli.errors import harness
from tests.data.conftest import byte_tokenizer

REPO = Path(__file__).resolve().parents[2]
VOCAB = 41
B, T = 4, 10


def _model():
  cfg = decoder.DecoderConfig(model_type="llama", vocab_size=VOCAB, hidden_size=16,
                              intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                              head_dim=8)
  return decoder.build(cfg, task="causal_lm", rngs=nnx.Rngs(0))


def _batch(seed=0) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for side in ("chosen", "rejected"):
    ids = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
    n = rng.integers(6, T + 1, B)  # right padding after n tokens
    mask = (np.arange(T)[None] < n[:, None]).astype(np.int32)
    out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = ids, mask
    out[f"{side}_loss_mask"] = mask * (np.arange(T)[None] >= 3)  # 3 prompt tokens
  return out


def _logps(model, batch):
  """[B] chosen and rejected answer log-probabilities, each side its own forward pass."""
  out = []
  for side in ("chosen", "rejected"):
    logits = model(jnp.asarray(batch[f"{side}_input_ids"]),
                   attention_mask=jnp.asarray(batch[f"{side}_attention_mask"]))
    out += dpo_losses.sequence_logps(logits, batch[f"{side}_input_ids"], batch[f"{side}_loss_mask"])
  return out  # chosen logps, chosen counts, rejected logps, rejected counts


def _options(loss="sigmoid", reference="adapters_off", **kw):
  c = jt_config.default()
  c.preference.loss, c.preference.reference = loss, reference
  for k, v in kw.items():
    c.preference[k] = v
  c.lora.rank = 4 if reference == "adapters_off" else 0
  return preference.OBJECTIVE.options(c)


def _step(graphdef, params, frozen, batch, options, micro_batches=1):
  optim_cfg = jt_config.default().optim
  tx = optax.sgd(0.1)
  cfg = step.StepConfig(task="preference", micro_batches=micro_batches, skip_nonfinite=False,
                        optim_cfg=optim_cfg, options=options)
  state = step.init_state(params, tx, 0, optim_cfg)
  new, m = jax.jit(lambda s, b, f: step.train_step(graphdef, tx, cfg, s, b, f))(state, batch, frozen)
  return jax.device_get(new["params"]), jax.device_get(m)


def test_lora_step_loss_is_dpo_against_the_base_without_a_copy():
  model = _model()
  batch = _batch()
  ref_c, _, ref_r, _ = _logps(model, batch)  # the base, before any adapter exists
  lora.apply(model, {"rank": 4, "alpha": 8.0, "targets": "(q_proj|v_proj|up_proj)"}, seed=1)
  for _, m in lora.lora_modules(model):  # trained-looking adapters: the policy leaves the base
    m.lora_b.set_value(0.3 * jax.random.normal(jax.random.key(2), m.lora_b.shape))
  pol_c, _, pol_r, _ = _logps(model, batch)
  assert float(jnp.max(jnp.abs(pol_c - ref_c))) > 1e-3  # the adapters matter
  graphdef, trainable, frozen = lora.split_trainable(model, {"rank": 4})
  params, frozen = nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)

  opts = _options(beta=0.5)
  want = dpo_losses.pair_means(dpo_losses.dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.5))
  new1, m1 = _step(graphdef, params, frozen, batch, opts)
  np.testing.assert_allclose(m1["train/loss"], want["loss"], rtol=1e-5)
  for name, key in (("rewards/accuracy", "rewards/accuracies"), ("rewards/margin", "rewards/margins"),
                    ("rewards/chosen", "rewards/chosen"), ("logps/rejected", "logps/rejected")):
    np.testing.assert_allclose(m1[f"train/{name}"], want[key], rtol=1e-5, atol=1e-6)
  # Two micro-batches of 2 pairs: the same loss, metrics and update as one batch of 4.
  new2, m2 = _step(graphdef, params, frozen, batch, opts, micro_batches=2)
  np.testing.assert_allclose(m2["train/loss"], m1["train/loss"], rtol=1e-5)
  np.testing.assert_allclose(m2["train/rewards/margin"], m1["train/rewards/margin"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new1), jax.tree.leaves(new2), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Only the adapters moved, and the frozen base is what the reference read.
  assert all("lora_" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(new1)[0])


@pytest.mark.parametrize("loss", [*preference.LOSSES, "rpo"])
def test_full_fine_tuning_step_loss_matches_dpo_losses_with_stored_reference(loss):
  sft_weight = 0.5 if loss == "rpo" else 0.0
  loss = "sigmoid" if loss == "rpo" else loss
  model = _model()
  batch = _batch(1)
  pol_c, n_c, pol_r, n_r = _logps(model, batch)
  rng = np.random.default_rng(3)
  batch["ref_chosen_logps"] = (np.asarray(pol_c) + rng.normal(size=B)).astype(np.float32)
  batch["ref_rejected_logps"] = (np.asarray(pol_r) + rng.normal(size=B)).astype(np.float32)
  ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
  if loss == "simpo":
    out = dpo_losses.simpo_loss(pol_c, pol_r, n_c, n_r, beta=2.0, gamma=0.3)
  elif loss == "orpo":
    out = dpo_losses.orpo_loss(pol_c, pol_r, n_c, n_r, lam=0.2)
  else:
    out = dpo_losses.dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=2.0, kind=loss, chosen_counts=n_c,
                              rejected_counts=n_r, sft_weight=sft_weight)
  graphdef, params = nnx.split(model)
  opts = _options(loss, "precomputed", beta=2.0, simpo_gamma=0.3, orpo_lambda=0.2,
                  sft_weight=sft_weight)
  _, m = _step(graphdef, nnx.to_pure_dict(params), None, batch, opts)
  np.testing.assert_allclose(m["train/loss"], dpo_losses.pair_means(out)["loss"], rtol=1e-5)


# ----------------------------------------------------------------------------- end to end


def _write_data(tmp_path) -> tuple[Path, Path]:
  rng = np.random.default_rng(0)
  rows = [{"prompt": f"Review {i}:", "chosen": " good" * int(rng.integers(1, 4)),
           "rejected": " bad" * int(rng.integers(1, 4))} for i in range(48)]
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  tok = tmp_path / "tok"
  byte_tokenizer().save_pretrained(str(tok))
  return data, tok


def _config(data, tok, **over):
  c = jt_config.default()
  c.model.source = "preset:tiny-llama"
  c.model.task = "preference"
  c.model.compute_dtype = "float32"
  c.model.config_overrides = "vocab_size=272"  # the byte tokenizer's 263 ids
  c.data.kind, c.data.source, c.data.tokenizer = "preference", str(data), str(tok)
  c.data.seq_len, c.data.split = 24, "0.75,0.25"
  c.mesh.data = 1
  c.train.steps, c.train.batch_size, c.train.eval_every, c.train.log_every = 12, 4, 6, 3
  c.train.eval_at_start, c.train.progress = True, False
  c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 0
  c.checkpoint.every_steps = 4
  c.checkpoint.best_metric, c.checkpoint.best_mode = "eval/rewards/accuracy", "max"
  c.export.enabled = False
  for k, v in over.items():
    section, key = k.split(".")
    c[section][key] = v
  return c


def test_jaxtune_train_preference_raises_reward_accuracy(tmp_path):
  data, tok = _write_data(tmp_path)
  flags = [f"--config.{k}={v}" for k, v in {
    "model.task": "preference", "model.source": "preset:tiny-llama", "model.compute_dtype": "float32",
    "model.config_overrides": "vocab_size=272", "data.kind": "preference", "data.source": data,
    "data.tokenizer": tok, "data.seq_len": 24, "data.split": "0.75,0.25", "lora.rank": 8,
    "mesh.data": 1, "train.steps": 12, "train.batch_size": 4, "train.eval_every": 6,
    "train.eval_at_start": True, "train.progress": False, "optim.learning_rate": 1e-2,
    "optim.warmup_steps": 0, "checkpoint.best_metric": "eval/rewards/accuracy",
    "checkpoint.best_mode": "max", "export.enabled": False}.items()]
  result = harness.run("train", "--config", str(REPO / "configs/tiny.py"), "--workdir",
                       str(tmp_path / "run"), *flags, timeout=900)
  assert result.returncode == 0, str(result)
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/rewards/accuracy" in r]
  assert evals[0]["step"] == 0 and abs(evals[0]["eval/loss"] - np.log(2)) < 1e-5  # policy = reference
  assert evals[-1]["eval/rewards/accuracy"] >= 0.9 > evals[0]["eval/rewards/accuracy"]
  assert evals[-1]["eval/loss"] < 0.5
  train_rows = [r for r in rows if "train/rewards/margin" in r]
  assert train_rows and train_rows[-1]["train/rewards/margin"] > 0


def test_full_fine_tuning_resume_reuses_the_stored_reference(tmp_path):
  data, tok = _write_data(tmp_path)
  whole = train.train_and_evaluate(_config(data, tok), tmp_path / "whole")
  stored = dict(np.load(tmp_path / "whole" / preference.REFERENCE_FILE))
  assert stored["train/ref_chosen_logps"].shape == (36,)
  assert stored["validation/ref_rejected_logps"].shape == (12,)

  # Stopped at step 6 as a preemption stops it (SIGTERM: the step is saved, the process exits),
  # then run again with the same config: it resumes, reading the stored reference back.
  part = tmp_path / "part"
  stop = lambda s, _: s == 6 and os.kill(os.getpid(), signal.SIGTERM) and False
  with pytest.raises(SystemExit):
    train.train_and_evaluate(_config(data, tok), part, on_eval=stop)
  ref_bytes = (part / preference.REFERENCE_FILE).read_bytes()
  resumed = train.train_and_evaluate(_config(data, tok), part)
  assert resumed["resumed_from"] == 6
  # Never recomputed from the trained weights: the same file, and the run the uninterrupted one.
  assert (part / preference.REFERENCE_FILE).read_bytes() == ref_bytes
  a = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
  b = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
  last = lambda rows: [r for r in rows if r["step"] == 12 and "eval/loss" in r][-1]
  np.testing.assert_allclose(last(b)["eval/loss"], last(a)["eval/loss"], rtol=1e-5)
  np.testing.assert_allclose(last(b)["eval/rewards/margin"], last(a)["eval/rewards/margin"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(jax.device_get(whole["state"]["params"])),
                  jax.tree.leaves(jax.device_get(resumed["state"]["params"])), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_search_over_beta_passes_the_key_checks():
  search = space.default()
  search.space["preference.beta"] = space.loguniform(0.05, 0.5)
  search.objective.metric, search.objective.direction = "eval/rewards/accuracy", "maximize"
  c = jt_config.default()
  c.model.task, c.data.kind = "preference", "preference"
  space.check(search, c)
  tried = space.apply(c, {"preference.beta": 0.2})
  assert tried.preference.beta == 0.2
  assert "eval/rewards/accuracy" in preference.OBJECTIVE.metric_names()


@pytest.mark.parametrize("flag, words", [
  ("--config.preference.loss=dpoo", ("preference.loss='dpoo'", "expected one of")),
  ("--config.preference.loss=simpo --config.preference.sft_weight=1",
   ("preference.sft_weight=1", "simpo")),
  ("--config.data.rejected_column=worse", ("pairs.jsonl, row 1", "missing column 'worse'")),
])
def test_user_errors_are_one_line(tmp_path, flag, words):
  data, tok = _write_data(tmp_path)
  result = harness.run(
    "train", "--config", str(REPO / "configs/tiny.py"), "--workdir", str(tmp_path / "run"),
    "--config.model.task=preference", "--config.data.kind=preference",
    f"--config.data.source={data}", f"--config.data.tokenizer={tok}",
    "--config.model.config_overrides=vocab_size=272", "--config.data.split=0.75,0.25", *flag.split())
  harness.expect_error(result, "train", *words)
