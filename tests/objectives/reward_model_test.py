"""Reward models (model.task='reward'): a one-output head trained on preference pairs with the
Bradley-Terry loss, validated by pairwise accuracy and margin, exported as transformers'
`...ForSequenceClassification` with num_labels=1 that scores as jaxtune does.

Tiny random models written by transformers in the test: a Llama with the real SmolLM2 tokenizer
(from its GGUF file: a chat template, pad = EOS) on chat rows, and a BERT with the MiniLM
tokenizer on text rows.
"""

import json
import logging

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import config as jt_config
from jaxtune import export, predict, rewards, step, train
from jaxtune.build import load_model
from jaxtune.data import assets
from jaxtune.data import load_tokenizer as jaxtune_tokenizer
from jaxtune.errors import ConfigError
from jaxtune.models import decoder
from jaxtune.objectives import reward_model
from tests.finetune_test import FILLER, NEGATIVE, POSITIVE, tiny_bert, write_jsonl

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

__all__ = ["tiny_bert"]  # a fixture, used by name


def review_pairs(n: int, seed: int, chat: bool) -> list[dict]:
  """Prompts asking for a review; the chosen answer holds a positive word, the rejected one a
  negative word, among the same filler."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    words = list(rng.choice(FILLER, size=4))
    good, bad = words + [rng.choice(POSITIVE)], words + [rng.choice(NEGATIVE)]
    rng.shuffle(good)
    rng.shuffle(bad)
    prompt = f"Review the {rng.choice(['film', 'movie', 'picture'])}."
    chosen, rejected = " ".join(good), " ".join(bad)
    if chat:
      prompt = [{"role": "user", "content": prompt}]
      chosen = [{"role": "assistant", "content": chosen}]
      rejected = [{"role": "assistant", "content": rejected}]
    rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
  return rows


def reward_config(source, data_file):
  c = jt_config.default()
  c.model.source = str(source)
  c.model.task = "reward"
  c.model.compute_dtype = "float32"
  c.data.kind = "preference"
  c.data.source = str(data_file)
  c.data.seq_len = 48  # the longest chat (SmolLM2's template adds a system turn) fits
  c.mesh.data = 1
  c.train.steps, c.train.batch_size, c.train.eval_every, c.train.log_every = 40, 16, 10, 10
  c.train.eval_at_start = True  # the untrained head's accuracy, a baseline
  c.train.progress = False
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 4
  c.checkpoint.best_metric, c.checkpoint.best_mode = "eval/accuracy", "max"
  return c


@pytest.fixture
def tiny_llama(tmp_path):
  try:
    gguf = assets.smollm2_gguf()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  cfg = transformers.LlamaConfig(
    vocab_size=49152,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
  )
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
  return tmp_path / "llama", gguf


def hf_scores(export_dir, prompts, answers) -> np.ndarray:
  """transformers' scores of the export: the chat rendered by its own tokenizer, a padded batch."""
  tok = transformers.AutoTokenizer.from_pretrained(export_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
  texts = [
    tok.apply_chat_template(
      [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
    )
    for p, a in zip(prompts, answers)
  ]
  enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
  with torch.no_grad():
    return model(**enc).logits[:, 0].numpy()


@pytest.mark.slow  # a short training run (and an export)
def test_llama_lora_reward_model_learns_pairs_and_exports_one_output(tiny_llama, tmp_path, caplog):
  source, gguf = tiny_llama
  data = write_jsonl(tmp_path / "pairs.jsonl", review_pairs(480, 0, chat=True))
  c = reward_config(source, data)
  c.data.tokenizer = str(gguf)
  # With LoRA (the new head trains in full); full fine-tuning: the step test and BERT's export.
  c.lora.rank, c.lora.alpha = 8, 16.0
  c.export.enabled = True
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, workdir)

  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/accuracy" in r]
  assert evals[0]["step"] == 0 and len(evals) >= 5
  assert {"eval/margin", "eval/chosen", "eval/rejected"} <= set(evals[0])
  assert evals[0]["eval/accuracy"] < 0.8 and max(r["eval/accuracy"] for r in evals) >= 0.95
  assert evals[-1]["eval/margin"] > evals[0]["eval/margin"]
  test = json.loads((workdir / "results.json").read_text())["test"]
  assert test["accuracy"] >= 0.9 and test["margin"] > 0

  # The export: one output, loaded by transformers without a warning, scoring as jaxtune does.
  prompts = ["Review the film.", "Review the movie.", "Review the picture.", "Review the film."]
  answers = [
    "a really lovely story",
    "the plot was dull",
    "superb",
    "actors quite boring with a plot",
  ]
  ours = predict.score(workdir, prompts, answers, batch_size=4)
  assert ours[0] > ours[1] and ours[2] > ours[3]
  with caplog.at_level(logging.WARNING, logger="transformers"):
    theirs = hf_scores(workdir / "export", prompts, answers)
  assert not [r for r in caplog.records if r.name.startswith("transformers")]
  config = json.loads((workdir / "export" / "config.json").read_text())
  assert config["architectures"] == ["LlamaForSequenceClassification"]
  assert len(config["id2label"]) == 1 and config["pad_token_id"] == 2
  np.testing.assert_allclose(theirs, ours, atol=1e-4)

  # GRPO's reward: the same scores through jaxtune.rewards, an empty answer scored too.
  reward = rewards.load(f"reward_model:{workdir}", batch_size=4)
  np.testing.assert_allclose(reward(prompts, answers), ours, atol=1e-5)
  assert len(reward(["Review the film."], [""])) == 1


def test_bert_reward_head_exports_with_transformers_parity(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "pairs.jsonl", review_pairs(8, 0, chat=False))
  c = reward_config(tiny_bert, data)
  model = load_model(c, None, num_labels=1)  # a fresh one-output head on the BERT
  tok = jaxtune_tokenizer(str(tiny_bert))
  out = export.save(model, tmp_path / "export", tok, c)
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert type(hf).__name__ == "BertForSequenceClassification" and hf.config.num_labels == 1
  texts = ["Review the film. a lovely story", "Review the film. dull", "good"]
  enc = tok(texts, return_tensors="np", padding=True)
  ours = np.asarray(
    model(
      enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"]
    )
  )[:, 0]
  with torch.no_grad():
    theirs = hf(**{k: torch.tensor(v) for k, v in enc.items()}).logits[:, 0].numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_pairs_stack_chosen_then_rejected():
  arrays = {
    f"{s}_{k}": np.full((3, 5), i, np.int32)
    for i, s in enumerate(reward_model.SIDES)
    for k in ("input_ids", "attention_mask", "loss_mask")
  }
  arrays["example_id"] = np.arange(3)
  out = reward_model.stack_pairs(arrays)
  assert set(out) == {"input_ids", "attention_mask", "example_id"}
  assert out["input_ids"].shape == (3, 2, 5)
  assert (out["input_ids"][:, 0] == 0).all() and (out["input_ids"][:, 1] == 1).all()


def test_train_step_is_bradley_terry_and_exact_over_micro_batches():
  cfg = decoder.DecoderConfig(
    model_type="llama",
    vocab_size=29,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    num_labels=1,
    pad_token_id=0,
  )
  graphdef, params = nnx.split(decoder.build(cfg, task="seq_cls", rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 29, (4, 2, 10)).astype(np.int32)
  mask = np.ones_like(ids)
  ids[1, 0, 6:], mask[1, 0, 6:] = 0, 0  # a shorter chosen answer, right padded
  batch = {"input_ids": ids, "attention_mask": mask}
  model = nnx.merge(graphdef, params)
  r = np.asarray(model(ids.reshape(8, 10), attention_mask=mask.reshape(8, 10)))[:, 0].reshape(4, 2)
  want_loss = np.mean(np.log1p(np.exp(-(r[:, 0] - r[:, 1]))))
  optim_cfg = jt_config.default().optim
  tx = optax.sgd(0.1)
  outs = []
  for m in (1, 2):
    step_cfg = step.StepConfig(
      task="reward", micro_batches=m, skip_nonfinite=False, optim_cfg=optim_cfg
    )
    state = step.init_state(params, tx, 0, optim_cfg)
    new, metrics = jax.jit(lambda s, b, c=step_cfg: step.train_step(graphdef, tx, c, s, b))(
      state, batch
    )
    np.testing.assert_allclose(metrics["train/loss"], want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["train/accuracy"], np.mean(r[:, 0] > r[:, 1]))
    np.testing.assert_allclose(metrics["train/margin"], np.mean(r[:, 0] - r[:, 1]), rtol=1e-5)
    outs.append(new["params"])
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_user_errors_name_the_key(tiny_bert, tmp_path):
  data = write_jsonl(tmp_path / "pairs.jsonl", review_pairs(8, 0, chat=False))
  c = reward_config(tiny_bert, data)
  c.data.kind = "classification"
  with pytest.raises(
    ConfigError,
    match=r"data.kind='classification': model.task='reward' trains on "
    r"preference pairs; set data.kind='preference'",
  ):
    train.train_and_evaluate(c, tmp_path / "run")
  c = reward_config(tiny_bert, data)
  c.model.num_labels = 3  # the head has one output: a --config.model.num_labels is refused
  with pytest.raises(ConfigError, match=r"model.num_labels.*only read with model.task='seq_cls'"):
    jt_config.check_ignored(c, ["model.num_labels"])
  with pytest.raises(ValueError, match=r"scores come from a reward-model run"):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.json").write_text(json.dumps({"model": {"task": "seq_cls"}}))
    predict.score(tmp_path / "cls", ["p"], ["a"])
