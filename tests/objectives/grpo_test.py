"""GRPO (`model.task='grpo'`): the objective's loss is grpo_loss on the policy's log-probs; a
tiny run raises a reward; a run killed mid-run resumes with the same samples and ends equal to
an uninterrupted one; LoRA and full fine-tuning both train; config mistakes are one line."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import transformers
from flax import nnx

from jaxtune import config as jt_config
from jaxtune import objectives, rewards, train
from jaxtune.errors import ConfigError
from jaxtune.models import presets
from jaxtune.objectives import grpo
from jaxtune.objectives.grpo_loss import grpo_loss
from jaxtune.step import StepConfig
from tests.train_test import set_keys

WORDS = ["good", "bad", "movie", "the", "a", "is", "film", "plot", "write", "review", "it", "was", "fun"]
MAX_NEW = 8
CALLS: list[tuple[list, list]] = []  # (prompts, completions) of every reward call
CRASH_AT_CALL = [0]  # > 0: the reward raises on that call (a run killed mid-run)


def reward_good(prompts, completions):
  """The share of a completion's budget spent on the word 'good'."""
  CALLS.append((list(prompts), list(completions)))
  if CRASH_AT_CALL[0] and len(CALLS) == CRASH_AT_CALL[0]:
    raise KeyboardInterrupt("killed")
  return [c.split().count("good") / MAX_NEW for c in completions]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>", pad_token="<pad>")
  path = tmp_path_factory.mktemp("tok")
  fast.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  rows = [{"prompt": " ".join(rng.choice(WORDS[2:], size=rng.integers(2, 6)))} for _ in range(40)]
  path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def grpo_config(tokenizer_dir, prompts_file, **overrides):
  c = jt_config.default()
  c.model.source = "preset:tiny-llama"
  c.model.task = "grpo"
  c.model.compute_dtype = "float32"
  c.model.config_overrides = f"vocab_size={len(WORDS) + 3}"
  c.data.kind = "prompts"
  c.data.source = str(prompts_file)
  c.data.tokenizer = str(tokenizer_dir)
  c.data.split = "0.8,0.2"
  c.data.seq_len = 8
  c.mesh.data = 1
  c.grpo.reward = f"{__name__}:reward_good"
  c.grpo.max_new_tokens = MAX_NEW
  c.grpo.group_size = 4
  c.train.batch_size = 4
  c.train.steps = 6
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.progress = False
  c.checkpoint.async_save = False
  c.optim.learning_rate = 3e-2
  c.optim.warmup_steps = 0
  return set_keys(c, overrides)


def metrics(workdir):
  return [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_loss_is_grpo_loss_of_the_policy_logps():
  model = presets.init("tiny-llama", task="causal_lm", param_dtype="float32")
  B, L, N = 4, 5, 6
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 200, size=(B, L + N)).astype(np.int32)
  mask = np.ones((B, L + N), np.int32)
  mask[0, :2] = 0  # a left-padded prompt
  cmask = (np.arange(N)[None] < np.array([6, 3, 1, 4])[:, None]).astype(np.int32)
  mask[:, L:] = cmask
  batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
           "completion_mask": jnp.asarray(cmask), "advantages": jnp.asarray([1.0, -0.5, 0.2, -0.7]),
           "rewards": jnp.zeros(B), "reward_std": jnp.zeros(B),
           "ref_logps": jnp.asarray(rng.normal(-5, 1, size=(B, N)), jnp.float32)}
  cfg = jt_config.default().grpo
  cfg.beta, cfg.loss_type, cfg.max_new_tokens = 0.1, "grpo", N
  obj = objectives.for_task("grpo")
  loss_sum, weight, extras = obj.loss_terms(model, batch, None, StepConfig("grpo", 1, False, None, options=cfg))
  # The policy's log-probs from the full logits of the plain forward pass.
  logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).astype(jnp.float32)
  logps = jnp.take_along_axis(jax.nn.log_softmax(logits[:, L - 1:-1]), batch["input_ids"][:, L:, None], -1)[..., 0]
  want = grpo_loss(logps, logps, batch["advantages"], batch["completion_mask"],
                   ref_logps_BT=batch["ref_logps"], beta=0.1, loss_type="grpo")
  np.testing.assert_allclose(float(loss_sum), float(want.loss_sum), rtol=1e-5)
  assert float(weight) == float(obj.batch_weight(batch, StepConfig("grpo", 1, False, None, options=cfg))) == B
  np.testing.assert_allclose(float(extras["kl"][0]), float(want.sums["kl"]), rtol=1e-5)
  # The gradient flows through the policy term (ratio 1): d loss / d logits is not zero.
  g = nnx.grad(lambda m: obj.loss_terms(m, batch, None, StepConfig("grpo", 1, False, None, options=cfg))[0])(model)
  assert float(optax.tree.norm(jax.tree.leaves(nnx.state(g)))) > 0


def test_full_fine_tuning_raises_the_reward_and_logs_samples(tokenizer_dir, prompts_file, tmp_path):
  c = grpo_config(tokenizer_dir, prompts_file, **{"train.steps": 24, "train.log_every": 4,
                                                   "grpo.beta": 0.01})
  out = train.train_and_evaluate(c, tmp_path)
  rows = [r for r in metrics(tmp_path) if "train/reward" in r]
  first, last = rows[0]["train/reward"], np.mean([r["train/reward"] for r in rows[-2:]])
  assert last > first + 0.2, [r["train/reward"] for r in rows]
  for key in ("train/kl", "train/clip_ratio", "train/completion_length", "train/reward_std"):
    assert key in rows[-1], sorted(rows[-1])
  assert out["eval"]["reward"] > 0.2, out["eval"]
  texts = [json.loads(x) for x in (tmp_path / "text.jsonl").read_text().splitlines()]
  assert any(t["tag"] == "samples/train" and "reward" in t["text"] for t in texts)


def _final_state(workdir, step):
  return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def test_lora_run_killed_mid_run_resumes_with_the_same_samples(tokenizer_dir, prompts_file, tmp_path):
  c = grpo_config(tokenizer_dir, prompts_file, **{"lora.rank": 4, "checkpoint.every_steps": 2,
                                                   "train.steps": 4})
  CALLS.clear()
  train.train_and_evaluate(c, tmp_path / "straight")
  straight = [x for x in CALLS if len(x[1]) == 16]  # the train steps' calls (4 prompts x 4)
  assert len(straight) == 4
  CALLS.clear()
  CRASH_AT_CALL[0] = 4  # killed while sampling step 4 (index 3), after step 2's checkpoint
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(c, tmp_path / "killed")
  CRASH_AT_CALL[0] = 0
  CALLS.clear()
  out = train.train_and_evaluate(c, tmp_path / "killed")
  assert out["resumed_from"] == 2
  resumed = [x for x in CALLS if len(x[1]) == 16]
  assert resumed == straight[2:]  # the same prompts and the same sampled completions
  a, b = _final_state(tmp_path / "straight", 4), _final_state(tmp_path / "killed", 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_config_mistakes_name_the_key(tokenizer_dir, prompts_file, tmp_path):
  with pytest.raises(ConfigError, match=r"grpo.group_size=1: must be >= 2"):
    train.train_and_evaluate(grpo_config(tokenizer_dir, prompts_file, **{"grpo.group_size": 1}), tmp_path)
  with pytest.raises(ConfigError, match=r"data.kind='synthetic'.*set data.kind='prompts'"):
    grpo.check_config(grpo_config(tokenizer_dir, prompts_file, **{"data.kind": "synthetic"}))


def test_bad_reward_spec_names_the_key(tokenizer_dir, prompts_file, tmp_path):
  c = grpo_config(tokenizer_dir, prompts_file, **{"grpo.reward": "no_such_module_xyz:reward"})
  with pytest.raises(ConfigError, match=r"grpo.reward='no_such_module_xyz:reward': cannot import module"):
    train.train_and_evaluate(c, tmp_path)
  with pytest.raises(ConfigError, match=r"grpo.reward='nocolon': expected 'module:function'"):
    rewards.load("nocolon")


def test_prompt_rows_text_chat_and_bad_rows(tokenizer_dir):
  import ml_collections

  from jaxtune.data import load_tokenizer, prompts
  from jaxtune.data.readers import BadRows, DataError
  from jaxtune.data.rows import Row

  tok = load_tokenizer(str(tokenizer_dir))
  tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}review{% endif %}"
  d = ml_collections.ConfigDict(jt_config.default().data.to_dict())
  d.update(kind="prompts", source="x.jsonl", seq_len=3, on_bad_row="skip")
  rows = {"train": [Row({"prompt": "the film was fun"}, "x.jsonl", 1),
                    Row({"prompt": [{"role": "user", "content": "a movie"}]}, "x.jsonl", 2),
                    Row({"prompt": ""}, "x.jsonl", 3), Row({"other": "x"}, "x.jsonl", 4)],
          "validation": [Row({"prompt": "good"}, "x.jsonl", 5)]}
  bad = BadRows("skip")
  splits = prompts.build(rows, d, tok, bad)
  got = prompts.prompt_ids(splits["train"], np.arange(2))
  vocab = tok.get_vocab()
  assert got[0] == [vocab[w] for w in ("film", "was", "fun")]  # BOS the film was fun: its last 3
  assert got[1] == [vocab["a"], vocab["movie"], vocab["review"]]  # chat template + generation prompt
  assert splits.examples["train"][1]["prompt"] == [{"role": "user", "content": "a movie"}]
  assert len(bad) == 2 and splits.stats["splits"]["train"]["truncated"] == 1
  with pytest.raises(DataError, match="empty text in column 'prompt'"):
    prompts.build({"train": [Row({"prompt": " "}, "x.jsonl", 1)]}, d, tok, BadRows("error"))
