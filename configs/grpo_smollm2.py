"""GRPO with LoRA: SmolLM2-135M-Instruct taught to write positive one-sentence film reviews.

The policy samples `grpo.group_size` reviews per prompt of the builtin 'review_prompts' (chat
messages, rendered with the model's chat template); each review's reward is the probability of
'positive' that a finished `sentiment_minilm` classifier run gives it. Point `grpo.reward` at
your own run of configs/sentiment_minilm.py:

  jaxtune train --config=configs/sentiment_minilm.py --workdir=runs/sentiment_minilm
  jaxtune train --config=configs/grpo_smollm2.py --workdir=runs/grpo_smollm2 \
      --config.grpo.reward=classifier:runs/sentiment_minilm:positive

(`jaxtune.rewards`). The default below is the run README's first command (scripts/quickstart.sh)
leaves in workdirs/sentiment_minilm, relative to where jaxtune runs. Validation is
the mean reward of greedy answers to 32 'review_prompts' rows kept out of training; measure it
on all 200 held-out prompts with benchmarks/positive_reviews.py (BENCHMARKS.md).

Size: 24 steps of 6 prompts x 4 sampled reviews, each step sampling 24 completions of up to 40
tokens, scoring them, and a LoRA forward + backward over them with the reference's forward:
11 minutes on 2 CPU cores (2026-11-30, BENCHMARKS.md), about 22 s a step.

Variants (`configs/grpo_smollm2.py:<arg>`): 'quick' is 3 small steps (a smoke test).
"""

from jaxtune import config as jt_config
from jaxtune.data import assets

SENTIMENT_RUN = "workdirs/sentiment_minilm"  # scripts/quickstart.sh's run


def get_config(arg=None):
  variants = jt_config.known_variants("configs/grpo_smollm2.py", arg, ("quick",))
  c = jt_config.default()
  c.model.source = str(assets.smollm2_gguf())
  c.model.task = "grpo"
  c.model.compute_dtype = "float32"  # CPU; use bfloat16 on GPU/TPU
  # One layer compiles, not 30: the train step's CPU compile fell from ~9 minutes to seconds (the
  # sampler unstacks the layers for the KV cache; the math is the same).
  c.model.scan_layers = True

  c.data.kind = "prompts"
  c.data.source = "review_prompts"
  c.data.split = "0.99,0.01"  # 32 validation prompts; the 200 held-out ones measure the result
  c.data.seq_len = 64

  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.0  # the sampled policy and the trained one stay the same function

  c.grpo.reward = f"classifier:{SENTIMENT_RUN}:positive"
  c.grpo.group_size = 4
  c.grpo.max_new_tokens = 40
  c.grpo.temperature = 0.9
  # KL weight to the base. At 0.04 and 40 steps the policy found one gushing register that the
  # classifier scores ~0.99 (every group's rewards equal, distinct-2 0.72x the base's); 0.1 and
  # 24 steps keep it near the base at 0.95 positive (BENCHMARKS.md, issue 18).
  c.grpo.beta = 0.1
  c.grpo.loss_type = "dapo"
  c.grpo.log_samples = 4

  c.train.steps = 24
  c.train.batch_size = 6  # prompts per step: 24 sampled reviews
  c.train.eval_every = 12
  c.train.eval_at_start = True
  c.train.eval_batch_size = 16
  c.train.log_every = 2

  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-4
  c.optim.weight_decay = 0.0
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 2
  c.optim.grad_clip_norm = 1.0

  c.checkpoint.every_steps = 12
  c.checkpoint.best_metric = "eval/reward"
  c.checkpoint.best_mode = "max"

  if "quick" in variants:
    c.train.steps = 3
    c.train.batch_size = 2
    c.train.eval_every = 0
    c.train.eval_at_start = False
    c.grpo.max_new_tokens = 16
  return c
