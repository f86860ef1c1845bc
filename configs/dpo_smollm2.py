"""DPO with LoRA: SmolLM2-135M-Instruct (GGUF) taught to write positive one-sentence film reviews.

Issue 18's preference recipe, offline: builtin 'review_pairs' (jaxtune.data.reviews) asks for a
one-sentence review of a film, with a positive Rotten Tomatoes snippet as the chosen answer and
a negative one as the rejected, both from the train part of sentiment_minilm's seeded split.
Sigmoid DPO; the reference is the frozen base with the adapters switched off, in the same step.
Rows are rendered with the model's chat template; the loss falls on the answers only.

Measure before / after on the 200 held-out prompts (temperature 0.7):
  python benchmarks/positive_reviews.py --models base,<workdir>

Size: 50 steps of 8 pairs (rows padded to 128 tokens), each a LoRA forward + backward of 16
sequences plus the reference's forward: 26 minutes on 2 CPU cores (2026-11-30, BENCHMARKS.md),
about 30 s a step.

Variants (`configs/dpo_smollm2.py:<arg>`): 'quick' is a few steps on few pairs (smoke test).
"""

from jaxtune import config as jt_config
from jaxtune.data import assets


def get_config(arg=None):
  variants = jt_config.known_variants("configs/dpo_smollm2.py", arg, ("quick",))
  c = jt_config.default()
  c.model.source = str(assets.smollm2_gguf())
  c.model.task = "preference"
  c.model.compute_dtype = "float32"  # CPU; use bfloat16 on GPU/TPU
  c.model.scan_layers = True  # one layer compiles, not 30: minutes less on a CPU

  c.data.kind = "preference"
  c.data.source = "review_pairs"
  c.data.split = "0.97,0.03"  # all pairs already come from sentiment_minilm's train split
  c.data.seq_len = 128  # the longest pair of review_pairs renders to 120 tokens

  c.preference.loss = "sigmoid"
  c.preference.beta = 0.1

  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.0  # policy and reference (adapters off) see the same base activations

  c.train.steps = 50
  c.train.batch_size = 8
  c.train.eval_every = 0  # validation at the end (the reward accuracy and margin)
  c.train.eval_batch_size = 16
  c.train.log_every = 5

  c.optim.name = "adamw"
  # 1e-3 (a usual LoRA SFT rate) pushed both answers' likelihood down and ran the answers to the
  # token cap (distinct-2 0.72x the base's); 2e-4 reaches the same positive share and keeps the
  # base's length and variety (BENCHMARKS.md, issue 18).
  c.optim.learning_rate = 2e-4
  c.optim.weight_decay = 0.0
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 5

  c.checkpoint.every_steps = 25
  c.checkpoint.best_metric = "eval/rewards/accuracy"
  c.checkpoint.best_mode = "max"

  if "quick" in variants:
    c.data.max_rows = 64
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.eval_batch_size = 4
    c.optim.warmup_steps = 1
  return c
